"""FHIR Task: where a referral stands, materialised from its case."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.openapi.models import Example
from fastapi.responses import Response

from app.audit import trail
from app.cases import resources, service
from app.cases.events import CaseEventIn
from app.cases.schemas import CaseOut, RecordedEvent, TransitionRefusedDoc
from app.dependencies import AppSettings, Now, ReadSession, WriteSession
from app.errors import (
    PROBLEM_MEDIA_TYPE,
    BadRequest,
    api_error_responses,
    fhir_error_responses,
)
from app.fhir.http import fhir_base, fhir_resource_response
from app.fhir.responses import FHIRResponse, etag
from app.fhir.search import check_parameters, searchset
from app.fhir.task import task_resource
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/fhir", tags=["FHIR tasks"])


def event_context(request: Request, principal: Principal) -> service.EventContext:
    """Who caused a change and the request's ids, kept with the event and its deliveries."""
    return service.EventContext(
        client_id=principal.client_id,
        request_id=request.state.request_id,
        correlation_id=request.state.correlation_id,
    )


@router.get(
    "/Task/{task_id}",
    response_class=FHIRResponse,
    summary="Read a referral's Task",
    description="The Task whose status and businessStatus show where the referral stands.",
    operation_id="readTask",
    responses={
        200: fhir_resource_response("The Task", "Task"),
        **fhir_error_responses(401, 403, 404, 410),
    },
)
async def read_task(
    task_id: str,
    session: ReadSession,
    principal: Annotated[Principal, Depends(require(Operation.TASK_READ, writes=False))],
) -> Response:
    view = await service.read_task(session, principal, task_id)
    return FHIRResponse(task_resource(view), headers={"ETag": etag(view.version_id)})


@router.get(
    "/Task",
    response_class=FHIRResponse,
    summary="Find a referral's Task",
    description="Search Tasks by focus (ServiceRequest/{id}, comma for several).",
    operation_id="searchTask",
    responses={
        200: fhir_resource_response("searchset Bundle", "Bundle"),
        **fhir_error_responses(400, 401, 403),
    },
)
async def search_tasks(
    request: Request,
    session: ReadSession,
    settings: AppSettings,
    principal: Annotated[Principal, Depends(require(Operation.TASK_READ, writes=False))],
    focus: Annotated[str | None, Query(description="ServiceRequest/{id}")] = None,
) -> Response:
    check_parameters(request.query_params, frozenset({"focus"}))
    if not focus:
        raise BadRequest(
            "Search Tasks by focus=ServiceRequest/{id}", issue_code="required", expression="focus"
        )
    referral_ids = [value.removeprefix("ServiceRequest/") for value in focus.split(",")]
    views = await service.tasks_for_referrals(session, principal, referral_ids[:100])
    return FHIRResponse(
        searchset(
            fhir_base(request, settings),
            "Task",
            list(request.query_params.multi_items()),
            [task_resource(view) for view in views],
            len(views),
            None,
        )
    )


# --- the resources a case produces: Appointment, Observation, QuestionnaireResponse -----------
# (social prescriptions are ServiceRequests, served beside the referrals)

_CASE_RESOURCES = {
    "Appointment": "an appointment of a social prescribing case (booked, fulfilled, noshow, "
    "cancelled)",
    "Observation": "a SWEMWBS score (SNOMED CT 718466001): raw total as the value, the metric "
    "score and time point as components",
    "QuestionnaireResponse": "the seven SWEMWBS answers a score was derived from",
}


def _register_case_resource(resource_type: str, what: str) -> None:
    async def read(
        resource_id: str,
        session: ReadSession,
        principal: Annotated[Principal, Depends(require(Operation.REFERRAL_READ, writes=False))],
    ) -> Response:
        resource, version = await resources.read_or_404(
            session, principal, resource_type, resource_id
        )
        return FHIRResponse(resource, headers={"ETag": etag(version)})

    async def search(
        request: Request,
        session: ReadSession,
        settings: AppSettings,
        principal: Annotated[Principal, Depends(require(Operation.REFERRAL_READ, writes=False))],
        based_on: Annotated[
            str | None, Query(alias="based-on", description="ServiceRequest/{referral id}")
        ] = None,
        patient: Annotated[
            str | None,
            Query(description="The patient's NHS number (system|value or value)"),
        ] = None,
        count: Annotated[
            int | None, Query(alias="_count", ge=0, description="page size (max 100)")
        ] = None,
    ) -> Response:
        query = list(request.query_params.multi_items())
        found, total, cursor = await resources.search(
            session, principal, resource_type, dict(query)
        )
        return FHIRResponse(
            searchset(fhir_base(request, settings), resource_type, query, found, total, cursor)
        )

    router.add_api_route(
        f"/{resource_type}/{{resource_id}}",
        read,
        methods=["GET"],
        response_class=FHIRResponse,
        summary=f"Read {'an' if resource_type[0] in 'AO' else 'a'} {resource_type}",
        description=f"One {resource_type}: {what}. ETag and meta.versionId give its version.",
        operation_id=f"read{resource_type}",
        responses={
            200: fhir_resource_response(f"The {resource_type}", resource_type),
            **fhir_error_responses(401, 403, 404),
        },
    )
    router.add_api_route(
        f"/{resource_type}",
        search,
        methods=["GET"],
        response_class=FHIRResponse,
        summary=f"Search {resource_type} resources",
        description=(
            f"Find {what} by based-on=ServiceRequest/{{referral id}} and by patient "
            "(also patient:identifier and patient.identifier: the NHS number), with _id, _count "
            "and next links; in the order they happened."
        ),
        operation_id=f"search{resource_type}",
        responses={
            200: fhir_resource_response("searchset Bundle", "Bundle"),
            **fhir_error_responses(400, 401, 403),
        },
    )


for _type, _what in _CASE_RESOURCES.items():
    _register_case_resource(_type, _what)

# --- /api/v1/cases -------------------------------------------------------------------------

api_router = APIRouter(prefix="/api/v1/cases", tags=["cases"])

_EVENT_EXAMPLES: dict[str, Example] = {
    "case.accepted": {
        "summary": "Registered, with the advisor who will work with the person",
        "value": {"type": "case.accepted", "team": "Halton hub", "advisor": "A. Advisor"},
    },
    "contact.attempted": {
        "summary": "A call that was not answered",
        "value": {
            "type": "contact.attempted",
            "outcome": "no-answer",
            "method": "telephone",
            "occurred_at": "2026-11-24T10:15:00Z",
            "idempotency_key": "contact-2026-11-24-1015",
        },
    },
    "appointment.booked": {
        "summary": "A face-to-face appointment",
        "value": {
            "type": "appointment.booked",
            "appointment_id": "AP-1",
            "start": "2026-11-28T14:00:00Z",
            "appointment_type": "face-to-face",
            "duration_minutes": 60,
        },
    },
    "appointment.attended": {
        "summary": "The appointment happened",
        "value": {"type": "appointment.attended", "appointment_id": "AP-1", "duration_minutes": 50},
    },
    "prescription.created": {
        "summary": "A social prescription co-produced with the person",
        "value": {
            "type": "prescription.created",
            "prescription_id": "RX-1",
            "category": "benefits-money",
            "provider": "Citizens Advice Halton",
            "activity": "Benefits check and debt advice",
            "status": "active",
        },
    },
    "outcome.recorded": {
        "summary": "SWEMWBS at the start of support",
        "value": {"type": "outcome.recorded", "stage": "start", "items": [3, 2, 2, 3, 3, 2, 3]},
    },
    "case.completed": {
        "summary": "Support finished, needs met",
        "value": {"type": "case.completed", "reason": "needs-met"},
    },
    "case.discharged": {
        "summary": "Discharged: could not be contacted",
        "value": {"type": "case.discharged", "reason": "unable-to-contact"},
    },
}


@api_router.post(
    "/{case_id}/events",
    status_code=201,
    response_model=RecordedEvent,
    summary="Record what happened on a case",
    description=(
        "Advisors (and platform clients) record contact attempts, appointments, social "
        "prescriptions, SWEMWBS scores, demographics, holds and closure. Each event type has its "
        "own body (chosen by `type`); unknown fields are refused. `occurred_at` may be in the "
        "past (recording late is normal) but not more than 5 minutes ahead. A repeat of an "
        "`idempotency_key` answers 200 with the event already recorded. A change the case's "
        "state does not allow answers 409 with `current_state` and `allowed_events`. The "
        "referrer's clinical system receives the updated Task and resources."
    ),
    operation_id="recordCaseEvent",
    responses={
        200: {
            "description": "A repeat of an idempotency key: the event already recorded",
            "model": RecordedEvent,
        },
        **api_error_responses(401, 403, 404, 422),
        409: {
            "description": "The case's state does not allow this event, a record it names is "
            "closed, or the idempotency key was used for another event",
            "model": TransitionRefusedDoc,
            "content": {PROBLEM_MEDIA_TYPE: {}},
        },
    },
)
async def record_case_event(
    case_id: str,
    event: Annotated[CaseEventIn, Body(openapi_examples=_EVENT_EXAMPLES)],
    request: Request,
    response: Response,
    session: WriteSession,
    now: Now,
    principal: Annotated[Principal, Depends(require(Operation.CASE_EVENT_RECORD, writes=True))],
) -> RecordedEvent:
    recorded, case, applied = await service.record_event(
        session, principal, case_id, event, event_context(request, principal), now
    )
    if not applied:
        response.status_code = 200
        trail.set_status(200)  # an idempotent repeat: recorded as what it answered
    return RecordedEvent(
        event=service.event_out(recorded),
        case_id=case.id,
        state=case.state,
        business_status=case.business_status,
        task_status=case.task_status,
        version=case.version_id,
        applied=applied,
    )


@api_router.get(
    "/{case_id}",
    response_model=CaseOut,
    summary="Read a case",
    description=(
        "The case with its state, the events in the order they happened, the event types it "
        "accepts now, and the ids of its FHIR resources."
    ),
    operation_id="readCase",
    responses=api_error_responses(401, 403, 404),
)
async def read_case(
    case_id: str,
    session: ReadSession,
    principal: Annotated[Principal, Depends(require(Operation.CASE_READ, writes=False))],
) -> CaseOut:
    return await service.case_detail(session, principal, case_id)
