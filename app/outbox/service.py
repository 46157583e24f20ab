"""The outbox: one row per destination for every case event, written in the event's transaction.

Every change calls it (app.cases), so it knows no case code: it reads what it needs of a case and
its event through the two protocols below."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Protocol

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import ENQUEUED
from app.outbox import payloads
from app.outbox.models import Delivery, DeliveryAttempt, Destination, DestinationKind


class ChangedCase(Protocol):
    """What the outbox reads of a case (app.cases.models.Case)."""

    @property
    def id(self) -> str: ...
    @property
    def referral_id(self) -> str: ...
    @property
    def service_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def business_status(self) -> str: ...


class RecordedEvent(Protocol):
    """What the outbox reads of a recorded case event (app.cases.models.CaseEvent)."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def occurred_at(self) -> dt.datetime: ...
    @property
    def recorded_at(self) -> dt.datetime: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...


async def destinations_for(
    session: AsyncSession,
    *,
    service_id: str,
    referrer: str,
    provider: str,
    requester: str | None = None,
) -> list[Destination]:
    """Active destinations interested in a referral's case: its service's platform, the
    clinical route of its requester's organisation (``requester``, the ODS code of
    ServiceRequest.requester; else the referring client's organisation), and the webhook and
    FHIR subscriptions that may see it (those of the referring or the providing organisation,
    and the admins')."""
    rows = await session.scalars(
        select(Destination).where(
            Destination.active.is_(True),
            or_(
                and_(
                    Destination.kind == DestinationKind.PLATFORM,
                    Destination.service_id == service_id,
                ),
                and_(
                    Destination.kind == DestinationKind.CLINICAL,
                    Destination.organisation == (requester or referrer),
                ),
                and_(
                    # FHIR Subscriptions (app.outbox.topics): their filters are theirs to apply.
                    Destination.kind == DestinationKind.REST_HOOK,
                    or_(
                        Destination.organisation.is_(None),
                        Destination.organisation.in_([referrer, provider]),
                    ),
                ),
                and_(
                    Destination.kind == DestinationKind.WEBHOOK,
                    or_(
                        Destination.service_id.is_(None),
                        Destination.service_id == service_id,
                    ),
                    # A subscription sees what its owner's organisation may see; an admin's all.
                    or_(
                        Destination.organisation.is_(None),
                        Destination.organisation.in_([referrer, provider]),
                    ),
                ),
            ),
        )
    )
    return list(rows)


def _wants(destination: Destination, event_type: str) -> bool:
    return not destination.event_types or event_type in destination.event_types


# Consent withdrawal (issue 5, part 6): what is still sent once a person has withdrawn consent.
CONSENT_WITHDRAWN_EVENT = "consent.withdrawn"
WITHDRAWAL_ERROR = "cancelled: the person withdrew consent"
# The platform is told to stop with the event it already knows: a cancellation (our ids only).
PLATFORM_CANCEL = "referral.cancelled"
_STOPPABLE = ("pending", "in_flight", "dead")


async def stop_for_withdrawal(
    session: AsyncSession, referral_id: str, now: dt.datetime
) -> set[str]:
    """Cancel every delivery of this referral not yet made, in the withdrawal's transaction.

    Pending and in-flight deliveries (and dead letters, so a bulk replay never resends them)
    become ``cancelled`` with the reason in ``last_error`` and a ``cancelled`` entry in their
    attempt history. An in-flight send already on the wire cannot be recalled; its row is
    cancelled all the same, so whatever it answers it is never retried. Returns the platform
    destinations that may hold the case (their create was delivered or was in flight), which
    are then told to cancel it.
    """
    rows = await session.execute(
        select(Delivery, Destination.kind)
        .join(Destination, Destination.id == Delivery.destination_id)
        .where(Delivery.referral_id == referral_id)
        .with_for_update(of=Delivery)
    )
    holding: set[str] = set()
    for delivery, kind in rows:
        if (
            kind == DestinationKind.PLATFORM
            and delivery.event_type == "referral.received"
            and delivery.state in ("delivered", "in_flight")
        ):
            holding.add(delivery.destination_id)
        if delivery.state not in _STOPPABLE:
            continue
        session.add(
            DeliveryAttempt(
                delivery_id=delivery.id,
                number=delivery.attempts,
                started_at=now,
                duration_ms=0,
                outcome="cancelled",
                error=WITHDRAWAL_ERROR,
                worker=None,
            )
        )
        delivery.state = "cancelled"
        delivery.last_error = WITHDRAWAL_ERROR
        delivery.claimed_by = None
        delivery.lease_expires_at = None
        delivery.updated_at = now
    return holding


def enqueue(
    session: AsyncSession,
    destinations: list[Destination],
    case: ChangedCase,
    event: RecordedEvent,
    *,
    withdrawn: bool,
    platforms_holding: frozenset[str] | set[str] = frozenset(),
) -> list[Delivery]:
    """An outbox row for each destination that wants ``event``.

    Once the person has withdrawn consent (``withdrawn``: the case was closed by it), nothing
    more of theirs is sent, whatever event the caller passes: only the withdrawal itself goes to
    the referrer's clinical system (the Task showing the case closed, which identifies the
    patient by the NHS number the referrer already holds), and to ``platforms_holding`` as a
    cancellation. Webhook subscriptions get nothing.
    """
    payload: dict[str, Any] | None = None
    deliveries = []
    for destination in destinations:
        if destination.kind == DestinationKind.REST_HOOK:
            continue  # notified by app.outbox.topics, numbered per subscription
        event_type = event.type
        if withdrawn:
            if event.type != CONSENT_WITHDRAWN_EVENT:
                continue
            if destination.kind == DestinationKind.PLATFORM:
                if destination.id not in platforms_holding:
                    continue
                event_type = PLATFORM_CANCEL
            elif destination.kind != DestinationKind.CLINICAL:
                continue
        elif not _wants(destination, event.type):
            continue
        if destination.kind == DestinationKind.WEBHOOK and payload is None:
            payload = payloads.case_payload(
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
                event_type=event_type,
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
    payload = payloads.operational_payload(event_type, now, data)
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
