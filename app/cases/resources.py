"""The FHIR resources a case produces, read back: by id, by search, for the journey, and for the
clinical system's updates. Every read goes through the referral's visibility (DESIGN §7)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases.models import (
    Appointment,
    Case,
    CaseEvent,
    Prescription,
    Record,
    Referral,
    WellbeingScore,
)
from app.cases.views import record_resource, record_version, task_view
from app.cases.views import (
    service_request_resource as service_request_resource,  # where the dispatcher reads it
)
from app.cases.visibility import visible_to
from app.directory.models import SocialPrescribingService
from app.errors import NotFound
from app.fhir.case_resources import (
    CaseContext,
    appointment_resource,
    observation_resource,
    prescription_resource,
    questionnaire_response_resource,
)
from app.fhir.task import instant, task_resource
from app.security import scope
from app.security.auth import Principal


@dataclass(frozen=True)
class Kind:
    """How one FHIR resource type is kept: its table, id column and when it happened."""

    resource_type: str
    model: type[Record]
    id_column: Any
    time_column: Any


KINDS: dict[str, Kind] = {
    "Appointment": Kind("Appointment", Appointment, Appointment.id, Appointment.booked_at),
    # Social prescriptions are ServiceRequests; referrals are the other ServiceRequests.
    "ServiceRequest": Kind(
        "ServiceRequest", Prescription, Prescription.id, Prescription.prescribed_at
    ),
    "Observation": Kind(
        "Observation", WellbeingScore, WellbeingScore.id, WellbeingScore.measured_at
    ),
    "QuestionnaireResponse": Kind(
        "QuestionnaireResponse",
        WellbeingScore,
        WellbeingScore.questionnaire_response_id,
        WellbeingScore.measured_at,
    ),
}


def build(resource_type: str, record: Record, context: CaseContext) -> dict[str, Any]:
    return record_resource(resource_type, record, context)


def last_updated(record: Record) -> dt.datetime:
    return record.created_at if isinstance(record, WellbeingScore) else record.updated_at


def rows(kind: Kind) -> Select[Any, Any, Any, Any, Any, Any, Any]:
    """A record of ``kind`` with what its resource needs: the patient's NHS number and the
    service (join Referral: the visibility rule applies to it)."""
    model = kind.model
    return (
        select(
            model,
            Referral.nhs_number,
            SocialPrescribingService.id,
            SocialPrescribingService.name,
            SocialPrescribingService.organisation,
            Referral.identifier_system,
            Referral.identifier_value,
        )
        .join(Referral, Referral.id == model.referral_id)
        .join(SocialPrescribingService, SocialPrescribingService.id == Referral.service_id)
    )


def context_of(
    record: Record,
    nhs_number: str,
    service_id: str,
    name: str,
    organisation: str,
    identifier_system: str,
    identifier_value: str,
) -> CaseContext:
    """The context of a record from a row of ``rows``."""
    return CaseContext(
        record.referral_id,
        nhs_number,
        service_id,
        name,
        organisation,
        (identifier_system, identifier_value),
    )


async def read_record(
    session: AsyncSession, principal: Principal, resource_type: str, resource_id: str
) -> tuple[dict[str, Any], int, dt.datetime, str] | None:
    """One record's resource, version, last change and referral, if it exists and the caller may
    see it."""
    kind = KINDS[resource_type]
    query = scope.restrict(rows(kind).where(kind.id_column == resource_id), visible_to(principal))
    row = (await session.execute(query)).first()
    if row is None:
        return None
    record, nhs_number, *rest = row
    trail.note_patient(record.referral_id, nhs_number)
    resource = build(resource_type, record, context_of(record, nhs_number, *rest))
    return resource, record_version(record), last_updated(record), record.referral_id


async def of_case(
    session: AsyncSession, case: Case, context: CaseContext
) -> list[tuple[dt.datetime, dict[str, Any]]]:
    """Every resource of one case with the time it happened, for the journey."""
    out: list[tuple[dt.datetime, dict[str, Any]]] = []
    for appointment in await session.scalars(
        select(Appointment).where(Appointment.case_id == case.id)
    ):
        out.append((appointment.booked_at, appointment_resource(appointment, context)))
    for prescription in await session.scalars(
        select(Prescription).where(Prescription.case_id == case.id)
    ):
        out.append((prescription.prescribed_at, prescription_resource(prescription, context)))
    for score in await session.scalars(
        select(WellbeingScore).where(WellbeingScore.case_id == case.id)
    ):
        out.append((score.measured_at, questionnaire_response_resource(score, context)))
        out.append((score.measured_at, observation_resource(score, context)))
    return out


async def for_events(
    session: AsyncSession, event_ids: Sequence[str]
) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """What the referrer's clinical system is sent with the Task for each of these events, as
    (resource type, id, resource) in their current versions: the resources the event made or
    changed, and those later events made. The Task goes out as it is now, so it may already list
    those later resources; sending them first means it never points at one the receiver lacks
    (their own deliveries send them again, harmlessly: a PUT is idempotent)."""
    if not event_ids:
        return {}
    events = list(
        await session.execute(
            select(CaseEvent.id, CaseEvent.case_id, CaseEvent.seq, CaseEvent.resources).where(
                CaseEvent.id.in_(event_ids)
            )
        )
    )
    first_seq: dict[str, int] = {}
    for _, case_id, seq, _ in events:
        first_seq[case_id] = min(seq, first_seq.get(case_id, seq))
    later: dict[str, list[tuple[int, list[str]]]] = {case_id: [] for case_id in first_seq}
    for case_id, seq, references in await session.execute(
        select(CaseEvent.case_id, CaseEvent.seq, CaseEvent.resources)
        .where(
            or_(
                *(
                    and_(CaseEvent.case_id == case_id, CaseEvent.seq > seq)
                    for case_id, seq in first_seq.items()
                )
            )
        )
        .order_by(CaseEvent.seq)
    ):
        if references:
            later[case_id].append((seq, references))

    wanted_by_event: dict[str, list[str]] = {}
    for event_id, case_id, seq, references in events:
        wanted = list(references or [])
        for later_seq, later_references in later[case_id]:
            if later_seq > seq:
                wanted += [r for r in later_references if r not in wanted]
        wanted_by_event[event_id] = wanted

    by_type: dict[str, set[str]] = {}
    for references in wanted_by_event.values():
        for reference in references:
            resource_type, _, resource_id = reference.partition("/")
            if resource_type in KINDS:
                by_type.setdefault(resource_type, set()).add(resource_id)
    built: dict[str, dict[str, Any]] = {}
    for resource_type, ids in by_type.items():
        kind = KINDS[resource_type]
        for record, nhs, *rest in await session.execute(rows(kind).where(kind.id_column.in_(ids))):
            resource = build(resource_type, record, context_of(record, nhs, *rest))
            built[f"{resource_type}/{resource['id']}"] = resource
    return {
        event_id: [
            (reference.partition("/")[0], built[reference]["id"], built[reference])
            for reference in references
            if reference in built
        ]
        for event_id, references in wanted_by_event.items()
    }


async def journey(
    session: AsyncSession, referral: Referral, base_url: str, now: dt.datetime
) -> dict[str, Any]:
    """The referral's journey as a collection Bundle, everything in the order it happened."""
    row = (
        await session.execute(
            select(Case, SocialPrescribingService.name, SocialPrescribingService.organisation)
            .join(SocialPrescribingService, SocialPrescribingService.id == Case.service_id)
            .where(Case.referral_id == referral.id)
        )
    ).first()
    if row is None:
        raise NotFound(f"ServiceRequest/{referral.id} has no case")
    case, service_name, organisation = row
    context = CaseContext(
        referral.id,
        referral.nhs_number,
        case.service_id,
        service_name,
        organisation,
        (referral.identifier_system, referral.identifier_value),
    )
    timed: list[tuple[dt.datetime, int, dict[str, Any]]] = [
        (referral.created_at, 0, service_request_resource(referral)),
        (case.created_at, 1, task_resource(task_view(case, referral, service_name))),
    ]
    timed += [(when, 2, resource) for when, resource in await of_case(session, case, context)]
    timed.sort(key=lambda item: (item[0], item[1]))
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": instant(now),
        "meta": {"lastUpdated": instant(case.updated_at)},
        "entry": [
            {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r}
            for _, _, r in timed
        ],
    }
