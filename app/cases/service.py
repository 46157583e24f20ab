"""The one domain function every change to a case goes through (DESIGN §3).

It checks the event against its declaration in the registry (app.cases.events: body, states,
effect), appends the CaseEvent, moves the case, then does the after-write work (outbox rows,
report queue, audit note: app.cases.after_write), all in the caller's transaction. It never
commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases import history, records
from app.cases.after_write import after_event, keep_and_queue
from app.cases.events import (
    REGISTRY,
    EventBody,
    TransitionRefused,
    allowed_events,
    next_status,
    parse_event,
    reaches_patient,
)
from app.cases.models import Case, CaseEvent, Patient, Referral
from app.cases.schemas import CaseEventOut, CaseOut, CaseResources
from app.cases.states import (
    CLOSED_STATES,
    FUTURE_TOLERANCE,
    CaseState,
    CaseStatus,
)
from app.cases.summary import discharge_summary
from app.cases.views import task_view
from app.cases.visibility import organisation_sees, runs_service, visible_case
from app.db import new_row, utcnow
from app.directory.models import SocialPrescribingService
from app.errors import BusinessRuleViolation, Conflict, Forbidden, NotFound, purged
from app.fhir.task import TaskView
from app.security import scope
from app.security.auth import Principal
from app.security.roles import Role


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
    # False for imported history (app.imports): its events are recorded and counted, but
    # nothing is sent to platforms, clinical systems or subscribers.
    deliver: bool = True


def current_status(case: Case) -> CaseStatus:
    return CaseStatus(
        CaseState(case.state), case.business_status, case.task_status, case.status_reason
    )


async def lock_case(session: AsyncSession, referral_id: str) -> Case | None:
    """The referral's case, locked for this transaction (SQLite's BEGIN IMMEDIATE already is)."""
    return await session.scalar(
        select(Case).where(Case.referral_id == referral_id).with_for_update()
    )


async def all_recorded(session: AsyncSession, referral_id: str, keys: set[str]) -> bool:
    """Whether the referral's case holds an event under every one of these idempotency keys: a
    repeat with nothing to apply, seen without taking the case's lock (what is recorded stays)."""
    found = await session.scalar(
        select(func.count(CaseEvent.id))
        .join(Case, CaseEvent.case_id == Case.id)
        .where(Case.referral_id == referral_id, CaseEvent.idempotency_key.in_(keys))
    )
    return found == len(keys)


def check_occurred_at(
    occurred_at: dt.datetime, referral: Referral, now: dt.datetime, skew: dt.timedelta
) -> None:
    """Late is fine (advisors record after the fact); the future, or before the referral, is not."""
    if occurred_at > now + skew:
        raise BusinessRuleViolation(
            f"occurred_at is more than {int(skew.total_seconds() // 60)} minutes in the future",
            expression="occurred_at",
        )
    if occurred_at < referral.created_at - skew:
        raise BusinessRuleViolation(
            "occurred_at is before the referral was received", expression="occurred_at"
        )


# A case's events by idempotency key, the statements made once (built per request, a query
# cost more of an event's CPU than running it).
_KEYED_EVENTS = select(CaseEvent).where(
    CaseEvent.case_id == bindparam("case_id"), CaseEvent.idempotency_key.is_not(None)
)
_EVENT_BY_KEY = select(CaseEvent).where(
    CaseEvent.case_id == bindparam("case_id"), CaseEvent.idempotency_key == bindparam("key")
)


class CaseWork:
    """One writer's changes to one case in one transaction (DESIGN §3, issue 19).

    Every event goes through :meth:`apply`, the one domain path; what the events cause that
    belongs to the case rather than to each event is written once, by :meth:`finish`: the
    resource versions they made (one statement) and the case's place in the report queue. A
    request applies one event (``apply_event``); an import applies a referral's whole history
    in one piece of work, reading nothing and flushing nothing between its events."""

    def __init__(
        self,
        session: AsyncSession,
        case: Case,
        referral: Referral,
        service: SocialPrescribingService,
        context: EventContext,
        *,
        new: bool = False,
    ) -> None:
        self.session = session
        self.case = case
        self.referral = referral
        self.service = service
        self.context = context
        self.records = records.RecordStore(session, case, new=new)
        # The case's events by idempotency key, when every one is known here (a new case, or
        # after held_keys): a repeat is then found without a read.
        self._keyed: dict[str, CaseEvent] | None = {} if new else None
        self._seen: dict[str, CaseEvent | None] = {}  # keys looked up one by one, and found
        self._versions: list[history.Version] = []
        self._now: dt.datetime | None = None

    async def held_keys(self) -> set[str]:
        """The idempotency keys of the case's events (read once)."""
        if self._keyed is None:
            held = await self.session.scalars(_KEYED_EVENTS, {"case_id": self.case.id})
            self._keyed = {event.idempotency_key: event for event in held if event.idempotency_key}
        return set(self._keyed)

    async def repeat(self, key: str) -> CaseEvent | None:
        """The event recorded on the case with this idempotency key, if any (each key read once:
        a caller that checks a repeat itself and then applies costs one read, not two)."""
        if self._keyed is not None:
            return self._keyed.get(key)
        if key not in self._seen:
            self._seen[key] = await self.session.scalar(
                _EVENT_BY_KEY, {"case_id": self.case.id, "key": key}
            )
        return self._seen[key]

    async def apply(
        self,
        event: NewEvent,
        *,
        now: dt.datetime | None = None,
        versions: Sequence[history.Version] = (),
    ) -> CaseEvent:
        """Apply ``event`` to the case: 422 when its data is invalid, 409 when the state table
        (or the case's records) refuse it. A repeat of an idempotency key returns the event
        recorded. ``versions``: other versions the writer made with the event."""
        session, case, referral, service = self.session, self.case, self.referral, self.service
        if event.idempotency_key is not None:
            existing = await self.repeat(event.idempotency_key)
            if existing is not None:
                return existing
        now = now or utcnow()
        is_new = case.last_event_seq == 0
        declared = REGISTRY.get(event.type)
        data = parse_event(event.type, event.data) if declared is not None else event.data
        occurred_at = event.occurred_at or now
        if not is_new:
            check_occurred_at(occurred_at, referral, now, FUTURE_TOLERANCE)
        try:
            status = next_status(
                None if is_new else current_status(case),
                event.type,
                data,
                contacted=case.first_contact_at is not None,
                progress_status=case.progress_status,
            )
        except TransitionRefused as refused:
            state = refused.current.value if refused.current else "none"
            allowed = ", ".join(refused.allowed) or "none (the case is closed)"
            raise Conflict(
                f"{refused.reason}. The case is '{state}'; events allowed now: {allowed}",
                expression="type",
                extensions={"current_state": state, "allowed_events": refused.allowed},
            ) from None
        assert declared is not None  # next_status refuses an undeclared type
        # The Task as this event finds it, kept once the event is applied (app.cases.history):
        # its row serves only the current version. A new case's first event supersedes none.
        superseded = [] if is_new else [history.task_version(case, referral, service.name)]
        effect = (
            await declared.effect(self.records, case, data, occurred_at, now)
            if declared.effect is not None
            else records.Effect()
        )

        case.state = status.state.value
        case.business_status = status.business_status
        case.task_status = status.task_status
        case.status_reason = status.status_reason
        if status.state is CaseState.IN_PROGRESS:
            case.progress_status = status.business_status
        if reaches_patient(event.type, data) and (
            case.first_contact_at is None or occurred_at < case.first_contact_at
        ):
            # A contact recorded late but earlier in time is still the first contact.
            case.first_contact_at = occurred_at
        if effect.outputs:
            case.outputs = [*case.outputs, *effect.outputs]
        if status.state in (CaseState.COMPLETED, CaseState.DISCHARGED):
            # The records this event made count in the summary.
            held = await self.records.all()
            case.summary = discharge_summary(status.state.value, status.business_status, held)
        if status.state in CLOSED_STATES:
            case.closed_at = occurred_at
        case.last_event_seq += 1
        if not is_new:
            case.version_id += 1
        case.updated_at = now

        record = new_row(
            CaseEvent,
            id=str(uuid.uuid4()),
            case_id=case.id,
            seq=case.last_event_seq,
            type=event.type,
            occurred_at=occurred_at,
            recorded_at=now,
            source=event.source,
            idempotency_key=event.idempotency_key,
            data=data,
            client_id=self.context.client_id,
            request_id=self.context.request_id,
            correlation_id=self.context.correlation_id,
            resources=effect.resources,
        )
        session.add(record)
        if event.idempotency_key is not None:
            (self._keyed if self._keyed is not None else self._seen)[event.idempotency_key] = record

        referral_status = declared.referral_status
        if referral_status and referral.status != referral_status:
            superseded.append(history.referral_version(referral))
            referral.status = referral_status
            referral.version_id += 1
            referral.last_updated = now

        self._versions += superseded
        self._versions += history.event_versions(
            case, referral, service.name, service.organisation, effect.records
        )
        self._versions += versions
        await after_event(
            session,
            case=case,
            referral=referral,
            service_organisation=service.organisation,
            event=record,
            now=now,
            deliver=self.context.deliver,
        )
        self._now = now
        return record

    async def finish(self, *, final: bool = False) -> None:
        """Write what the events applied so far caused once: their versions, the report queue.
        ``final``: nothing else is written in this transaction after it (intake: on
        PostgreSQL its one statement may then commit itself, app.db.execute_made_once)."""
        if self._now is None:
            return
        await keep_and_queue(
            self.session, self.referral.id, self._versions, self.case.id, self._now, final=final
        )
        self._versions, self._now = [], None


async def apply_event(
    session: AsyncSession,
    case: Case,
    referral: Referral,
    service: SocialPrescribingService,
    event: NewEvent,
    context: EventContext,
    *,
    now: dt.datetime | None = None,
    versions: Sequence[history.Version] = (),
) -> CaseEvent:
    """Apply one event to ``case`` (see :meth:`CaseWork.apply`), in the caller's transaction."""
    work = CaseWork(session, case, referral, service, context)
    recorded = await work.apply(event, now=now, versions=versions)
    await work.finish()
    return recorded


async def open_case(
    session: AsyncSession,
    referral: Referral,
    service: SocialPrescribingService,
    context: EventContext,
    versions: Sequence[history.Version] = (),
    *,
    finish: bool = True,
) -> CaseWork:
    """The case for a new referral, in state ``received`` with its ``referral.received`` event
    (``versions``: of what intake made besides, kept with the event's). ``finish`` False leaves
    the work open for the caller's further events (an import's history), to finish after them."""
    case = new_row(
        Case,
        id=str(uuid.uuid4()),
        referral_id=referral.id,
        service_id=referral.service_id,
        state=CaseState.RECEIVED.value,
        business_status="received",
        task_status="requested",
        last_event_seq=0,
        version_id=1,
        outputs=[],
        created_at=referral.created_at,
        updated_at=referral.created_at,
    )
    session.add(case)
    work = CaseWork(session, case, referral, service, context, new=True)
    await work.apply(
        NewEvent(type="referral.received", source="clinician", occurred_at=referral.created_at),
        # Recorded when received: for history (an import) the Task's first version is then
        # dated before its later ones, not at the moment of the import.
        now=referral.created_at,
        versions=versions,
    )
    if finish:
        await work.finish()
    return work


# --- the Task view of a case ---------------------------------------------------------------


def _case_rows() -> Select[Case, Referral, str]:
    return (
        select(Case, Referral, SocialPrescribingService.name)
        .join(Case.referral)
        .join(SocialPrescribingService, SocialPrescribingService.id == Case.service_id)
    )


def _task_query(principal: Principal) -> Select[Case, Referral, str]:
    return scope.restrict(_case_rows(), organisation_sees(principal))


async def read_task(session: AsyncSession, principal: Principal, task_id: str) -> TaskView:
    row = (await session.execute(_task_query(principal).where(Case.id == task_id))).first()
    if row is None:
        raise NotFound("No such Task is known here")
    trail.note([row[1]])
    if row[1].purged_at is not None:
        raise purged(f"Task/{task_id}")
    return task_view(*row)


async def tasks_for_referrals(
    session: AsyncSession, principal: Principal, referral_ids: list[str]
) -> list[TaskView]:
    rows = await session.execute(
        _task_query(principal)
        .where(Case.referral_id.in_(referral_ids), Referral.purged_at.is_(None))
        .order_by(Case.created_at)
    )
    views = [task_view(*row) for row in rows]
    for view in views:
        trail.note_patient(view.referral_id, view.nhs_number)
    return views


async def cases_for_delivery(
    session: AsyncSession, referral_ids: list[str]
) -> dict[str, tuple[Case, Referral, TaskView]]:
    """The case, referral and current Task of each referral, for the delivery engine (no
    principal: the engine sends only to destinations chosen when the event was recorded). A
    purged referral is not among them: nothing of it is sent any more (retention)."""
    if not referral_ids:
        return {}
    rows = await session.execute(
        _case_rows().where(Case.referral_id.in_(referral_ids), Referral.purged_at.is_(None))
    )
    return {
        referral.id: (case, referral, task_view(case, referral, name))
        for case, referral, name in rows
    }


# --- the case API: advisors and platforms record events, callers follow the case --------------


def _source(principal: Principal) -> str:
    return {Role.ADVISOR: "advisor", Role.PLATFORM: "platform"}.get(principal.role, "admin")


async def record_event(
    session: AsyncSession,
    principal: Principal,
    case_id: str,
    event: EventBody,
    context: EventContext,
    now: dt.datetime,
    finish_with: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] | None = None,
) -> tuple[CaseEvent, Case, bool]:
    """An advisor's or platform client's event, through the one domain function. Returns the
    event, the case after it, and whether it was applied now (False: an idempotent repeat).
    ``finish_with`` runs the work's last write (the request's audit record joins it there)."""
    case, referral, service = await visible_case(session, principal, case_id, lock=True)
    if not runs_service(principal, service):
        raise Forbidden("Only the organisation that runs the service records events on its cases")
    if REGISTRY[event.type].from_referrer:
        raise BusinessRuleViolation(
            f"'{event.type}' comes from the referrer: a referral is cancelled with a FHIR update "
            "of its ServiceRequest (status revoked)",
            expression="type",
        )
    if service.delivers and event.type != "consent.withdrawn":
        # The platform holds these cases: a change made here would never reach it. A consent
        # withdrawal is the exception: the bridge must stop its own processing at once, and it
        # tells the platform to stop by cancelling the case there.
        raise Conflict(
            f"This service's cases are held on its platform ('{service.adapter}'); record the "
            "change there and it comes back to the bridge",
            expression="case_id",
        )
    data = event.data()
    work = CaseWork(session, case, referral, service, context)
    if event.idempotency_key is not None:
        held = await work.repeat(event.idempotency_key)
        if held is not None:
            if held.type != event.type or held.data != parse_event(event.type, data):
                raise Conflict(
                    "idempotency_key was already used for a different event on this case",
                    expression="idempotency_key",
                )
            return held, case, False
    recorded = await work.apply(
        NewEvent(
            type=event.type,
            source=_source(principal),
            occurred_at=event.occurred_at,
            data=data,
            idempotency_key=event.idempotency_key,
        ),
        now=now,
    )
    await (work.finish() if finish_with is None else finish_with(work.finish))
    await session.flush()
    return recorded, case, True


def event_out(event: CaseEvent, *, show_data: bool = True) -> CaseEventOut:
    declared = REGISTRY.get(event.type)
    service_only = declared is not None and declared.service_only
    data = event.data if show_data or not service_only else {}
    return CaseEventOut(
        event_id=event.id,
        sequence=event.seq,
        type=event.type,
        occurred_at=event.occurred_at,
        recorded_at=event.recorded_at,
        source=event.source,
        idempotency_key=event.idempotency_key,
        data=data,
        resources=event.resources,
    )


async def case_detail(session: AsyncSession, principal: Principal, case_id: str) -> CaseOut:
    case, referral, service = await visible_case(session, principal, case_id)
    events = await session.scalars(
        select(CaseEvent)
        .where(CaseEvent.case_id == case.id)
        .order_by(CaseEvent.occurred_at, CaseEvent.seq)
    )
    held = (await records.records_of(session, [case.id]))[case.id]
    service_side = runs_service(principal, service)
    patient_id = await session.scalar(select(Patient.id).where(Patient.referral_id == referral.id))
    return CaseOut(
        case_id=case.id,
        referral_id=referral.id,
        service=service.id,
        state=case.state,
        business_status=case.business_status,
        task_status=case.task_status,
        status_reason=case.status_reason,
        team=case.team,
        advisor=case.advisor,
        external_reference=case.external_reference,
        received_at=case.created_at,
        first_contact_at=case.first_contact_at,
        closed_at=case.closed_at,
        updated_at=case.updated_at,
        version=case.version_id,
        summary=case.summary,
        allowed_events=allowed_events(CaseState(case.state)),
        resources=CaseResources(
            service_request=f"ServiceRequest/{referral.id}",
            task=f"Task/{case.id}",
            patient=f"Patient/{patient_id}" if patient_id else None,
            appointments=[f"Appointment/{a.id}" for a in held.appointments],
            prescriptions=[f"ServiceRequest/{p.id}" for p in held.prescriptions],
            observations=[f"Observation/{s.id}" for s in held.scores],
            questionnaire_responses=[
                f"QuestionnaireResponse/{s.questionnaire_response_id}" for s in held.scores
            ],
        ),
        events=[event_out(e, show_data=service_side) for e in events],
    )
