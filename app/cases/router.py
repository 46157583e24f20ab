"""FHIR Task: where a referral stands, materialised from its case."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Body, Depends, Request
from fastapi.openapi.models import Example
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases import search as case_search
from app.cases import served, service
from app.cases.events import CaseEventIn
from app.cases.schemas import CaseOut, RecordedEvent, TransitionRefusedDoc
from app.config import Settings
from app.dependencies import AppSettings, ReadSession, WriteSession, get_now
from app.errors import (
    PROBLEM_MEDIA_TYPE,
    BadRequest,
    NotFound,
    UnsupportedMediaType,
    api_error_responses,
    fhir_error_responses,
    operation_outcome,
)
from app.fhir import parsing
from app.fhir.http import (
    check_format,
    check_format_parameter,
    fhir_base,
    fhir_resource_response,
    read_response,
    strict_handling,
)
from app.fhir.responses import FHIRResponse, etag
from app.fhir.search import search_bundle
from app.fhir.searchparams import openapi_parameters, parse_search
from app.fhir.task import instant
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/fhir", tags=["FHIR tasks"], dependencies=[Depends(check_format)])

Reader = Annotated[Principal, Depends(require(Operation.REFERRAL_READ, writes=False))]
TaskReader = Annotated[Principal, Depends(require(Operation.TASK_READ, writes=False))]
_VERSION_HEADERS = {
    "ETag": {"description": 'The version, as W/"n"', "schema": {"type": "string"}},
    "Last-Modified": {"description": "When it last changed", "schema": {"type": "string"}},
}


def event_context(request: Request, principal: Principal) -> service.EventContext:
    """Who caused a change and the request's ids, kept with the event and its deliveries."""
    return service.EventContext(
        client_id=principal.client_id,
        request_id=request.state.request_id,
        correlation_id=request.state.correlation_id,
    )


def read_responses(resource_type: str, description: str) -> dict[int | str, Any]:
    return {
        200: fhir_resource_response(description, resource_type, headers=_VERSION_HEADERS),
        304: {"description": "Not modified: If-None-Match named the current version"},
        **fhir_error_responses(401, 403, 404, 406, 410),
    }


def search_responses() -> dict[int | str, Any]:
    return {
        200: fhir_resource_response(
            "searchset Bundle (with an OperationOutcome entry, search.mode outcome, naming what "
            "was ignored)",
            "Bundle",
        ),
        **fhir_error_responses(400, 401, 403, 406),
    }


# --- search (GET and POST _search), the same for every type we serve -----------------------


async def search_items(
    request: Request, settings: Settings, *, posted: bool
) -> list[tuple[str, str]]:
    """The search's parameters: the query's, and for POST _search the form body's after them."""
    items = list(request.query_params.multi_items())
    if posted:
        media_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if media_type != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType(
                "Send the parameters of POST _search as application/x-www-form-urlencoded"
            )
        body = await parsing.read_body(request, settings.max_body_bytes)
        try:
            text = body.decode("utf-8")
            items += parse_qsl(text, keep_blank_values=True, max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("The form could not be read", issue_code="structure") from None
    if any("\x00" in name or "\x00" in value for name, value in items):
        raise BadRequest("A search parameter holds the NUL character", issue_code="value")
    for name, value in items:
        if name == "_format":
            check_format_parameter(value)  # in a POST _search's form as in the URL
    return items


async def search_response(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    resource_type: str,
    items: list[tuple[str, str]],
) -> Response:
    strict = strict_handling(request)
    parsed = parse_search(resource_type, items, strict=strict)
    prescriptions = resource_type == "ServiceRequest" and parsed.has("based-on")
    if prescriptions:
        parsed = parse_search(
            resource_type, items, strict=strict, only=case_search.PRESCRIPTION_PARAMETERS
        )
    result = await case_search.run(session, principal, parsed, prescriptions=prescriptions)
    outcome = operation_outcome(parsed.ignored) if parsed.ignored else None
    return FHIRResponse(
        search_bundle(
            fhir_base(request, settings),
            resource_type,
            parsed.used,
            [m.resource for m in result.matches],
            [i.resource for i in result.included],
            result.total,
            result.next_cursor,
            cursor=parsed.cursor_token,
            elements=parsed.elements,
            outcome=outcome,
        )
    )


def register_search(
    target: APIRouter, resource_type: str, operation: Operation, description: str
) -> None:
    """GET /fhir/{type} and POST /fhir/{type}/_search, with the type's parameter table."""
    allowed = Depends(require(operation, writes=False))

    async def search(
        request: Request,
        session: ReadSession,
        settings: AppSettings,
        principal: Principal = allowed,
    ) -> Response:
        items = await search_items(request, settings, posted=False)
        return await search_response(request, session, settings, principal, resource_type, items)

    async def post_search(
        request: Request,
        session: ReadSession,
        settings: AppSettings,
        principal: Principal = allowed,
    ) -> Response:
        items = await search_items(request, settings, posted=True)
        return await search_response(request, session, settings, principal, resource_type, items)

    parameters = openapi_parameters(resource_type)
    common = (
        " Unknown parameters are ignored and named in an OperationOutcome entry (search.mode "
        "outcome); with `Prefer: handling=strict` they are refused (400). Repeat a parameter "
        "for AND, separate values with commas for OR. Paging: _count and the next link."
    )
    target.add_api_route(
        f"/{resource_type}",
        search,
        methods=["GET"],
        response_class=FHIRResponse,
        summary=f"Search {resource_type} resources",
        description=description + common,
        operation_id=f"search{resource_type}",
        openapi_extra={"parameters": parameters},
        responses=search_responses(),
    )
    form = {
        "type": "object",
        "properties": {
            p["name"]: {**p["schema"], "description": p["description"]} for p in parameters
        },
    }
    target.add_api_route(
        f"/{resource_type}/_search",
        post_search,
        methods=["POST"],
        response_class=FHIRResponse,
        summary=f"Search {resource_type} resources (POST)",
        description=f"The same search as GET /fhir/{resource_type}, with the parameters in a "
        "form body (application/x-www-form-urlencoded), as FHIR clients send long searches.",
        operation_id=f"postSearch{resource_type}",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": form}},
            }
        },
        responses={**search_responses(), **fhir_error_responses(413, 415)},
    )


# --- versions: vread and _history, the same for every type we serve -------------------------


def _history_bundle(
    base: str, resource_type: str, resource_id: str, versions: list[Any]
) -> dict[str, Any]:
    entries = []
    for version in versions:
        first = version.version_id == 1
        entries.append(
            {
                "fullUrl": f"{base}/{resource_type}/{resource_id}",
                "resource": version.resource,
                "request": {
                    "method": "POST" if first else "PUT",
                    "url": resource_type if first else f"{resource_type}/{resource_id}",
                },
                "response": {
                    "status": "201 Created" if first else "200 OK",
                    "etag": etag(version.version_id),
                    "lastModified": instant(version.last_updated),
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(entries),
        "link": [{"relation": "self", "url": f"{base}/{resource_type}/{resource_id}/_history"}],
        "entry": entries,
    }


def register_versions(
    target: APIRouter, resource_type: str, id_name: str, operation: Operation
) -> None:
    """GET /fhir/{type}/{id}/_history/{vid} (vread) and GET /fhir/{type}/{id}/_history."""
    allowed = Depends(require(operation, writes=False))
    article = "an" if resource_type[0] in "AEIOU" else "a"

    async def vread(
        request: Request,
        session: ReadSession,
        principal: Principal = allowed,
    ) -> Response:
        resource_id = request.path_params[id_name]
        raw = request.path_params["vid"]
        if not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
            raise NotFound(f"{resource_type} versions are whole numbers from 1")
        version = await served.version(session, principal, resource_type, resource_id, int(raw))
        return read_response(request, version.resource, version.version_id, version.last_updated)

    async def history(
        request: Request,
        session: ReadSession,
        settings: AppSettings,
        principal: Principal = allowed,
    ) -> Response:
        resource_id = request.path_params[id_name]
        versions = await served.versions(session, principal, resource_type, resource_id)
        return FHIRResponse(
            _history_bundle(fhir_base(request, settings), resource_type, resource_id, versions)
        )

    path = f"/{resource_type}/{{{id_name}}}"
    id_parameter = {"name": id_name, "in": "path", "required": True, "schema": {"type": "string"}}
    target.add_api_route(
        f"{path}/_history/{{vid}}",
        vread,
        methods=["GET"],
        response_class=FHIRResponse,
        summary=f"Read a version of {article} {resource_type} (vread)",
        description=f"One version of {article} {resource_type}, as it was served: the create's "
        "Location names version 1. Versions made before the bridge kept them are 404. "
        "If-None-Match with the version's ETag answers 304.",
        operation_id=f"vread{resource_type}",
        openapi_extra={
            "parameters": [
                id_parameter,
                {"name": "vid", "in": "path", "required": True, "schema": {"type": "string"}},
            ]
        },
        responses=read_responses(resource_type, f"That version of the {resource_type}"),
    )
    target.add_api_route(
        f"{path}/_history",
        history,
        methods=["GET"],
        response_class=FHIRResponse,
        summary=f"The versions of {article} {resource_type} (_history)",
        description=f"A history Bundle of every version kept of the {resource_type}, newest first.",
        operation_id=f"history{resource_type}",
        openapi_extra={"parameters": [id_parameter]},
        responses={
            200: fhir_resource_response("history Bundle", "Bundle"),
            **fhir_error_responses(401, 403, 404, 406, 410),
        },
    )


# --- Task ---------------------------------------------------------------------------------


# Searches first: a path template matched before routing (the audit trail's, app.logs) finds
# /Task/_search before /Task/{task_id}.
register_search(
    router,
    "Task",
    Operation.TASK_READ,
    "Where referrals stand. A referrer polls what changed: "
    "`Task?requester=<ODS code>&_lastUpdated=gt<last poll>&_sort=_lastUpdated`; by patient: "
    "`Task?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|<number>`. "
    "`_include=Task:focus` brings the referrals, `_include=Task:output` what the cases produced.",
)


@router.get(
    "/Task/{task_id}",
    response_class=FHIRResponse,
    summary="Read a referral's Task",
    description="The Task whose status and businessStatus show where the referral stands. "
    "If-None-Match with the current ETag answers 304.",
    operation_id="readTask",
    responses=read_responses("Task", "The Task"),
)
async def read_task(
    task_id: str, request: Request, session: ReadSession, principal: TaskReader
) -> Response:
    found = await served.current(session, principal, "Task", task_id)
    return read_response(request, found.resource, found.version_id, found.last_updated)


register_versions(router, "Task", "task_id", Operation.TASK_READ)


# --- Patient and the resources a case produces --------------------------------------------
# (social prescriptions are ServiceRequests, served beside the referrals)

SERVED_HERE = {
    "Patient": "the patient as a referral described them (one per referral; contact details "
    "change when the referrer amends them)",
    "Appointment": "an appointment of a social prescribing case (booked, fulfilled, noshow, "
    "cancelled)",
    "Observation": "a SWEMWBS score (SNOMED CT 718466001): raw total as the value, the metric "
    "score and time point as components",
    "QuestionnaireResponse": "the seven SWEMWBS answers a score was derived from",
}


def _register_served(resource_type: str, what: str) -> None:
    async def read(
        resource_id: str, request: Request, session: ReadSession, principal: Reader
    ) -> Response:
        found = await served.current(session, principal, resource_type, resource_id)
        return read_response(request, found.resource, found.version_id, found.last_updated)

    article = "an" if resource_type[0] in "AEIOU" else "a"
    register_search(router, resource_type, Operation.REFERRAL_READ, f"Find {what}.")
    router.add_api_route(
        f"/{resource_type}/{{resource_id}}",
        read,
        methods=["GET"],
        response_class=FHIRResponse,
        summary=f"Read {article} {resource_type}",
        description=f"One {resource_type}: {what}. ETag and meta.versionId give its version; "
        "If-None-Match with the current ETag answers 304.",
        operation_id=f"read{resource_type}",
        responses=read_responses(resource_type, f"The {resource_type}"),
    )
    register_versions(router, resource_type, "resource_id", Operation.REFERRAL_READ)


for _type, _what in SERVED_HERE.items():
    _register_served(_type, _what)

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
    principal: Annotated[Principal, Depends(require(Operation.CASE_EVENT_RECORD, writes=True))],
) -> RecordedEvent:
    now = get_now(request)  # not as a dependency: one fewer for FastAPI to solve per event

    async def finish_with(finish: Callable[[], Awaitable[None]]) -> None:
        # Applied now: answered 201, its audit record written with the case's changes.
        await trail.fold(request.scope, session, 201, finish)

    recorded, case, applied = await service.record_event(
        session, principal, case_id, event, event_context(request, principal), now, finish_with
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
