"""FHIR Subscription notifications on R4 (Subscriptions R5 Backport IG): the
SubscriptionStatus as a Parameters resource, and the notification Bundle (type ``history``,
the status first, then the focus resources' ids for ``id-only`` content)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
STATUS_PROFILE = f"{BACKPORT}/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE = f"{BACKPORT}/StructureDefinition/backport-subscription-notification-r4"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/StructureDefinition/backport-subscription"
FILTER_CRITERIA_EXTENSION = f"{BACKPORT}/StructureDefinition/backport-filter-criteria"
PAYLOAD_CONTENT_EXTENSION = f"{BACKPORT}/StructureDefinition/backport-payload-content"
HEARTBEAT_EXTENSION = f"{BACKPORT}/StructureDefinition/backport-heartbeat-period"
TIMEOUT_EXTENSION = f"{BACKPORT}/StructureDefinition/backport-timeout"
TOPIC_CANONICAL_EXTENSION = (
    f"{BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)


@dataclass(frozen=True)
class Event:
    """One notification event: its number in the subscription, when, and the focus (Type/id)."""

    number: int
    timestamp: str
    focus: str


def instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_parameters(
    *,
    subscription_url: str,
    topic: str,
    status: str,
    kind: str,
    events_since_start: int,
    events: Sequence[Event] = (),
    content: str = "id-only",
    base: str = "",
) -> dict[str, Any]:
    """The SubscriptionStatus of a notification or of ``$status``, as R4 Parameters."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": subscription_url}},
        {"name": "topic", "valueCanonical": topic},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]
    for event in events:
        part: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": event.timestamp},
        ]
        if content != "empty":
            part.append({"name": "focus", "valueReference": {"reference": f"{base}/{event.focus}"}})
        parameters.append({"name": "notification-event", "part": part})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def notification_bundle(
    *,
    bundle_id: str,
    subscription_url: str,
    topic: str,
    status: str,
    kind: str,
    events_since_start: int,
    events: Sequence[Event],
    content: str,
    base: str,
    now: dt.datetime,
) -> dict[str, Any]:
    """A notification (or the answer of ``$events``): a history Bundle whose first entry is the
    SubscriptionStatus; for ``id-only`` content an entry per focus, its full URL and no
    resource; for ``empty``, nothing else. Never patient data."""
    parameters = status_parameters(
        subscription_url=subscription_url,
        topic=topic,
        status=status,
        kind=kind,
        events_since_start=events_since_start,
        events=events,
        content=content,
        base=base,
    )
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{parameters['id']}",
            "resource": parameters,
            "request": {"method": "GET", "url": f"{subscription_url}/$status"},
            "response": {"status": "200"},
        }
    ]
    if content != "empty":
        seen: set[str] = set()
        for event in events:
            if event.focus in seen:
                continue
            seen.add(event.focus)
            entries.append(
                {
                    "fullUrl": f"{base}/{event.focus}",
                    "request": {"method": "PUT", "url": event.focus},
                    "response": {"status": "200"},
                }
            )
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": instant(now),
        "entry": entries,
    }
