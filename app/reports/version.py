"""Which counting the report read model holds (``report_model_state``), against the code's
(app.reports.projection.MODEL_VERSION).

When the stored version is older (the counting changed, or the model was never built over the
cases already there), the service keeps running and says so: a WARNING at startup (``spbridge
serve``, ``worker``), a note in /readyz (still ready: intake matters more than reports), and a note
on every report, which answers with the figures the model holds. Reports are not refused, so the
report API keeps its responses and a report is still there while the model is rebuilt, which
`spbridge reports rebuild` does online, exactly, in minutes. A process whose code is older than
the stored version (a rolling upgrade) leaves the report queue to the newer processes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.cases.models import Case
from app.db import Database, table_of, transaction, utcnow
from app.reports import projection
from app.reports.models import ReportModelState

log = logging.getLogger("spbridge.reports")

REBUILD = "spbridge reports rebuild"
# A process starts even when the database does not answer (readiness says so).
_STARTUP_TIMEOUT = 5.0

Executor = Session | Connection


@dataclass(frozen=True)
class ModelState:
    stored: int  # 0: never built
    rebuilding: int | None
    code: int  # this code's (app.reports.projection.MODEL_VERSION)

    @property
    def current(self) -> bool:
        return self.stored == self.code and self.rebuilding is None

    @property
    def newer(self) -> bool:
        """Newer code than this process's owns the model: leave it alone."""
        return max(self.stored, self.rebuilding or 0) > self.code

    def note(self) -> str | None:
        """What an operator or a reader must know, or None when the model is current."""
        if self.newer:
            return (
                f"The report read model is at counting version "
                f"{max(self.stored, self.rebuilding or 0)}, newer than this process's "
                f"({self.code}): a rolling upgrade is under way; this process leaves the report "
                "queue to the newer ones."
            )
        if self.rebuilding is not None:
            return (
                f"The report read model is being rebuilt to counting version {self.rebuilding} "
                f"(or its rebuild was stopped): figures may mix versions {self.stored} and "
                f"{self.rebuilding} until `{REBUILD}` has finished."
            )
        if self.stored == 0:
            return (
                "The report read model has not been built over the cases held before it "
                f"existed: reports leave them out until `{REBUILD}` has run."
            )
        if self.stored < self.code:
            return (
                f"The report read model holds counting version {self.stored}, this code counts "
                f"by version {self.code}: figures follow the old definitions until `{REBUILD}` "
                "has run."
            )
        return None


def read_state(executor: Executor) -> ModelState:
    row = executor.execute(
        select(ReportModelState.version, ReportModelState.rebuilding).where(
            ReportModelState.id == 1
        )
    ).first()
    code = projection.MODEL_VERSION
    if row is None:
        return ModelState(stored=0, rebuilding=None, code=code)
    return ModelState(stored=row.version, rebuilding=row.rebuilding, code=code)


async def state(session: AsyncSession) -> ModelState:
    return await session.run_sync(read_state)


def record(executor: Executor, **values: object) -> None:
    """Set columns of the one state row, making it if it is missing."""
    table = table_of(ReportModelState)
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
    values = {"updated_at": utcnow(), **values}
    statement = insert(table).values({"id": 1, "version": 0, **values})
    executor.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))


def stamp_if_empty(executor: Executor) -> ModelState:
    """An installation holding no case yet has the model of every version: record the code's.
    A case written meanwhile is queued, and taken in by this code's counting."""
    found = read_state(executor)
    if found.current or found.newer or found.rebuilding is not None:
        return found
    if executor.execute(select(Case.id).limit(1)).first() is not None:
        return found
    record(executor, version=found.code)
    return ModelState(stored=found.code, rebuilding=None, code=found.code)


def finish(executor: Executor, version: int) -> None:
    """A rebuild to ``version`` has taken every case in."""
    table = table_of(ReportModelState)
    executor.execute(
        update(table)
        .where(table.c.id == 1)
        .values(version=version, rebuilding=None, rebuilt_through=None, updated_at=utcnow())
    )


async def check_at_startup(database: Database) -> ModelState | None:
    """Log a WARNING when the model is not of this code's counting (recording the code's
    version first on an installation without cases). Never raises: a database that does not
    answer yet is /readyz's to report."""
    try:
        async with asyncio.timeout(_STARTUP_TIMEOUT):
            async with transaction(database.read_sessions) as session:
                found = await state(session)
            if not found.current and not found.newer and found.rebuilding is None:
                async with transaction(database.write_sessions) as session:
                    found = await session.run_sync(stamp_if_empty)
    except Exception as exc:  # the process still starts; readiness will say what is wrong
        log.warning(
            "could not read the report read model's version (%s)",
            type(exc).__name__,
        )
        return None
    note = found.note()
    if note is not None:
        log.warning(note)
    return found
