"""Standard Webhooks: secrets, signatures and the thin payloads worklists receive.

Payloads carry ids, states, times and links, never names, NHS numbers or free text (DESIGN §8).
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from adapters.base import Outcome, check_response, send
from app.db import utcnow
from app.fhir.task import instant

SECRET_PREFIX = "whsec_"  # noqa: S105  (a prefix, not a secret)

# Operational events: sent to admins' subscriptions, never about one patient.
DEAD_LETTERED = "delivery.dead_lettered"
SUBSCRIPTION_DISABLED = "subscription.disabled"
PING = "ping"
OPERATIONAL_EVENTS = frozenset({DEAD_LETTERED, SUBSCRIPTION_DISABLED})


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def body_of(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


def headers(
    message_id: str, body: bytes, signing_secrets: Sequence[str], now: dt.datetime
) -> dict[str, str]:
    """The three Standard Webhooks headers; during a rotation every live secret signs."""
    text = body.decode()
    signature = " ".join(Webhook(secret).sign(message_id, now, text) for secret in signing_secrets)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


async def post_signed(
    http: httpx.AsyncClient,
    url: str,
    message_id: str,
    body: bytes,
    signing_secrets: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109  (httpx's per-request timeout, as adapters.base.send)
    what: str,
) -> Outcome:
    """POST one signed notification; adapter errors (retryable or not) as for any delivery."""
    # Wall-clock time: receivers check the timestamp against their own clocks.
    signed = headers(message_id, body, signing_secrets, utcnow())
    response = await send(
        http, "POST", url, timeout=timeout, what=what, content=body, headers=signed
    )
    return check_response(response, what)


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


def with_base_url(payload: dict[str, Any], base_url: str | None) -> dict[str, Any]:
    """The payload with absolute links when the bridge knows its public address."""
    links = payload.get("data", {}).get("links")
    if not base_url or not isinstance(links, dict):
        return payload
    base = base_url.rstrip("/")
    data = {**payload["data"], "links": {name: base + path for name, path in links.items()}}
    return {**payload, "data": data}
