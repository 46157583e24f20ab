"""Readiness: whether this process can do its work now (GET /readyz).

Three checks, each run afresh on every probe (nothing is cached that could hide an outage):

- ``database``: a query answers, within ``CHECK_TIMEOUT`` seconds;
- ``migrations``: the schema is at the revision this code was written for. A database at a
  revision this code does not know is newer than the code (a rolling upgrade migrated it first);
  that passes, with a note, because migrations add before they take away. A database behind the
  code fails: the code would use tables and columns that are not there;
- ``dispatcher``: when this process is meant to deliver the outbox (``SPBRIDGE_RUN_DISPATCHER``),
  its dispatcher loop is running;
- ``reports``: always ok (a stale report read model does not stop intake), with a note when the
  model must be rebuilt (app.reports.version).

Details name what failed and the exception's type, never its message (a driver's message can
carry the host, the user or a statement).
"""

from __future__ import annotations

import asyncio
import functools

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from app.config import Settings
from app.db import Database
from app.delivery.dispatcher import Dispatcher
from app.migrate import alembic_config
from app.operations.schemas import Readiness, ReadinessCheck
from app.reports import version as report_model

# A probe must answer before the orchestrator's own timeout (Kubernetes: 1 s by default, set it
# higher; see docs/DEPLOYMENT.md): a database that takes longer than this is not ready.
CHECK_TIMEOUT = 5.0


@functools.lru_cache(maxsize=4)
def _scripts(database_url: str) -> ScriptDirectory:
    # The migration files do not change while the process runs; the database's revision does,
    # and is read on every probe.
    return ScriptDirectory.from_config(alembic_config(database_url))


# Alembic's default version table (migrations/env.py keeps it). Read directly rather than through
# alembic's MigrationContext, which logs two lines at INFO every time it is made: every probe.
VERSION_TABLE = "alembic_version"


def _current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
    return next(iter(versions), None)


def migrations_check(scripts: ScriptDirectory, current: str | None) -> ReadinessCheck:
    head = scripts.get_current_head()
    if current == head:
        return ReadinessCheck(ok=True)
    if current is None:
        return ReadinessCheck(ok=False, detail="the database has no schema: run `spbridge migrate`")
    try:
        scripts.get_revision(current)
    except CommandError:
        return ReadinessCheck(
            ok=True,
            detail=f"the database is at {current}, newer than this code ({head}): a rolling "
            "upgrade is under way",
        )
    return ReadinessCheck(
        ok=False,
        detail=f"the database is at {current}, this code needs {head}: run `spbridge migrate`",
    )


async def _database_checks(
    database: Database, settings: Settings
) -> tuple[ReadinessCheck, ReadinessCheck, ReadinessCheck]:
    async with database.read_sessions() as session:
        connection = await session.connection()
        await connection.execute(text("SELECT 1"))
        current = await connection.run_sync(_current_revision)
        migrations = migrations_check(_scripts(settings.database_url), current)
        reports = ReadinessCheck(ok=True, detail="not checked: the schema is not up to date")
        if migrations.ok:
            found = await connection.run_sync(report_model.read_state)
            reports = ReadinessCheck(ok=True, detail=found.note())
    return ReadinessCheck(ok=True), migrations, reports


def dispatcher_check(settings: Settings, dispatcher: Dispatcher | None) -> ReadinessCheck:
    if not settings.run_dispatcher:
        return ReadinessCheck(ok=True, detail="not run in this process: workers deliver")
    if dispatcher is None or not dispatcher.running:
        return ReadinessCheck(ok=False, detail="the dispatcher is not running")
    return ReadinessCheck(ok=True)


async def readiness(
    database: Database, settings: Settings, dispatcher: Dispatcher | None
) -> Readiness:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            database_ok, migrations, reports = await _database_checks(database, settings)
    except TimeoutError:
        database_ok = ReadinessCheck(
            ok=False, detail=f"the database did not answer within {CHECK_TIMEOUT:g} s"
        )
        migrations = ReadinessCheck(ok=False, detail="not checked: the database did not answer")
        reports = ReadinessCheck(ok=True, detail="not checked: the database did not answer")
    except Exception as exc:  # whatever the driver raises, the answer is "not ready", not a 500
        database_ok = ReadinessCheck(
            ok=False, detail=f"the database did not answer ({type(exc).__name__})"
        )
        migrations = ReadinessCheck(ok=False, detail="not checked: the database did not answer")
        reports = ReadinessCheck(ok=True, detail="not checked: the database did not answer")
    checks = {
        "database": database_ok,
        "migrations": migrations,
        "dispatcher": dispatcher_check(settings, dispatcher),
        "reports": reports,
    }
    ready = all(check.ok for check in checks.values())
    return Readiness(status="ready" if ready else "not ready", checks=checks)
