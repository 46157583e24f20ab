"""The probes and the metrics: GET /healthz, /readyz and /metrics (no key; app.security.policy)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.config import Settings
from app.db import Database
from app.delivery.dispatcher import Dispatcher
from app.operations import metrics
from app.operations.readiness import CHECK_TIMEOUT, readiness
from app.operations.schemas import NOT_READY_EXAMPLE, READY_EXAMPLE, Liveness, Readiness

log = logging.getLogger("spbridge.operations")

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Liveness,
    summary="Liveness",
    description="Answers while the process is alive; no key needed. It touches nothing else: "
    "a database outage must not get a healthy process restarted (that is /readyz's job).",
    operation_id="healthz",
)
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    description=(
        "200 when this process can do its work: the database answers, its schema is at the "
        "revision this code needs, and the dispatcher runs if this process is meant to run it. "
        "Otherwise 503, naming each check that failed. No key needed; nothing is cached."
    ),
    operation_id="readyz",
    responses={
        200: {"content": {"application/json": {"example": READY_EXAMPLE}}},
        503: {
            "model": Readiness,
            "description": "Not ready: the failed checks say why",
            "content": {"application/json": {"example": NOT_READY_EXAMPLE}},
        },
    },
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    settings: Settings = state.settings
    database: Database = state.database
    dispatcher: Dispatcher | None = getattr(state, "dispatcher", None)
    result = await readiness(database, settings, dispatcher)
    return JSONResponse(
        result.model_dump(mode="json"),
        status_code=200 if result.status == "ready" else 503,
        headers={"Cache-Control": "no-store"},
    )


_METRICS_EXAMPLE = """\
# HELP spbridge_http_requests_total HTTP requests answered by this process, by method, route \
template and status
# TYPE spbridge_http_requests_total counter
spbridge_http_requests_total{method="POST",route="/fhir/ServiceRequest",status="201"} 42.0
# HELP spbridge_delivery_oldest_pending_age_seconds Age of the oldest delivery not yet \
delivered (pending or in_flight); 0 when none
# TYPE spbridge_delivery_oldest_pending_age_seconds gauge
spbridge_delivery_oldest_pending_age_seconds 3.2
"""


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    description=(
        "Metrics in the Prometheus text format: this process's requests by route template and "
        "status with latency histograms; from the database at scrape time, deliveries by state "
        "and kind of destination, queue depth, the age of the oldest pending delivery, dead "
        "letters, open circuits and case events by type. No key needed, so it holds no patient "
        "data and no identifiers; keep it off the public internet (docs/DEPLOYMENT.md)."
    ),
    operation_id="metrics",
    responses={
        200: {
            "description": "The metrics",
            "content": {"text/plain": {"schema": {"type": "string"}, "example": _METRICS_EXAMPLE}},
        }
    },
)
async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    database: Database = state.database
    figures: metrics.DatabaseFigures | None = None
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with database.read_sessions() as session:
                figures = await metrics.database_figures(session)
    except Exception as exc:  # the process's own metrics are still worth having
        log.warning("metrics: the database did not answer", extra={"error": type(exc).__name__})
    dispatcher: Dispatcher | None = getattr(state, "dispatcher", None)
    running = (dispatcher is not None and dispatcher.running) if settings.run_dispatcher else None
    body = metrics.render(state.request_metrics, figures, running)
    return Response(body, media_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"})
