"""The schema comes only from migrations: round trip, and the models match the migrated schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url

from app.db import Base, create_engine
from app.migrate import current_revision, downgrade_async, head_revision, upgrade_async
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
