"""The read model's version (app.reports.version) and `spbridge reports rebuild`
(app.reports.rebuild): a model older than the code is said at startup, in /readyz and on every
report, which still answers; the rebuild takes every case in again by the code's counting, also
the cases nothing has touched since, resumes where it stopped, and leaves a model newer than the
code alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from app.cases.after_write import queue_for_reports
from app.cases.models import ReportPendingCase
from app.cli import cli
from app.config import get_settings
from app.db import utcnow
from app.main import create_app
from app.reports import projection, rebuild, version
from app.reports.drainer import ReportDrainer
from app.reports.models import ReportCaseFact, ReportCount, ReportModelState
from tests.conftest import Bridge, empty_database, make_settings
from tests.reports.test_reports import EXPECTED_ACTIVITY, halton_like, report, store, table

runner = CliRunner()
NOTE = "spbridge reports rebuild"
QUEUED = "00000000-0000-0000-0000-00000000abcd"


@pytest.fixture
async def reporting(app: Any, bridge: Bridge) -> dict[str, str]:
    await bridge.service("life-rooms", "LR001")
    await store(app, halton_like("life-rooms"))
    await rebuild.rebuild(app.state.database)  # the model holds every case
    return await bridge.key("reporting", "LR001")


async def _state(app: Any) -> tuple[int, int | None, str | None]:
    async with app.state.database.read_sessions() as session:
        row = (
            await session.execute(
                select(
                    ReportModelState.version,
                    ReportModelState.rebuilding,
                    ReportModelState.rebuilt_through,
                )
            )
        ).one()
    return row.version, row.rebuilding, row.rebuilt_through


async def _set_state(app: Any, **values: Any) -> None:
    async with app.state.database.write_sessions() as session:
        await session.execute(update(ReportModelState).values(**values))
        await session.commit()


async def _started(url: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNINGs of a process starting on this database (the app's lifespan)."""
    caplog.clear()
    other = create_app(make_settings(url))
    with caplog.at_level(logging.WARNING, logger="spbridge.reports"):
        async with other.router.lifespan_context(other):
            pass
    return [r.getMessage() for r in caplog.records if r.name == "spbridge.reports"]


async def _ready(bridge: Bridge) -> dict[str, Any]:
    response = await bridge.http.get("/readyz")
    assert response.status_code == 200, response.text
    check: dict[str, Any] = response.json()["checks"]["reports"]
    return check


async def test_a_new_installation_is_current(
    app: Any, bridge: Bridge, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The app fixture emptied the database, state row included: no case, so the starting
    # process recorded the code's version (nothing to rebuild).
    assert await _state(app) == (projection.MODEL_VERSION, None, None)
    assert await _ready(bridge) == {"ok": True, "detail": None}
    assert await _started(database_url, caplog) == []


async def test_a_change_of_counting_is_said_until_the_rebuild(
    app: Any,
    bridge: Bridge,
    database_url: str,
    reporting: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = await report(bridge, reporting)
    assert table(before, "attended-by-duration")["16-30 minutes"] == [1, 0, 0, 1]
    assert not any(NOTE in n for n in before["notes"])

    # A new release counts attended appointments' lengths differently (every one in the first
    # band) and says so with a new version.
    monkeypatch.setattr(projection, "MODEL_VERSION", projection.MODEL_VERSION + 1)
    monkeypatch.setattr(projection, "duration_band", lambda minutes: 0)
    warned = await _started(database_url, caplog)
    stored = f"version {projection.MODEL_VERSION - 1}"
    assert len(warned) == 1 and NOTE in warned[0] and stored in warned[0], warned
    ready = await _ready(bridge)
    assert ready["ok"] is True and NOTE in ready["detail"]
    stale = await report(bridge, reporting)
    assert any(NOTE in n for n in stale["notes"])
    # Figures of cases nothing touched are still the old counting's.
    assert stale["sections"] == before["sections"]

    done = await rebuild.rebuild(app.state.database, batch=2)
    assert done.cases == 6 and done.version == projection.MODEL_VERSION
    assert await _state(app) == (projection.MODEL_VERSION, None, None)
    after = await report(bridge, reporting)
    assert not any(NOTE in n for n in after["notes"])
    durations = table(after, "attended-by-duration")
    assert durations["1-15 minutes"] == [1, 1, 1, 3]
    assert durations["16-30 minutes"] == [0, 0, 0, 0]
    assert await _ready(bridge) == {"ok": True, "detail": None}
    assert await _started(database_url, caplog) == []


async def test_a_model_never_built_over_cases_already_held(
    app: Any,
    bridge: Bridge,
    database_url: str,
    reporting: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As after upgrading an installation that had cases before the read model existed:
    # migration 0008 made the tables empty, 0011 recorded version 0.
    async with app.state.database.write_sessions() as session:
        for model in (ReportCount, ReportCaseFact, ReportPendingCase):
            await session.execute(delete(model))
        await session.commit()
    await _set_state(app, version=0)
    warned = await _started(database_url, caplog)
    assert len(warned) == 1 and "has not been built" in warned[0]
    empty = await report(bridge, reporting)
    assert "has not been built" in empty["notes"][-1]
    assert table(empty, "activity")["referrals"] == [0, 0, 0, 0]

    await rebuild.rebuild(app.state.database)
    rebuilt = await report(bridge, reporting)
    assert table(rebuilt, "activity") == EXPECTED_ACTIVITY
    assert len(rebuilt["notes"]) == 1


async def test_a_stopped_rebuild_resumes(
    app: Any, bridge: Bridge, reporting: dict[str, str]
) -> None:
    whole = await report(bridge, reporting)
    database = app.state.database
    # Two batches of two cases, then the command is stopped.
    async with database.write_sessions() as session:
        assert await session.run_sync(rebuild.begin) == (0, 6)
        await session.commit()
    for _ in range(2):
        async with database.write_sessions() as session:
            assert await rebuild.step(session, 2) == 2
            await session.commit()
    stored, rebuilding, through = await _state(app)
    assert (stored, rebuilding) == (projection.MODEL_VERSION, projection.MODEL_VERSION)
    assert through is not None
    midway = await report(bridge, reporting)
    assert "being rebuilt" in midway["notes"][-1]
    assert midway["sections"] == whole["sections"]
    ready = await _ready(bridge)
    assert ready["ok"] is True and "being rebuilt" in ready["detail"]

    seen: list[tuple[int, int]] = []
    done = await rebuild.rebuild(database, batch=2, progress=lambda d, t: seen.append((d, t)))
    assert done.cases == 2  # only what was left
    assert seen == [(4, 6), (6, 6)]
    assert await _state(app) == (projection.MODEL_VERSION, None, None)
    assert (await report(bridge, reporting))["sections"] == whole["sections"]
    # --restart starts from the first case again.
    assert (await rebuild.rebuild(database, restart=True)).cases == 6


async def test_a_newer_model_is_left_to_newer_code(
    app: Any,
    bridge: Bridge,
    database_url: str,
    reporting: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A rolling upgrade: another process runs a newer release and rebuilt the model.
    newer = projection.MODEL_VERSION + 1
    await _set_state(app, version=newer)
    warned = await _started(database_url, caplog)
    assert len(warned) == 1 and "rolling upgrade" in warned[0]
    # This process's drainer and reports leave the queue alone: a case written now stays
    # queued for the newer processes.
    async with app.state.database.write_sessions() as session:
        await queue_for_reports(session, [QUEUED], utcnow())
        await session.commit()
    assert await ReportDrainer(app.state.database).run_once() == 0
    doc = await report(bridge, reporting)
    assert "rolling upgrade" in doc["notes"][-1]
    async with app.state.database.read_sessions() as session:
        assert len(list(await session.scalars(select(ReportPendingCase.case_id)))) == 1
    with pytest.raises(rebuild.NewerModel):
        await rebuild.rebuild(app.state.database)
    assert (await _state(app))[0] == newer


@pytest.fixture
def cli_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    asyncio.run(empty_database(database_url))
    monkeypatch.setenv("SPBRIDGE_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


async def _with_cases(url: str) -> None:
    application = create_app(make_settings(url))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            bridge = Bridge(http)
            await bridge.service("life-rooms", "LR001")
            await store(application, halton_like("life-rooms"))
        async with application.state.database.write_sessions() as session:
            await session.execute(update(ReportModelState).values(version=0))
            await session.commit()


def test_the_rebuild_command(cli_database: str) -> None:
    asyncio.run(_with_cases(cli_database))
    result = runner.invoke(cli, ["reports", "rebuild", "--batch", "4"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout == (
        f"report read model rebuilt: 6 cases taken in, counting version "
        f"{projection.MODEL_VERSION}\n"
    )
    assert "Traceback" not in result.stderr
    # Not a terminal: progress as lines on stderr, from the first batch to the last.
    lines = result.stderr.splitlines()
    assert lines[0] == "rebuilding the report read model: 0/6 cases"
    assert lines[-1] == "rebuilding the report read model: 6/6 cases"


def test_the_rebuild_command_refuses_a_newer_model(cli_database: str) -> None:
    async def newer() -> None:
        application = create_app(make_settings(cli_database))
        async with (
            application.router.lifespan_context(application),
            application.state.database.write_sessions() as session,
        ):
            await session.execute(
                update(ReportModelState).values(version=projection.MODEL_VERSION + 1)
            )
            await session.commit()

    asyncio.run(newer())
    result = runner.invoke(cli, ["reports", "rebuild"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: The report read model is at counting version")
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


def test_version_notes() -> None:
    code = projection.MODEL_VERSION
    assert version.ModelState(stored=code, rebuilding=None, code=code).note() is None
    assert version.ModelState(stored=code, rebuilding=None, code=code).current
    for stored, rebuilding in ((0, None), (code - 1, None), (code - 1, code)):
        found = version.ModelState(stored=stored, rebuilding=rebuilding, code=code)
        assert not found.current and not found.newer
        assert NOTE in (found.note() or "")
    assert version.ModelState(stored=code + 1, rebuilding=None, code=code).newer
    assert version.ModelState(stored=code, rebuilding=code + 1, code=code).newer
