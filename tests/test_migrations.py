"""The schema comes only from migrations: round trip, and the models match the migrated schema."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, text
from sqlalchemy.engine import Connection, make_url

from app.cases.models import Appointment, Case, CaseEvent, Prescription, Referral, WellbeingScore
from app.db import Base, Database, create_engine
from app.directory.models import SocialPrescribingService
from app.migrate import (
    alembic_config,
    current_revision,
    downgrade_async,
    head_revision,
    upgrade_async,
)
from app.reports.projection import MODEL_VERSION
from app.reports.rebuild import rebuild
from tests.conftest import _admin_execute, postgres_database_async


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def _differences(url: str) -> list[object]:
    engine = create_engine(url)

    def compare(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


@pytest.fixture
async def scratch_url(backend: str, tmp_path: Path, database_url: str) -> AsyncIterator[str]:
    """A database of its own: the round trip must not disturb the shared test database."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/roundtrip.db"
        return
    name = f"{make_url(database_url).database}_roundtrip"
    yield await postgres_database_async(name)
    await _admin_execute([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


async def test_upgrade_downgrade_upgrade(scratch_url: str) -> None:
    await upgrade_async(scratch_url)
    assert await current_revision(scratch_url) == head_revision(scratch_url)
    assert {t.name for t in Base.metadata.sorted_tables} <= await _tables(scratch_url)
    assert await _differences(scratch_url) == []
    await downgrade_async(scratch_url, "base")
    assert await current_revision(scratch_url) is None
    assert await _tables(scratch_url) <= {"alembic_version"}
    await upgrade_async(scratch_url)
    assert await current_revision(scratch_url) == head_revision(scratch_url)
    assert await _differences(scratch_url) == []


def test_no_migration_imports_app_code() -> None:
    """A migration's behaviour is fixed when it is written: it never runs the service's code,
    which changes (the report counting, for one)."""
    versions = Path(__file__).resolve().parent.parent / "migrations" / "versions"
    paths = sorted(versions.glob("*.py"))
    assert len(paths) >= 10
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in ("app", "adapters"), f"{path.name} imports {name}"


async def _store_past_the_domain(url: str) -> int:
    """The report tests' dataset written with plain INSERTs (no session: nothing queued, as in
    an installation whose cases predate the report read model). Returns how many cases."""
    from tests.reports.test_reports import halton_like

    dataset = halton_like("life-rooms")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(SocialPrescribingService.__table__).values(
                    id="life-rooms", name="The Life Rooms", organisation="LR001", adapter="local"
                )
            )
            for kind in (Referral, Case, CaseEvent, Appointment, Prescription, WellbeingScore):
                for row in (r for r in dataset.rows if isinstance(r, kind)):
                    table = kind.__table__
                    values = {
                        c.key: value
                        for c in table.columns
                        if (value := getattr(row, c.key, None)) is not None
                    }
                    await connection.execute(insert(table).values(values))
    finally:
        await engine.dispose()
    return sum(isinstance(r, Case) for r in dataset.rows)


async def _model(url: str) -> tuple[int, int]:
    """(stored version of the report read model, cases in it)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            stored = await connection.scalar(text("SELECT version FROM report_model_state"))
            facts = await connection.scalar(text("SELECT count(*) FROM report_case_facts"))
    finally:
        await engine.dispose()
    return int(stored), int(facts)


async def test_an_upgraded_installation_is_rebuilt_not_migrated(scratch_url: str) -> None:
    # Cases held before the read model: the migrations make it empty and say it was never
    # built (version 0); the rebuild fills it with the code's counting.
    before = ScriptDirectory.from_config(alembic_config(scratch_url)).get_revision("0011")
    assert isinstance(before.down_revision, str)
    await upgrade_async(scratch_url, before.down_revision)
    cases = await _store_past_the_domain(scratch_url)
    await upgrade_async(scratch_url)
    assert await _model(scratch_url) == (0, 0)
    database = Database.from_url(scratch_url)
    try:
        assert (await rebuild(database)).cases == cases
    finally:
        await database.dispose()
    assert await _model(scratch_url) == (MODEL_VERSION, cases)
    # An installation whose model already holds every case (as the first migration 0008 left
    # it) is at the counting of that time, version 1, and needs no rebuild for it.
    await downgrade_async(scratch_url, before.down_revision)
    await upgrade_async(scratch_url)
    assert await _model(scratch_url) == (1, cases)
