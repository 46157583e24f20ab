"""Audit completeness, checked on every request the suite makes through the test client.

Which routes touch patient data is written out here by hand (by the operation each route checks,
plus the two routes without a key that do), independently of the app's own table
(app.audit.trail.AUDITED_ROUTES). Every request to such a route must leave exactly one audit
record with the request's id, method, route and status; every other request none.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit.models import AuditRecord
from app.security.policy import RouteKey, route_rules
from app.security.roles import Operation

PATIENT_DATA_OPERATIONS = frozenset(
    {
        Operation.REFERRAL_CREATE,
        Operation.REFERRAL_UPDATE,
        Operation.REFERRAL_READ,
        Operation.TASK_READ,
        Operation.CASE_READ,
        Operation.CASE_EVENT_RECORD,
        Operation.WORKLIST_READ,
        Operation.JOURNEY_LINK,
        Operation.DELIVERY_READ,
        Operation.DELIVERY_REPLAY,
        Operation.AUDIT_READ,
    }
)
# Routes without an API key that still reach patient data.
PATIENT_DATA_PUBLIC_ROUTES = frozenset(
    {
        ("GET", "/journey/{referral_id}"),
        ("POST", "/api/v1/adapters/{adapter}/{service_id}/webhook"),
    }
)
# Routes under a patient-data operation that show only aggregate counts.
AGGREGATE_ROUTES = frozenset({("GET", "/api/v1/deliveries/stats")})


def patient_data_routes(app: Any) -> set[RouteKey]:
    # Not strict: some tests add a route of their own, without a rule (and without patient data).
    rules = route_rules(app, strict=False)
    return {
        key
        for key, rule in rules.items()
        if (rule in PATIENT_DATA_OPERATIONS or key in PATIENT_DATA_PUBLIC_ROUTES)
        and key not in AGGREGATE_ROUTES
    }


class RequestRecorder:
    """An ASGI wrapper that notes each request's id, method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[tuple[str, str, str | None, int | None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None
        request_id = ""

        async def noting(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-request-id":
                        request_id = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            route = getattr(scope.get("route"), "path", None)
            self.requests.append((request_id, scope["method"], route, status))


async def check_audit_completeness(app: Any, recorder: RequestRecorder) -> None:
    """Exactly one record for each patient-data request the recorder saw, none for the rest."""
    if not recorder.requests:
        return
    audited = patient_data_routes(app)
    expected = Counter(
        (request_id, method, route, status)
        for request_id, method, route, status in recorder.requests
        if route is not None and (method, route) in audited
    )
    request_ids = {request_id for request_id, *_ in recorder.requests}
    async with app.state.database.read_sessions() as session:
        rows = await session.execute(
            select(
                AuditRecord.request_id, AuditRecord.method, AuditRecord.route, AuditRecord.status
            ).where(AuditRecord.request_id.in_(request_ids), AuditRecord.source == "api")
        )
        found = Counter(tuple(row) for row in rows)
    missing = expected - found
    extra = found - expected
    assert not missing and not extra, (
        f"audit trail incomplete: requests without their one record {sorted(missing.items())}; "
        f"records without their request {sorted(extra.items())}"
    )
