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
    TASK_CODE_SYSTEM,
)


@lru_cache(maxsize=1)
def business_status_displays() -> dict[str, str]:
    data = orjson.loads((FHIR_DATA_DIR / "CodeSystem-task-business-status.json").read_bytes())
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


def instant(value: dt.datetime) -> str:
    """A FHIR instant in UTC with a Z."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def task_resource(view: TaskView) -> dict[str, Any]:
    displays = business_status_displays()
    business = {
        "coding": [
            {
                "system": BUSINESS_STATUS_SYSTEM,
                "code": view.business_status,
                "display": displays.get(view.business_status, view.business_status),
            }
        ],
    }
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": view.case_id,
        "meta": {"versionId": str(view.version_id), "lastUpdated": instant(view.updated_at)},
        "basedOn": [{"reference": f"ServiceRequest/{view.referral_id}"}],
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
        "focus": {"reference": f"ServiceRequest/{view.referral_id}", "type": "ServiceRequest"},
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
            "display": view.service_name,
        },
    }
    if view.status_reason:
        task["statusReason"] = {
            "coding": [
                {
                    "system": BUSINESS_STATUS_SYSTEM,
                    "code": view.status_reason,
                    "display": displays.get(view.status_reason, view.status_reason),
                }
            ]
        }
    return task
