"""The outbox: one row per destination for every case event, written in the event's transaction."""

from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.models import Case, CaseEvent
from app.delivery.models import Delivery, Destination
from app.referrals.models import Referral


async def destinations_for(
    session: AsyncSession, referral: Referral, service_organisation: str
) -> list[Destination]:
    """Active destinations interested in this referral's case (its service's, its referrer's)."""
    rows = await session.scalars(
        select(Destination).where(
            Destination.active.is_(True),
            or_(Destination.service_id.is_(None), Destination.service_id == referral.service_id),
            or_(
                Destination.organisation.is_(None),
                Destination.organisation.in_([referral.organisation, service_organisation]),
            ),
        )
    )
    return list(rows)


def enqueue(
    session: AsyncSession,
    destinations: list[Destination],
    case: Case,
    event: CaseEvent,
) -> list[Delivery]:
    deliveries = [
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
            request_id=event.request_id,
            correlation_id=event.correlation_id,
        )
        for destination in destinations
        if not destination.event_types or event.type in destination.event_types
    ]
    session.add_all(deliveries)
    return deliveries
