"""Admins' view of the delivery queue: `/api/v1/deliveries`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.cases.visibility import note_referrals
from app.delivery import admin
from app.delivery.schemas import (
    DeliveryDetail,
    DeliveryPage,
    DeliveryState,
    QueueStats,
    ReplayFilter,
    ReplayResult,
)
from app.dependencies import ReadSession, WriteSession
from app.errors import api_error_responses
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/api/v1/deliveries", tags=["deliveries"])

Reader = Annotated[Principal, Depends(require(Operation.DELIVERY_READ, writes=False))]
Replayer = Annotated[Principal, Depends(require(Operation.DELIVERY_REPLAY, writes=True))]


@router.get(
    "",
    response_model=DeliveryPage,
    summary="List deliveries",
    description="Outbound deliveries, newest first, filtered by state, referral, destination or "
    "event type; `state=dead` lists the dead letters. An organisation's admin sees the "
    "deliveries to the destinations its organisation operates (its services' platforms, its "
    "clinical route, its subscriptions) of referrals it sent or receives; the installation's "
    "admin (the bootstrap key), every delivery.",
    operation_id="listDeliveries",
    responses=api_error_responses(401, 403, 422),
)
async def list_deliveries(
    session: ReadSession,
    principal: Reader,
    state: DeliveryState | None = None,
    referral: Annotated[str | None, Query(max_length=64)] = None,
    destination: Annotated[str | None, Query(max_length=64)] = None,
    event_type: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DeliveryPage:
    page = await admin.list_deliveries(
        session,
        principal,
        state=state,
        referral=referral,
        destination=destination,
        event_type=event_type,
        limit=limit,
        cursor=cursor,
    )
    await note_referrals(session, [item.referral_id for item in page.items])
    return page


@router.get(
    "/stats",
    response_model=QueueStats,
    summary="Queue health",
    description="Counts by state, age of the oldest pending delivery and attempts, in total and "
    "per destination, with each destination's circuit: for an organisation's admin, the "
    "destinations its organisation operates and the deliveries it may list.",
    operation_id="deliveryQueueStats",
    responses=api_error_responses(401, 403),
)
async def queue_stats(session: ReadSession, principal: Reader) -> QueueStats:
    return await admin.queue_stats(session, principal)


@router.post(
    "/replay",
    response_model=ReplayResult,
    summary="Replay dead letters by filter",
    description="Puts the dead letters matching the filter (at most 1000 per call, oldest first) "
    "back in the queue; they keep their ids, so receivers can still de-duplicate. Only the "
    "deliveries the caller may list are replayed.",
    operation_id="replayDeliveries",
    responses=api_error_responses(401, 403, 422),
)
async def replay_matching(
    body: ReplayFilter, session: WriteSession, principal: Replayer
) -> ReplayResult:
    ids = await admin.replay_matching(session, principal, body)
    await note_referrals(session, [body.referral] if ids else [])
    return ReplayResult(replayed=len(ids), ids=ids)


@router.get(
    "/{delivery_id}",
    response_model=DeliveryDetail,
    summary="Read a delivery and its attempts",
    description="One delivery with every attempt: when, the status, the first 2 KB of the "
    "answer, the error. A delivery the caller may not list is unknown (404).",
    operation_id="readDelivery",
    responses=api_error_responses(401, 403, 404),
)
async def read_delivery(
    delivery_id: str, session: ReadSession, principal: Reader
) -> DeliveryDetail:
    detail = await admin.get_delivery(session, principal, delivery_id)
    await note_referrals(session, [detail.referral_id])
    return detail


@router.post(
    "/{delivery_id}/replay",
    response_model=DeliveryDetail,
    summary="Replay a dead letter",
    description="Puts one dead (or cancelled) delivery back in the queue with the same id. A "
    "delivery the caller may not list is unknown (404).",
    operation_id="replayDelivery",
    responses=api_error_responses(401, 403, 404, 409),
)
async def replay_one(
    delivery_id: str, session: WriteSession, principal: Replayer
) -> DeliveryDetail:
    detail = await admin.replay_one(session, principal, delivery_id)
    await note_referrals(session, [detail.referral_id])
    return detail
