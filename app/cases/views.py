"""The FHIR resources the referral aggregate is served as, built from its rows: the referral
(ServiceRequest), its Patient, the case's Task and the case's records (Appointments, social
prescriptions, SWEMWBS answers and scores). Reads, searches, versions, the journey and the
deliveries all build them here, so each is served the same way wherever it is read."""

from __future__ import annotations

from typing import Any

from app.cases.models import (
    Appointment,
    Case,
    Patient,
    Prescription,
    Record,
    Referral,
    WellbeingScore,
)
from app.cases.states import consent_withdrawn
from app.fhir.case_resources import (
    CaseContext,
    appointment_resource,
    observation_resource,
    prescription_resource,
    questionnaire_response_resource,
)
from app.fhir.task import TaskView, instant


def service_request_resource(referral: Referral) -> dict[str, Any]:
    resource = dict(referral.resource)
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(referral.version_id)
    meta["lastUpdated"] = instant(referral.last_updated)
    resource["meta"] = meta
    resource["status"] = referral.status
    return {"resourceType": "ServiceRequest", "id": referral.id, **resource}


def patient_resource(patient: Patient) -> dict[str, Any]:
    resource = dict(patient.resource)
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(patient.version_id)
    meta["lastUpdated"] = instant(patient.last_updated)
    resource["meta"] = meta
    return {"resourceType": "Patient", "id": patient.id, **resource}


def task_view(case: Case, referral: Referral, service_name: str) -> TaskView:
    return TaskView(
        case_id=case.id,
        version_id=case.version_id,
        created_at=case.created_at,
        updated_at=case.updated_at,
        task_status=case.task_status,
        business_status=case.business_status,
        status_reason=case.status_reason,
        referral_id=referral.id,
        nhs_number=referral.nhs_number,
        # The referral's requester (ServiceRequest.requester's ODS code), else the referrer's.
        requesting_organisation=referral.requester_ods or referral.organisation,
        service_id=case.service_id,
        service_name=service_name,
        referral_identifier=(referral.identifier_system, referral.identifier_value),
        state=case.state,
        # After a consent withdrawal the Task lists no outputs: the referrer is sent no more of
        # the person's resources, so a Task must not point at ones it may never have received
        # (the read and the push of one Task version are the same resource).
        outputs=()
        if consent_withdrawn(case.state, case.status_reason)
        else tuple((output["type"], output["reference"]) for output in case.outputs),
        summary=case.summary,
        closed_at=case.closed_at,
    )


def record_resource(resource_type: str, record: Record, context: CaseContext) -> dict[str, Any]:
    """A case record as the resource type it is served as (a score is two: its answers, a
    QuestionnaireResponse, and the Observation derived from them)."""
    if isinstance(record, Appointment):
        return appointment_resource(record, context)
    if isinstance(record, Prescription):
        return prescription_resource(record, context)
    if resource_type == "QuestionnaireResponse":
        return questionnaire_response_resource(record, context)
    return observation_resource(record, context)


def record_version(record: Record) -> int:
    return 1 if isinstance(record, WellbeingScore) else record.version_id
