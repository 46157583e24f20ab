"""Topic-based FHIR Subscriptions (the R5 Backport IG on R4): the outbox's side.

One topic, "referral Task changed" (:data:`TOPIC_URL`): every case event changes the referral's
Task, and each subscription whose filters match it gets a notification, numbered in the
subscription's own sequence (``eventsSinceSubscriptionStart``), as an outbox row of its
destination (kind ``rest-hook``) written in the event's transaction. Its payload carries ids
only (the Task's, never patient data). A subscription is notified once its handshake was
delivered (status ``active``); heartbeats are queued when due. The REST API (create, read,
delete, ``$status``, ``$events``) is app.fhirsubscriptions; the notification Bundle is made when
it is sent (app.delivery.senders).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import ENQUEUED
from app.fhir.codes import CANONICAL_BASE
from app.outbox.models import Delivery, Destination, DestinationKind, TopicSubscription
from app.outbox.service import Target

TOPIC_ID = "referral-task-changed"
TOPIC_URL = f"{CANONICAL_BASE}/SubscriptionTopic/{TOPIC_ID}"
HANDSHAKE = "subscription.handshake"
HEARTBEAT = "subscription.heartbeat"
# The topic's filters (canFilterBy), each on the referral's Task.
FILTERS: Mapping[str, str] = {
    "requester": "The referring organisation's ODS code (Task.requester)",
    "patient": "The patient's NHS number, as https://fhir.nhs.uk/Id/nhs-number|<number> or "
    "the number alone (Task.for)",
    "service": "The social prescribing service's id (Task.owner, HealthcareService/<id>)",
    "status": "Task.status (requested, accepted, in-progress, on-hold, completed, failed, "
    "cancelled, rejected); several separated by commas",
}
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


@dataclass(frozen=True)
class TaskChange:
    """What the topic knows of one change to a referral's Task (no patient data is sent)."""

    referral_id: str
    task_id: str
    event_id: str
    event_type: str
    requester: str
    provider: str
    service_id: str
    nhs_number: str
    task_status: str
    recorded_at: dt.datetime
    request_id: str | None
    correlation_id: str | None


def matches(filters: Mapping[str, str], change: TaskChange) -> bool:
    """Whether ``change`` meets every filter of a subscription."""
    for name, wanted in filters.items():
        if name == "requester" and wanted != change.requester:
            return False
        if name == "patient" and wanted.removeprefix(f"{NHS_NUMBER_SYSTEM}|") != change.nhs_number:
            return False
        if name == "service" and wanted.removeprefix("HealthcareService/") != change.service_id:
            return False
        if name == "status" and change.task_status not in {s.strip() for s in wanted.split(",")}:
            return False
    return True


async def _next_number(session: AsyncSession, subscription_id: str) -> int:
    """The subscription's next event number: counted in the database, one writer at a time."""
    result = await session.execute(
        update(TopicSubscription)
        .where(TopicSubscription.id == subscription_id)
        .values(events_since_start=TopicSubscription.events_since_start + 1)
        .returning(TopicSubscription.events_since_start)
        .execution_options(synchronize_session=False)
    )
    number: int = result.scalar_one()
    return number


async def notify(session: AsyncSession, change: TaskChange, destinations: Sequence[Target]) -> int:
    """Queue a notification for every active subscription among ``destinations`` (those that
    may see the referral: app.outbox.service.destinations_for) whose filters match. Returns how
    many were queued; reads nothing when there is no subscription."""
    hooks = {d.id: d for d in destinations if d.kind == DestinationKind.REST_HOOK}
    if not hooks:
        return 0
    rows = [
        (subscription, hooks[subscription.id])
        for subscription in await session.scalars(
            select(TopicSubscription).where(
                TopicSubscription.id.in_(list(hooks)),
                TopicSubscription.status == "active",
                TopicSubscription.topic == TOPIC_URL,
            )
        )
    ]
    count = 0
    for subscription, destination in rows:
        if subscription.end is not None and subscription.end <= change.recorded_at:
            continue
        if not matches(subscription.filters, change):
            continue
        number = await _next_number(session, subscription.id)
        session.add(
            Delivery(
                id=str(uuid.uuid4()),
                destination_id=destination.id,
                referral_id=change.referral_id,
                case_event_id=change.event_id,
                event_type=change.event_type,
                event_seq=number,
                state="pending",
                attempts=0,
                next_attempt_at=change.recorded_at,
                created_at=change.recorded_at,
                payload=event_payload(number, change.task_id, change.recorded_at),
                request_id=change.request_id,
                correlation_id=change.correlation_id,
            )
        )
        if subscription.heartbeat_period:
            subscription.heartbeat_due_at = change.recorded_at + dt.timedelta(
                seconds=subscription.heartbeat_period
            )
        count += 1
    if count:
        session.info[ENQUEUED] = True
    return count


def event_payload(number: int, task_id: str, at: dt.datetime) -> dict[str, Any]:
    """What a notification carries: its number, when, and the Task's id. Nothing else."""
    return {
        "type": "event-notification",
        "eventNumber": number,
        "timestamp": at.isoformat(),
        "focus": f"Task/{task_id}",
    }


def enqueue_status(
    session: AsyncSession, subscription_id: str, kind: str, now: dt.datetime
) -> Delivery:
    """A handshake or heartbeat for one subscription (no referral: ordered on its own)."""
    delivery = Delivery(
        id=str(uuid.uuid4()),
        destination_id=subscription_id,
        referral_id=None,
        case_event_id=None,
        event_type=kind,
        event_seq=0,
        state="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        payload={"type": "handshake" if kind == HANDSHAKE else "heartbeat"},
    )
    session.add(delivery)
    session.info[ENQUEUED] = True
    return delivery


async def enqueue_heartbeats(session: AsyncSession, now: dt.datetime) -> int:
    """A heartbeat for each active subscription whose period passed without a notification."""
    due = await session.scalars(
        select(TopicSubscription)
        .join(Destination, Destination.id == TopicSubscription.id)
        .where(
            Destination.active.is_(True),
            TopicSubscription.status == "active",
            TopicSubscription.heartbeat_due_at <= now,
        )
        .limit(100)
    )
    count = 0
    for subscription in due:
        enqueue_status(session, subscription.id, HEARTBEAT, now)
        assert subscription.heartbeat_period is not None
        subscription.heartbeat_due_at = now + dt.timedelta(seconds=subscription.heartbeat_period)
        count += 1
    return count


async def handshake_settled(
    session: AsyncSession, subscription_id: str, delivered: bool, now: dt.datetime
) -> None:
    """The handshake arrived (the subscription becomes active) or was given up (error)."""
    subscription = await session.get(TopicSubscription, subscription_id)
    if subscription is None or subscription.status not in ("requested", "error"):
        return
    subscription.status = "active" if delivered else "error"
    subscription.updated_at = now
    if delivered and subscription.heartbeat_period:
        subscription.heartbeat_due_at = now + dt.timedelta(seconds=subscription.heartbeat_period)
