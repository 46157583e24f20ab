"""Webhook subscriptions for worklists: `/api/v1/subscriptions`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from app.dependencies import AppSettings, OutboundHTTP, ReadSession, WriteSession
from app.errors import api_error_responses
from app.outbox.models import Destination
from app.security.auth import Principal, require
from app.security.roles import Operation
from app.webhooks import service
from app.webhooks.schemas import (
    PingResult,
    SecretRotated,
    SecretRotation,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionOut,
    SubscriptionUpdate,
)

router = APIRouter(prefix="/api/v1/subscriptions", tags=["subscriptions"])

Manager = Annotated[Principal, Depends(require(Operation.SUBSCRIPTION_MANAGE, writes=True))]
Reader = Annotated[Principal, Depends(require(Operation.SUBSCRIPTION_MANAGE, writes=False))]


def _out(subscription: Destination) -> SubscriptionOut:
    return SubscriptionOut(
        id=subscription.id,
        url=subscription.url or "",
        events=list(subscription.event_types),
        service=subscription.service_id,
        description=subscription.description,
        organisation=subscription.organisation,
        active=subscription.active,
        disabled_reason=subscription.disabled_reason,
        failing_since=subscription.failing_since,
        created_at=subscription.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SubscriptionCreated,
    summary="Subscribe a worklist to case changes",
    description="Registers a URL that receives a signed, thin notification (Standard Webhooks) "
    "for every new referral and every change to the cases the caller's organisation may see, "
    "optionally only for some event types or one service. The signing secret is in the response "
    "and is never shown again.",
    operation_id="createSubscription",
    responses=api_error_responses(401, 403, 422),
)
async def create_subscription(
    body: SubscriptionCreate, session: WriteSession, principal: Manager, settings: AppSettings
) -> SubscriptionCreated:
    subscription, secret = await service.create_subscription(session, principal, body, settings)
    return SubscriptionCreated(**_out(subscription).model_dump(), secret=secret)


@router.get(
    "",
    response_model=list[SubscriptionOut],
    summary="List subscriptions",
    description="The caller's organisation's subscriptions (an admin sees all).",
    operation_id="listSubscriptions",
    responses=api_error_responses(401, 403),
)
async def list_subscriptions(session: ReadSession, principal: Reader) -> list[SubscriptionOut]:
    return [_out(s) for s in await service.list_subscriptions(session, principal)]


@router.get(
    "/{subscription_id}",
    response_model=SubscriptionOut,
    summary="Read a subscription",
    description="One subscription, with whether it is active and why not.",
    operation_id="readSubscription",
    responses=api_error_responses(401, 403, 404),
)
async def read_subscription(
    subscription_id: str, session: ReadSession, principal: Reader
) -> SubscriptionOut:
    return _out(await service.get_subscription(session, principal, subscription_id))


@router.patch(
    "/{subscription_id}",
    response_model=SubscriptionOut,
    summary="Change a subscription",
    description="Change its URL, event filter, service filter or description; `active: true` "
    "re-enables a subscription that was disabled.",
    operation_id="updateSubscription",
    responses=api_error_responses(401, 403, 404, 422),
)
async def update_subscription(
    subscription_id: str,
    body: SubscriptionUpdate,
    session: WriteSession,
    principal: Manager,
    settings: AppSettings,
) -> SubscriptionOut:
    return _out(
        await service.update_subscription(session, principal, subscription_id, body, settings)
    )


@router.delete(
    "/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a subscription",
    description="Nothing more is sent to it; notifications not yet sent are cancelled.",
    operation_id="deleteSubscription",
    responses=api_error_responses(401, 403, 404),
)
async def delete_subscription(
    subscription_id: str, session: WriteSession, principal: Manager
) -> Response:
    await service.delete_subscription(session, principal, subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{subscription_id}/rotate-secret",
    response_model=SecretRotated,
    summary="Rotate the signing secret",
    description="Issues a new secret. During the overlap every notification carries two "
    "signatures (new and old secret), so the receiver can switch without missing any.",
    operation_id="rotateSubscriptionSecret",
    responses=api_error_responses(401, 403, 404, 422),
)
async def rotate_secret(
    subscription_id: str,
    session: WriteSession,
    principal: Manager,
    body: SecretRotation | None = None,
) -> SecretRotated:
    overlap = (body or SecretRotation()).overlap
    subscription, secret, expires = await service.rotate_secret(
        session, principal, subscription_id, overlap
    )
    return SecretRotated(id=subscription.id, secret=secret, previous_secret_expires_at=expires)


@router.post(
    "/{subscription_id}/test",
    response_model=PingResult,
    summary="Send a test notification",
    description="Sends a signed `ping` to the subscription's URL now and reports the answer.",
    operation_id="testSubscription",
    responses=api_error_responses(401, 403, 404),
)
async def test_subscription(
    subscription_id: str,
    session: ReadSession,
    principal: Reader,
    http: OutboundHTTP,
    settings: AppSettings,
) -> PingResult:
    subscription = await service.get_subscription(session, principal, subscription_id)
    return await service.ping(subscription, http, settings)
