"""X-Request-ID and X-Correlation-ID: accepted, generated when absent, echoed (DESIGN §7)."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.fhir import nhs_number

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)

# Ids travel in headers, logs and deliveries: keep them to a safe token alphabet and length.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def valid_id(value: str) -> bool:
    # An NHS number sent as an id would be logged and passed on with every delivery.
    return bool(_SAFE_ID.match(value)) and not nhs_number.is_valid(value)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = correlation_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1").strip()
            elif name == b"x-correlation-id":
                correlation_id = value.decode("latin-1").strip()
        # An id we cannot pass on safely is replaced rather than refused: tracing must not
        # make a referral fail. The replacement is echoed so the caller can see it.
        if not request_id or not valid_id(request_id):
            request_id = str(uuid.uuid4())
        if not correlation_id or not valid_id(correlation_id):
            correlation_id = request_id
        request_token = request_id_var.set(request_id)
        correlation_token = correlation_id_var.set(correlation_id)
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        scope["state"]["correlation_id"] = correlation_id

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers["X-Correlation-ID"] = correlation_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            request_id_var.reset(request_token)
            correlation_id_var.reset(correlation_token)
