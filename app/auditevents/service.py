"""Reading the audit trail: admins search it, as FHIR AuditEvent (security issue part 3)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.audit.models import AuditedPatient, AuditRecord
from app.cases.visibility import seen_referral_ids
from app.errors import BadRequest, NotFound
from app.fhir import search as fhir_search
from app.fhir.codes import CANONICAL_BASE, NHS_NUMBER_SYSTEM
from app.fhir.nhs_number import normalise
from app.pseudonyms import PSEUDONYM_SYSTEM, pseudonym
from app.security import scope
from app.security.auth import Principal

SEARCH_PARAMETERS = frozenset(
    {"_id", "date", "action", "agent", "patient.identifier", "entity", "outcome", "subtype"}
)
ACTIONS = frozenset("CRUDE")
OUTCOMES = frozenset({"0", "4", "8", "12"})

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
# IHE Basic Audit Log Patterns: the entity that carries the request's X-Request-ID.
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
CLIENT_SYSTEM = f"{CANONICAL_BASE}/Id/api-client"
CORRELATION_SYSTEM = f"{CANONICAL_BASE}/Id/correlation-id"
ACTION_DISPLAY = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}
OUTCOME_DISPLAY = {"0": "success", "4": "refused", "8": "failed", "12": "major failure"}


@dataclass(frozen=True)
class HeldRecord:
    record: AuditRecord
    patients: list[AuditedPatient]


def _restricted(principal: Principal) -> ColumnElement[bool] | None:
    """An organisation's admin sees what its own clients did, and every access to the patients
    of the referrals it sent or receives (purged or not: their data is gone, their audit records
    are not); the bootstrap admin sees everything."""
    seen = seen_referral_ids(principal)
    own = scope.owned_by(principal, AuditRecord.organisation)
    if seen is None or own is None:
        return None
    reached_ours = exists(
        select(AuditedPatient.audit_event_id).where(
            AuditedPatient.audit_event_id == AuditRecord.id, AuditedPatient.referral_id.in_(seen)
        )
    )
    return or_(own, reached_ours)


def _shown(principal: Principal) -> ColumnElement[bool] | None:
    """Which of a record's patients (AuditedPatient, with its AuditRecord) an organisation's
    admin is shown, and may search by: those of referrals it sent or receives, and the NHS
    numbers its own clients looked up. A request that reached several organisations' referrals
    (an installation admin's search) shows each organisation only its own; the bootstrap admin
    is shown every one."""
    seen = seen_referral_ids(principal)
    own = scope.owned_by(principal, AuditRecord.organisation)
    if seen is None or own is None:
        return None
    return or_(
        AuditedPatient.referral_id.in_(seen), and_(AuditedPatient.referral_id.is_(None), own)
    )


def _patient_condition(
    principal: Principal, *conditions: ColumnElement[bool]
) -> ColumnElement[bool]:
    """The record has a patient, shown to the caller, that meets ``conditions``."""
    shown = _shown(principal)
    return exists(
        select(AuditedPatient.audit_event_id).where(
            AuditedPatient.audit_event_id == AuditRecord.id,
            *conditions,
            *([] if shown is None else [shown]),
        )
    )


def _date_conditions(values: Sequence[str]) -> list[ColumnElement[bool]]:
    """FHIR date search on recorded_at, with the precision given: 2026-12-01 is the whole day."""
    conditions: list[ColumnElement[bool]] = []
    column = AuditRecord.recorded_at
    for value in values:
        prefix, start = fhir_search.date_bound(value, "date")
        text = value[2:] if value[:2] in fhir_search.DATE_PREFIXES else value
        if len(text) == 4:
            end = start.replace(year=start.year + 1)
        elif len(text) == 7:
            end = (start + dt.timedelta(days=32)).replace(day=1)
        elif len(text) == 10:
            end = start + dt.timedelta(days=1)
        else:
            end = start + dt.timedelta(microseconds=1)
        conditions.append(
            {
                "eq": and_(column >= start, column < end),
                "gt": column >= end,
                "ge": column >= start,
                "lt": column < start,
                "le": column < end,
            }[prefix]
        )
    return conditions


def _choices(value: str, allowed: frozenset[str], name: str) -> list[str]:
    chosen = [part.strip() for part in value.split(",") if part.strip()]
    wrong = [part for part in chosen if part not in allowed]
    if not chosen or wrong:
        raise BadRequest(
            f"{name} must be one of {', '.join(sorted(allowed))} (comma: any of)", expression=name
        )
    return chosen


def _nhs_numbers(value: str) -> list[str]:
    numbers = []
    for part in value.split(","):
        system, code = fhir_search.token(part)
        if system not in (None, NHS_NUMBER_SYSTEM):
            raise BadRequest(
                f"patient.identifier takes NHS numbers (system {NHS_NUMBER_SYSTEM})",
                expression="patient.identifier",
            )
        numbers.append(normalise(code))
    return numbers


def _conditions(
    principal: Principal, params: Mapping[str, str], key: bytes
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if "_id" in params:
        conditions.append(AuditRecord.id.in_(params["_id"].split(",")))
    if "action" in params:
        conditions.append(AuditRecord.action.in_(_choices(params["action"], ACTIONS, "action")))
    if "outcome" in params:
        outcomes = _choices(params["outcome"], OUTCOMES, "outcome")
        conditions.append(AuditRecord.outcome.in_(outcomes))
    if "subtype" in params:
        conditions.append(AuditRecord.interaction.in_(params["subtype"].split(",")))
    if "agent" in params:
        clients = [part.removeprefix("Device/") for part in params["agent"].split(",")]
        conditions.append(AuditRecord.client_id.in_(clients))
    if "patient.identifier" in params:
        numbers = _nhs_numbers(params["patient.identifier"])
        for number in numbers:
            trail.note_nhs_number(number)
        pseudonyms = [pseudonym(key, number) for number in numbers]
        conditions.append(_patient_condition(principal, AuditedPatient.patient.in_(pseudonyms)))
    if "entity" in params:
        alternatives = []
        for reference in params["entity"].split(","):
            resource_type, _, ident = reference.partition("/")
            if not ident:
                raise BadRequest("entity takes Type/id references", expression="entity")
            referral = _patient_condition(principal, AuditedPatient.referral_id == ident)
            named = and_(
                AuditRecord.resource_type == resource_type, AuditRecord.resource_id == ident
            )
            alternatives.append(
                or_(named, referral) if resource_type == "ServiceRequest" else named
            )
        conditions.append(or_(*alternatives))
    return conditions


async def search(
    session: AsyncSession,
    principal: Principal,
    params: Mapping[str, str],
    dates: Sequence[str],
    key: bytes,
) -> tuple[list[HeldRecord], int, str | None]:
    """Matching records the caller may see, newest first, one page, with the total."""
    fhir_search.check_parameters(params, SEARCH_PARAMETERS)
    page = fhir_search.page_of(params)
    query = select(AuditRecord).where(
        *_conditions(principal, params, key), *_date_conditions(dates)
    )
    query = scope.restrict(query, _restricted(principal))
    total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if page.cursor is not None:
        stamp, ident = page.cursor
        query = query.where(
            or_(
                AuditRecord.recorded_at < stamp,
                and_(AuditRecord.recorded_at == stamp, AuditRecord.id < ident),
            )
        )
    rows = list(
        await session.scalars(
            query.order_by(AuditRecord.recorded_at.desc(), AuditRecord.id.desc()).limit(
                page.count + 1
            )
        )
    )
    next_cursor = None
    if len(rows) > page.count:
        rows = rows[: page.count]
        if rows:
            next_cursor = fhir_search.encode_cursor(rows[-1].recorded_at, rows[-1].id)
    return await _with_patients(session, principal, rows), total, next_cursor


async def read(session: AsyncSession, principal: Principal, record_id: str) -> HeldRecord:
    query = select(AuditRecord).where(AuditRecord.id == record_id)
    record = await session.scalar(scope.restrict(query, _restricted(principal)))
    if record is None:
        raise NotFound("No such AuditEvent is known here")
    return (await _with_patients(session, principal, [record]))[0]


async def _with_patients(
    session: AsyncSession, principal: Principal, records: list[AuditRecord]
) -> list[HeldRecord]:
    by_record: dict[str, list[AuditedPatient]] = {record.id: [] for record in records}
    if records:
        query = (
            select(AuditedPatient)
            .join(AuditRecord, AuditRecord.id == AuditedPatient.audit_event_id)
            .where(AuditedPatient.audit_event_id.in_(list(by_record)))
        )
        patients = await session.scalars(
            scope.restrict(query, _shown(principal)).order_by(
                AuditedPatient.audit_event_id, AuditedPatient.position
            )
        )
        for patient in patients:
            by_record[patient.audit_event_id].append(patient)
    return [HeldRecord(record, by_record[record.id]) for record in records]


# --- as FHIR -------------------------------------------------------------------------------


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def audit_event_resource(held: HeldRecord) -> dict[str, Any]:
    """One record as an R4 AuditEvent (type rest, subtype the RESTful interaction). Patients
    appear by keyed pseudonym only."""
    record = held.record
    agent: dict[str, Any] = {"requestor": True, "who": {"display": record.agent_name}}
    if record.client_id:
        agent["who"]["identifier"] = {"system": CLIENT_SYSTEM, "value": record.client_id}
    if record.role:
        agent["type"] = {
            "coding": [_coding(f"{CANONICAL_BASE}/CodeSystem/client-role", record.role)]
        }
    if record.organisation:
        agent["who"]["display"] = f"{record.agent_name} ({record.organisation})"
    entities: list[dict[str, Any]] = []
    if record.resource_id:
        entities.append(
            {
                "what": {"reference": f"{record.resource_type}/{record.resource_id}"},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
            }
        )
    for patient in held.patients:
        entity: dict[str, Any] = {
            "what": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": patient.patient}},
            "type": _coding(ENTITY_TYPE, "1", "Person"),
            "role": _coding(OBJECT_ROLE, "1", "Patient"),
        }
        if patient.referral_id:
            entity["detail"] = [{"type": "referral", "valueString": patient.referral_id}]
        entities.append(entity)
    if record.request_id:
        entities.append(
            {
                "what": {"identifier": {"value": record.request_id}},
                "type": _coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
            }
        )
    if record.correlation_id:
        entities.append(
            {
                "what": {
                    "identifier": {"system": CORRELATION_SYSTEM, "value": record.correlation_id}
                },
                "type": _coding(ENTITY_TYPE, "4", "Other"),
                "description": "X-Correlation-ID",
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record.id,
        "type": _coding(AUDIT_EVENT_TYPE, "rest", "RESTful Operation")
        if record.source == "api"
        else _coding(DICOM, "110110", "Patient Record"),
        "subtype": [_coding(RESTFUL_INTERACTION, record.interaction)],
        "action": record.action,
        "recorded": record.recorded_at.isoformat(),
        "outcome": record.outcome,
        "agent": [agent],
        "source": {
            "observer": {"display": "Social Prescribing Referral Bridge"},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
    }
    description = OUTCOME_DISPLAY.get(record.outcome, "")
    if record.status is not None:
        description = f"{description} (HTTP {record.status})"
    if record.method and record.route:
        description = f"{description}: {record.method} {record.route}"
    resource["outcomeDesc"] = description
    if entities:
        resource["entity"] = entities
    return resource
