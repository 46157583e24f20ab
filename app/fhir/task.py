"""The FHIR Task that shows the clinician where a referral stands (DESIGN §5, SDOH CC pattern)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from app.fhir.codes import (
    BUSINESS_STATUS_SYSTEM,
    FHIR_DATA_DIR,
    NHS_NUMBER_SYSTEM,
    ODS_ORGANISATION_SYSTEM,
    REJECTION_REASON_SYSTEM,
    RESOURCE_ID_SYSTEM,
    SERVICE_ID_SYSTEM,
    TASK_CODE_SYSTEM,
    TASK_OUTPUT_SYSTEM,
)


@lru_cache(maxsize=16)
def code_displays(code_system_id: str) -> dict[str, str]:
    """Code → display of one of our CodeSystems in fhir/."""
    data = orjson.loads((FHIR_DATA_DIR / f"CodeSystem-{code_system_id}.json").read_bytes())
    return {concept["code"]: concept["display"] for concept in data["concept"]}


@dataclass(frozen=True)
class TaskView:
    """What a Task is made from: the case, its referral and its service."""

    case_id: str
    version_id: int
    created_at: dt.datetime
    updated_at: dt.datetime
    task_status: str
    business_status: str
    status_reason: str | None
    referral_id: str
    nhs_number: str
    requesting_organisation: str
    service_id: str
    service_name: str
    # The referral's business identifier as its requester gave it (system, value).
    referral_identifier: tuple[str, str] = ("", "")
    state: str = ""
    # (output type code, "ResourceType/id"), in the order they were made.
    outputs: tuple[tuple[str, str], ...] = ()
    summary: str | None = None
    closed_at: dt.datetime | None = None


def instant(value: dt.datetime) -> str:
    """A FHIR instant in UTC with a Z."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def task_resource(view: TaskView) -> dict[str, Any]:
    displays = code_displays("task-business-status")
    business = {
        "coding": [
            {
                "system": BUSINESS_STATUS_SYSTEM,
                "code": view.business_status,
                "display": displays.get(view.business_status, view.business_status),
            }
        ],
    }
    referral = {
        "reference": f"ServiceRequest/{view.referral_id}",
        "type": "ServiceRequest",
        "identifier": {"system": view.referral_identifier[0], "value": view.referral_identifier[1]},
    }
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": view.case_id,
        "meta": {"versionId": str(view.version_id), "lastUpdated": instant(view.updated_at)},
        "identifier": [{"system": RESOURCE_ID_SYSTEM, "value": view.case_id}],
        "basedOn": [referral],
        "status": view.task_status,
        "businessStatus": business,
        "intent": "order",
        "code": {
            "coding": [
                {
                    "system": TASK_CODE_SYSTEM,
                    "code": "fulfill",
                    "display": "Fulfill the focal request",
                }
            ]
        },
        "focus": referral,
        "for": {
            "type": "Patient",
            "identifier": {"system": NHS_NUMBER_SYSTEM, "value": view.nhs_number},
        },
        "authoredOn": instant(view.created_at),
        "lastModified": instant(view.updated_at),
        "requester": {
            "type": "Organization",
            "identifier": {
                "system": ODS_ORGANISATION_SYSTEM,
                "value": view.requesting_organisation,
            },
        },
        "owner": {
            "reference": f"HealthcareService/{view.service_id}",
            "type": "HealthcareService",
            "identifier": {"system": SERVICE_ID_SYSTEM, "value": view.service_id},
            "display": view.service_name,
        },
    }
    if view.status_reason:
        system, reasons = BUSINESS_STATUS_SYSTEM, displays
        if view.state == "rejected":
            system, reasons = REJECTION_REASON_SYSTEM, code_displays("rejection-reason")
        task["statusReason"] = {
            "coding": [
                {
                    "system": system,
                    "code": view.status_reason,
                    "display": reasons.get(view.status_reason, view.status_reason),
                }
            ]
        }
    if view.summary:
        # The plain-language discharge summary the referrer gets when the case closes.
        note: dict[str, Any] = {"text": view.summary}
        if view.closed_at:
            note["time"] = instant(view.closed_at)
        task["note"] = [note]
    if view.outputs:
        output_displays = code_displays("task-output-type")
        task["output"] = [
            {
                "type": {
                    "coding": [
                        {
                            "system": TASK_OUTPUT_SYSTEM,
                            "code": kind,
                            "display": output_displays.get(kind, kind),
                        }
                    ]
                },
                "valueReference": {
                    "reference": reference,
                    "type": reference.split("/", 1)[0],
                    # Our id as an identifier: how the referrer's server finds its copy.
                    "identifier": {"system": RESOURCE_ID_SYSTEM, "value": reference.split("/")[-1]},
                },
            }
            for kind, reference in view.outputs
        ]
    return task
