"""What admins see of the delivery queue, and the replay of dead letters."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.models import Case, CaseEvent
from app.cases.states import consent_withdrawn
from app.cases.visibility import seen_referral_ids
from app.db import ENQUEUED, utcnow
from app.delivery.schemas import (
    AttemptOut,
    DeliveryDetail,
    DeliveryOut,
    DeliveryPage,
    DestinationQueue,
    QueueStats,
    ReplayFilter,
)
from app.directory.models import SocialPrescribingService
from app.errors import BadRequest, BusinessRuleViolation, Conflict, NotFound
from app.fhir.search import encode_cursor, page_of
from app.outbox.models import Delivery, DeliveryAttempt, Destination, DestinationKind
from app.outbox.service import CONSENT_WITHDRAWN_EVENT
from app.security import scope
from app.security.auth import Principal

STATES = ("pending", "in_flight", "delivered", "dead", "cancelled")
REPLAYABLE = ("dead", "cancelled")
REPLAY_LIMIT = 1000
_NOT_FOUND = "No such delivery"


def _operated_by(principal: Principal) -> ColumnElement[bool] | None:
    """The destinations the caller's organisation operates, whose queues it may see and replay:
    its services' platforms, its clinical route, its subscriptions (the installation's admin:
    every destination). Another organisation's receivers, their answers and their circuits are
    not its business, even for a referral both organisations see."""

    def operated(organisation: str) -> ColumnElement[bool]:
        own_services = select(SocialPrescribingService.id).where(
            SocialPrescribingService.organisation == organisation
        )
        return or_(
            and_(
                Destination.kind == DestinationKind.PLATFORM,
                Destination.service_id.in_(own_services),
            ),
            and_(
                Destination.kind.in_(
                    [DestinationKind.CLINICAL, DestinationKind.WEBHOOK, DestinationKind.REST_HOOK]
                ),
                Destination.organisation == organisation,
            ),
        )

    return scope.scoped(principal, operated)


def _visible(principal: Principal) -> ColumnElement[bool] | None:
    """The deliveries an organisation's admin may see and replay: to a destination it operates,
    and either of a referral it sent or receives or an operational event (no referral); the
    installation's admin: every delivery."""
    operated = _operated_by(principal)
    referrals = seen_referral_ids(principal)
    if operated is None or referrals is None:
        return None
    return and_(
        Delivery.destination_id.in_(select(Destination.id).where(operated)),
        or_(Delivery.referral_id.is_(None), Delivery.referral_id.in_(referrals)),
    )


def _out(delivery: Delivery, destination: Destination) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "destination_id": delivery.destination_id,
        "destination_kind": destination.kind,
        "adapter": destination.adapter,
        "referral_id": delivery.referral_id,
        "event_type": delivery.event_type,
        "event_seq": delivery.event_seq,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at if delivery.state == "pending" else None,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at,
        "delivered_at": delivery.delivered_at,
        "correlation_id": delivery.correlation_id,
    }


async def list_deliveries(
    session: AsyncSession,
    principal: Principal,
    *,
    state: str | None,
    referral: str | None,
    destination: str | None,
    event_type: str | None,
    limit: int,
    cursor: str | None,
) -> DeliveryPage:
    if state is not None and state not in STATES:
        raise BusinessRuleViolation(f"state must be one of {', '.join(STATES)}", expression="state")
    try:
        page = page_of({"_count": str(limit), **({"_cursor": cursor} if cursor else {})})
    except BadRequest:
        raise BusinessRuleViolation(
            "cursor is not one this server issued", expression="cursor"
        ) from None
    query = select(Delivery, Destination).join(
        Destination, Destination.id == Delivery.destination_id
    )
    query = scope.restrict(query, _visible(principal))
    if state:
        query = query.where(Delivery.state == state)
    if referral:
        query = query.where(Delivery.referral_id == referral)
    if destination:
        query = query.where(Delivery.destination_id == destination)
    if event_type:
        query = query.where(Delivery.event_type == event_type)
    if page.cursor:
        stamp, ident = page.cursor
        query = query.where(
            or_(
                Delivery.created_at < stamp, and_(Delivery.created_at == stamp, Delivery.id < ident)
            )
        )
    rows = list(
        await session.execute(
            query.order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(page.count + 1)
        )
    )
    items = [DeliveryOut(**_out(d, t)) for d, t in rows[: page.count]]
    next_cursor = None
    if len(rows) > page.count and items:
        last = rows[page.count - 1][0]
        next_cursor = encode_cursor(last.created_at, last.id)
    return DeliveryPage(items=items, next_cursor=next_cursor)


async def get_delivery(
    session: AsyncSession, principal: Principal, delivery_id: str
) -> DeliveryDetail:
    query = (
        select(Delivery, Destination)
        .join(Destination, Destination.id == Delivery.destination_id)
        .where(Delivery.id == delivery_id)
    )
    row = (await session.execute(scope.restrict(query, _visible(principal)))).first()
    if row is None:
        raise NotFound(_NOT_FOUND)
    attempts = await session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id == delivery_id)
        .order_by(DeliveryAttempt.id)
    )
    history = [
        AttemptOut(
            number=a.number,
            started_at=a.started_at,
            duration_ms=a.duration_ms,
            outcome=a.outcome,
            status_code=a.status_code,
            response_excerpt=a.response_excerpt,
            error=a.error,
            worker=a.worker,
        )
        for a in attempts
    ]
    return DeliveryDetail(**_out(*row), history=history)


def _requeue(now: dt.datetime) -> dict[str, Any]:
    # Attempts restart at the beginning of the schedule; the age window restarts too.
    return {
        "state": "pending",
        "next_attempt_at": now,
        "created_at": now,
        "claimed_by": None,
        "lease_expires_at": None,
        "updated_at": now,
    }


async def _reactivate_destinations(session: AsyncSession, ids: set[str], now: dt.datetime) -> None:
    """A replay to a destination with an open circuit starts with a fresh probe."""
    if ids:
        await session.execute(
            update(Destination)
            .where(Destination.id.in_(ids), Destination.probe_at.is_not(None))
            .values(probe_at=now)
        )


async def _withheld_by_withdrawal(session: AsyncSession, delivery: Delivery) -> bool:
    """Whether this delivery belongs to a person who withdrew consent and is not the withdrawal
    (the one thing still sent to the referrer and the platform)."""
    if delivery.referral_id is None:
        return False
    case = await session.scalar(select(Case).where(Case.referral_id == delivery.referral_id))
    if case is None or not consent_withdrawn(case.state, case.status_reason):
        return False
    event_type = None
    if delivery.case_event_id is not None:
        event_type = await session.scalar(
            select(CaseEvent.type).where(CaseEvent.id == delivery.case_event_id)
        )
    return event_type != CONSENT_WITHDRAWN_EVENT


async def replay_one(
    session: AsyncSession, principal: Principal, delivery_id: str
) -> DeliveryDetail:
    query = scope.restrict(select(Delivery).where(Delivery.id == delivery_id), _visible(principal))
    delivery = await session.scalar(
        query.with_for_update().execution_options(populate_existing=True)
    )
    if delivery is None:
        raise NotFound(_NOT_FOUND)
    destination = await session.get(Destination, delivery.destination_id)
    if destination is None or destination.deleted_at is not None:
        raise Conflict("The destination of this delivery has been deleted; it cannot be replayed")
    if delivery.state not in REPLAYABLE:
        raise Conflict(
            f"Only dead letters and cancelled deliveries can be replayed; this one is "
            f"'{delivery.state}'"
        )
    if await _withheld_by_withdrawal(session, delivery):
        raise Conflict(
            "The person withdrew consent: nothing of theirs is sent again except the withdrawal "
            "itself"
        )
    now = utcnow()
    for name, value in _requeue(now).items():
        setattr(delivery, name, value)
    await _reactivate_destinations(session, {delivery.destination_id}, now)
    session.info[ENQUEUED] = True
    await session.flush()
    return await get_delivery(session, principal, delivery_id)


async def replay_matching(
    session: AsyncSession, principal: Principal, request: ReplayFilter
) -> list[str]:
    conditions: list[ColumnElement[bool]] = [
        Delivery.state == "dead",
        # A deleted subscription's dead letters would wait for ever in the queue.
        Delivery.destination_id.in_(select(Destination.id).where(Destination.deleted_at.is_(None))),
    ]
    visible = _visible(principal)
    if visible is not None:
        conditions.append(visible)
    if request.destination:
        conditions.append(Delivery.destination_id == request.destination)
    if request.referral:
        conditions.append(Delivery.referral_id == request.referral)
    if request.event_type:
        conditions.append(Delivery.event_type == request.event_type)
    if request.dead_since:
        conditions.append(Delivery.updated_at >= request.dead_since)
    rows = list(
        await session.execute(
            select(Delivery.id, Delivery.destination_id)
            .where(*conditions)
            .order_by(Delivery.created_at, Delivery.event_seq)
            .limit(REPLAY_LIMIT)
        )
    )
    if not rows:
        return []
    now = utcnow()
    ids = [row[0] for row in rows]
    await session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.state == "dead")
        .values(**_requeue(now))
        .execution_options(synchronize_session=False)
    )
    await _reactivate_destinations(session, {row[1] for row in rows}, now)
    session.info[ENQUEUED] = True
    return ids


async def queue_stats(session: AsyncSession, principal: Principal) -> QueueStats:
    """The queues of the destinations the caller's organisation operates (the installation's
    admin: every destination), counting only the deliveries it may see."""
    now = utcnow()
    counted = select(
        Delivery.destination_id,
        Delivery.state,
        func.count(),
        func.sum(Delivery.attempts),
        func.min(Delivery.created_at).filter(Delivery.state.in_(("pending", "in_flight"))),
    )
    counted = scope.restrict(counted, _visible(principal))
    counts = await session.execute(counted.group_by(Delivery.destination_id, Delivery.state))
    per_destination: dict[str, dict[str, Any]] = {}
    for destination_id, state, count, attempts, oldest in counts:
        entry = per_destination.setdefault(
            destination_id, {"by_state": {}, "attempts": 0, "oldest": None}
        )
        entry["by_state"][state] = count
        entry["attempts"] += int(attempts or 0)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        if oldest is not None and (entry["oldest"] is None or oldest < entry["oldest"]):
            entry["oldest"] = oldest
    operated = scope.restrict(select(Destination), _operated_by(principal))
    destinations = list(await session.scalars(operated.order_by(Destination.created_at)))
    queues = []
    totals: dict[str, int] = dict.fromkeys(STATES, 0)
    oldest_overall: dt.datetime | None = None
    attempts_total = 0
    for destination in destinations:
        entry = per_destination.get(destination.id, {"by_state": {}, "attempts": 0, "oldest": None})
        for state, count in entry["by_state"].items():
            totals[state] = totals.get(state, 0) + count
        attempts_total += entry["attempts"]
        oldest = entry["oldest"]
        if oldest is not None and (oldest_overall is None or oldest < oldest_overall):
            oldest_overall = oldest
        queues.append(
            DestinationQueue(
                destination_id=destination.id,
                kind=destination.kind,
                adapter=destination.adapter,
                service_id=destination.service_id,
                organisation=destination.organisation,
                active=destination.active,
                circuit="open" if destination.probe_at is not None else "closed",
                failing_since=destination.failing_since,
                consecutive_failures=destination.consecutive_failures,
                by_state={state: entry["by_state"].get(state, 0) for state in STATES},
                oldest_pending_age_seconds=(now - oldest).total_seconds() if oldest else None,
                attempts=entry["attempts"],
            )
        )
    return QueueStats(
        by_state=totals,
        oldest_pending_age_seconds=(now - oldest_overall).total_seconds()
        if oldest_overall
        else None,
        attempts=attempts_total,
        destinations=queues,
    )
