"""The directory as FHIR R4: a social prescribing service as a HealthcareService, and an
organisation (a service's, or a referrer's) as an Organization by its ODS code. What the Task's
``owner``, an Appointment's participant and an Observation's ``performer`` point at."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.fhir.codes import ODS_ORGANISATION_SYSTEM, SERVICE_ID_SYSTEM
from app.fhir.task import instant


def healthcare_service_resource(
    service_id: str, name: str, organisation: str, created_at: dt.datetime
) -> dict[str, Any]:
    return {
        "resourceType": "HealthcareService",
        "id": service_id,
        "meta": {"versionId": "1", "lastUpdated": instant(created_at)},
        "identifier": [{"system": SERVICE_ID_SYSTEM, "value": service_id}],
        "active": True,
        "providedBy": {
            "reference": f"Organization/{organisation}",
            "type": "Organization",
            "identifier": {"system": ODS_ORGANISATION_SYSTEM, "value": organisation},
        },
        "category": [{"text": "Social prescribing"}],
        "name": name,
    }


def organization_resource(ods_code: str, since: dt.datetime) -> dict[str, Any]:
    """Only what the bridge knows of an organisation: its ODS code (names are the ODS's)."""
    return {
        "resourceType": "Organization",
        "id": ods_code,
        "meta": {"versionId": "1", "lastUpdated": instant(since)},
        "identifier": [{"system": ODS_ORGANISATION_SYSTEM, "value": ods_code}],
        "active": True,
    }
