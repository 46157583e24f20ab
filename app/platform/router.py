"""Inbound platform webhooks: `POST /api/v1/adapters/{adapter}/{service_id}/webhook`.

No API key: the platform proves itself with the service's signing secret (Standard Webhooks),
and nothing is read from the body before the signature and timestamp are verified.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from adapters.base import InboundRefused
from app.audit import trail
from app.db import utcnow
from app.dependencies import AppSettings, WriteSession
from app.directory.service import service_by_id
from app.errors import BusinessRuleViolation, NotFound, Unauthorized, api_error_responses
from app.fhir.parsing import read_body
from app.platform.service import apply_message, platform_adapter

router = APIRouter(prefix="/api/v1/adapters", tags=["platform webhooks"])


class InboundResult(BaseModel):
    status: str  # applied | duplicate
    events: int


@router.post(
    "/{adapter}/{service_id}/webhook",
    response_model=InboundResult,
    summary="Receive a platform event",
    description="The social prescribing platform serving `service_id` posts its events here, "
    "signed with the service's webhook secret (headers webhook-id, webhook-timestamp, "
    "webhook-signature). Each message is applied once; a repeat answers `duplicate`. A forged, "
    "stale or unsigned message is refused with 401 and changes nothing.",
    operation_id="receivePlatformEvent",
    responses=api_error_responses(401, 404, 409, 413, 422),
)
async def receive_platform_event(
    adapter: str,
    service_id: str,
    request: Request,
    session: WriteSession,
    settings: AppSettings,
) -> InboundResult:
    trail.set_agent(f"platform of service {service_id}"[:200])
    body = await read_body(request, settings.max_body_bytes)
    service = await service_by_id(session, service_id)
    if service is None or service.adapter != adapter:
        raise NotFound("No such platform endpoint")
    platform = await platform_adapter(session, service)
    try:
        message = platform.parse_inbound(body, dict(request.headers), utcnow())
    except InboundRefused as refused:
        if refused.status == 401:
            raise Unauthorized(
                f"The message is not authentic: {refused}",
                headers={"WWW-Authenticate": 'Signature realm="standard-webhooks"'},
            ) from None
        if refused.status == 404:
            raise NotFound("No such platform endpoint") from None
        raise BusinessRuleViolation(str(refused)) from None
    applied = await apply_message(
        session,
        service,
        message,
        channel="webhook",
        request_id=getattr(request.state, "request_id", None),
    )
    return InboundResult(
        status="duplicate" if applied.duplicate else "applied", events=applied.events
    )
