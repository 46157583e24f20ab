"""FHIR Subscriptions (R5 Backport IG on R4): create, read, list, delete, ``$status`` and
``$events``. A subscription's channel is a destination of kind ``rest-hook`` (the outbox sends
its handshake, heartbeats and notifications); what it asked for is a TopicSubscription
(app.outbox.models). Organisation-scoped like every read. Never commits."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import utcnow
from app.errors import BusinessRuleViolation, Issue, NotFound
from app.fhir import notifications as n
from app.outbound import check_outbound_url
from app.outbox import topics
from app.outbox.models import Delivery, Destination, DestinationKind, TopicSubscription
from app.security import scope
from app.security.auth import Principal

CONTENTS = ("empty", "id-only")
PAYLOAD_TYPES = ("application/fhir+json", "application/json")
MIN_HEARTBEAT_SECONDS = 10
MAX_EVENTS = 100
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,1024}")
# Headers the bridge sets itself on every notification.
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "x-request-id"})
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Asked:
    """What a Subscription resource asks for, checked."""

    endpoint: str
    filters: dict[str, str]
    content: str
    headers: list[tuple[str, str]]
    heartbeat_period: int | None
    end: dt.datetime | None


def _fail(where: str, text: str, code: str = "value") -> BusinessRuleViolation:
    return BusinessRuleViolation(
        f"{where}: {text}", issues=[Issue(code, f"{where}: {text}", where)]
    )


def _extensions(node: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    return [e for e in node.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def _filters(resource: dict[str, Any]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for index, extension in enumerate(
        _extensions(resource.get("_criteria"), n.FILTER_CRITERIA_EXTENSION)
    ):
        where = f"Subscription._criteria.extension[{index}].valueString"
        value = extension.get("valueString")
        if not isinstance(value, str) or "?" not in value:
            raise _fail(where, "a filter is written Task?<name>=<value>[&...]")
        kind, _, query = value.partition("?")
        if kind not in ("Task", ""):
            raise _fail(where, "the topic's filters are on Task", "not-supported")
        for name, wanted in parse_qsl(query, keep_blank_values=True):
            if name not in topics.FILTERS:
                raise _fail(
                    where,
                    f"the topic filters by {', '.join(topics.FILTERS)} only",
                    "not-supported",
                )
            if not wanted or len(wanted) > 255:
                raise _fail(where, f"the filter {name} needs a value")
            filters[name] = wanted
    return filters


def _headers(channel: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for index, header in enumerate(channel.get("header") or []):
        where = f"Subscription.channel.header[{index}]"
        name, colon, value = str(header).partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name.strip()):
            raise _fail(where, "a header is written Name: value")
        if not _HEADER_VALUE.fullmatch(value.strip()):
            raise _fail(where, "a header's value is visible ASCII text")
        if name.strip().lower() in _OWN_HEADERS:
            raise _fail(where, "this header is set by the bridge", "not-supported")
        out.append((name.strip(), value.strip()))
    return out


def read_subscription(resource: dict[str, Any]) -> Asked:
    """What a valid R4 Subscription with the backport profile asks for, or 422 naming the
    element: the topic's canonical URL in criteria, a rest-hook channel, FHIR JSON, content
    empty or id-only (full-resource would carry patient data: refused)."""
    criteria = resource.get("criteria")
    if criteria != topics.TOPIC_URL:
        raise _fail(
            "Subscription.criteria",
            f"must be the canonical URL of a topic served here ({topics.TOPIC_URL})",
            "not-supported",
        )
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise _fail("Subscription.channel.type", "only rest-hook is supported", "not-supported")
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise _fail("Subscription.channel.endpoint", "is required for rest-hook", "required")
    if channel.get("payload") not in PAYLOAD_TYPES:
        raise _fail(
            "Subscription.channel.payload",
            f"must be {PAYLOAD_TYPES[0]} (notifications are FHIR Bundles)",
            "not-supported",
        )
    contents = [
        e.get("valueCode")
        for e in _extensions(channel.get("_payload"), n.PAYLOAD_CONTENT_EXTENSION)
    ]
    content = contents[0] if contents else "empty"
    if content not in CONTENTS:
        raise _fail(
            "Subscription.channel._payload",
            "payload content must be empty or id-only: notifications never carry patient data",
            "not-supported",
        )
    heartbeat = None
    beats = _extensions(channel, n.HEARTBEAT_EXTENSION)
    if beats:
        value = beats[0].get("valueUnsignedInt")
        if not isinstance(value, int) or value < MIN_HEARTBEAT_SECONDS:
            raise _fail(
                "Subscription.channel.extension",
                f"the heartbeat period is at least {MIN_HEARTBEAT_SECONDS} seconds",
            )
        heartbeat = value
    end = None
    if isinstance(resource.get("end"), str):
        end = dt.datetime.fromisoformat(resource["end"].replace("Z", "+00:00"))
        if end.tzinfo is None:
            end = end.replace(tzinfo=dt.UTC)
    return Asked(endpoint, _filters(resource), str(content), _headers(channel), heartbeat, end)


def _stored(resource: dict[str, Any]) -> dict[str, Any]:
    """The Subscription as kept: without id and meta (but its profile), header values
    redacted (they may hold credentials: they are kept on the channel, never read back)."""
    kept = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    meta = resource.get("meta")
    if isinstance(meta, dict) and meta.get("profile"):
        kept["meta"] = {"profile": meta["profile"]}
    channel = dict(kept.get("channel") or {})
    if channel.get("header"):
        channel["header"] = [
            f"{str(h).partition(':')[0].strip()}: {REDACTED}" for h in channel["header"]
        ]
    kept["channel"] = channel
    return kept


async def create(
    session: AsyncSession,
    principal: Principal,
    resource: dict[str, Any],
    settings: Settings,
) -> TopicSubscription:
    """A new subscription (status requested) and its handshake, queued: it becomes active once
    the handshake is delivered (app.outbox.topics.handshake_settled)."""
    asked = read_subscription(resource)
    await check_outbound_url(asked.endpoint, settings, field="Subscription.channel.endpoint")
    now = utcnow()
    destination = Destination(
        id=str(uuid.uuid4()),
        kind=DestinationKind.REST_HOOK,
        adapter="rest-hook",
        organisation=scope.acting_for(principal),
        config={"headers": [list(h) for h in asked.headers]},
        event_types=[],
        active=True,
        url=asked.endpoint,
        description=resource.get("reason") if isinstance(resource.get("reason"), str) else None,
        owner_client_id=principal.client_id,
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(destination)
    await session.flush()
    subscription = TopicSubscription(
        id=destination.id,
        topic=topics.TOPIC_URL,
        filters=asked.filters,
        content=asked.content,
        status="requested",
        events_since_start=0,
        heartbeat_period=asked.heartbeat_period,
        end=asked.end,
        resource=_stored(resource),
        created_at=now,
        updated_at=now,
    )
    session.add(subscription)
    await session.flush()
    topics.enqueue_status(session, destination.id, topics.HANDSHAKE, now)
    return subscription


def _visible(principal: Principal) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [
        Destination.kind == DestinationKind.REST_HOOK,
        Destination.deleted_at.is_(None),
    ]
    owned = scope.owned_by(principal, Destination.organisation)
    if owned is not None:
        conditions.append(owned)
    return conditions


async def get(
    session: AsyncSession, principal: Principal, subscription_id: str, *, lock: bool = False
) -> TopicSubscription:
    """The subscription if the caller's organisation owns it (404 otherwise)."""
    query = (
        select(TopicSubscription)
        .join(Destination, Destination.id == TopicSubscription.id)
        .where(TopicSubscription.id == subscription_id, *_visible(principal))
    )
    if lock:
        query = query.with_for_update()
    found = await session.scalar(query)
    if found is None:
        raise NotFound("No such Subscription")
    return found


async def list_visible(session: AsyncSession, principal: Principal) -> list[TopicSubscription]:
    rows = await session.scalars(
        select(TopicSubscription)
        .join(Destination, Destination.id == TopicSubscription.id)
        .where(*_visible(principal))
        .order_by(TopicSubscription.created_at)
    )
    return list(rows)


async def delete(session: AsyncSession, principal: Principal, subscription_id: str) -> None:
    """Off: nothing more is sent (what was queued is cancelled); its history stays."""
    subscription = await get(session, principal, subscription_id, lock=True)
    destination = await session.get(Destination, subscription.id)
    assert destination is not None
    now = utcnow()
    destination.active = False
    destination.deleted_at = now
    destination.disabled_reason = "deleted"
    destination.updated_at = now
    subscription.status = "off"
    subscription.updated_at = now
    await session.execute(
        update(Delivery)
        .where(Delivery.destination_id == subscription.id, Delivery.state == "pending")
        .values(state="cancelled", last_error="subscription deleted", updated_at=now)
    )


def resource_of(subscription: TopicSubscription, base: str) -> dict[str, Any]:
    """The Subscription as read back: as sent (header values redacted), with its id and its
    status now."""
    return {
        "resourceType": "Subscription",
        "id": subscription.id,
        **subscription.resource,
        "status": subscription.status,
    }


async def events(
    session: AsyncSession,
    subscription: TopicSubscription,
    since: int | None,
    until: int | None,
) -> list[n.Event]:
    """The subscription's notification events numbered from ``since`` to ``until`` (both
    included), oldest first, at most MAX_EVENTS: for a receiver that missed some."""
    query = select(Delivery.payload).where(
        Delivery.destination_id == subscription.id,
        Delivery.referral_id.is_not(None),
        Delivery.event_seq >= (since or 1),
    )
    if until is not None:
        query = query.where(Delivery.event_seq <= until)
    rows = await session.scalars(query.order_by(Delivery.event_seq).limit(MAX_EVENTS))
    out = []
    for payload in rows:
        if not payload:
            continue
        out.append(
            n.Event(
                int(payload["eventNumber"]),
                n.instant(dt.datetime.fromisoformat(str(payload["timestamp"]))),
                str(payload["focus"]),
            )
        )
    return out


_R5 = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"


def topic_resource() -> dict[str, Any]:
    """The topic "referral Task changed" on R4: a Basic resource carrying the R5
    SubscriptionTopic's elements as cross-version extensions (R4 has no SubscriptionTopic), its
    canonical URL (what Subscription.criteria names), the trigger and the filters."""
    filters = [
        {
            "url": f"{_R5}.canFilterBy",
            "extension": [
                {"url": "description", "valueMarkdown": description},
                {"url": "resource", "valueUri": "Task"},
                {"url": "filterParameter", "valueString": name},
            ],
        }
        for name, description in topics.FILTERS.items()
    ]
    return {
        "resourceType": "Basic",
        "id": topics.TOPIC_ID,
        "extension": [
            {"url": f"{_R5}.url", "valueUri": topics.TOPIC_URL},
            {"url": f"{_R5}.title", "valueString": "Referral Task changed"},
            {"url": f"{_R5}.status", "valueCode": "active"},
            {
                "url": f"{_R5}.description",
                "valueMarkdown": "A referral's Task changed: every case event (received, "
                "accepted, contact, appointments, prescriptions, outcomes, closed). "
                "Notifications carry the Task's id only.",
            },
            {
                "url": f"{_R5}.resourceTrigger",
                "extension": [
                    {"url": "description", "valueMarkdown": "A Task is created or changes"},
                    {"url": "resource", "valueUri": "Task"},
                    {"url": "supportedInteraction", "valueCode": "create"},
                    {"url": "supportedInteraction", "valueCode": "update"},
                ],
            },
            *filters,
        ],
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]
        },
    }
