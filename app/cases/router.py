"""FHIR Task: where a referral stands, materialised from its case."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from app.cases import service
from app.clients.auth import Principal, require
from app.clients.roles import Operation
from app.dependencies import AppSettings, ReadSession
from app.errors import BadRequest, fhir_error_responses
from app.fhir.http import fhir_base, fhir_resource_response
from app.fhir.responses import FHIRResponse, etag
from app.fhir.search import check_parameters, searchset
from app.fhir.task import task_resource

router = APIRouter(prefix="/fhir", tags=["FHIR tasks"])


@router.get(
    "/Task/{task_id}",
    response_class=FHIRResponse,
    summary="Read a referral's Task",
    description="The Task whose status and businessStatus show where the referral stands.",
    operation_id="readTask",
    responses={
        200: fhir_resource_response("The Task", "Task"),
        **fhir_error_responses(401, 403, 404),
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
