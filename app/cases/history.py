"""Every version of every resource we serve, kept as it was served (FHIR vread and _history).

The current version of a resource is always served from its own row (``app.cases.served``);
``resource_versions`` holds the ones before it. The Task, the referral (ServiceRequest) and its
Patient are kept when superseded: the writer that is about to change one keeps it as it is
first (the one domain function at every case event for the Task, and for the referral when an
event changes its status; amendment for the referral and the Patient). A new referral so keeps
nothing: its first versions are its rows. The records an event makes or changes (appointments,
social prescriptions, wellbeing scores) are kept when made (``record_versions``), their current
version among them. Keeping is idempotent (a version already kept is left as it is), so a
writer never needs to know whether another kept it first. Reads go through the referral's
visibility like every other read (``app.cases.served``).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.models import (
    Appointment,
    Case,
    Patient,
    Prescription,
    Record,
    Referral,
    ResourceVersion,
)
from app.cases.views import (
    patient_resource,
    record_resource,
    record_version,
    service_request_resource,
    task_view,
)
from app.fhir.case_resources import CaseContext
from app.fhir.task import task_resource


@dataclass(frozen=True)
class Version:
    """One version of one resource, as served."""

    resource_type: str
    resource_id: str
    version_id: int
    last_updated: dt.datetime
    resource: dict[str, Any]


def referral_version(referral: Referral) -> Version:
    return Version(
        "ServiceRequest",
        referral.id,
        referral.version_id,
        referral.last_updated,
        service_request_resource(referral),
    )


def patient_version(patient: Patient) -> Version:
    return Version(
        "Patient", patient.id, patient.version_id, patient.last_updated, patient_resource(patient)
    )


def record_versions(record: Record, context: CaseContext) -> list[Version]:
    if isinstance(record, Appointment | Prescription):
        kind = "Appointment" if isinstance(record, Appointment) else "ServiceRequest"
        return [
            Version(
                kind,
                record.id,
                record.version_id,
                record.updated_at,
                record_resource(kind, record, context),
            )
        ]
    return [
        Version(
            "QuestionnaireResponse",
            record.questionnaire_response_id,
            record_version(record),
            record.created_at,
            record_resource("QuestionnaireResponse", record, context),
        ),
        Version(
            "Observation",
            record.id,
            record_version(record),
            record.created_at,
            record_resource("Observation", record, context),
        ),
    ]


# The columns of a kept version's row, in the order ``rows`` gives them.
COLUMNS = ("resource_type", "resource_id", "version_id", "referral_id", "last_updated", "resource")


def rows(referral_id: str, versions: Iterable[Version]) -> list[dict[str, Any]]:
    """The resource_versions rows of these versions of one referral's resources."""
    return [
        {
            "resource_type": v.resource_type,
            "resource_id": v.resource_id,
            "version_id": v.version_id,
            "referral_id": referral_id,
            "last_updated": v.last_updated,
            "resource": v.resource,
        }
        for v in versions
    ]


@functools.cache
def keeping(dialect: str) -> Any:
    """The insert that keeps versions: those already kept stay as they were."""
    insert: Any = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(ResourceVersion.__table__).on_conflict_do_nothing()


async def keep(session: AsyncSession, referral_id: str, versions: Iterable[Version]) -> None:
    """Keep these versions of resources of one referral (one statement)."""
    kept = rows(referral_id, versions)
    if kept:
        await session.execute(keeping(session.get_bind().dialect.name), kept)


def task_version(case: Case, referral: Referral, service_name: str) -> Version:
    """The case's Task as it is now (kept when an event is about to supersede it)."""
    return Version(
        "Task",
        case.id,
        case.version_id,
        case.updated_at,
        task_resource(task_view(case, referral, service_name)),
    )


def event_versions(
    case: Case,
    referral: Referral,
    service_name: str,
    service_organisation: str,
    records: Sequence[Record],
) -> list[Version]:
    """The versions of the records a case event made or changed, as they are now."""
    if not records:
        return []
    context = CaseContext(
        referral.id,
        referral.nhs_number,
        case.service_id,
        service_name,
        service_organisation,
        (referral.identifier_system, referral.identifier_value),
    )
    versions: list[Version] = []
    for record in records:
        versions += record_versions(record, context)
    return versions
