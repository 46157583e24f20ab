"""Which referrals, and so which cases and resources, an organisation sees (DESIGN §7): those
it sent and those whose service it runs; and which it works on: the cases of the services it
runs. The one place these security rules are written; every read, search, worklist, Task,
resource, journey, delivery and audit-event query takes its condition from here.

A case is seen through its referral: queries join them through the one relationship
(``.join(Case.referral)``) and filter on the referral. The organisation a caller acts for, and
the bootstrap admin's view of every organisation, come from ``app.security.scope``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases.models import Case, Referral
from app.directory.models import SocialPrescribingService
from app.errors import NotFound, purged
from app.security import scope
from app.security.auth import Principal


def _services_of(organisation: Any) -> Select[str]:
    return select(SocialPrescribingService.id).where(
        SocialPrescribingService.organisation == organisation
    )


def _sent_or_runs(organisation: Any) -> ColumnElement[bool]:
    # ``organisation``: the caller's, or a parameter standing for it in a statement made once.
    return or_(
        Referral.organisation == organisation,
        Referral.service_id.in_(_services_of(organisation)),
    )


def organisation_sees(principal: Principal) -> ColumnElement[bool] | None:
    """Referrals the caller's organisation sent or whose service it runs, purged or not (their
    audit records and deliveries outlive their patient data); None: everything."""
    return scope.scoped(principal, _sent_or_runs)


# organisation_sees with the organisation as the statement's parameter "organisation".
_SEEN_BY_ORGANISATION = _sent_or_runs(bindparam("organisation"))


def visible_to(principal: Principal) -> ColumnElement[bool] | None:
    """Referrals the caller's organisation sent or whose service it runs, and their resources;
    never a purged referral (retention: its patient data is gone, reading it answers 410)."""
    condition = organisation_sees(principal)
    held = Referral.purged_at.is_(None)
    return held if condition is None else and_(held, condition)


def seen_referral_ids(principal: Principal) -> Select[str] | None:
    """The ids of the referrals :func:`organisation_sees`, for rows that name a referral by id
    (deliveries, audit records); None: every referral."""
    condition = organisation_sees(principal)
    return None if condition is None else select(Referral.id).where(condition)


def runs(principal: Principal) -> ColumnElement[bool] | None:
    """The services the caller's organisation runs, whose cases it works on (the worklist, case
    events, the service's own data); None: every service."""
    return scope.owned_by(principal, SocialPrescribingService.organisation)


def runs_service(principal: Principal, service: SocialPrescribingService) -> bool:
    """Whether the caller is on the service's side of a case it sees."""
    return scope.owns(principal, service.organisation)


async def visible_case(
    session: AsyncSession, principal: Principal, case_id: str, *, lock: bool = False
) -> tuple[Case, Referral, SocialPrescribingService]:
    """The case with its referral and service, if the caller's organisation sees it (404
    otherwise), noted in the request's audit record; ``lock`` takes the case's row lock for a
    change."""
    condition = scope.scoped(principal, lambda _organisation: _SEEN_BY_ORGANISATION)
    parameters = {"case_id": case_id}
    if condition is _SEEN_BY_ORGANISATION:
        parameters["organisation"] = principal.organisation or ""
    row = (await session.execute(_case_statement(condition, lock), parameters)).first()
    if row is None:
        raise NotFound("No such case is known here")
    case, referral, service = row
    trail.note([referral])
    return case, referral, service


@cache
def _case_statement(
    condition: ColumnElement[bool] | None, lock: bool
) -> Select[Case, Referral, SocialPrescribingService]:
    # Made once for each reach (everything, the organisation's, nothing) and lock: built per
    # request, the query cost more of a case event's CPU than running it.
    query = (
        select(Case, Referral, SocialPrescribingService)
        .join(Case.referral)
        .join(SocialPrescribingService, SocialPrescribingService.id == Case.service_id)
        .where(Case.id == bindparam("case_id"))
    )
    query = scope.restrict(query, condition)
    return query.with_for_update(of=Case) if lock else query


async def note_referrals(session: AsyncSession, referral_ids: Iterable[str | None]) -> None:
    """Note in the request's audit record the patients of referrals known only by id (a
    delivery, a journey page); ids of no referral reach no patient."""
    ids = sorted({ident for ident in referral_ids if ident is not None})
    if not ids:
        return
    for ident, number in await session.execute(
        select(Referral.id, Referral.nhs_number).where(Referral.id.in_(ids))
    ):
        trail.note_patient(ident, number)


async def visible_referral(
    session: AsyncSession, principal: Principal, referral_id: str
) -> Referral:
    """The referral if the caller's organisation may see it (404 otherwise), noted in the audit
    trail; 410 once its patient data has been purged."""
    query = select(Referral).where(Referral.id == referral_id)
    referral = await session.scalar(scope.restrict(query, organisation_sees(principal)))
    if referral is None:
        raise NotFound("No such ServiceRequest is known here")
    trail.note([referral])
    if referral.purged_at is not None:
        raise purged(f"ServiceRequest/{referral.id}")
    return referral
