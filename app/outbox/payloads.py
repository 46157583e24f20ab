"""The thin webhook bodies worklists and admins receive, fixed when the event happens.

Payloads carry ids, states, times and links, never names, NHS numbers or free text (DESIGN §8).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.fhir.task import instant

# Operational events: sent to admins' subscriptions, never about one patient.
DEAD_LETTERED = "delivery.dead_lettered"
SUBSCRIPTION_DISABLED = "subscription.disabled"
OPERATIONAL_EVENTS = frozenset({DEAD_LETTERED, SUBSCRIPTION_DISABLED})


def case_payload(
    *,
    event_type: str,
    event_id: str,
    event_seq: int,
    referral_id: str,
    case_id: str,
    service_id: str,
    state: str,
    business_status: str,
    occurred_at: dt.datetime,
    recorded_at: dt.datetime,
) -> dict[str, Any]:
    """A change to a case, as a worklist sees it. Links are relative to the bridge's base URL."""
    return {
        "type": event_type,
        "timestamp": instant(recorded_at),
        "data": {
            "event_id": event_id,
            "sequence": event_seq,
            "referral_id": referral_id,
            "case_id": case_id,
            "service": service_id,
            "state": state,
            "business_status": business_status,
            "occurred_at": instant(occurred_at),
            "links": {
                "referral": f"/fhir/ServiceRequest/{referral_id}",
                "task": f"/fhir/Task/{case_id}",
                "case": f"/api/v1/cases/{case_id}",
            },
        },
    }


def operational_payload(event_type: str, now: dt.datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": event_type, "timestamp": instant(now), "data": data}
