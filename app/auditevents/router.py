"""`GET /fhir/AuditEvent`: admins read the audit trail. There is no route that changes it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from app.audit import trail
from app.auditevents import service
from app.dependencies import AppSettings, ReadSession
from app.errors import fhir_error_responses
from app.fhir.http import check_format, fhir_base, fhir_resource_response
from app.fhir.responses import FHIRResponse
from app.fhir.search import searchset
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/fhir", tags=["FHIR audit"], dependencies=[Depends(check_format)])

Auditor = Annotated[Principal, Depends(require(Operation.AUDIT_READ, writes=False))]


@router.get(
    "/AuditEvent",
    response_class=FHIRResponse,
    summary="Search the audit trail",
    description=(
        "Every read and write of patient data leaves one AuditEvent: who (the API client, its "
        "role and organisation), what (action C/R/U/D/E, the RESTful interaction as subtype, the "
        "resource), when, the outcome, the request's X-Request-ID and X-Correlation-ID, and each "
        "patient reached, by keyed pseudonym (never the NHS number). Newest first. Filter by "
        "patient.identifier (an NHS number: matched through its pseudonym), agent (API client "
        "id), date (prefixes ge, gt, le, lt, eq at the precision given; repeatable), action, "
        "outcome, subtype, entity (Type/id; ServiceRequest/{id} also finds every access through "
        "that referral) and _id. An organisation's admin sees what its own clients did and every "
        "access to the referrals it sent or receives. Searching the trail is itself recorded."
    ),
    operation_id="searchAuditEvent",
    responses={
        200: fhir_resource_response("searchset Bundle of AuditEvent", "Bundle"),
        **fhir_error_responses(400, 401, 403, 406),
    },
)
async def search_audit_events(
    request: Request,
    session: ReadSession,
    settings: AppSettings,
    principal: Auditor,
    patient_identifier: Annotated[
        str | None,
        Query(alias="patient.identifier", description="NHS number (system|value or value)"),
    ] = None,
    agent: Annotated[str | None, Query(description="API client id (comma: any of)")] = None,
    date: Annotated[list[str] | None, Query(description="e.g. ge2026-12-01 (repeatable)")] = None,
    action: Annotated[str | None, Query(description="C, R, U, D or E (comma: any of)")] = None,
    outcome: Annotated[
        str | None, Query(description="0 success, 4 refused, 8 failed (comma: any of)")
    ] = None,
    count: Annotated[
        int | None, Query(alias="_count", ge=0, description="page size (max 100)")
    ] = None,
) -> Response:
    query = list(request.query_params.multi_items())
    params = {k: v for k, v in query if k != "date"}
    key = await trail.installation_pseudonym_key(request.app.state, session)
    records, total, cursor = await service.search(session, principal, params, date or [], key)
    return FHIRResponse(
        searchset(
            fhir_base(request, settings),
            "AuditEvent",
            query,
            [service.audit_event_resource(held) for held in records],
            total,
            cursor,
        )
    )


@router.get(
    "/AuditEvent/{audit_id}",
    response_class=FHIRResponse,
    summary="Read one audit record",
    description="One AuditEvent, if the caller's organisation may see it (404 otherwise).",
    operation_id="readAuditEvent",
    responses={
        200: fhir_resource_response("The AuditEvent", "AuditEvent"),
        **fhir_error_responses(401, 403, 404, 406),
    },
)
async def read_audit_event(audit_id: str, session: ReadSession, principal: Auditor) -> Response:
    return FHIRResponse(
        service.audit_event_resource(await service.read(session, principal, audit_id))
    )
