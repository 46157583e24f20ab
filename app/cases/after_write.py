"""The work after every write to a case, in the writer's transaction (DESIGN §3, §4).

Every case event ends here (:func:`after_event`, called by the one domain function
``app.cases.service.CaseWork.apply``): the outbox rows for every destination and the audit
trail's note of the patient reached. Every piece of work on a case ends by queueing it for the
reports (:func:`queue_for_reports`, from ``CaseWork.finish``); so does a writer that changes a
case without an event (the retention purge). Nothing here
is a listener: what runs after a write is what these functions call, in order.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases import history
from app.cases.models import (
    Appointment,
    Case,
    CaseEvent,
    Patient,
    Prescription,
    Referral,
    ReportPendingCase,
    ResourceVersion,
    WellbeingScore,
)
from app.cases.states import consent_withdrawn
from app.db import execute_with_new, insert_new, inserted_rows, rows_parameters, table_of
from app.outbox import service as outbox
from app.outbox import topics
from app.outbox.models import Delivery

_BATCH = 1000
# What a piece of work makes with every key set (no relationship to fill in): written whole in
# the work's last statement on PostgreSQL (app.db.execute_with_new).
_WRITTEN_WHOLE = (
    Appointment,
    Case,
    CaseEvent,
    Delivery,
    Patient,
    Prescription,
    Referral,  # intake's, on PostgreSQL (app.referrals.service: one statement)
    WellbeingScore,
)


async def after_event(
    session: AsyncSession,
    *,
    case: Case,
    referral: Referral,
    service_organisation: str,
    event: CaseEvent,
    now: dt.datetime,
    deliver: bool = True,
) -> None:
    """Queue what ``event`` must cause: deliveries and the audit note (the report's recount is
    queued once per case by the writer's work: ``app.cases.service.CaseWork.finish``).
    ``deliver`` False (imported history): no delivery is queued."""
    holding: set[str] = set()
    withdrawn = consent_withdrawn(case.state, case.status_reason)
    if withdrawn:
        # Consent withdrawn: every delivery of this person's data still queued is cancelled in
        # this transaction; enqueue then sends only the closing Task to the referrer and a
        # cancellation to a platform that may hold the case.
        holding = await outbox.stop_for_withdrawal(session, referral.id, now)
    if deliver:
        with session.no_autoflush:  # the directory only: what this work made stays unwritten
            destinations = await outbox.destinations_for(
                session,
                service_id=referral.service_id,
                referrer=referral.organisation,
                provider=service_organisation,
                requester=referral.requester_ods,
            )
        outbox.enqueue(
            session, destinations, case, event, withdrawn=withdrawn, platforms_holding=holding
        )
        if not withdrawn or event.type == outbox.CONSENT_WITHDRAWN_EVENT:
            # FHIR Subscriptions to "referral Task changed": ids only, never patient data.
            await topics.notify(
                session,
                topics.TaskChange(
                    referral_id=referral.id,
                    task_id=case.id,
                    event_id=event.id,
                    event_type=event.type,
                    requester=referral.organisation,
                    provider=service_organisation,
                    service_id=referral.service_id,
                    nhs_number=referral.nhs_number,
                    task_status=case.task_status,
                    recorded_at=event.recorded_at,
                    request_id=event.request_id,
                    correlation_id=event.correlation_id,
                ),
                destinations,
            )
    trail.note([referral])


@functools.cache
def _queueing(dialect: str) -> Any:
    table = table_of(ReportPendingCase)
    insert: Any = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_update(
        index_elements=["case_id"], set_={"noted_at": table.c.noted_at}
    )


async def queue_for_reports(
    session: AsyncSession, case_ids: Iterable[str], now: dt.datetime
) -> None:
    """Queue cases for the reports' read model (app.reports drains the queue).

    A case already queued stays so, with its first noted time; the no-op update (not DO NOTHING)
    makes a writer wait while a drain holds the row, so a change committed after the drain read
    the case is queued again, never lost with the row the drain deletes."""
    rows = [{"case_id": case_id, "noted_at": now} for case_id in sorted(set(case_ids))]
    if not rows:
        return
    statement = _queueing(session.get_bind().dialect.name)
    for start in range(0, len(rows), _BATCH):
        await session.execute(statement, rows[start : start + _BATCH])


async def keep_and_queue(
    session: AsyncSession,
    referral_id: str,
    versions: Sequence[history.Version],
    case_id: str,
    now: dt.datetime,
    *,
    final: bool = False,
) -> None:
    """What a piece of work on a case writes once, at its end: the resource versions its events
    superseded or made (app.cases.history), the case's place in the report queue, and on
    PostgreSQL the rows it made: one statement there (data-modifying CTEs), where SQLite, which
    has none, takes one insert per table and two statements, in one visit to its thread
    (app.db.insert_new). ``final``: the transaction's last statement (app.db.execute_made_once:
    on PostgreSQL it commits itself when nothing went before it)."""
    kept = history.rows(referral_id, versions)
    dialect = session.get_bind().dialect.name
    if dialect != "postgresql" or len(kept) > _BATCH:
        queued = [{"case_id": case_id, "noted_at": now}]
        then = [(history.keeping(dialect), kept), (_queueing(dialect), queued)]
        await insert_new(session, _WRITTEN_WHOLE, then)
        return
    parameters: dict[str, Any] = {"case_id": case_id, "noted_at": now}
    if kept:
        parameters.update(rows_parameters("kept", _KEPT, kept))
    # And the rows the work made (a new case, its events, records, deliveries) in the same
    # statement: intake, which keeps no version, writes its referral's whole case in one
    # round trip.
    await execute_with_new(
        session, _keeping_and_queueing(bool(kept)), parameters, _WRITTEN_WHOLE, final=final
    )


_KEPT = history.COLUMNS


@functools.cache
def _keeping_and_queueing(keeping: bool) -> Any:
    # PostgreSQL: the case queued and the versions kept (when there are any), one statement
    # made once (app.db).
    queued = _queueing("postgresql").values(
        case_id=bindparam("case_id"), noted_at=bindparam("noted_at")
    )
    if not keeping:
        return queued
    versions = table_of(ResourceVersion)
    return queued.add_cte(inserted_rows(versions, "kept", _KEPT, skip_existing=True).cte("kept"))
