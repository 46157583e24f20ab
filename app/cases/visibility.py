"""Which referrals, and so which cases and resources, an organisation sees (DESIGN §7): those
it sent and those whose service it runs. The one place this security rule is written."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases.models import Referral
from app.directory.models import SocialPrescribingService
from app.security.auth import Principal


def organisation_sees(principal: Principal) -> ColumnElement[bool] | None:
    """Referrals the caller's organisation sent or whose service it runs; None: everything."""
    if principal.sees_everything:
        return None
    own_services = select(SocialPrescribingService.id).where(
        SocialPrescribingService.organisation == principal.organisation
    )
    return or_(
        Referral.organisation == principal.organisation, Referral.service_id.in_(own_services)
    )


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
