"""Standard Webhooks: secrets and signatures; sending a payload the outbox fixed
(app.outbox.payloads)."""

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

SECRET_PREFIX = "whsec_"  # noqa: S105  (a prefix, not a secret)

# Sent at once to test a subscription (never queued, so not an outbox event).
PING = "ping"


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


def with_base_url(payload: dict[str, Any], base_url: str | None) -> dict[str, Any]:
    """The payload with absolute links when the bridge knows its public address."""
    links = payload.get("data", {}).get("links")
    if not base_url or not isinstance(links, dict):
        return payload
    base = base_url.rstrip("/")
    data = {**payload["data"], "links": {name: base + path for name, path in links.items()}}
    return {**payload, "data": data}
