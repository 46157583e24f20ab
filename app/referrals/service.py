"""Referrals: intake, idempotency, reads, search and cancellation. Never commits."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases import service as cases
from app.cases.models import Referral
from app.cases.states import CLOSED_STATES, CaseState
from app.cases.visibility import organisation_sees, visible_to
from app.directory.models import SocialPrescribingService
from app.errors import (
    BusinessRuleViolation,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    purged,
)
from app.fhir import search as fhir_search
from app.fhir.codes import NHS_NUMBER_SYSTEM
from app.fhir.nhs_number import normalise
from app.referrals.intake import ReferralDraft
from app.security import scope
from app.security.auth import Principal

SEARCH_PARAMETERS = frozenset({"identifier", "patient.identifier", "status", "_lastUpdated", "_id"})
# Elements of a held referral a referrer may change, and how (FHIR update).
CHANGEABLE = "Only status may change, from 'active' to 'revoked' (cancelling the referral)"
_IGNORED_ON_COMPARE = ("id", "meta", "status", "text")


@dataclass(frozen=True)
class Intake:
    referral: Referral
    created: bool


def stored_resource(raw: dict[str, Any]) -> dict[str, Any]:
    """What we keep of an accepted ServiceRequest: everything but the id and our meta."""
    resource = {k: v for k, v in raw.items() if k not in ("id", "meta")}
    meta = raw.get("meta")
    if isinstance(meta, dict):
        kept = {k: meta[k] for k in ("profile", "tag", "security") if k in meta}
        if kept:
            resource["meta"] = kept
    return resource


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
    service = await session.get(SocialPrescribingService, service_id)
    if service is None:
        raise BusinessRuleViolation(
            "performer names no social prescribing service known here",
            issue_code="not-found",
            expression="ServiceRequest.performer",
        )
    return service


async def create_referral(
    session: AsyncSession,
    draft: ReferralDraft,
    raw: dict[str, Any],
    principal: Principal,
    context: cases.EventContext,
    if_none_exist: str | None = None,
    *,
    received_at: dt.datetime | None = None,
) -> Intake:
    """Store a new referral with its case, event and outbox rows, or return the one held.

    ``received_at`` is now unless the caller brings history (the sandbox's seeded cases)."""
    assert principal.organisation is not None
    if if_none_exist:
        matches = await conditional_matches(session, principal, if_none_exist)
        if len(matches) > 1:
            raise PreconditionFailed("If-None-Exist matches more than one referral")
        if matches:
            return Intake(matches[0], created=False)
    held = await _existing(session, principal.organisation, draft)
    if held is not None:
        if held.purged_at is not None:
            raise purged("A referral with this identifier")
        return Intake(held, created=False)
    service = await _target_service(session, draft, principal)

    now = received_at or dt.datetime.now(dt.UTC)
    referral = Referral(
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
    # The unique constraint decides between concurrent repeats (DESIGN §10): the loser's insert
    # fails inside its savepoint, and it answers with the winner's referral.
    try:
        async with session.begin_nested():
            session.add(referral)
            await session.flush()
    except IntegrityError:
        held = await _existing(session, principal.organisation, draft)
        if held is None:
            raise
        return Intake(held, created=False)
    await cases.open_case(session, referral, service, context)
    await session.flush()
    return Intake(referral, created=True)


async def get_referral(session: AsyncSession, principal: Principal, referral_id: str) -> Referral:
    """The referral if the caller may see it (404 otherwise); 410 once it has been purged."""
    query = select(Referral).where(Referral.id == referral_id)
    referral = await session.scalar(scope.restrict(query, organisation_sees(principal)))
    if referral is None:
        raise NotFound("No such ServiceRequest is known here")
    trail.note([referral])
    if referral.purged_at is not None:
        raise purged(f"ServiceRequest/{referral.id}")
    return referral


def _conditions(params: Mapping[str, str]) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if "_id" in params:
        conditions.append(Referral.id.in_(params["_id"].split(",")))
    if "identifier" in params:
        alternatives = []
        for value in params["identifier"].split(","):
            system, code = fhir_search.token(value)
            condition = Referral.identifier_value == code
            if system:
                condition = and_(condition, Referral.identifier_system == system)
            alternatives.append(condition)
        conditions.append(or_(*alternatives))
    if "patient.identifier" in params:
        numbers = []
        for value in params["patient.identifier"].split(","):
            system, code = fhir_search.token(value)
            if system in (None, NHS_NUMBER_SYSTEM):
                numbers.append(normalise(code))
        conditions.append(Referral.nhs_number.in_(numbers))
    if "status" in params:
        conditions.append(Referral.status.in_(params["status"].split(",")))
    return conditions


def _last_updated(values: Sequence[str]) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for value in values:
        prefix, instant = fhir_search.date_bound(value, "_lastUpdated")
        column = Referral.last_updated
        conditions.append(
            {
                "eq": column == instant,
                "gt": column > instant,
                "ge": column >= instant,
                "lt": column < instant,
                "le": column <= instant,
            }[prefix]
        )
    return conditions


async def search_referrals(
    session: AsyncSession,
    principal: Principal,
    params: Mapping[str, str],
    last_updated: Sequence[str],
) -> tuple[list[Referral], int, str | None]:
    """Matching referrals visible to the caller, oldest first, one page, with the total."""
    fhir_search.check_parameters(params, SEARCH_PARAMETERS)
    page = fhir_search.page_of(params)
    conditions = _conditions(params) + _last_updated(last_updated)
    query = scope.restrict(select(Referral).where(*conditions), visible_to(principal))
    total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if page.cursor is not None:
        stamp, ident = page.cursor
        query = query.where(
            or_(
                Referral.created_at > stamp, and_(Referral.created_at == stamp, Referral.id > ident)
            )
        )
    rows = list(
        await session.scalars(
            query.order_by(Referral.created_at, Referral.id).limit(page.count + 1)
        )
    )
    next_cursor = None
    if len(rows) > page.count:
        rows = rows[: page.count]
        if rows:
            next_cursor = fhir_search.encode_cursor(rows[-1].created_at, rows[-1].id)
    trail.note(rows)
    return rows, total, next_cursor


async def conditional_matches(
    session: AsyncSession, principal: Principal, query_string: str
) -> list[Referral]:
    """Referrals an If-None-Exist query (``identifier=…&…``) matches among those the caller's
    organisation sent (not those it receives as a service: they are not its to hold)."""
    pairs = parse_qsl(query_string.lstrip("?"), keep_blank_values=True)
    params = {k: v for k, v in pairs if k != "_lastUpdated"}
    fhir_search.check_parameters(params, SEARCH_PARAMETERS)
    if not pairs:
        raise BusinessRuleViolation(
            "If-None-Exist carries no search parameter", issue_code="invalid"
        )
    conditions = _conditions(params) + _last_updated([v for k, v in pairs if k == "_lastUpdated"])
    query = (
        scope.restrict(select(Referral).where(*conditions), visible_to(principal))
        .where(Referral.organisation == principal.organisation)
        .limit(2)
    )
    return list(await session.scalars(query))


def _comparable(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in _IGNORED_ON_COMPARE}


async def update_referral(
    session: AsyncSession,
    principal: Principal,
    referral_id: str,
    raw: dict[str, Any],
    if_match: str | None,
    context: cases.EventContext,
) -> Referral:
    """A FHIR update of a held referral: only a cancellation (status → revoked) is allowed."""
    referral = await get_referral(session, principal, referral_id)
    if principal.organisation != referral.organisation:
        raise Forbidden("Only the referring organisation may change a referral")
    if raw.get("id") not in (None, referral_id):
        raise BusinessRuleViolation(
            "The resource id must match the id in the URL",
            issue_code="invalid",
            expression="ServiceRequest.id",
        )
    if if_match is not None and if_match.strip() not in (
        f'W/"{referral.version_id}"',
        f'"{referral.version_id}"',
    ):
        raise PreconditionFailed(
            f'If-Match does not match the current version (W/"{referral.version_id}")'
        )
    incoming = stored_resource(raw)
    held = referral.resource
    if _comparable(incoming) != _comparable(held):
        changed = sorted(
            key
            for key in set(_comparable(incoming)) | set(_comparable(held))
            if incoming.get(key) != held.get(key)
        )
        raise BusinessRuleViolation(
            f"{CHANGEABLE}; this update also changes: {', '.join(changed[:10])}",
            expression=f"ServiceRequest.{changed[0]}",
        )
    new_status = raw.get("status")
    if new_status == referral.status:
        return referral  # a repeat of an update already made changes nothing
    if new_status != "revoked":
        raise BusinessRuleViolation(CHANGEABLE, expression="ServiceRequest.status")

    case = await cases.lock_case(session, referral.id)
    assert case is not None
    if CaseState(case.state) in CLOSED_STATES:
        raise Conflict(
            f"The referral cannot be cancelled: its case is already closed ('{case.state}')",
            expression="ServiceRequest.status",
        )
    service = await session.get(SocialPrescribingService, referral.service_id)
    assert service is not None
    await cases.apply_event(
        session,
        case,
        referral,
        service,
        cases.NewEvent(type="referral.cancelled", source="clinician"),
        context,
    )
    await session.flush()
    return referral
