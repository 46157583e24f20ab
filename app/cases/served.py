"""Every resource we serve, read the same way: its current version, one version (vread) or all
of them (_history), through the referral's visibility (app.cases.visibility). A resource of a
purged referral is Gone (410) like the referral."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases import resources, service
from app.cases.history import Version, patient_version, referral_version
from app.cases.models import Patient, Referral, ResourceVersion
from app.cases.visibility import organisation_sees, visible_referral
from app.errors import NotFound, purged
from app.fhir.task import task_resource
from app.security import scope
from app.security.auth import Principal

# Every resource type we serve (a social prescription is a ServiceRequest, as a referral is).
SERVED_TYPES = (
    "ServiceRequest",
    "Task",
    "Patient",
    "Appointment",
    "Observation",
    "QuestionnaireResponse",
)


@dataclass(frozen=True)
class Served:
    """A resource as served now, and the referral it belongs to."""

    version: Version
    referral_id: str

    @property
    def resource(self) -> dict[str, Any]:
        return self.version.resource

    @property
    def version_id(self) -> int:
        return self.version.version_id

    @property
    def last_updated(self) -> dt.datetime:
        return self.version.last_updated


async def read_patient(session: AsyncSession, principal: Principal, patient_id: str) -> Patient:
    """The Patient if the caller sees its referral (404 otherwise); 410 once purged."""
    query = select(Patient, Referral).join(Referral, Referral.id == Patient.referral_id)
    row = (
        await session.execute(
            scope.restrict(query.where(Patient.id == patient_id), organisation_sees(principal))
        )
    ).first()
    if row is None:
        raise NotFound("No such Patient is known here")
    patient, referral = row
    trail.note([referral])
    if referral.purged_at is not None:
        raise purged(f"Patient/{patient.id}")
    return patient


async def current(
    session: AsyncSession, principal: Principal, resource_type: str, resource_id: str
) -> Served:
    """The resource as it is now; 404 when there is none the caller may see, 410 when purged."""
    if resource_type == "ServiceRequest":
        try:
            referral = await visible_referral(session, principal, resource_id)
        except NotFound:
            # Not a referral: perhaps one of the social prescriptions made for a referral.
            return await _record(session, principal, resource_type, resource_id)
        return Served(referral_version(referral), referral.id)
    if resource_type == "Task":
        view = await service.read_task(session, principal, resource_id)
        return Served(
            Version("Task", view.case_id, view.version_id, view.updated_at, task_resource(view)),
            view.referral_id,
        )
    if resource_type == "Patient":
        patient = await read_patient(session, principal, resource_id)
        return Served(patient_version(patient), patient.referral_id)
    return await _record(session, principal, resource_type, resource_id)


async def _record(
    session: AsyncSession, principal: Principal, resource_type: str, resource_id: str
) -> Served:
    found = await resources.read_record(session, principal, resource_type, resource_id)
    if found is None:
        raise NotFound(f"No such {resource_type} is known here")
    resource, version, last_updated, referral_id = found
    return Served(Version(resource_type, resource_id, version, last_updated, resource), referral_id)


async def version(
    session: AsyncSession,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    version_id: int,
) -> Version:
    """One version of the resource (vread): 404 for a version it never had or that was not kept
    (versions made before the bridge kept them, migration 0014)."""
    now = await current(session, principal, resource_type, resource_id)
    if version_id == now.version_id:
        return now.version
    row = await session.scalar(
        select(ResourceVersion).where(
            ResourceVersion.resource_type == resource_type,
            ResourceVersion.resource_id == resource_id,
            ResourceVersion.version_id == version_id,
            ResourceVersion.referral_id == now.referral_id,
        )
    )
    if row is None:
        raise NotFound(f"{resource_type}/{resource_id} has no version {version_id} kept here")
    return Version(resource_type, resource_id, row.version_id, row.last_updated, row.resource)


async def versions(
    session: AsyncSession, principal: Principal, resource_type: str, resource_id: str
) -> list[Version]:
    """Every version kept of the resource, newest first (the current one always among them)."""
    now = await current(session, principal, resource_type, resource_id)
    rows = await session.scalars(
        select(ResourceVersion)
        .where(
            ResourceVersion.resource_type == resource_type,
            ResourceVersion.resource_id == resource_id,
            ResourceVersion.referral_id == now.referral_id,
            ResourceVersion.version_id < now.version_id,
        )
        .order_by(ResourceVersion.version_id.desc())
    )
    return [now.version] + [
        Version(resource_type, resource_id, r.version_id, r.last_updated, r.resource) for r in rows
    ]
