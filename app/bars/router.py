"""``POST /fhir/$process-message``: a BaRS referral message (new, update, cancel)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from app.audit import trail
from app.bars import service
from app.bars.messages import EVENTS_SYSTEM, REASONS_SYSTEM, REQUEST_EVENT, read_message
from app.cases.router import event_context
from app.dependencies import AppSettings, RawBody, WriteSession
from app.errors import AppError, fhir_error_responses
from app.fhir import parsing
from app.fhir.http import check_format, fhir_body, fhir_resource_response
from app.fhir.responses import FHIRResponse
from app.fhir.terminology import reason_map
from app.referrals.intake import assess
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/fhir", tags=["BaRS messaging"], dependencies=[Depends(check_format)])

Sender = Annotated[Principal, Depends(require(Operation.REFERRAL_CREATE, writes=True))]

_SAID = {
    "created": "Referral accepted as ServiceRequest/{id}",
    "held": "Already held as ServiceRequest/{id}: nothing changed",
    "updated": "ServiceRequest/{id} amended (now version {version})",
    "unchanged": "ServiceRequest/{id} already stood so: nothing changed",
    "cancelled": "ServiceRequest/{id} cancelled",
}


@router.post(
    "/$process-message",
    status_code=200,
    response_class=FHIRResponse,
    summary="Receive a BaRS referral message",
    description=(
        "The BaRS (NHS Booking and Referral Standard) receiver: a message Bundle whose first "
        f"entry is a MessageHeader with eventCoding `{REQUEST_EVENT}` ({EVENTS_SYSTEM}), reason "
        f"`new`, `update` or `cancel` ({REASONS_SYSTEM}) and focus the ServiceRequest, with the "
        "resources it needs (Patient, Encounter, CarePlan, Consent, Practitioner, "
        "PractitionerRole, Organization, Flag, QuestionnaireResponse, ...). It becomes the same "
        "referral, case and events as `POST /fhir/ServiceRequest` (new), an amendment as a FHIR "
        "update makes (update), or a cancellation (cancel, or an update whose ServiceRequest is "
        "revoked). Headers: `X-Request-ID` (required; a repeat is 409 REC_CONFLICT and changes "
        "nothing), `X-Correlation-ID` (kept with the events and passed on), "
        '`NHSD-Target-Identifier` (base64 of `{"value": <service id>, "system": ...}`: '
        "which service the referral is for; without it, the ServiceRequest's performer or the "
        "client's default service), `NHSD-End-User-Organisation-ODS` (required: the sending "
        "organisation, the one this client acts for). Answers 200 with an OperationOutcome "
        "saying what was done; what happens next comes back to the sender as "
        "`servicerequest-response` messages (the `bars` clinical route). Errors are "
        "OperationOutcomes carrying BaRS's codes (https://fhir.nhs.uk/CodeSystem/"
        "http-error-codes: REC_BAD_REQUEST, REC_FORBIDDEN, REC_NOT_FOUND, REC_CONFLICT, "
        "REC_UNPROCESSABLE_ENTITY)."
    ),
    operation_id="processMessage",
    openapi_extra=fhir_body("Bundle", "Bundle-bars-referral-message"),
    responses={
        200: fhir_resource_response("What was done", "OperationOutcome"),
        **fhir_error_responses(400, 401, 403, 404, 406, 409, 410, 413, 415, 422),
    },
)
async def process_message(
    request: Request,
    session: WriteSession,
    settings: AppSettings,
    body: RawBody,
    principal: Sender,
    x_request_id: Annotated[str | None, Header(alias="X-Request-ID")] = None,
    target: Annotated[str | None, Header(alias="NHSD-Target-Identifier")] = None,
    end_user_ods: Annotated[str | None, Header(alias="NHSD-End-User-Organisation-ODS")] = None,
) -> Response:
    headers = service.read_headers(
        principal,
        sent_request_id=x_request_id,
        request_id=request.state.request_id,
        target=target,
        end_user_ods=end_user_ods,
    )
    parsing.check_media_type(request.headers.get("content-type"))
    data = parsing.parse_json(body)
    parsing.check_resource_type(data, "Bundle")
    parsing.parse_resource(data, "Bundle")
    parsing.refuse_nul_characters(body, data, "Bundle")
    parsing.check_r4(data)
    message = read_message(data)
    try:
        draft = None
        if not service.cancels(message):
            draft = assess(
                message.service_request,
                now=dt.datetime.now(dt.UTC),
                clock_skew=dt.timedelta(seconds=settings.clock_skew_seconds),
                require_consent=settings.require_consent,
                reason_map=reason_map(),
            )
        processed = await service.process(
            session, principal, message, draft, headers, event_context(request, principal)
        )
    except AppError as error:
        raise service.locate(error, message) from None
    referral = processed.referral
    trail.note([referral])
    said = _SAID[processed.outcome].format(id=referral.id, version=referral.version_id)
    return FHIRResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": said}],
        },
        headers={"Content-Location": f"ServiceRequest/{referral.id}"},
    )
