"""The outbox: one row per destination for every case event, written in the event's transaction.

Every change calls it (app.cases), so it knows no case code: it reads what it needs of a case and
its event through the two protocols below."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import caches
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


@dataclass(frozen=True)
class Target:
    """What queueing reads of a destination: a snapshot, shared by every session of the process
    (app.caches), never an ORM instance."""

    id: str
    kind: str
    service_id: str | None
    organisation: str | None
    event_types: tuple[str, ...]


_TARGET_COLUMNS = (
    Destination.id,
    Destination.kind,
    Destination.service_id,
    Destination.organisation,
    Destination.event_types,
)


@dataclass(frozen=True)
class _ActiveDestinations:
    """Every active destination, indexed as destinations_for looks them up: one cached value for
    the process, so a referral to any service from any organisation needs no query."""

    platform: Mapping[str, tuple[Target, ...]]  # by service
    clinical: Mapping[str, tuple[Target, ...]]  # by organisation
    rest_hook: Mapping[str | None, tuple[Target, ...]]  # by organisation (None: an admin's)
    webhook: Mapping[tuple[str | None, str | None], tuple[Target, ...]]  # (service, organisation)

    @classmethod
    def of(cls, targets: Iterable[Target]) -> _ActiveDestinations:
        platform: dict[str, list[Target]] = defaultdict(list)
        clinical: dict[str, list[Target]] = defaultdict(list)
        rest_hook: dict[str | None, list[Target]] = defaultdict(list)
        webhook: dict[tuple[str | None, str | None], list[Target]] = defaultdict(list)
        for target in targets:
            if target.kind == DestinationKind.PLATFORM and target.service_id is not None:
                platform[target.service_id].append(target)
            elif target.kind == DestinationKind.CLINICAL and target.organisation is not None:
                clinical[target.organisation].append(target)
            elif target.kind == DestinationKind.REST_HOOK:
                rest_hook[target.organisation].append(target)
            elif target.kind == DestinationKind.WEBHOOK:
                webhook[(target.service_id, target.organisation)].append(target)
        return cls(
            platform={k: tuple(v) for k, v in platform.items()},
            clinical={k: tuple(v) for k, v in clinical.items()},
            rest_hook={k: tuple(v) for k, v in rest_hook.items()},
            webhook={k: tuple(v) for k, v in webhook.items()},
        )

    def interested(
        self, service_id: str, clinical_organisation: str, seeing: tuple[str | None, ...]
    ) -> list[Target]:
        found = [*self.platform.get(service_id, ()), *self.clinical.get(clinical_organisation, ())]
        for organisation in seeing:
            found.extend(self.rest_hook.get(organisation, ()))
            for service in (None, service_id):
                found.extend(self.webhook.get((service, organisation), ()))
        return found


def _target(row: Any) -> Target:
    return Target(
        id=row.id,
        kind=row.kind,
        service_id=row.service_id,
        organisation=row.organisation,
        event_types=tuple(row.event_types or ()),
    )


async def destinations_for(
    session: AsyncSession,
    *,
    service_id: str,
    referrer: str,
    provider: str,
    requester: str | None = None,
) -> list[Target]:
    """Active destinations interested in a referral's case: its service's platform, the
    clinical route of its requester's organisation (``requester``, the ODS code of
    ServiceRequest.requester; else the referring client's organisation), and the webhook and
    FHIR subscriptions that may see it (those of the referring or the providing organisation,
    and the admins').

    The process remembers every active destination (app.caches, ``DESTINATIONS``): no query
    while it does. A change to destinations empties it when it commits (app.outbox.models)."""
    clinical_organisation = requester or referrer
    # A subscription sees what its owner's organisation may see; an admin's (None) all.
    seeing = (None, referrer) if referrer == provider else (None, referrer, provider)
    cache = caches.cache_of(session, caches.DESTINATIONS)
    if cache is not None and cache.ttl > 0:
        active: _ActiveDestinations | None = cache.get(None)
        if active is None:
            generation = cache.generation
            rows = await session.execute(
                select(*_TARGET_COLUMNS).where(Destination.active.is_(True))
            )
            active = _ActiveDestinations.of(_target(row) for row in rows)
            cache.put(None, active, generation)
        return active.interested(service_id, clinical_organisation, seeing)
    rows = await session.execute(
        select(*_TARGET_COLUMNS).where(
            Destination.active.is_(True),
            or_(
                and_(
                    Destination.kind == DestinationKind.PLATFORM,
                    Destination.service_id == service_id,
                ),
                and_(
                    Destination.kind == DestinationKind.CLINICAL,
                    Destination.organisation == clinical_organisation,
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
                    or_(
                        Destination.organisation.is_(None),
                        Destination.organisation.in_([referrer, provider]),
                    ),
                ),
            ),
        )
    )
    return [_target(row) for row in rows]


def _wants(destination: Target, event_type: str) -> bool:
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
    destinations: Sequence[Target],
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
