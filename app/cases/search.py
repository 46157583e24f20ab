"""FHIR search over everything the referral aggregate serves: the SQL of each search parameter
(app.fhir.searchparams declares them; there is one condition here for each, checked at import),
sorting and keyset paging, and _include / _revinclude. Every query goes through the visibility
rule (app.cases.visibility.visible_to): a caller finds only what its organisation sees, and
never a purged referral's resources."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases.models import (
    Appointment,
    Case,
    Patient,
    Prescription,
    Referral,
    WellbeingScore,
)
from app.cases.resources import KINDS, build, context_of, rows
from app.cases.views import patient_resource, service_request_resource, task_view
from app.cases.visibility import visible_to
from app.directory.models import SocialPrescribingService
from app.errors import BadRequest
from app.fhir.case_resources import PRESCRIPTION_STATUS
from app.fhir.codes import BUSINESS_STATUS_SYSTEM, NHS_NUMBER_SYSTEM, ODS_ORGANISATION_SYSTEM
from app.fhir.nhs_number import normalise
from app.fhir.searchparams import SEARCHES, Criterion, Search, encode_cursor
from app.fhir.searchparams import date_range as parse_date
from app.fhir.task import task_resource
from app.security import scope
from app.security.auth import Principal

Condition = Callable[[Criterion], ColumnElement[bool]]


@dataclass(frozen=True)
class OrderKey:
    column: Any
    read: Callable[[Any], Any]  # the value of this key for a row of the query
    is_time: bool = True


@dataclass(frozen=True)
class Found:
    """One resource a search found, with its referral (for includes and the audit trail)."""

    resource: dict[str, Any]
    referral_id: str


@dataclass
class Result:
    matches: list[Found]
    included: list[Found]
    total: int | None
    next_cursor: str | None


@dataclass(frozen=True)
class Target:
    """How a search of one resource type (or of social prescriptions) runs."""

    resource_type: str
    rows: Callable[[], Any]
    id_key: OrderKey
    default_order: tuple[OrderKey, ...]
    sorts: dict[str, OrderKey]
    conditions: dict[str, Condition]
    build: Callable[[Any], Found]


# --- values of parameters ------------------------------------------------------------------------


def _token(value: str) -> tuple[str | None, str]:
    if "|" in value:
        system, _, code = value.partition("|")
        return system or None, code
    return None, value


def _reference_ids(criterion: Criterion, resource_type: str) -> list[str]:
    """Ids a reference parameter names: Type/id (or a URL ending so), or the id alone."""
    ids = []
    for value in criterion.values:
        parts = value.strip().rstrip("/").split("/")
        if len(parts) > 1 and parts[-2] != resource_type:
            raise BadRequest(
                f"Parameter {criterion.position} of the query must name a {resource_type}",
                expression=criterion.name,
            )
        ids.append(parts[-1])
    return ids


def _nhs_number(criterion: Criterion, value: str) -> str:
    system, code = _token(value.strip())
    if system not in (None, NHS_NUMBER_SYSTEM):
        raise BadRequest(
            f"Parameter {criterion.position} of the query: patients are found by NHS number "
            f"({NHS_NUMBER_SYSTEM}|<number>) or as Patient/<id>",
            expression=criterion.name,
        )
    return normalise(code)


def _looks_like_nhs_number(value: str) -> bool:
    return "|" in value or (normalise(value).isdigit() and len(normalise(value)) == 10)


def _patient(criterion: Criterion) -> ColumnElement[bool]:
    """The referrals of a patient: Patient/<id> (our Patient), or the NHS number (the
    ``identifier`` modifier or chain, or a value that is one)."""
    numbers: list[str] = []
    patient_ids: list[str] = []
    for value in criterion.values:
        value = value.strip()
        if criterion.modifier or criterion.chain or _looks_like_nhs_number(value):
            numbers.append(_nhs_number(criterion, value))
        else:
            parts = value.rstrip("/").split("/")
            if len(parts) > 1 and parts[-2] != "Patient":
                raise BadRequest(
                    f"Parameter {criterion.position} of the query must name a Patient",
                    expression=criterion.name,
                )
            patient_ids.append(parts[-1])
    alternatives: list[ColumnElement[bool]] = []
    if numbers:
        alternatives.append(Referral.nhs_number.in_(numbers))
    if patient_ids:
        alternatives.append(
            Referral.id.in_(select(Patient.referral_id).where(Patient.id.in_(patient_ids)))
        )
    return or_(*alternatives) if alternatives else false()


def _ods_codes(criterion: Criterion) -> list[str]:
    codes = []
    for value in criterion.values:
        value = value.strip()
        if criterion.modifier == "identifier":
            system, code = _token(value)
            if system not in (None, ODS_ORGANISATION_SYSTEM):
                raise BadRequest(
                    f"Parameter {criterion.position} of the query: organisations are found by "
                    f"ODS code ({ODS_ORGANISATION_SYSTEM}|<code>)",
                    expression=criterion.name,
                )
            codes.append(code)
        else:
            codes.append(value.rsplit("/", 1)[-1])
    return codes


def _codes(criterion: Criterion, system: str | None = None) -> list[str]:
    codes = []
    for value in criterion.values:
        given, code = _token(value.strip())
        if given is not None and system is not None and given != system:
            continue  # another code system: nothing of ours matches it
        codes.append(code)
    return codes


def _dates(column: Any) -> Condition:
    def condition(criterion: Criterion) -> ColumnElement[bool]:
        alternatives = []
        for value in criterion.values:
            prefix, lower, upper = parse_date(value.strip(), criterion.name)
            alternatives.append(
                {
                    "eq": and_(column >= lower, column < upper),
                    "gt": column >= upper,
                    "ge": column >= lower,
                    "lt": column < lower,
                    "le": column < upper,
                }[prefix]
            )
        return or_(*alternatives)

    return condition


def _in(column: Any, values: Callable[[Criterion], list[str]]) -> Condition:
    return lambda criterion: column.in_(values(criterion))


def _ids(criterion: Criterion) -> list[str]:
    return [v.strip() for v in criterion.values]


def _referrals_named(resource_type: str = "ServiceRequest") -> Callable[[Criterion], list[str]]:
    return lambda criterion: _reference_ids(criterion, resource_type)


def _identifier(criterion: Criterion) -> ColumnElement[bool]:
    alternatives = []
    for value in criterion.values:
        system, code = _token(value)
        condition = Referral.identifier_value == code
        if system:
            condition = and_(condition, Referral.identifier_system == system)
        alternatives.append(condition)
    return or_(*alternatives)


def _nhs_numbers(criterion: Criterion) -> list[str]:
    return [_nhs_number(criterion, value) for value in criterion.values]


# Our prescription statuses as FHIR ServiceRequest statuses, and back.
_PRESCRIPTION_STATUS_OF = {fhir: ours for ours, fhir in PRESCRIPTION_STATUS.items()}


def _prescription_statuses(criterion: Criterion) -> list[str]:
    return [_PRESCRIPTION_STATUS_OF.get(code, "") for code in _codes(criterion)]


# --- what each resource type's rows are --------------------------------------------------------


def _referral_rows() -> Any:
    return select(Referral)


def _task_rows() -> Any:
    return (
        select(Case, Referral, SocialPrescribingService.name)
        .join(Case.referral)
        .join(SocialPrescribingService, SocialPrescribingService.id == Case.service_id)
    )


def _patient_rows() -> Any:
    return select(Patient, Referral).join(Referral, Referral.id == Patient.referral_id)


def _referral_found(row: Any) -> Found:
    referral: Referral = row[0]
    trail.note([referral])
    return Found(service_request_resource(referral), referral.id)


def _task_found(row: Any) -> Found:
    case, referral, name = row
    trail.note([referral])
    return Found(task_resource(task_view(case, referral, name)), referral.id)


def _patient_found(row: Any) -> Found:
    patient, referral = row
    trail.note([referral])
    return Found(patient_resource(patient), referral.id)


def _record_found(resource_type: str) -> Callable[[Any], Found]:
    def found(row: Any) -> Found:
        record, nhs, *rest = row
        trail.note_patient(record.referral_id, nhs)
        return Found(
            build(resource_type, record, context_of(record, nhs, *rest)),
            record.referral_id,
        )

    return found


def _time(attribute: str, index: int = 0) -> Callable[[Any], Any]:
    return lambda row: getattr(row[index], attribute)


def _key(column: Any, attribute: str, *, is_time: bool = True, index: int = 0) -> OrderKey:
    return OrderKey(column, _time(attribute, index), is_time)


_PATIENT_CONDITION: Condition = _patient


TARGETS: dict[str, Target] = {
    "ServiceRequest": Target(
        "ServiceRequest",
        _referral_rows,
        _key(Referral.id, "id", is_time=False),
        (_key(Referral.created_at, "created_at"),),
        {
            "_lastUpdated": _key(Referral.last_updated, "last_updated"),
            "status": _key(Referral.status, "status", is_time=False),
        },
        {
            "_id": _in(Referral.id, _ids),
            "identifier": _identifier,
            "patient": _PATIENT_CONDITION,
            "subject": _PATIENT_CONDITION,
            "status": _in(Referral.status, _codes),
            "performer": _in(Referral.service_id, _referrals_named("HealthcareService")),
            "based-on": lambda _criterion: false(),  # searched as prescriptions (below)
            "_lastUpdated": _dates(Referral.last_updated),
        },
        _referral_found,
    ),
    "Task": Target(
        "Task",
        _task_rows,
        _key(Case.id, "id", is_time=False),
        (_key(Case.created_at, "created_at"),),
        {
            "_lastUpdated": _key(Case.updated_at, "updated_at"),
            "authored-on": _key(Case.created_at, "created_at"),
            "status": _key(Case.task_status, "task_status", is_time=False),
        },
        {
            "_id": _in(Case.id, _ids),
            "status": _in(Case.task_status, _codes),
            "business-status": _in(
                Case.business_status, lambda c: _codes(c, BUSINESS_STATUS_SYSTEM)
            ),
            "_lastUpdated": _dates(Case.updated_at),
            "authored-on": _dates(Case.created_at),
            "patient": _PATIENT_CONDITION,
            "subject": _PATIENT_CONDITION,
            "owner": _in(Case.service_id, _referrals_named("HealthcareService")),
            "requester": _in(Referral.organisation, _ods_codes),
            "focus": _in(Case.referral_id, _referrals_named()),
            "based-on": _in(Case.referral_id, _referrals_named()),
        },
        _task_found,
    ),
    "Patient": Target(
        "Patient",
        _patient_rows,
        _key(Patient.id, "id", is_time=False),
        (_key(Patient.created_at, "created_at"),),
        {"_lastUpdated": _key(Patient.last_updated, "last_updated")},
        {
            "_id": _in(Patient.id, _ids),
            "identifier": _in(Referral.nhs_number, _nhs_numbers),
            "_lastUpdated": _dates(Patient.last_updated),
        },
        _patient_found,
    ),
    "Appointment": Target(
        "Appointment",
        lambda: rows(KINDS["Appointment"]),
        _key(Appointment.id, "id", is_time=False),
        (_key(Appointment.booked_at, "booked_at"),),
        {
            "_lastUpdated": _key(Appointment.updated_at, "updated_at"),
            "date": _key(Appointment.start, "start"),
            "status": _key(Appointment.status, "status", is_time=False),
        },
        {
            "_id": _in(Appointment.id, _ids),
            "based-on": _in(Appointment.referral_id, _referrals_named()),
            "patient": _PATIENT_CONDITION,
            "status": _in(Appointment.status, _codes),
            "date": _dates(Appointment.start),
            "_lastUpdated": _dates(Appointment.updated_at),
        },
        _record_found("Appointment"),
    ),
    "Observation": Target(
        "Observation",
        lambda: rows(KINDS["Observation"]),
        _key(WellbeingScore.id, "id", is_time=False),
        (_key(WellbeingScore.measured_at, "measured_at"),),
        {
            "_lastUpdated": _key(WellbeingScore.created_at, "created_at"),
            "date": _key(WellbeingScore.measured_at, "measured_at"),
        },
        {
            "_id": _in(WellbeingScore.id, _ids),
            "based-on": _in(WellbeingScore.referral_id, _referrals_named()),
            "patient": _PATIENT_CONDITION,
            "subject": _PATIENT_CONDITION,
            "date": _dates(WellbeingScore.measured_at),
            "_lastUpdated": _dates(WellbeingScore.created_at),
        },
        _record_found("Observation"),
    ),
    "QuestionnaireResponse": Target(
        "QuestionnaireResponse",
        lambda: rows(KINDS["QuestionnaireResponse"]),
        _key(WellbeingScore.questionnaire_response_id, "questionnaire_response_id", is_time=False),
        (_key(WellbeingScore.measured_at, "measured_at"),),
        {
            "_lastUpdated": _key(WellbeingScore.created_at, "created_at"),
            "authored": _key(WellbeingScore.measured_at, "measured_at"),
        },
        {
            "_id": _in(WellbeingScore.questionnaire_response_id, _ids),
            "based-on": _in(WellbeingScore.referral_id, _referrals_named()),
            "patient": _PATIENT_CONDITION,
            "subject": _PATIENT_CONDITION,
            "authored": _dates(WellbeingScore.measured_at),
            "_lastUpdated": _dates(WellbeingScore.created_at),
        },
        _record_found("QuestionnaireResponse"),
    ),
}

# Social prescriptions: the ServiceRequests a search with based-on finds.
PRESCRIPTION_PARAMETERS = ("based-on", "patient", "subject", "status", "_id", "_lastUpdated")
PRESCRIPTIONS = Target(
    "ServiceRequest",
    lambda: rows(KINDS["ServiceRequest"]),
    _key(Prescription.id, "id", is_time=False),
    (_key(Prescription.prescribed_at, "prescribed_at"),),
    {
        "_lastUpdated": _key(Prescription.updated_at, "updated_at"),
        "status": _key(Prescription.status, "status", is_time=False),
    },
    {
        "_id": _in(Prescription.id, _ids),
        "based-on": _in(Prescription.referral_id, _referrals_named()),
        "patient": _PATIENT_CONDITION,
        "subject": _PATIENT_CONDITION,
        "status": _in(Prescription.status, _prescription_statuses),
        "_lastUpdated": _dates(Prescription.updated_at),
    },
    _record_found("ServiceRequest"),
)


def _check_tables() -> None:
    """The SQL has one condition and one sort for every declared parameter, and no more."""
    for resource_type, target in TARGETS.items():
        declared = SEARCHES[resource_type]
        names = {p.name for p in declared.parameters}
        assert set(target.conditions) == names, resource_type
        assert set(target.sorts) == {p.name for p in declared.parameters if p.sortable}, (
            resource_type
        )
    assert set(PRESCRIPTIONS.conditions) == set(PRESCRIPTION_PARAMETERS)


_check_tables()


# --- running a search ---------------------------------------------------------------------------


def _cursor_values(search: Search, keys: Sequence[OrderKey]) -> list[Any] | None:
    if search.cursor is None:
        return None
    if len(search.cursor) != len(keys):
        raise BadRequest(
            "_cursor is not one this server issued for this search", expression="_cursor"
        )
    values: list[Any] = []
    for key, value in zip(keys, search.cursor, strict=True):
        if key.is_time:
            try:
                instant = dt.datetime.fromisoformat(value)
            except ValueError:
                raise BadRequest(
                    "_cursor is not one this server issued", expression="_cursor"
                ) from None
            if instant.tzinfo is None:
                raise BadRequest("_cursor is not one this server issued", expression="_cursor")
            values.append(instant)
        else:
            values.append(value)
    return values


def _after(keys: Sequence[tuple[OrderKey, bool]], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows after the position ``values`` in the order ``keys`` (column, descending)."""
    alternatives = []
    for index, (key, descending) in enumerate(keys):
        equal = [k.column == v for (k, _), v in zip(keys[:index], values[:index], strict=True)]
        beyond = key.column < values[index] if descending else key.column > values[index]
        alternatives.append(and_(*equal, beyond))
    return or_(*alternatives)


async def run(
    session: AsyncSession,
    principal: Principal,
    search: Search,
    *,
    prescriptions: bool = False,
) -> Result:
    """The matches of ``search`` the caller may see: one page in the order asked (then the
    default order, then id), the total (unless _total=none), the next page's cursor, and what
    _include / _revinclude bring."""
    target = PRESCRIPTIONS if prescriptions else TARGETS[search.resource_type]
    conditions = [target.conditions[c.name](c) for c in search.criteria]
    query = scope.restrict(target.rows().where(*conditions), visible_to(principal))
    total: int | None = None
    if search.total != "none" or search.summary_count or search.count == 0:
        total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if search.summary_count or search.count == 0:
        return Result([], [], total, None)
    ordered = [(target.sorts[s.name], s.descending) for s in search.sort]
    ordered += [(key, False) for key in target.default_order]
    ordered.append((target.id_key, False))
    keys = [key for key, _ in ordered]
    position = _cursor_values(search, keys)
    if position is not None:
        query = query.where(_after(ordered, position))
    query = query.order_by(
        *(key.column.desc() if descending else key.column for key, descending in ordered)
    ).limit(search.count + 1)
    found_rows = list(await session.execute(query))
    next_cursor = None
    if len(found_rows) > search.count:
        found_rows = found_rows[: search.count]
        last = found_rows[-1]
        next_cursor = encode_cursor([key.read(last) for key in keys])
    matches = [target.build(row) for row in found_rows]
    included = await _included(session, search, matches, prescriptions=prescriptions)
    return Result(matches, included, total, next_cursor)


# --- _include and _revinclude -----------------------------------------------------------------


async def _included(
    session: AsyncSession, search: Search, matches: list[Found], *, prescriptions: bool
) -> list[Found]:
    """What _include / _revinclude bring for ``matches``: resources of the same referrals (so
    visible to whoever sees the matches), each once, none that is already a match."""
    if not matches or prescriptions:
        return []
    referral_ids = sorted({m.referral_id for m in matches})
    wanted = set(search.includes) | set(search.revincludes)
    out: list[Found] = []
    if wanted & {"ServiceRequest:patient", "ServiceRequest:subject", "Task:patient"}:
        rows_ = await session.execute(_patient_rows().where(Patient.referral_id.in_(referral_ids)))
        out += [_patient_found(row) for row in rows_]
    if wanted & {"Task:focus", "Task:based-on"} and search.resource_type == "ServiceRequest":
        rows_ = await session.execute(_task_rows().where(Case.referral_id.in_(referral_ids)))
        out += [_task_found(row) for row in rows_]
    if wanted & {"Task:focus", "Task:based-on"} and search.resource_type == "Task":
        rows_ = await session.execute(_referral_rows().where(Referral.id.in_(referral_ids)))
        out += [_referral_found(row) for row in rows_]
    if "Task:output" in wanted:
        out += await _outputs(session, matches)
    seen = {(m.resource["resourceType"], m.resource["id"]) for m in matches}
    unique = []
    for item in out:
        key = (item.resource["resourceType"], item.resource["id"])
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


async def _outputs(session: AsyncSession, tasks: list[Found]) -> list[Found]:
    """The resources the Tasks list in output (they belong to the Tasks' referrals)."""
    by_type: dict[str, set[str]] = {}
    referral_ids = {task.referral_id for task in tasks}
    for task in tasks:
        for output in task.resource.get("output", []):
            reference = output.get("valueReference", {}).get("reference", "")
            kind, _, ident = reference.partition("/")
            if kind in KINDS and ident:
                by_type.setdefault(kind, set()).add(ident)
    out: list[Found] = []
    for kind, ids in sorted(by_type.items()):
        record_kind = KINDS[kind]
        query = rows(record_kind).where(
            record_kind.id_column.in_(sorted(ids)), record_kind.model.referral_id.in_(referral_ids)
        )
        out += [_record_found(kind)(row) for row in await session.execute(query)]
    return out
