"""What a case produces for the clinician, as FHIR R4 (DESIGN §6): Appointments, social
prescriptions (ServiceRequests basedOn the referral), SWEMWBS answers (QuestionnaireResponse) and
scores (Observation derived from them).

The builders take anything with the attributes they read (the case's records), so this module
stays free of the database layer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import orjson

from app.fhir.codes import (
    APPOINTMENT_ID_SYSTEM,
    APPOINTMENT_TYPE_SYSTEM,
    FHIR_DATA_DIR,
    NHS_NUMBER_SYSTEM,
    OBSERVATION_CATEGORY_SYSTEM,
    ODS_ORGANISATION_SYSTEM,
    PRESCRIPTION_CATEGORY_SYSTEM,
    PRESCRIPTION_ID_SYSTEM,
    RESOURCE_ID_SYSTEM,
    SERVICE_ID_SYSTEM,
    SNOMED,
    SNOMED_SWEMWBS_SCORE,
    SWEMWBS_QUESTIONNAIRE,
    WELLBEING_SYSTEM,
)
from app.fhir.task import code_displays as displays
from app.fhir.task import instant

# Appointment.status for each appointment state we record.
APPOINTMENT_STATUS = {
    "booked": "booked",
    "fulfilled": "fulfilled",
    "noshow": "noshow",
    "cancelled": "cancelled",
}
# Our prescription status → ServiceRequest.status.
PRESCRIPTION_STATUS = {
    "proposed": "draft",
    "active": "active",
    "completed": "completed",
    "declined": "revoked",
}


@lru_cache(maxsize=1)
def swemwbs_items() -> list[tuple[str, str]]:
    data = orjson.loads((FHIR_DATA_DIR / "Questionnaire-swemwbs.json").read_bytes())
    return [(item["linkId"], item["text"]) for item in data["item"]]


@dataclass(frozen=True)
class CaseContext:
    """What every resource of one case says about whose it is and where it comes from."""

    referral_id: str
    nhs_number: str
    service_id: str
    service_name: str
    # The ODS code of the organisation that runs the service, and the referral's business
    # identifier as its requester gave it (system, value).
    service_organisation: str
    referral_identifier: tuple[str, str]

    def patient(self) -> dict[str, Any]:
        return {
            "type": "Patient",
            "identifier": {"system": NHS_NUMBER_SYSTEM, "value": self.nhs_number},
        }

    def service(self) -> dict[str, Any]:
        return service_reference(self.service_id, self.service_name)

    def organisation(self) -> dict[str, Any]:
        """The organisation that runs the service: where R4 allows no HealthcareService."""
        return organisation_reference(self.service_organisation)

    def based_on(self) -> list[dict[str, Any]]:
        return [referral_reference(self.referral_id, self.referral_identifier)]


def service_reference(service_id: str, name: str) -> dict[str, Any]:
    """The service, served by us as HealthcareService/{id}; its identifier for other servers."""
    return {
        "reference": f"HealthcareService/{service_id}",
        "type": "HealthcareService",
        "identifier": {"system": SERVICE_ID_SYSTEM, "value": service_id},
        "display": name,
    }


def organisation_reference(ods_code: str) -> dict[str, Any]:
    """An organisation by its ODS code: served by us as Organization/{ODS code}."""
    return {
        "reference": f"Organization/{ods_code}",
        "type": "Organization",
        "identifier": {"system": ODS_ORGANISATION_SYSTEM, "value": ods_code},
    }


def referral_reference(referral_id: str, identifier: tuple[str, str]) -> dict[str, Any]:
    """The referral: our ServiceRequest/{id}, and the requester's business identifier, by which
    the requester's own server finds its copy (write-back sends only the identifier)."""
    return {
        "reference": f"ServiceRequest/{referral_id}",
        "type": "ServiceRequest",
        "identifier": {"system": identifier[0], "value": identifier[1]},
    }


class AppointmentRecord(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def external_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def appointment_type(self) -> str: ...
    @property
    def start(self) -> dt.datetime: ...
    @property
    def minutes(self) -> int: ...
    @property
    def attended_minutes(self) -> int | None: ...
    @property
    def cancelled_by(self) -> str | None: ...
    @property
    def booked_at(self) -> dt.datetime: ...
    @property
    def version_id(self) -> int: ...
    @property
    def updated_at(self) -> dt.datetime: ...


class PrescriptionRecord(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def external_id(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def activity(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def prescribed_at(self) -> dt.datetime: ...
    @property
    def version_id(self) -> int: ...
    @property
    def updated_at(self) -> dt.datetime: ...


class WellbeingRecord(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def questionnaire_response_id(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def items(self) -> list[int]: ...
    @property
    def raw_score(self) -> int: ...
    @property
    def metric_score(self) -> float: ...
    @property
    def measured_at(self) -> dt.datetime: ...
    @property
    def created_at(self) -> dt.datetime: ...


def _meta(version: int, updated: dt.datetime) -> dict[str, str]:
    return {"versionId": str(version), "lastUpdated": instant(updated)}


def appointment_resource(record: AppointmentRecord, case: CaseContext) -> dict[str, Any]:
    minutes = record.attended_minutes or record.minutes
    end = record.start + dt.timedelta(minutes=minutes)
    patient_status = {"noshow": "declined", "cancelled": "declined"}.get(record.status, "accepted")
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": record.id,
        "meta": _meta(record.version_id, record.updated_at),
        "identifier": [
            {"system": APPOINTMENT_ID_SYSTEM, "value": record.external_id},
            {"system": RESOURCE_ID_SYSTEM, "value": record.id},
        ],
        "status": APPOINTMENT_STATUS[record.status],
        "serviceCategory": [{"text": "Social prescribing"}],
        "appointmentType": {
            "coding": [
                {
                    "system": APPOINTMENT_TYPE_SYSTEM,
                    "code": record.appointment_type,
                    "display": displays("appointment-type")[record.appointment_type],
                }
            ]
        },
        "start": instant(record.start),
        "end": instant(end),
        "minutesDuration": minutes,
        "created": instant(record.booked_at),
        "basedOn": case.based_on(),
        "participant": [
            {"actor": case.patient(), "required": "required", "status": patient_status},
            {"actor": case.service(), "required": "required", "status": "accepted"},
        ],
    }
    if record.status == "cancelled":
        who = {"patient": "pat", "service": "prov"}.get(record.cancelled_by or "", "other")
        resource["cancelationReason"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
                    "code": who,
                    "display": {"pat": "Patient", "prov": "Provider"}.get(who, "Other"),
                }
            ]
        }
    return resource


def prescription_resource(record: PrescriptionRecord, case: CaseContext) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": record.id,
        "meta": _meta(record.version_id, record.updated_at),
        "identifier": [
            {"system": PRESCRIPTION_ID_SYSTEM, "value": record.external_id},
            {"system": RESOURCE_ID_SYSTEM, "value": record.id},
        ],
        "basedOn": case.based_on(),
        "status": PRESCRIPTION_STATUS[record.status],
        "intent": "plan" if record.status == "proposed" else "order",
        "category": [
            {
                "coding": [
                    {
                        "system": PRESCRIPTION_CATEGORY_SYSTEM,
                        "code": record.category,
                        "display": displays("prescription-category")[record.category],
                    }
                ]
            }
        ],
        "code": {"text": record.activity},
        "subject": case.patient(),
        "authoredOn": instant(record.prescribed_at),
        "requester": case.organisation(),
        "performer": [{"type": "Organization", "display": record.provider}],
    }
    if record.status == "declined":
        resource["note"] = [{"text": "Declined by the person"}]
    return resource


def questionnaire_response_resource(record: WellbeingRecord, case: CaseContext) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": record.questionnaire_response_id,
        "meta": _meta(1, record.created_at),
        "identifier": {"system": RESOURCE_ID_SYSTEM, "value": record.questionnaire_response_id},
        "questionnaire": SWEMWBS_QUESTIONNAIRE,
        "status": "completed",
        "basedOn": case.based_on(),
        "subject": case.patient(),
        "authored": instant(record.measured_at),
        "item": [
            {"linkId": link_id, "text": text, "answer": [{"valueInteger": answer}]}
            for (link_id, text), answer in zip(swemwbs_items(), record.items, strict=True)
        ],
    }


def observation_resource(record: WellbeingRecord, case: CaseContext) -> dict[str, Any]:
    stages = displays("wellbeing-measure")
    return {
        "resourceType": "Observation",
        "id": record.id,
        "meta": _meta(1, record.created_at),
        "identifier": [{"system": RESOURCE_ID_SYSTEM, "value": record.id}],
        "basedOn": case.based_on(),
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": OBSERVATION_CATEGORY_SYSTEM, "code": "survey", "display": "Survey"}
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": SNOMED,
                    "code": SNOMED_SWEMWBS_SCORE,
                    "display": "Short Warwick-Edinburgh Mental Well-being Scale score",
                }
            ],
            "text": "SWEMWBS score",
        },
        "subject": case.patient(),
        "effectiveDateTime": instant(record.measured_at),
        "issued": instant(record.created_at),
        "performer": [case.organisation()],
        "valueInteger": record.raw_score,
        "derivedFrom": [
            {
                "reference": f"QuestionnaireResponse/{record.questionnaire_response_id}",
                "type": "QuestionnaireResponse",
                "identifier": {
                    "system": RESOURCE_ID_SYSTEM,
                    "value": record.questionnaire_response_id,
                },
            }
        ],
        "component": [
            {
                "code": {
                    "coding": [
                        {
                            "system": WELLBEING_SYSTEM,
                            "code": "swemwbs-metric-score",
                            "display": stages["swemwbs-metric-score"],
                        }
                    ]
                },
                "valueQuantity": {
                    "value": record.metric_score,
                    "unit": "score",
                    "system": "http://unitsofmeasure.org",
                    "code": "{score}",
                },
            },
            {
                "code": {
                    "coding": [
                        {
                            "system": WELLBEING_SYSTEM,
                            "code": "time-point",
                            "display": stages["time-point"],
                        }
                    ]
                },
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": WELLBEING_SYSTEM,
                            "code": record.stage,
                            "display": stages[record.stage],
                        }
                    ]
                },
            },
        ],
    }
