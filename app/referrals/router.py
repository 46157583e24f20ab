"""FHIR ServiceRequest endpoints: intake (alone, or in a transaction or batch Bundle), read,
versions, search, amendment and cancellation."""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases import resources as case_resources
from app.cases import served
from app.cases.models import Case, Patient, Referral
from app.cases.router import (
    event_context,
    read_responses,
    register_search,
    register_versions,
)
from app.cases.views import patient_resource, service_request_resource
from app.config import Settings
from app.dependencies import (
    AppSettings,
    Now,
    RawBody,
    ReadSession,
    WriteSession,
    app_settings,
)
from app.errors import (
    AppError,
    BadRequest,
    BusinessRuleViolation,
    Issue,
    fhir_error_responses,
    operation_outcome,
)
from app.fhir import parsing
from app.fhir.http import (
    check_format,
    fhir_base,
    fhir_body,
    fhir_resource_response,
    read_response,
    version_headers,
    write_response,
)
from app.fhir.responses import FHIRResponse, etag
from app.fhir.task import instant
from app.fhir.terminology import reason_map
from app.fhir.transaction import BundledEntry, unbundle
from app.referrals import service
from app.referrals.intake import ReferralDraft, assess
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/fhir", tags=["FHIR referrals"], dependencies=[Depends(check_format)])

_LOCATION = {"Location": {"description": "The new version's URL", "schema": {"type": "string"}}}
_VERSION = {
    "ETag": {"description": 'The version, as W/"n"', "schema": {"type": "string"}},
    "Last-Modified": {"description": "When it last changed", "schema": {"type": "string"}},
}
_PREFER = {
    "Preference-Applied": {
        "description": "The Prefer: return= honoured (minimal, representation, OperationOutcome)",
        "schema": {"type": "string"},
    }
}
_PREFER_NOTE = (
    " `Prefer: return=minimal` answers without a body, `return=OperationOutcome` with an "
    "OperationOutcome saying what happened (Preference-Applied names what was honoured)."
)
Referrer = Annotated[Principal, Depends(require(Operation.REFERRAL_CREATE, writes=True))]
# What a create made besides the referral, so that a loader or an EPR needs no extra search.
_MADE = {
    "Link": {
        "description": 'The referral\'s Task: `<{base}/Task/{id}>; rel="related"; type="Task"`',
        "schema": {"type": "string"},
    },
    "X-Case-ID": {
        "description": "The referral's case, as `/api/v1/cases/{id}` names it (the Task's id)",
        "schema": {"type": "string"},
    },
}


async def _made_headers(
    session: AsyncSession, referral: Referral, base: str, case_id: str | None = None
) -> dict[str, str]:
    """The Link to the referral's Task and its case id (known after a create; else one indexed
    read)."""
    if case_id is None:
        case_id = await session.scalar(select(Case.id).where(Case.referral_id == referral.id))
    if case_id is None:
        return {}
    return {"Link": f'<{base}/Task/{case_id}>; rel="related"; type="Task"', "X-Case-ID": case_id}


def _headers(referral: Referral, base: str) -> dict[str, str]:
    return {
        "Location": f"{base}/ServiceRequest/{referral.id}/_history/{referral.version_id}",
        **version_headers(referral.version_id, referral.last_updated),
    }


def _read_resource(
    request: Request, body: bytes, resource_type: str, *, r4: bool = True
) -> dict[str, Any]:
    """The body as a resource of ``resource_type``, free of NUL and valid R4 (HL7's R4 JSON
    schema, FHIR JSON's rules, reference targets: app.fhir.validation), or only structurally
    valid (the R4B models) when not ``r4``: a batch's entries are refused one by one. Each
    refused with a 4xx naming the elements."""
    parsing.check_media_type(request.headers.get("content-type"))
    data = parsing.parse_json(body)
    parsing.check_resource_type(data, resource_type)
    if r4:
        parsing.check_r4(data)
    else:
        parsing.parse_resource(data, resource_type)
    parsing.refuse_nul_characters(body, data, resource_type)
    return data


def _assess(resource: dict[str, Any], settings: Settings) -> ReferralDraft:
    return assess(
        resource,
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
        "referral, or 200 with the one already held for the same identifier and the same "
        "content: repeats never create a second referral. A repeat of the identifier with other "
        "content is 409 (update the referral instead: amendments never vanish). Honours "
        "If-None-Exist. The referral's Patient is kept as a Patient resource of its own. "
        "Both answers say what the referral is followed by: `Link` to its Task "
        '(`rel="related"; type="Task"`) and `X-Case-ID`, its case in `/api/v1/cases`.'
        + _PREFER_NOTE
    ),
    operation_id="createServiceRequest",
    # The example names the sandbox's service, so that "Try it out" works as it is.
    openapi_extra=fhir_body("ServiceRequest", "ServiceRequest-sandbox-referral"),
    responses={
        201: fhir_resource_response(
            "Referral accepted",
            "ServiceRequest",
            headers={**_LOCATION, **_VERSION, **_PREFER, **_MADE},
        ),
        200: fhir_resource_response(
            "Already held: the existing referral",
            "ServiceRequest",
            headers={**_VERSION, **_MADE},
        ),
        **fhir_error_responses(400, 401, 403, 406, 409, 410, 412, 413, 415, 422),
    },
)
async def create_service_request(
    request: Request,
    session: WriteSession,
    body: RawBody,
    principal: Referrer,
    if_none_exist: Annotated[str | None, Header(alias="If-None-Exist")] = None,
) -> Response:
    # The settings read from the app, not as a dependency: one fewer for FastAPI to solve on
    # every referral.
    settings = app_settings(request)
    data = _read_resource(request, body, "ServiceRequest")
    draft = _assess(data, settings)
    intake = await service.create_referral(
        session,
        draft,
        data,
        principal,
        event_context(request, principal),
        if_none_exist,
        # A new referral's answer is known before its write: the audit record goes in with it.
        record=functools.partial(trail.fold, request.scope, session),
    )
    referral = intake.referral
    trail.note([referral])
    status = 201 if intake.created else 200
    trail.set_status(status)
    said = (
        f"Referral accepted as ServiceRequest/{referral.id}"
        if intake.created
        else f"Already held as ServiceRequest/{referral.id}: nothing changed"
    )
    base = fhir_base(request, settings)
    made = await _made_headers(session, referral, base, intake.case_id)
    headers = {**_headers(referral, base), **made}
    return write_response(request, service_request_resource(referral), status, headers, said)


# --- transaction and batch Bundles ---------------------------------------------------------


async def _patient_of(session: AsyncSession, referral: Referral) -> Patient | None:
    found: Patient | None = await session.scalar(
        select(Patient).where(Patient.referral_id == referral.id)
    )
    return found


def _information(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }


def _transaction_entries(
    base: str,
    entries: list[BundledEntry],
    intake: service.Intake,
    patient: Patient | None,
) -> list[dict[str, Any]]:
    """What really happened to each entry: the ServiceRequest and its Patient are resources of
    their own (created, or held already); the other resources are kept inside the referral, as
    contained resources, and are not resources of their own here."""
    referral = intake.referral
    status = "201 Created" if intake.created else "200 OK"
    out: list[dict[str, Any]] = []
    for entry in entries:
        if entry.contained_id is None:
            out.append(
                {
                    "fullUrl": f"{base}/ServiceRequest/{referral.id}",
                    "resource": service_request_resource(referral),
                    "response": {
                        "status": status,
                        "location": f"ServiceRequest/{referral.id}/_history/{referral.version_id}",
                        "etag": etag(referral.version_id),
                        "lastModified": instant(referral.last_updated),
                    },
                }
            )
        elif entry.resource_type == "Patient" and patient is not None:
            out.append(
                {
                    "fullUrl": f"{base}/Patient/{patient.id}",
                    "resource": patient_resource(patient),
                    "response": {
                        "status": "201 Created"
                        if intake.created and patient.version_id == 1
                        else "200 OK",
                        "location": f"Patient/{patient.id}/_history/{patient.version_id}",
                        "etag": etag(patient.version_id),
                        "lastModified": instant(patient.last_updated),
                        "outcome": _information(
                            f"The referral's Patient: Patient/{patient.id}, also contained in "
                            f"ServiceRequest/{referral.id} as #{entry.contained_id}"
                        ),
                    },
                }
            )
        else:
            out.append(
                {
                    "response": {
                        "status": "200 OK",
                        "outcome": _information(
                            f"Kept inside ServiceRequest/{referral.id} as its contained resource "
                            f"#{entry.contained_id}: not a resource of its own on this server"
                        ),
                    }
                }
            )
    return out


async def _one_referral(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    resource: dict[str, Any],
    if_none_exist: str | None,
) -> service.Intake:
    draft = _assess(resource, settings)
    return await service.create_referral(
        session, draft, resource, principal, event_context(request, principal), if_none_exist
    )


@router.post(
    "",
    response_class=FHIRResponse,
    summary="Make referrals with a transaction or batch Bundle",
    description=(
        "A transaction Bundle: one ServiceRequest and its Patient, and optionally Consent, "
        "Condition and QuestionnaireResponse entries linked by urn:uuid references, all or "
        "nothing. The Patient becomes a Patient resource of its own (and is kept in the "
        "referral too); the other supporting resources are kept inside the referral as "
        "contained resources, which each entry of the transaction-response says. "
        "A batch Bundle: entries processed one by one, each a POST of a ServiceRequest (a "
        "whole referral, its supporting resources contained); each answered in the "
        "batch-response with its own status, an entry that fails changing nothing."
    ),
    operation_id="postTransactionBundle",
    openapi_extra=fhir_body("Bundle", "Bundle-transaction-referral"),
    responses={
        200: fhir_resource_response("transaction-response or batch-response Bundle", "Bundle"),
        **fhir_error_responses(400, 401, 403, 406, 409, 412, 413, 415, 422),
    },
)
async def post_bundle(
    request: Request,
    session: WriteSession,
    settings: AppSettings,
    body: RawBody,
    principal: Referrer,
) -> Response:
    # A batch's entries stand alone: each is refused on its own (below), not the whole batch.
    data = _read_resource(request, body, "Bundle", r4=False)
    base = fhir_base(request, settings)
    issues = parsing.r4_issues(data)
    if data.get("type") == "batch":
        by_entry: dict[int, list[Issue]] = {}
        for issue in issues:
            match = _ENTRY.match(issue.expression or "")
            if match is None:
                raise BadRequest(issues[0].diagnostics, issues=issues)
            by_entry.setdefault(int(match.group(1)), []).append(issue)
        return FHIRResponse(
            await _batch(request, session, settings, principal, data, base, by_entry)
        )
    if issues:
        raise BadRequest(issues[0].diagnostics, issues=issues)
    unbundled = unbundle(data)
    try:
        intake = await _one_referral(
            request,
            session,
            settings,
            principal,
            unbundled.service_request,
            unbundled.if_none_exist,
        )
    except AppError as error:
        error.issues = unbundled.locate(error.issues)
        raise
    referral = intake.referral
    trail.note([referral])
    patient = intake.patient or await _patient_of(session, referral)
    return FHIRResponse(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": _transaction_entries(base, unbundled.entries, intake, patient),
        },
        headers={"ETag": etag(referral.version_id)},
    )


_ENTRY = re.compile(r"^Bundle\.entry\[(\d+)\]")
_PHRASES = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 412: "Precondition Failed"}


def _refused(error: AppError) -> dict[str, Any]:
    """A batch entry's answer when it was refused (its issues already located in the Bundle)."""
    return {
        "response": {
            "status": f"{error.status} {_PHRASES.get(error.status, 'Unprocessable Entity')}",
            "outcome": operation_outcome(error.issues, error.status),
        }
    }


def _failed(error: AppError, where: str) -> dict[str, Any]:
    issues = [
        Issue(
            i.code,
            i.diagnostics.replace("ServiceRequest.", f"{where}.resource.", 1)
            if i.diagnostics.startswith("ServiceRequest.")
            else i.diagnostics,
            f"{where}.resource{i.expression[len('ServiceRequest') :]}"
            if i.expression and i.expression.startswith("ServiceRequest")
            else i.expression,
            i.severity,
            i.details,
        )
        for i in error.issues
    ]
    error.issues = issues
    return _refused(error)


async def _batch(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    data: dict[str, Any],
    base: str,
    invalid: dict[int, list[Issue]],
) -> dict[str, Any]:
    """Each entry on its own (FHIR batch): a referral made, or the error it met, in its own
    savepoint, so an entry that fails changes nothing and the others go on. ``invalid``: the
    R4 problems of each entry, which refuse it."""
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(data.get("entry") or []):
        where = f"Bundle.entry[{index}]"
        if index in invalid:
            problems = invalid[index]
            out.append(_refused(BadRequest(problems[0].diagnostics, issues=problems)))
            continue
        resource = entry.get("resource") if isinstance(entry, dict) else None
        method = (entry.get("request") or {}).get("method") if isinstance(entry, dict) else None
        if (
            method != "POST"
            or not isinstance(resource, dict)
            or resource.get("resourceType") != "ServiceRequest"
        ):
            out.append(
                _failed(
                    BusinessRuleViolation(
                        f"{where}: a batch here takes POST of ServiceRequest entries (referrals, "
                        "their supporting resources contained); read and search with GET",
                        issue_code="not-supported",
                        expression=f"{where}.request",
                    ),
                    where,
                )
            )
            continue
        if_none_exist = (entry.get("request") or {}).get("ifNoneExist")
        try:
            async with session.begin_nested():
                intake = await _one_referral(
                    request, session, settings, principal, resource, if_none_exist
                )
        except AppError as error:
            out.append(_failed(error, where))
            continue
        referral = intake.referral
        trail.note([referral])
        out.append(
            {
                "fullUrl": f"{base}/ServiceRequest/{referral.id}",
                "resource": service_request_resource(referral),
                "response": {
                    "status": "201 Created" if intake.created else "200 OK",
                    "location": f"ServiceRequest/{referral.id}/_history/{referral.version_id}",
                    "etag": etag(referral.version_id),
                    "lastModified": instant(referral.last_updated),
                },
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "batch-response"}
    if out:
        bundle["entry"] = out
    return bundle


# --- reads and searches --------------------------------------------------------------------


# Search first: a path template matched before routing (the audit trail's, app.logs) finds
# /ServiceRequest/_search before /ServiceRequest/{referral_id}.
register_search(
    router,
    "ServiceRequest",
    Operation.REFERRAL_READ,
    "The referrals your organisation sent or receives, oldest first unless _sort says "
    "otherwise; by patient (Patient/<id>, or the NHS number: patient:identifier, "
    "subject:identifier, patient.identifier). With based-on=ServiceRequest/<id> it finds the "
    "social prescriptions made for that referral instead. `_revinclude=Task:focus` brings each "
    "referral's Task.",
)


@router.get(
    "/ServiceRequest/{referral_id}",
    response_class=FHIRResponse,
    summary="Read a referral (or a social prescription)",
    description="The referral as held, with meta.versionId and meta.lastUpdated; ETag and "
    "Last-Modified headers; If-None-Match with the current ETag answers 304. A social "
    "prescription (a ServiceRequest basedOn a referral) is read here too.",
    operation_id="readServiceRequest",
    responses=read_responses("ServiceRequest", "The referral"),
)
async def read_service_request(
    referral_id: str,
    request: Request,
    session: ReadSession,
    principal: Annotated[Principal, Depends(require(Operation.REFERRAL_READ, writes=False))],
) -> Response:
    found = await served.current(session, principal, "ServiceRequest", referral_id)
    return read_response(request, found.resource, found.version_id, found.last_updated)


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
        **fhir_error_responses(401, 403, 404, 406, 410),
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


register_versions(router, "ServiceRequest", "referral_id", Operation.REFERRAL_READ)


# --- amendment and cancellation -------------------------------------------------------------


@router.put(
    "/ServiceRequest/{referral_id}",
    response_class=FHIRResponse,
    summary="Amend or cancel a referral",
    description=(
        "A FHIR update by the referrer of a referral whose case is still open (409 once it is "
        "closed), with `If-Match` (the ETag of the version being changed; 428 without it, 412 "
        "when stale). It may change the reasons (reasonCode, reasonReference, contained "
        "Conditions), note, priority, the patient's telecom and address, and the consent "
        "(supportingInfo, contained Consents): a `referral.updated` event, sent on to the "
        "service's platform and to subscribers. Or it may cancel: status 'revoked' with "
        "nothing else changed. Anything else is refused with 422 naming the elements. A repeat "
        "of an update already made answers 200 and changes nothing." + _PREFER_NOTE
    ),
    operation_id="updateServiceRequest",
    openapi_extra=fhir_body("ServiceRequest"),
    responses={
        200: fhir_resource_response(
            "The referral after the update", "ServiceRequest", headers={**_VERSION, **_PREFER}
        ),
        **fhir_error_responses(400, 401, 403, 404, 406, 409, 410, 412, 413, 415, 422, 428),
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
    data = _read_resource(request, body, "ServiceRequest")
    # An update that keeps the referral active is assessed as a referral again (an amendment
    # must still meet every rule); a cancellation is a change of status alone.
    draft = _assess(data, settings) if data.get("status") == "active" else None
    referral, changed = await service.update_referral(
        session, principal, referral_id, data, draft, if_match, event_context(request, principal)
    )
    headers = _headers(referral, fhir_base(request, settings))
    del headers["Location"]
    said = (
        f"ServiceRequest/{referral.id} is now version {referral.version_id}"
        if changed
        else f"ServiceRequest/{referral.id} already stood so: nothing changed"
    )
    return write_response(request, service_request_resource(referral), 200, headers, said)
