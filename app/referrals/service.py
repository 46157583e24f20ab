"""Referrals: intake, idempotency, amendments, reads, search and cancellation. Never commits."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import UniqueConstraint, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases import history
from app.cases import search as case_search
from app.cases import service as cases
from app.cases.models import Patient, Referral
from app.cases.states import CLOSED_STATES, CaseState
from app.cases.visibility import visible_referral, visible_to
from app.db import (
    execute_made_once,
    forget_unwritten,
    join_as_rows,
    new_row,
    nothing_sent,
    table_of,
    utcnow,
    violated_constraint,
)
from app.directory.models import SocialPrescribingService
from app.directory.service import service_by_id
from app.errors import (
    BadRequest,
    BusinessRuleViolation,
    Conflict,
    Forbidden,
    Issue,
    PreconditionFailed,
    PreconditionRequired,
    purged,
)
from app.fhir.searchparams import Search, parse_search
from app.referrals.changes import (
    CHANGEABLE,
    changed_elements,
    content,
    fixed_differences,
    patient_of,
    stored_resource,
)
from app.referrals.intake import ReferralDraft
from app.security import scope
from app.security.auth import Principal

__all__ = ["stored_resource"]

# Each column's attribute and column keys, and the attributes alone.
_REFERRAL_KEYS = tuple((a.key, a.columns[0].key) for a in inspect(Referral).column_attrs)
_REFERRAL_ATTRIBUTES = tuple(key for key, _column in _REFERRAL_KEYS)
# The unique constraint on a referral's identity: the organisation that sent it, and its identifier.
_REFERRAL_IDENTITY = ["organisation", "identifier_system", "identifier_value"]


# The request's last write, given the answer's status and what writes: it writes the request's
# audit record with it (app.audit.trail.fold).
LastWrite = Callable[[int, Callable[[], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class Intake:
    referral: Referral
    created: bool
    patient: Patient | None = None
    case_id: str | None = None  # the case (and Task) a create made
    # The work that opened that case, still open when the caller asked (finish=False) to apply
    # more events in it: an import's history (app.cases.service.CaseWork).
    work: cases.CaseWork | None = None


def identifier_conflict(held: Referral) -> Conflict:
    """A repeat of an identifier we hold, with different content: the change must be an update
    (it would otherwise vanish). Names the element and our referral, never what was sent."""
    return Conflict(
        "A referral with this identifier is already held with different content "
        f"(ServiceRequest/{held.id}, version {held.version_id}); to change it, update it: "
        f'PUT /fhir/ServiceRequest/{held.id} with If-Match: W/"{held.version_id}"',
        issues=[
            Issue(
                "duplicate",
                "A referral with this identifier is already held with different content "
                f"(ServiceRequest/{held.id}, version {held.version_id}); to change it, update "
                f'it: PUT /fhir/ServiceRequest/{held.id} with If-Match: W/"{held.version_id}"',
                "ServiceRequest.identifier",
                details="identifier-conflict",
            )
        ],
    )


def _repeat(held: Referral, raw: dict[str, Any]) -> Intake:
    """The referral held for a repeat: the same content answers 200, other content 409."""
    if held.purged_at is not None:
        raise purged("A referral with this identifier")
    if content(stored_resource(raw)) != content(held.resource):
        raise identifier_conflict(held)
    return Intake(held, created=False)


async def _existing(
    session: AsyncSession, organisation: str, draft: ReferralDraft
) -> Referral | None:
    return await session.scalar(
        select(Referral).where(
            Referral.organisation == organisation,
            Referral.identifier_system == draft.identifier_system,
            Referral.identifier_value == draft.identifier_value,
        )
    )


def _insert_statement(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = table_of(Referral)
    return (
        insert(table)
        .on_conflict_do_nothing(index_elements=_REFERRAL_IDENTITY)
        .returning(table.c.id)
    )


# Built once: values go as parameters, so SQLAlchemy neither rebuilds nor re-keys it per call.
_INSERT = {dialect: _insert_statement(dialect) for dialect in ("postgresql", "sqlite")}


async def _insert_new(session: AsyncSession, referral: Referral) -> bool:
    """Insert ``referral`` (a new row holding every column) unless its identifier is held
    (False then), in one statement: no SELECT before it and no savepoint around it. Inserted,
    the referral joins the session as the row. The session's pending objects are left for
    later: they refer to the referral, which must be written first."""
    statement = _INSERT[session.get_bind().dialect.name]
    held = referral.__dict__
    row = {column: held[key] for key, column in _REFERRAL_KEYS}
    with session.no_autoflush:
        if not await execute_made_once(session, statement, row):
            return False
    join_as_rows(session, [referral])
    return True


class _Held(Conflict):
    """Intake's last write found the referral's identifier held (by a repeat, concurrent or
    not): answered as the held referral, never sent to the client as such."""


_IDENTITY_CONSTRAINT = next(
    constraint.name
    for constraint in table_of(Referral).constraints
    if isinstance(constraint, UniqueConstraint)
    and [column.name for column in constraint.columns] == _REFERRAL_IDENTITY
)


def _new_patient(referral: Referral, draft: ReferralDraft) -> Patient:
    return new_row(
        Patient,
        id=str(uuid.uuid4()),
        referral_id=referral.id,
        resource=patient_of(referral.resource, draft.nhs_number),
        version_id=1,
        created_at=referral.created_at,
        last_updated=referral.created_at,
    )


async def _held_instead(
    session: AsyncSession, organisation: str, draft: ReferralDraft, raw: dict[str, Any]
) -> Intake:
    held = await _existing(session, organisation, draft)
    assert held is not None  # the conflicting row commits before ours can be refused
    return _repeat(held, raw)


async def _intake_as_last_write(
    session: AsyncSession,
    referral: Referral,
    draft: ReferralDraft,
    raw: dict[str, Any],
    service: SocialPrescribingService,
    context: cases.EventContext,
    record: LastWrite,
) -> Intake:
    """The new referral, its Patient and its case written as the request's last write, the
    request's audit record with them (``record``). On PostgreSQL, when the transaction has sent
    nothing before (app.db.nothing_sent), that is one statement which commits itself: the
    unique constraint on the referral's identity refuses a held one, and the statement fails
    whole, writing nothing. Otherwise the referral's insert goes first, as for any other
    caller, and the rest in one statement after it (data-modifying CTEs) or, on SQLite, one
    call. A held identifier leaves nothing of the new referral in the session: the held one
    answers."""
    assert referral.organisation is not None
    patient = _new_patient(referral, draft)
    session.add(patient)
    with session.no_autoflush:  # what a cache had to read needs none of the new rows
        work = await cases.open_case(session, referral, service, context, finish=False)

    async def write() -> None:
        if await nothing_sent(session):
            session.add(referral)  # written by the work's statement, with the rest
            try:
                await work.finish(final=True)
            except IntegrityError as exc:
                # Refused whole, nothing written and no transaction left aborted: the held
                # referral can be read (a refusal by a flush leaves the session inactive).
                if violated_constraint(exc) == _IDENTITY_CONSTRAINT and session.is_active:
                    raise _Held("A referral with this identifier is held already") from None
                raise
            return
        if not await _insert_new(session, referral):
            raise _Held("A referral with this identifier is held already")
        await work.finish()

    try:
        await record(201, write)
    except _Held:
        forget_unwritten(session)
        trail.forget([referral])
        return await _held_instead(session, referral.organisation, draft, raw)
    return Intake(referral, created=True, patient=patient, case_id=work.case.id, work=work)


async def _target_service(
    session: AsyncSession, draft: ReferralDraft, principal: Principal
) -> SocialPrescribingService:
    service_id = draft.service_id or principal.default_service_id
    if service_id is None:
        raise BusinessRuleViolation(
            "No target service: name it in performer (HealthcareService/<id>) or give the client a "
            "default service",
            issue_code="required",
            expression="ServiceRequest.performer",
        )
    service = await service_by_id(session, service_id)
    if service is None:
        raise BusinessRuleViolation(
            "performer names no social prescribing service known here",
            issue_code="not-found",
            expression="ServiceRequest.performer",
        )
    return service


def check_requester(principal: Principal, draft: ReferralDraft) -> None:
    """403 unless the requester's ODS code (when it gives one) is an organisation the caller may
    refer for: its own, or one the installation's admin named for it (DESIGN §11)."""
    if draft.requester_ods is not None and not scope.may_refer_for(principal, draft.requester_ods):
        raise Forbidden(
            "ServiceRequest.requester names an organisation this client may not refer for: its "
            "own organisation, or one an admin has named for it (PUT "
            "/api/v1/clients/{id}/acts-for)",
            expression="ServiceRequest.requester",
        )


async def create_referral(
    session: AsyncSession,
    draft: ReferralDraft,
    raw: dict[str, Any],
    principal: Principal,
    context: cases.EventContext,
    if_none_exist: str | None = None,
    *,
    received_at: dt.datetime | None = None,
    finish: bool = True,
    record: LastWrite | None = None,
) -> Intake:
    """Store a new referral with its case, event and outbox rows, or return the one held.

    ``received_at`` is now unless the caller brings history (the sandbox's seeded cases, an
    import); ``finish`` False leaves the new case's work open for the caller's further events.
    ``record``: the request's last write, with its audit record (app.audit.trail.fold): given,
    the new referral and its case are written through it as the request's last write
    (``_intake_as_last_write``: one round trip on PostgreSQL), and ``finish`` is not read."""
    assert principal.organisation is not None
    check_requester(principal, draft)
    if if_none_exist:
        matches = await conditional_matches(session, principal, if_none_exist)
        if len(matches) > 1:
            raise PreconditionFailed("If-None-Exist matches more than one referral")
        if matches:
            match = matches[0]
            if (match.identifier_system, match.identifier_value) == (
                draft.identifier_system,
                draft.identifier_value,
            ):
                return _repeat(match, raw)
            return Intake(match, created=False)
    try:
        service = await _target_service(session, draft, principal)
    except (BusinessRuleViolation, Forbidden):
        # A repeat of a referral we hold answers with it even if its service has gone since.
        held = await _existing(session, principal.organisation, draft)
        if held is None:
            raise
        return _repeat(held, raw)

    now = received_at or dt.datetime.now(dt.UTC)
    # Every column given (None where the referral has none): one insert statement, whatever
    # the referral holds.
    values: dict[str, Any] = dict.fromkeys(_REFERRAL_ATTRIBUTES)
    values.update(
        id=str(uuid.uuid4()),
        organisation=principal.organisation,
        identifier_system=draft.identifier_system,
        identifier_value=draft.identifier_value,
        service_id=service.id,
        client_id=principal.client_id,
        status="active",
        intent=draft.intent,
        priority=draft.priority,
        authored_on=draft.authored_on,
        nhs_number=draft.nhs_number,
        patient_name=draft.patient_name,
        birth_date=draft.birth_date,
        gender=draft.gender,
        postcode=draft.postcode,
        phone=draft.phone,
        requester_reference=draft.requester_reference,
        requester_display=draft.requester_display,
        requester_ods=draft.requester_ods,
        referring_team=draft.referring_team,
        reasons=draft.reasons,
        age_band=draft.age_band,
        referral_source=draft.referral_source,
        staff_group=draft.staff_group,
        referral_unit=draft.referral_unit,
        consent_reference=draft.consent_reference,
        notes=draft.notes,
        resource=stored_resource(raw),
        version_id=1,
        created_at=now,
        last_updated=now,
        request_id=context.request_id,
        correlation_id=context.correlation_id,
    )
    referral = new_row(Referral, **values)
    # The unique constraint decides between repeats, concurrent or not (DESIGN §10), in the
    # insert itself: no row comes back for a held identifier, which then answers as held.
    if record is not None:
        return await _intake_as_last_write(session, referral, draft, raw, service, context, record)
    if not await _insert_new(session, referral):
        return await _held_instead(session, principal.organisation, draft, raw)
    patient = _new_patient(referral, draft)
    session.add(patient)
    work = await cases.open_case(
        session,
        referral,
        service,
        context,
        finish=finish,
    )
    return Intake(referral, created=True, patient=patient, case_id=work.case.id, work=work)


async def get_referral(session: AsyncSession, principal: Principal, referral_id: str) -> Referral:
    """The referral if the caller may see it (404 otherwise); 410 once it has been purged."""
    return await visible_referral(session, principal, referral_id)


async def search_referrals(
    session: AsyncSession, principal: Principal, search: Search
) -> case_search.Result:
    """Referrals (or, with based-on, social prescriptions) matching ``search`` that the caller
    may see, one page."""
    return await case_search.run(session, principal, search, prescriptions=search.has("based-on"))


async def conditional_matches(
    session: AsyncSession, principal: Principal, query_string: str
) -> list[Referral]:
    """Referrals an If-None-Exist query (``identifier=…&…``) matches among those the caller's
    organisation sent (not those it receives as a service: they are not its to hold)."""
    pairs = parse_qsl(query_string.lstrip("?"), keep_blank_values=True)
    if not pairs:
        raise BusinessRuleViolation(
            "If-None-Exist carries no search parameter", issue_code="invalid"
        )
    # A condition must be understood whole: strict, whatever the request preferred.
    search = parse_search("ServiceRequest", pairs, strict=True)
    if search.has("based-on") or not search.criteria:
        raise BadRequest(
            "If-None-Exist takes search parameters of referrals", issue_code="not-supported"
        )
    target = case_search.TARGETS["ServiceRequest"]
    conditions = [target.conditions[c.name](c) for c in search.criteria]
    query = (
        scope.restrict(select(Referral).where(*conditions), visible_to(principal))
        .where(Referral.organisation == principal.organisation)
        .limit(2)
    )
    return list(await session.scalars(query))


def _check_version(referral: Referral, if_match: str) -> None:
    tags = [tag.strip().removeprefix("W/") for tag in if_match.split(",")]
    if f'"{referral.version_id}"' not in tags:
        raise PreconditionFailed(
            f'If-Match does not match the current version (W/"{referral.version_id}")'
        )


async def update_referral(
    session: AsyncSession,
    principal: Principal,
    referral_id: str,
    raw: dict[str, Any],
    draft: ReferralDraft | None,
    if_match: str | None,
    context: cases.EventContext,
) -> tuple[Referral, bool]:
    """A FHIR update of a held referral by its referrer: a cancellation (status 'revoked',
    nothing else changed) or an amendment of what a referrer may change (``draft``: the
    incoming resource assessed as a referral), each an event through the one domain function.
    Returns the referral and whether anything changed (a repeat of an update already made
    changes nothing)."""
    referral = await get_referral(session, principal, referral_id)
    if principal.organisation != referral.organisation:
        raise Forbidden("Only the referring organisation may change a referral")
    if raw.get("id") not in (None, referral_id):
        raise BusinessRuleViolation(
            "The resource id must match the id in the URL",
            issue_code="invalid",
            expression="ServiceRequest.id",
        )
    if not if_match or not if_match.strip():
        raise PreconditionRequired(
            "If-Match is required: the version you are changing, as the ETag of your last read "
            f'(now W/"{referral.version_id}")'
        )
    incoming = stored_resource(raw)
    new_status = raw.get("status")
    same_content = content(incoming) == content(referral.resource)
    if same_content and new_status == referral.status:
        return referral, False  # a repeat of an update already made changes nothing
    _check_version(referral, if_match)
    if same_content:
        if new_status != "revoked" or referral.status != "active":
            raise BusinessRuleViolation(
                f"status may change only from 'active' to 'revoked' ({CHANGEABLE})",
                expression="ServiceRequest.status",
            )
        await _apply(session, referral, "referral.cancelled", {}, context, cancel=True)
        return referral, True
    if new_status != referral.status:
        raise BusinessRuleViolation(
            "A cancellation changes status alone: send the amendment and the cancellation as "
            "two updates",
            expression="ServiceRequest.status",
        )
    fixed = fixed_differences(referral.resource, incoming)
    if fixed:
        raise BusinessRuleViolation(
            f"Only some elements of a referral may change ({CHANGEABLE}); this update also "
            f"changes {', '.join(fixed[:10])}",
            issues=[
                Issue(
                    "business-rule",
                    f"{where} may not change once the referral is made ({CHANGEABLE})",
                    where,
                )
                for where in fixed[:20]
            ],
        )
    assert draft is not None  # an active referral's update was assessed as a referral
    changed = changed_elements(referral.resource, incoming)
    # The version this amendment supersedes, kept with its event (app.cases.history).
    superseded = history.referral_version(referral)
    now = utcnow()
    referral.priority = draft.priority
    referral.reasons = draft.reasons
    referral.notes = draft.notes
    referral.consent_reference = draft.consent_reference
    referral.phone = draft.phone
    referral.postcode = draft.postcode
    referral.resource = incoming
    await _apply(
        session,
        referral,
        "referral.updated",
        {"changed": changed},
        context,
        now=now,
        versions=[superseded],
    )
    if any(name.startswith("Patient.") for name in changed):
        patient = await session.scalar(select(Patient).where(Patient.referral_id == referral.id))
        if patient is not None:
            await history.keep(session, referral.id, [history.patient_version(patient)])
            patient.resource = patient_of(incoming, referral.nhs_number)
            patient.version_id += 1
            patient.last_updated = now
    return referral, True


async def _apply(
    session: AsyncSession,
    referral: Referral,
    event_type: str,
    data: dict[str, Any],
    context: cases.EventContext,
    *,
    cancel: bool = False,
    now: dt.datetime | None = None,
    versions: Sequence[history.Version] = (),
) -> None:
    """The referrer's change as a case event: refused (409) once the case is closed."""
    case = await cases.lock_case(session, referral.id)
    assert case is not None
    if CaseState(case.state) in CLOSED_STATES:
        what = "cancelled" if cancel else "changed"
        raise Conflict(
            f"The referral cannot be {what}: its case is already closed ('{case.state}')",
            expression="ServiceRequest.status" if cancel else "ServiceRequest",
        )
    service = await service_by_id(session, referral.service_id)
    assert service is not None
    if not cancel:
        # The referral's new version, kept with the event (app.cases.history).
        referral.version_id += 1
        referral.last_updated = now or utcnow()
    await cases.apply_event(
        session,
        case,
        referral,
        service,
        cases.NewEvent(type=event_type, source="clinician", data=data),
        context,
        now=now,
        versions=versions,
    )
    await session.flush()
