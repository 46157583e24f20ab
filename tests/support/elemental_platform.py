"""A small in-memory Elemental platform that implements adapters/elemental/CONTRACT.md.

End-to-end tests run it under uvicorn on 127.0.0.1 (``serve``) and point the adapter at it::

    platform = FakePlatform(api_key)
    async with serve(make_platform_app(api_key, platform)) as base_url:
        ...
    platform.created  # what it received, with the request headers

It is strict where the contract is (auth, required fields, categories, idempotency, closed
referrals) so that it catches an adapter that drifts from the contract. ``fail_next`` and ``down``
simulate an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import itertools
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from adapters.elemental.mapping import PLATFORM_CATEGORIES

REQUIRED_CLIENT_FIELDS = ("nhs_number",)
REQUIRED_FIELDS = ("external_id", "case_id", "service", "urgency", "referred_at")
URGENCIES = ("standard", "urgent")
_NOT_JSON = object()


@dataclass(frozen=True)
class ReceivedRequest:
    """One request the platform accepted: its headers (lower-case keys) and JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class PlatformReferralRecord:
    id: str
    external_id: str
    body: dict[str, Any]
    status: str = "open"  # open | cancelled | closed


@dataclass
class FakePlatform:
    api_key: str
    referrals: dict[str, PlatformReferralRecord] = field(default_factory=dict)
    created: list[ReceivedRequest] = field(default_factory=list)  # new referrals only
    cancels: list[ReceivedRequest] = field(default_factory=list)  # successful cancels only
    updates: list[ReceivedRequest] = field(default_factory=list)  # successful updates only
    requests: list[ReceivedRequest] = field(default_factory=list)  # every request, even refused
    events: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    _failures: list[tuple[int, str | None]] = field(default_factory=list)
    _replies: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _event_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, n: int = 1, status: int = 503, retry_after: str | None = None) -> None:
        """The next ``n`` requests get ``status`` (with ``Retry-After`` when given)."""
        self._failures.extend([(status, retry_after)] * n)

    def by_external_id(self, external_id: str) -> PlatformReferralRecord | None:
        return next((r for r in self.referrals.values() if r.external_id == external_id), None)

    def close(self, referral_id: str) -> None:
        """The advisor closes the referral on the platform (a later cancel gets 409)."""
        self.referrals[referral_id].status = "closed"

    def add_event(
        self,
        event_type: str,
        referral_id: str,
        data: dict[str, Any] | None = None,
        *,
        timestamp: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Append an event to the feed (and return it, e.g. for ``signed_webhook``)."""
        record = self.referrals.get(referral_id)
        event = {
            "id": f"evt_{next(self._event_ids):06d}",
            "type": event_type,
            "timestamp": (timestamp or dt.datetime.now(dt.UTC)).isoformat(),
            "data": {
                "referral_id": referral_id,
                "external_id": record.external_id if record else None,
                **(data or {}),
            },
        }
        self.events.append(event)
        return event

    def new_referral_id(self) -> str:
        return f"ELM-{next(self._ids):05d}"


def _error(http_status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body = {"error": {"code": code, "message": message, **extra}}
    return JSONResponse(body, status_code=http_status)


def make_platform_app(api_key: str, platform: FakePlatform | None = None) -> Starlette:
    """The fake as an ASGI app; its state is ``app.state.platform`` (or the one passed in)."""
    state = platform if platform is not None else FakePlatform(api_key)

    async def gate(request: Request) -> tuple[Response | None, ReceivedRequest]:
        """Record the request, then outage, auth and JSON checks; a response means refused."""
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = _NOT_JSON
        received = ReceivedRequest(
            request.method,
            request.url.path,
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        state.requests.append(received)
        if state.down:
            return _error(503, "unavailable", "The platform is down"), received
        if state._failures:
            status, retry_after = state._failures.pop(0)
            response = _error(status, "simulated_failure", "Simulated failure")
            if retry_after:
                response.headers["Retry-After"] = retry_after
            return response, received
        supplied = request.headers.get("authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {state.api_key}".encode()):
            return _error(401, "unauthorized", "Missing or wrong API key"), received
        if body is _NOT_JSON:
            return _error(400, "invalid_json", "The body is not JSON"), received
        return None, received

    async def create(request: Request) -> Response:
        refused, received = await gate(request)
        if refused is not None:
            return refused
        body = received.body
        key = request.headers.get("idempotency-key")
        if not key:
            return _error(400, "idempotency_key_required", "Idempotency-Key is required")
        if key in state._replies:
            status, reply = state._replies[key]
            return JSONResponse(reply, status_code=200 if status == 201 else status)
        problem = _invalid_referral(body)
        if problem is not None:
            return _error(422, "validation_failed", f"'{problem}' is missing or invalid")
        existing = state.by_external_id(body["external_id"])
        if existing is not None:
            return _error(
                409,
                "referral_exists",
                "A referral with this external_id exists",
                referral_id=existing.id,
            )
        record = PlatformReferralRecord(state.new_referral_id(), body["external_id"], body)
        state.referrals[record.id] = record
        state.created.append(received)
        reply = _referral_json(record)
        state._replies[key] = (201, reply)
        return JSONResponse(reply, status_code=201)

    async def cancel(request: Request) -> Response:
        refused, received = await gate(request)
        if refused is not None:
            return refused
        body = received.body
        record = state.referrals.get(request.path_params["referral_id"])
        if record is None:
            return _error(404, "not_found", "No such referral")
        if not isinstance(body, dict) or not isinstance(body.get("reason"), str):
            return _error(422, "validation_failed", "'reason' is missing or invalid")
        if record.status != "open":
            return _error(
                409, "referral_closed", "The referral is already closed", status=record.status
            )
        record.status = "cancelled"
        state.cancels.append(received)
        return JSONResponse(_referral_json(record))

    async def update(request: Request) -> Response:
        refused, received = await gate(request)
        if refused is not None:
            return refused
        body = received.body
        record = state.referrals.get(request.path_params["referral_id"])
        if record is None:
            return _error(404, "not_found", "No such referral")
        if not isinstance(body, dict) or body.get("external_id") != record.external_id:
            return _error(422, "validation_failed", "'external_id' is missing or invalid")
        if record.status != "open":
            return _error(
                409, "referral_closed", "The referral is already closed", status=record.status
            )
        client = {**record.body.get("client", {}), **(body.get("client") or {})}
        record.body = {**record.body, **body, "client": client}
        state.updates.append(received)
        return JSONResponse(_referral_json(record))

    async def feed(request: Request) -> Response:
        refused, _ = await gate(request)
        if refused is not None:
            return refused
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return _error(400, "invalid_limit", "limit must be 1 to 100")
        after = request.query_params.get("after")
        start = 0
        if after is not None:
            ids = [e["id"] for e in state.events]
            if after not in ids:
                return _error(400, "invalid_cursor", "Unknown cursor")
            start = ids.index(after) + 1
        page = state.events[start : start + limit]
        return JSONResponse(
            {
                "data": page,
                "next_cursor": page[-1]["id"] if page else None,
                "has_more": start + limit < len(state.events),
            }
        )

    app = Starlette(
        routes=[
            Route("/api/v1/referrals", create, methods=["POST"]),
            Route("/api/v1/referrals/{referral_id}", update, methods=["PATCH"]),
            Route("/api/v1/referrals/{referral_id}/cancel", cancel, methods=["POST"]),
            Route("/api/v1/events", feed, methods=["GET"]),
        ]
    )
    app.state.platform = state
    return app


def _referral_json(record: PlatformReferralRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "external_id": record.external_id,
        "status": record.status,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }


def _invalid_referral(body: Any) -> str | None:
    """The first field the contract requires that is missing or wrong, or None."""
    if not isinstance(body, dict):
        return "body"
    for name in REQUIRED_FIELDS:
        if not isinstance(body.get(name), str) or not body[name]:
            return name
    if body["urgency"] not in URGENCIES:
        return "urgency"
    client = body.get("client")
    if not isinstance(client, dict):
        return "client"
    for name in REQUIRED_CLIENT_FIELDS:
        if not isinstance(client.get(name), str) or not client[name]:
            return f"client.{name}"
    categories = body.get("categories")
    if (
        not isinstance(categories, list)
        or not categories
        or any(c not in PLATFORM_CATEGORIES for c in categories)
    ):
        return "categories"
    if not isinstance(body.get("referrer"), dict):
        return "referrer"
    return None


def signed_webhook(
    secret: str,
    event: dict[str, Any],
    *,
    timestamp: dt.datetime | None = None,
    msg_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A webhook body and its Standard Webhooks headers, as Elemental would send them."""
    text = json.dumps(event)
    message_id = msg_id or str(event.get("id") or "msg_unknown")
    when = timestamp or dt.datetime.now(dt.UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, when, text),
    }
    return text.encode(), headers


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # surfaces why it could not start
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
