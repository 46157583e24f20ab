"""The one domain function every change to a case goes through (DESIGN §3).

It checks the state machine, appends the CaseEvent, moves the case, and writes an outbox row for
each destination, all in the caller's transaction. It never commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.models import Case, CaseEvent
from app.cases.states import CaseState, CaseStatus, TransitionRefused, is_contact, next_status
from app.clients.auth import Principal
from app.db import utcnow
from app.delivery import service as delivery
from app.directory.models import SocialPrescribingService
from app.errors import Conflict, NotFound
from app.fhir.task import TaskView
from app.referrals.models import Referral

# The referral's FHIR status follows its case's end.
_REFERRAL_STATUS = {CaseState.CANCELLED: "revoked", CaseState.COMPLETED: "completed"}


@dataclass(frozen=True)
class NewEvent:
    type: str
    source: str  # adapter / advisor / clinician / system
    occurred_at: dt.datetime | None = None
    data: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None


@dataclass(frozen=True)
class EventContext:
    client_id: str | None
    request_id: str | None
    correlation_id: str | None


def current_status(case: Case) -> CaseStatus:
    return CaseStatus(
        CaseState(case.state), case.business_status, case.task_status, case.status_reason
    )


async def lock_case(session: AsyncSession, referral_id: str) -> Case | None:
    """The referral's case, locked for this transaction (SQLite's BEGIN IMMEDIATE already is)."""
    return await session.scalar(
        select(Case).where(Case.referral_id == referral_id).with_for_update()
    )


async def apply_event(
    session: AsyncSession,
    case: Case,
    referral: Referral,
    service: SocialPrescribingService,
    event: NewEvent,
    context: EventContext,
) -> CaseEvent:
    """Apply ``event`` to ``case``; Conflict (409) when the state table refuses it."""
    if event.idempotency_key is not None:
        existing = await session.scalar(
            select(CaseEvent).where(
                CaseEvent.case_id == case.id, CaseEvent.idempotency_key == event.idempotency_key
            )
        )
        if existing is not None:
            return existing
    now = utcnow()
    is_new = case.last_event_seq == 0
    try:
        status = next_status(
            None if is_new else current_status(case),
            event.type,
            event.data,
            contacted=case.first_contact_at is not None,
            progress_status=case.progress_status,
        )
    except TransitionRefused as refused:
        state = refused.current.value if refused.current else "none"
        allowed = ", ".join(refused.allowed) or "none (the case is closed)"
        raise Conflict(
            f"{refused.reason}. The case is '{state}'; events allowed now: {allowed}"
        ) from None

    case.state = status.state.value
    case.business_status = status.business_status
    case.task_status = status.task_status
    case.status_reason = status.status_reason
    if status.state is CaseState.IN_PROGRESS:
        case.progress_status = status.business_status
    occurred_at = event.occurred_at or now
    if case.first_contact_at is None and is_contact(event.type, event.data):
        case.first_contact_at = occurred_at
    case.last_event_seq += 1
    if not is_new:
        case.version_id += 1
    case.updated_at = now

    record = CaseEvent(
        id=str(uuid.uuid4()),
        case_id=case.id,
        seq=case.last_event_seq,
        type=event.type,
        occurred_at=occurred_at,
        recorded_at=now,
        source=event.source,
        idempotency_key=event.idempotency_key,
        data=event.data,
        client_id=context.client_id,
        request_id=context.request_id,
        correlation_id=context.correlation_id,
    )
    session.add(record)

    referral_status = _REFERRAL_STATUS.get(status.state)
    if referral_status and referral.status != referral_status:
        referral.status = referral_status
        referral.version_id += 1
        referral.last_updated = now

    destinations = await delivery.destinations_for(session, referral, service.organisation)
    delivery.enqueue(session, destinations, case, record)
    return record


async def open_case(
    session: AsyncSession,
    referral: Referral,
    service: SocialPrescribingService,
    context: EventContext,
) -> Case:
    """The case for a new referral, in state ``received`` with its ``referral.received`` event."""
    case = Case(
        id=str(uuid.uuid4()),
        referral_id=referral.id,
        service_id=referral.service_id,
        state=CaseState.RECEIVED.value,
        business_status="received",
        task_status="requested",
        last_event_seq=0,
        version_id=1,
        created_at=referral.created_at,
        updated_at=referral.created_at,
    )
    session.add(case)
    await apply_event(
        session,
        case,
        referral,
        service,
        NewEvent(type="referral.received", source="clinician", occurred_at=referral.created_at),
        context,
    )
    return case


# --- the Task view of a case ---------------------------------------------------------------


def _case_rows() -> Select[Case, Referral, str]:
    return (
        select(Case, Referral, SocialPrescribingService.name)
        .join(Referral, Referral.id == Case.referral_id)
        .join(SocialPrescribingService, SocialPrescribingService.id == Case.service_id)
    )


def _task_query(principal: Principal) -> Select[Case, Referral, str]:
    query = _case_rows()
    if not principal.sees_everything:
        query = query.where(
            or_(
                Referral.organisation == principal.organisation,
                SocialPrescribingService.organisation == principal.organisation,
            )
        )
    return query


def _view(case: Case, referral: Referral, service_name: str) -> TaskView:
    return TaskView(
        case_id=case.id,
        version_id=case.version_id,
        created_at=case.created_at,
        updated_at=case.updated_at,
        task_status=case.task_status,
        business_status=case.business_status,
        status_reason=case.status_reason,
        referral_id=referral.id,
        nhs_number=referral.nhs_number,
        requesting_organisation=referral.organisation,
        service_id=case.service_id,
        service_name=service_name,
    )


async def read_task(session: AsyncSession, principal: Principal, task_id: str) -> TaskView:
    row = (await session.execute(_task_query(principal).where(Case.id == task_id))).first()
    if row is None:
        raise NotFound(f"Task/{task_id:.64} is not known here")
    return _view(*row)


async def tasks_for_referrals(
    session: AsyncSession, principal: Principal, referral_ids: list[str]
) -> list[TaskView]:
    rows = await session.execute(
        _task_query(principal).where(Case.referral_id.in_(referral_ids)).order_by(Case.created_at)
    )
    return [_view(*row) for row in rows]


async def cases_for_delivery(
    session: AsyncSession, referral_ids: list[str]
) -> dict[str, tuple[Case, Referral, TaskView]]:
    """The case, referral and current Task of each referral, for the delivery engine (no
    principal: the engine sends only to destinations chosen when the event was recorded)."""
    if not referral_ids:
        return {}
    rows = await session.execute(_case_rows().where(Case.referral_id.in_(referral_ids)))
    return {
        referral.id: (case, referral, _view(case, referral, name)) for case, referral, name in rows
    }
