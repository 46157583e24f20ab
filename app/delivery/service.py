"""The outbox: one row per destination for every case event, written in the event's transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.models import Case, CaseEvent
from app.db import ENQUEUED
from app.delivery.models import Delivery, Destination, DestinationKind
from app.referrals.models import Referral
from app.webhooks import signing


async def destinations_for(
    session: AsyncSession, referral: Referral, service_organisation: str
) -> list[Destination]:
    """Active destinations interested in this referral's case: its service's platform, its
    referrer's clinical system, and the webhook subscriptions that may see it."""
    rows = await session.scalars(
        select(Destination).where(
            Destination.active.is_(True),
            or_(
                and_(
                    Destination.kind == DestinationKind.PLATFORM,
                    Destination.service_id == referral.service_id,
                ),
                and_(
                    Destination.kind == DestinationKind.CLINICAL,
                    Destination.organisation == referral.organisation,
                ),
                and_(
                    Destination.kind == DestinationKind.WEBHOOK,
                    or_(
                        Destination.service_id.is_(None),
                        Destination.service_id == referral.service_id,
                    ),
                    # A subscription sees what its owner's organisation may see; an admin's all.
                    or_(
                        Destination.organisation.is_(None),
                        Destination.organisation.in_([referral.organisation, service_organisation]),
                    ),
                ),
            ),
        )
    )
    return list(rows)


def _wants(destination: Destination, event_type: str) -> bool:
    return not destination.event_types or event_type in destination.event_types


def enqueue(
    session: AsyncSession,
    destinations: list[Destination],
    case: Case,
    event: CaseEvent,
) -> list[Delivery]:
    payload: dict[str, Any] | None = None
    deliveries = []
    for destination in destinations:
        if not _wants(destination, event.type):
            continue
        if destination.kind == DestinationKind.WEBHOOK and payload is None:
            payload = signing.case_payload(
                event_type=event.type,
                event_id=event.id,
                event_seq=event.seq,
                referral_id=case.referral_id,
                case_id=case.id,
                service_id=case.service_id,
                state=case.state,
                business_status=case.business_status,
                occurred_at=event.occurred_at,
                recorded_at=event.recorded_at,
            )
        deliveries.append(
            Delivery(
                id=str(uuid.uuid4()),
                destination_id=destination.id,
                referral_id=case.referral_id,
                case_event_id=event.id,
                event_type=event.type,
                event_seq=event.seq,
                state="pending",
                attempts=0,
                next_attempt_at=event.recorded_at,
                created_at=event.recorded_at,
                payload=payload if destination.kind == DestinationKind.WEBHOOK else None,
                request_id=event.request_id,
                correlation_id=event.correlation_id,
            )
        )
    if deliveries:
        session.add_all(deliveries)
        session.info[ENQUEUED] = True
    return deliveries


async def enqueue_operational(
    session: AsyncSession, event_type: str, data: dict[str, Any], now: dt.datetime
) -> int:
    """An operational event (dead letter, subscription disabled) for the admins' subscriptions
    that list it."""
    admins = await session.scalars(
        select(Destination).where(
            Destination.active.is_(True),
            Destination.kind == DestinationKind.WEBHOOK,
            Destination.organisation.is_(None),
        )
    )
    payload = signing.operational_payload(event_type, now, data)
    count = 0
    for destination in admins:
        # Operational events go only where they were asked for by name.
        if event_type not in destination.event_types:
            continue
        session.add(
            Delivery(
                id=str(uuid.uuid4()),
                destination_id=destination.id,
                referral_id=None,
                case_event_id=None,
                event_type=event_type,
                event_seq=0,
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                payload=payload,
            )
        )
        count += 1
    if count:
        session.info[ENQUEUED] = True
    return count
