"""`spbridge reports rebuild`: every case taken into the report read model again, by this code's
counting (app.reports.projection.MODEL_VERSION), while the service runs.

It goes through the cases in id order, a batch per transaction, under the report queue's rules:
each batch queues its cases (``report_pending_cases``) and takes them at once, as a drain does
(``projection.take``). So no drain takes one of them meanwhile (PostgreSQL: the batch holds their
queue rows, as a drain holds the rows it takes; SQLite has one writer), and a write to one of them
after the batch read it queues it again, for the drainers, which count by the same version.
Every batch takes the cases' stored contributions off the counters and puts the new ones on, so
the counters are the sum of the fact rows throughout; figures mix the two versions only until
the last batch. The state row (``report_model_state``) records the rebuild and how far it got: a
stopped rebuild resumes there, and two at once share the work (each batch locks the row). The
last step records the version, which ends the startup warning, the /readyz note and the reports'
note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.cases.after_write import queue_for_reports
from app.cases.models import Case
from app.db import Database, table_of, transaction, utcnow
from app.reports import projection, version
from app.reports.models import ReportCount, ReportModelState

BATCH = 500
Executor = Session | Connection
Progress = Callable[[int, int], None]  # (cases done, of)


class NewerModel(Exception):
    """The model is of a newer counting than this code's: a newer process owns it."""


@dataclass(frozen=True)
class Rebuilt:
    cases: int  # taken in by this run
    version: int


def _lock_state(executor: Executor) -> tuple[int | None, str | None]:
    """The rebuild under way (its version, how far it got), the state row locked."""
    query = select(ReportModelState.rebuilding, ReportModelState.rebuilt_through).where(
        ReportModelState.id == 1
    )
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    if bind.dialect.name == "postgresql":
        query = query.with_for_update()
    row = executor.execute(query).first()
    return (None, None) if row is None else (row.rebuilding, row.rebuilt_through)


def begin(executor: Executor, *, restart: bool = False) -> tuple[int, int]:
    """Start (or resume) a rebuild to this code's version; returns (cases done, cases)."""
    rebuilding, through = _lock_state(executor)
    found = version.read_state(executor)
    if found.newer:
        raise NewerModel(found.note())
    if restart or rebuilding != projection.MODEL_VERSION:
        through = None
        version.record(executor, rebuilding=projection.MODEL_VERSION, rebuilt_through=None)
    total = int(executor.execute(select(func.count()).select_from(Case)).scalar_one())
    done = 0
    if through is not None:
        done = int(
            executor.execute(
                select(func.count()).select_from(Case).where(Case.id <= through)
            ).scalar_one()
        )
    return done, total


async def step(session: AsyncSession, batch: int = BATCH) -> int:
    """Take the next batch of cases in, in the session's transaction; returns how many (0: none
    left, or the rebuild is no longer this code's)."""
    rebuilding, through = await session.run_sync(_lock_state)
    if rebuilding != projection.MODEL_VERSION:
        return 0
    query = select(Case.id).order_by(Case.id).limit(batch)
    if through is not None:
        query = query.where(Case.id > through)
    ids = list(await session.scalars(query))
    if not ids:
        return 0
    # The queue's rules: hold the cases' queue rows while taking them (app.reports.projection).
    await queue_for_reports(session, ids, utcnow())

    def take(sync: Session) -> None:
        projection.take(sync, ids)
        version.record(sync, rebuilt_through=ids[-1])

    await session.run_sync(take)
    return len(ids)


def end(executor: Executor) -> bool:
    """Record the version once every case is in; whether this did."""
    rebuilding, _through = _lock_state(executor)
    if rebuilding != projection.MODEL_VERSION:
        return False
    # Counters a change of counting emptied (a measure gone or keyed anew).
    table = table_of(ReportCount)
    executor.execute(delete(table).where(table.c.n == 0))
    version.finish(executor, projection.MODEL_VERSION)
    return True


async def rebuild(
    database: Database,
    *,
    batch: int = BATCH,
    restart: bool = False,
    progress: Progress | None = None,
) -> Rebuilt:
    """Rebuild the read model (see above), one transaction per batch."""
    async with transaction(database.write_sessions) as session:
        done, total = await session.run_sync(lambda sync: begin(sync, restart=restart))
    if progress is not None:
        progress(done, total)
    taken = 0
    while True:
        async with transaction(database.write_sessions) as session:
            count = await step(session, batch)
        if not count:
            break
        taken += count
        done += count
        if progress is not None:
            progress(min(done, total), max(total, done))
    async with transaction(database.write_sessions) as session:
        await session.run_sync(end)
    return Rebuilt(cases=taken, version=projection.MODEL_VERSION)
