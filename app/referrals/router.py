"""FHIR ServiceRequest endpoints: intake (alone or in a Bundle), read, search, cancel."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from app.audit import trail
from app.cases import resources as case_resources
from app.cases.models import Referral
from app.cases.resources import service_request_resource
from app.cases.router import event_context
from app.config import Settings
from app.dependencies import AppSettings, Now, ReadSession, WriteSession
from app.errors import AppError, NotFound, fhir_error_responses
from app.fhir import parsing
from app.fhir.http import fhir_base, fhir_body, fhir_resource_response
from app.fhir.responses import FHIRResponse, etag
from app.fhir.search import searchset
from app.fhir.terminology import reason_map
from app.fhir.transaction import unbundle
from app.referrals import service
from app.referrals.intake import ReferralDraft, assess
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/fhir", tags=["FHIR referrals"])

_LOCATION = {"Location": {"description": "The new version's URL", "schema": {"type": "string"}}}
_ETAG = {"ETag": {"description": 'The version, as W/"n"', "schema": {"type": "string"}}}


def _http_date(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _headers(referral: Referral, base: str) -> dict[str, str]:
    return {
        "Location": f"{base}/ServiceRequest/{referral.id}/_history/{referral.version_id}",
        "ETag": etag(referral.version_id),
        "Last-Modified": _http_date(referral.last_updated),
    }


async def _read_body(request: Request, settings: AppSettings) -> bytes:
    """The body as sent, read before the caller is authenticated (this dependency is declared
    ahead of require()): authentication begins the request's transaction, which must not stay
    open while the client is still sending (on SQLite it holds the database's write lock)."""
    return await parsing.read_body(request, settings.max_body_bytes)


RawBody = Annotated[bytes, Depends(_read_body)]


def _read_resource(
    request: Request, body: bytes, resource_type: str
) -> tuple[bytes, dict[str, Any], Any]:
    parsing.check_media_type(request.headers.get("content-type"))
    data = parsing.parse_json(body)
    parsing.check_resource_type(data, resource_type)
    model = parsing.parse_resource(data, resource_type)
    parsing.refuse_nul_characters(body, data, resource_type)
    return body, data, model


def _assess(model: Any, settings: Settings) -> ReferralDraft:
    return assess(
        model,
        now=dt.datetime.now(dt.UTC),
        clock_skew=dt.timedelta(seconds=settings.clock_skew_seconds),
        require_consent=settings.require_consent,
        reason_map=reason_map(),
    )


@router.post(
    "/ServiceRequest",
    status_code=201,
    response_class=FHIRResponse,
    summary="Make a referral",
    description=(
        "Accepts a UK Core shaped ServiceRequest (NHS number on the subject, requester, "
        "authoredOn, consent, target service in performer). Answers 201 with the stored "
        "referral, or 200 with the one already held for the same identifier: repeats never "
        "create a second referral. Honours If-None-Exist."
    ),
    operation_id="createServiceRequest",
    # The example names the sandbox's service, so that "Try it out" works as it is.
    openapi_extra=fhir_body("ServiceRequest", "ServiceRequest-sandbox-referral"),
    responses={
        201: fhir_resource_response(
            "Referral accepted", "ServiceRequest", headers={**_LOCATION, **_ETAG}
        ),
        200: fhir_resource_response(
            "Already held: the existing referral", "ServiceRequest", headers=_ETAG
        ),
        **fhir_error_responses(400, 401, 403, 410, 412, 413, 415, 422),
    },
)
async def create_service_request(
    request: Request,
    session: WriteSession,
    settings: AppSettings,
    body: RawBody,
    principal: Annotated[Principal, Depends(require(Operation.REFERRAL_CREATE, writes=True))],
    if_none_exist: Annotated[str | None, Header(alias="If-None-Exist")] = None,
) -> Response:
    _body, data, model = _read_resource(request, body, "ServiceRequest")
    draft = _assess(model, settings)
    intake = await service.create_referral(
        session, draft, data, principal, event_context(request, principal), if_none_exist
    )
    referral = intake.referral
    trail.note([referral])
    trail.set_status(201 if intake.created else 200)
    return FHIRResponse(
        service_request_resource(referral),
        status_code=201 if intake.created else 200,
        headers=_headers(referral, fhir_base(request, settings)),
    )


@router.post(
    "",
    response_class=FHIRResponse,
    summary="Make a referral as a transaction Bundle",
    description=(
        "A transaction Bundle with one ServiceRequest and its Patient, and optionally Consent, "
        "Condition and QuestionnaireResponse entries linked by urn:uuid references. The supporting "
        "resources are kept with the referral as contained resources. Answers with a "
        "transaction-response Bundle."
    ),
    operation_id="postTransactionBundle",
    openapi_extra=fhir_body("Bundle"),
    responses={
        200: fhir_resource_response("transaction-response Bundle", "Bundle"),
        **fhir_error_responses(400, 401, 403, 412, 413, 415, 422),
    },
)
async def post_transaction(
    request: Request,
    session: WriteSession,
    settings: AppSettings,
    body: RawBody,
    principal: Annotated[Principal, Depends(require(Operation.REFERRAL_CREATE, writes=True))],
) -> Response:
    _body, data, _bundle = _read_resource(request, body, "Bundle")
    unbundled = unbundle(data)
    try:
        model = parsing.parse_resource(unbundled.service_request, "ServiceRequest")
        draft = _assess(model, settings)
        intake = await service.create_referral(
            session,
            draft,
            unbundled.service_request,
            principal,
            event_context(request, principal),
            unbundled.if_none_exist,
        )
    except AppError as error:
        error.issues = unbundled.locate(error.issues)
        raise
    referral = intake.referral
    trail.note([referral])
    base = fhir_base(request, settings)
    status = "201 Created" if intake.created else "200 OK"
    location = f"ServiceRequest/{referral.id}/_history/{referral.version_id}"
    entries = []
    for entry in unbundled.entries:
        response: dict[str, Any] = {
            "status": status,
            "location": location,
            "etag": etag(referral.version_id),
            "lastModified": referral.last_updated.isoformat(),
        }
        if entry.contained_id is not None:
            response["outcome"] = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "information",
                        "code": "informational",
                        "diagnostics": f"Kept with the referral as contained resource "
                        f"#{entry.contained_id}",
                    }
                ],
            }
        item: dict[str, Any] = {"response": response}
        if entry.contained_id is None:
            item["fullUrl"] = f"{base}/ServiceRequest/{referral.id}"
            item["resource"] = service_request_resource(referral)
        entries.append(item)
    return FHIRResponse(
        {"resourceType": "Bundle", "type": "transaction-response", "entry": entries},
        headers={"ETag": etag(referral.version_id)},
    )


@router.get(
    "/ServiceRequest/{referral_id}",
    response_class=FHIRResponse,
    summary="Read a referral",
    description="The referral as held, with meta.versionId and meta.lastUpdated; ETag header.",
    operation_id="readServiceRequest",
    responses={
        200: fhir_resource_response("The referral", "ServiceRequest", headers=_ETAG),
        **fhir_error_responses(401, 403, 404, 410),
    },
)
async def read_service_request(
    referral_id: str,
    request: Request,
    session: ReadSession,
    settings: AppSettings,
    principal: Annotated[Principal, Depends(require(Operation.REFERRAL_READ, writes=False))],
) -> Response:
    try:
        referral = await service.get_referral(session, principal, referral_id)
    except NotFound:
        # Not a referral: perhaps one of the social prescriptions made for a referral.
        prescription = await case_resources.read(session, principal, "ServiceRequest", referral_id)
        if prescription is None:
            raise
        resource, version = prescription
        return FHIRResponse(resource, headers={"ETag": etag(version)})
    headers = _headers(referral, fhir_base(request, settings))
    del headers["Location"]
    return FHIRResponse(service_request_resource(referral), headers=headers)


@router.get(
    "/ServiceRequest/{referral_id}/$journey",
    response_class=FHIRResponse,
    summary="The patient's journey for a referral",
    description=(
        "A collection Bundle: the referral (ServiceRequest), its Task, then its Appointments, "
        "social prescriptions (ServiceRequests basedOn the referral), SWEMWBS answers "
        "(QuestionnaireResponse) and scores (Observation), in the order they happened."
    ),
    operation_id="readJourney",
    responses={
        200: fhir_resource_response("collection Bundle", "Bundle"),
        **fhir_error_responses(401, 403, 404, 410),
    },
)
async def read_journey(
    referral_id: str,
    request: Request,
    session: ReadSession,
    settings: AppSettings,
    now: Now,
    principal: Annotated[Principal, Depends(require(Operation.REFERRAL_READ, writes=False))],
) -> Response:
    referral = await service.get_referral(session, principal, referral_id)
    journey = await case_resources.journey(session, referral, fhir_base(request, settings), now)
    return FHIRResponse(journey)


@router.get(
    "/ServiceRequest",
    response_class=FHIRResponse,
    summary="Search referrals",
    description=(
        "Search the referrals your organisation sent or receives by identifier "
        "(system|value), patient.identifier (NHS number), status, _lastUpdated (with prefixes "
        "ge, gt, le, lt, eq; repeatable) and _id, with _count and next links. With based-on="
        "ServiceRequest/{id} it finds the social prescriptions made for that referral instead "
        "(with patient / patient:identifier / patient.identifier, _id, _count)."
    ),
    operation_id="searchServiceRequest",
    responses={
        200: fhir_resource_response("searchset Bundle", "Bundle"),
        **fhir_error_responses(400, 401, 403),
    },
)
async def search_service_requests(
    request: Request,
    session: ReadSession,
    settings: AppSettings,
    principal: Annotated[Principal, Depends(require(Operation.REFERRAL_READ, writes=False))],
    identifier: Annotated[
        str | None, Query(description="system|value of the referrer's id")
    ] = None,
    patient_identifier: Annotated[
        str | None,
        Query(alias="patient.identifier", description="NHS number (system|value or value)"),
    ] = None,
    status: Annotated[
        str | None, Query(description="active, revoked, completed (comma: any of)")
    ] = None,
    last_updated: Annotated[
        list[str] | None, Query(alias="_lastUpdated", description="e.g. ge2026-01-01 (repeatable)")
    ] = None,
    count: Annotated[
        int | None, Query(alias="_count", ge=0, description="page size (max 100)")
    ] = None,
    based_on: Annotated[
        str | None,
        Query(alias="based-on", description="ServiceRequest/{id}: that referral's prescriptions"),
    ] = None,
) -> Response:
    query = list(request.query_params.multi_items())
    params = {k: v for k, v in query if k != "_lastUpdated"}
    if based_on is not None:
        prescriptions, total, cursor = await case_resources.search(
            session, principal, "ServiceRequest", params
        )
        return FHIRResponse(
            searchset(
                fhir_base(request, settings), "ServiceRequest", query, prescriptions, total, cursor
            )
        )
    referrals, total, cursor = await service.search_referrals(
        session, principal, params, last_updated or []
    )
    return FHIRResponse(
        searchset(
            fhir_base(request, settings),
            "ServiceRequest",
            query,
            [service_request_resource(r) for r in referrals],
            total,
            cursor,
        )
    )


@router.put(
    "/ServiceRequest/{referral_id}",
    response_class=FHIRResponse,
    summary="Cancel a referral",
    description=(
        "A FHIR update whose only change is status 'revoked' cancels a referral that is still "
        "open (409 once its case is closed). Any other change is refused with 422. "
        "Honours If-Match."
    ),
    operation_id="updateServiceRequest",
    openapi_extra=fhir_body("ServiceRequest"),
    responses={
        200: fhir_resource_response(
            "The referral after the update", "ServiceRequest", headers=_ETAG
        ),
        **fhir_error_responses(400, 401, 403, 404, 409, 410, 412, 413, 415, 422),
    },
)
async def update_service_request(
    referral_id: str,
    request: Request,
    session: WriteSession,
    settings: AppSettings,
    body: RawBody,
    principal: Annotated[Principal, Depends(require(Operation.REFERRAL_UPDATE, writes=True))],
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> Response:
    _body, data, _model = _read_resource(request, body, "ServiceRequest")
    referral = await service.update_referral(
        session, principal, referral_id, data, if_match, event_context(request, principal)
    )
    headers = _headers(referral, fhir_base(request, settings))
    del headers["Location"]
    return FHIRResponse(service_request_resource(referral), headers=headers)
