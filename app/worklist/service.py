"""The advisors' worklist: the cases of the caller's services, filtered, sorted and paged.

The caller's services are those its organisation runs (an admin without an organisation sees
every service). Filters work in SQL before paging, flags included: each service has its own
targets, so the thresholds are computed here from ``now`` for each distinct target and compared
with the columns, which works the same on SQLite and PostgreSQL. A page costs one query for the
services, one for the cases and one for their next appointments.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, and_, case, false, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases.models import Appointment, Case, Referral
from app.cases.states import CLOSED_STATES, OPEN_STATES, CaseState
from app.cases.visibility import runs
from app.directory.models import SocialPrescribingService
from app.errors import BusinessRuleViolation, NotFound
from app.security import scope
from app.security.auth import Principal
from app.worklist.schemas import (
    NextAppointment,
    WorklistFlags,
    WorklistItem,
    WorklistLinks,
    WorklistPage,
    WorklistPatient,
    WorklistReason,
    WorklistSort,
)

DAY = dt.timedelta(days=1)
_OPEN = sorted(state.value for state in OPEN_STATES)
_ALL_STATES = [state.value for state in CaseState]


@dataclass(frozen=True)
class WorklistQuery:
    service: str | None = None
    team: str | None = None
    advisor: str | None = None
    states: Sequence[str] | None = None  # as sent: repeated and/or comma-separated
    waiting_longer_than_days: int | None = None
    support_window_exceeded: bool | None = None
    first_contact_overdue: bool | None = None
    sort: WorklistSort = "oldest"
    limit: int = 50
    cursor: str | None = None


# --- parameters ----------------------------------------------------------------------------


def parse_states(raw: Sequence[str] | None) -> list[str]:
    """The states asked for (open states when none); 422 naming ``state`` for an unknown one."""
    if raw is None:
        return _OPEN
    states = {part.strip() for value in raw for part in value.split(",") if part.strip()}
    if not states or not states <= set(_ALL_STATES):
        raise BusinessRuleViolation(
            f"state must be one of {', '.join(_ALL_STATES)} (repeat it or separate with commas)",
            expression="state",
        )
    return sorted(states)


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last item's sort key."""

    group: int  # new-first: 0 for received cases, 1 for the rest; always 0 otherwise
    received_at: dt.datetime
    case_id: str


def encode_cursor(sort: WorklistSort, position: Position) -> str:
    raw = orjson.dumps([sort, position.group, position.received_at.isoformat(), position.case_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_cursor() -> BusinessRuleViolation:
    return BusinessRuleViolation(
        "cursor is not one this server issued for this sort", expression="cursor"
    )


def decode_cursor(sort: WorklistSort, cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value: Any = orjson.loads(raw)
        if not isinstance(value, list) or len(value) != 4:
            raise ValueError
        cursor_sort, group, stamp, case_id = value
        if cursor_sort != sort or group not in (0, 1) or type(group) is not int:
            raise ValueError
        if not isinstance(stamp, str) or not isinstance(case_id, str) or not case_id:
            raise ValueError
        received_at = dt.datetime.fromisoformat(stamp)
        if received_at.tzinfo is None or (group == 1 and sort != "new-first"):
            raise ValueError
    except (ValueError, TypeError, binascii.Error):
        raise _bad_cursor() from None
    return Position(group, received_at.astimezone(dt.UTC), case_id)


# --- the caller's services and the flags -----------------------------------------------------


async def visible_services(
    session: AsyncSession, principal: Principal, service_id: str | None
) -> list[SocialPrescribingService]:
    """The caller's services (or the one asked for, 404 when it is not the caller's)."""
    query = select(SocialPrescribingService).order_by(SocialPrescribingService.id)
    query = scope.restrict(query, runs(principal))
    if service_id is not None:
        query = query.where(SocialPrescribingService.id == service_id)
    services = list(await session.scalars(query))
    if service_id is not None and not services:
        # Another organisation's service is as unknown as one that does not exist.
        raise NotFound("No such service among yours", expression="service")
    return services


def _by_days(services: Iterable[SocialPrescribingService], attribute: str) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = defaultdict(list)
    for service in services:
        groups[int(getattr(service, attribute))].append(service.id)
    return groups


def first_contact_overdue_clause(
    services: Sequence[SocialPrescribingService], now: dt.datetime
) -> ColumnElement[bool]:
    """Open, not contacted, received more than the service's target ago (never NULL)."""
    late = [
        and_(Case.service_id.in_(ids), Case.created_at < now - dt.timedelta(days=days))
        for days, ids in _by_days(services, "first_contact_target_days").items()
    ]
    return and_(Case.state.in_(_OPEN), Case.first_contact_at.is_(None), or_(false(), *late))


def support_window_exceeded_clause(
    services: Sequence[SocialPrescribingService], now: dt.datetime
) -> ColumnElement[bool]:
    """Open, contacted, first contact more than the service's window ago (never NULL)."""
    late = [
        and_(Case.service_id.in_(ids), Case.first_contact_at < now - dt.timedelta(days=days))
        for days, ids in _by_days(services, "support_window_days").items()
    ]
    return and_(Case.state.in_(_OPEN), Case.first_contact_at.is_not(None), or_(false(), *late))


def flags_of(case: Case, service: SocialPrescribingService, now: dt.datetime) -> WorklistFlags:
    """The same rules as the SQL clauses above, for one case."""
    is_open = case.state in OPEN_STATES
    contact = case.first_contact_at
    return WorklistFlags(
        first_contact_overdue=is_open
        and contact is None
        and now - case.created_at > dt.timedelta(days=service.first_contact_target_days),
        support_window_exceeded=is_open
        and contact is not None
        and now - contact > dt.timedelta(days=service.support_window_days),
    )


# --- order and paging ------------------------------------------------------------------------

# new-first: the referrals nobody has picked up yet come first.
_GROUP = case((Case.state == CaseState.RECEIVED.value, 0), else_=1)


def _after(received_at: dt.datetime, case_id: str, *, descending: bool) -> ColumnElement[bool]:
    if descending:
        return or_(
            Case.created_at < received_at, and_(Case.created_at == received_at, Case.id < case_id)
        )
    return or_(
        Case.created_at > received_at, and_(Case.created_at == received_at, Case.id > case_id)
    )


def _ordered(query: Select[Any], sort: WorklistSort, position: Position | None) -> Select[Any]:
    if sort == "newest":
        if position is not None:
            query = query.where(_after(position.received_at, position.case_id, descending=True))
        return query.order_by(Case.created_at.desc(), Case.id.desc())
    if sort == "new-first":
        if position is not None:
            later = _after(position.received_at, position.case_id, descending=False)
            is_new = Case.state == CaseState.RECEIVED.value
            if position.group == 0:
                query = query.where(or_(not_(is_new), and_(is_new, later)))
            else:
                query = query.where(not_(is_new), later)
        return query.order_by(_GROUP, Case.created_at, Case.id)
    if position is not None:
        query = query.where(_after(position.received_at, position.case_id, descending=False))
    return query.order_by(Case.created_at, Case.id)


def _position(sort: WorklistSort, case: Case) -> Position:
    group = 1 if sort == "new-first" and case.state != CaseState.RECEIVED.value else 0
    return Position(group, case.created_at, case.id)


# --- the page --------------------------------------------------------------------------------


def _whole_days(start: dt.datetime, end: dt.datetime) -> int:
    return max(0, (end - start) // DAY)


def _reasons(stored: list[dict[str, Any]] | None) -> list[WorklistReason]:
    reasons: list[WorklistReason] = []
    seen: set[str] = set()
    for reason in stored or []:
        domain = reason.get("domain") if isinstance(reason, dict) else None
        if isinstance(domain, str) and domain not in seen:
            seen.add(domain)
            display = reason.get("domain_display")
            reasons.append(
                WorklistReason(code=domain, display=display if isinstance(display, str) else None)
            )
    return reasons


async def next_appointments(
    session: AsyncSession, case_ids: list[str], now: dt.datetime
) -> dict[str, NextAppointment]:
    """For each case, its earliest booked appointment starting now or later (one query)."""
    if not case_ids:
        return {}
    rows = await session.scalars(
        select(Appointment)
        .where(
            Appointment.case_id.in_(case_ids),
            Appointment.status == "booked",
            Appointment.start >= now,
        )
        .order_by(Appointment.case_id, Appointment.start, Appointment.id)
    )
    earliest: dict[str, NextAppointment] = {}
    for appointment in rows:
        if appointment.case_id not in earliest:
            earliest[appointment.case_id] = NextAppointment(
                appointment_id=appointment.external_id,
                fhir_id=f"Appointment/{appointment.id}",
                start=appointment.start,
                appointment_type=appointment.appointment_type,
                duration_minutes=appointment.minutes,
            )
    return earliest


_REFERRAL_COLUMNS = (
    Referral.organisation,
    Referral.referring_team,
    Referral.reasons,
    Referral.priority,
    Referral.patient_name,
    Referral.nhs_number,
    Referral.phone,
)


async def list_worklist(
    session: AsyncSession, principal: Principal, request: WorklistQuery, now: dt.datetime
) -> WorklistPage:
    states = parse_states(request.states)
    position = decode_cursor(request.sort, request.cursor) if request.cursor else None
    services = await visible_services(session, principal, request.service)
    if not services:
        return WorklistPage(items=[], next_cursor=None)
    by_id = {service.id: service for service in services}

    # Only the referral's columns the item shows (not the stored FHIR resource).
    query = (
        select(Case, *_REFERRAL_COLUMNS)
        .join(Case.referral)
        .where(Case.service_id.in_(list(by_id)), Case.state.in_(states))
    )
    if request.team is not None:
        query = query.where(Case.team == request.team)
    if request.advisor is not None:
        query = query.where(Case.advisor == request.advisor)
    if request.waiting_longer_than_days is not None:
        cutoff = now - dt.timedelta(days=request.waiting_longer_than_days)
        query = query.where(Case.created_at < cutoff)
    if request.first_contact_overdue is not None:
        overdue = first_contact_overdue_clause(services, now)
        query = query.where(overdue if request.first_contact_overdue else not_(overdue))
    if request.support_window_exceeded is not None:
        exceeded = support_window_exceeded_clause(services, now)
        query = query.where(exceeded if request.support_window_exceeded else not_(exceeded))
    query = _ordered(query, request.sort, position).limit(request.limit + 1)

    rows = list(await session.execute(query))
    page = rows[: request.limit]
    appointments = await next_appointments(session, [row[0].id for row in page], now)
    items = []
    for row in page:
        case_: Case = row[0]
        organisation, referring_team, reasons, priority, name, nhs_number, phone = row[1:]
        trail.note_patient(case_.referral_id, nhs_number)
        end = now
        if case_.state in CLOSED_STATES and case_.closed_at is not None:
            end = case_.closed_at
        contact = case_.first_contact_at
        items.append(
            WorklistItem(
                case_id=case_.id,
                referral_id=case_.referral_id,
                service=case_.service_id,
                state=case_.state,
                business_status=case_.business_status,
                team=case_.team,
                advisor=case_.advisor,
                priority=priority,
                received_at=case_.created_at,
                closed_at=case_.closed_at,
                waiting_days=_whole_days(case_.created_at, end),
                first_contact_at=contact,
                days_to_first_contact=None
                if contact is None
                else _whole_days(case_.created_at, contact),
                next_appointment=appointments.get(case_.id),
                flags=flags_of(case_, by_id[case_.service_id], now),
                reasons=_reasons(reasons),
                referring_team=referring_team,
                referring_organisation=organisation,
                patient=WorklistPatient(name=name, nhs_number=nhs_number, phone=phone),
                links=WorklistLinks(
                    case=f"/api/v1/cases/{case_.id}",
                    task=f"/fhir/Task/{case_.id}",
                    referral=f"/fhir/ServiceRequest/{case_.referral_id}",
                ),
            )
        )
    next_cursor = None
    if len(rows) > request.limit and page:
        next_cursor = encode_cursor(request.sort, _position(request.sort, page[-1][0]))
    return WorklistPage(items=items, next_cursor=next_cursor)
