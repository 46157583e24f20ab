"""SQLite: a process's writers take turns at its write gate (app.db), one at a time, instead of
meeting SQLite's lock, whose waiting writer sleeps and retries; the gate is given back however a
transaction ends, and a writer that waits longer than the pool's timeout is told the database is
unavailable (a 503), as one that waits for a pooled connection is."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.db import Database, PoolLimits, transaction, unavailability
from app.migrate import upgrade_async


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database whose connections never wait on SQLite's own lock (a busy
    timeout of 0): a writer that met the lock would fail at once with "database is locked"."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'writers.db'}"
    await upgrade_async(url)
    db = Database.from_url(url, PoolLimits(size=4, max_overflow=0, timeout=5))

    @event.listens_for(db.engine.sync_engine, "connect")
    def _no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.close()

    try:
        yield db
    finally:
        await db.dispose()


async def _write(db: Database, name: str, seen: list[str], hold: float = 0.0) -> None:
    async with transaction(db.write_sessions) as session:
        await session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock is taken
        seen.append(f"{name} writing")
        await asyncio.sleep(hold)
        seen.append(f"{name} done")


async def _fail_mid_transaction(db: Database) -> None:
    async with transaction(db.write_sessions) as session:
        await session.execute(text("SELECT 1"))
        raise RuntimeError("a bug mid-transaction: rolled back")


async def test_writers_take_turns_in_order(database: Database) -> None:
    seen: list[str] = []
    first = asyncio.create_task(_write(database, "first", seen, hold=0.2))
    await asyncio.sleep(0.05)
    others = [asyncio.create_task(_write(database, f"w{i}", seen)) for i in range(3)]
    await asyncio.gather(first, *others)
    # One at a time (each writer's steps together), the first before the rest; the others in
    # the order they reached the gate (their connections may open in any order).
    assert seen[:2] == ["first writing", "first done"]
    pairs = [seen[i : i + 2] for i in range(2, len(seen), 2)]
    assert sorted(pairs) == [[f"w{i} writing", f"w{i} done"] for i in range(3)]


async def test_the_gate_is_given_back_however_a_transaction_ends(database: Database) -> None:
    seen: list[str] = []
    with pytest.raises(RuntimeError):
        await _fail_mid_transaction(database)
    await asyncio.wait_for(_write(database, "after a rollback", seen), 2)

    async with database.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))  # written, then the connection is lost
        await connection.invalidate()
    await asyncio.wait_for(_write(database, "after an invalidation", seen), 2)

    session = database.write_sessions()
    await session.execute(text("SELECT 1"))
    await session.close()  # closed without a commit
    await asyncio.wait_for(_write(database, "after a close", seen), 2)
    assert seen == [
        f"after {how} {step}"
        for how in ("a rollback", "an invalidation", "a close")
        for step in ("writing", "done")
    ]


async def test_a_committed_connection_goes_back_without_a_rollback_an_open_one_with_one(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool resets every connection handed back; after a COMMIT there is nothing to roll
    # back, and a rollback through aiosqlite is a hop to its thread for nothing.
    rollbacks: list[str] = []
    original = aiosqlite.Connection.rollback

    async def rollback(connection: aiosqlite.Connection) -> None:
        rollbacks.append("rollback")
        await original(connection)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", rollback)
    await _write(database, "committed", [])
    assert rollbacks == []

    session = database.write_sessions()
    await session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock is held
    await session.close()  # handed back open: rolled back, the lock let go
    assert rollbacks == ["rollback"]
    await asyncio.wait_for(_write(database, "after", []), 2)  # busy timeout 0: not locked


async def test_a_connection_keeps_its_turn_between_its_own_transactions(
    database: Database,
) -> None:
    async with database.engine.connect() as connection:
        for _ in range(2):  # the second BEGIN must not wait for the gate it holds
            async with connection.begin():
                await connection.execute(text("SELECT 1"))


async def test_a_writer_waiting_past_the_timeout_is_told_the_database_is_unavailable(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'slow.db'}"
    await upgrade_async(url)
    db = Database.from_url(url, PoolLimits(size=4, max_overflow=0, timeout=0.2))
    try:
        holding = asyncio.create_task(_write(db, "slow", [], hold=1.0))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolTimeout) as caught:
            await _write(db, "late", [])
        found = unavailability(caught.value)
        assert found is not None
        assert found.reason == "pool_timeout"
        await holding
        await _write(db, "next", [])  # the gate works on after a timeout
    finally:
        await db.dispose()


@pytest.fixture
def visits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each visit to an aiosqlite connection's thread, by the function sent there."""
    seen: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(connection: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await original(connection, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return seen


async def test_begin_goes_with_the_first_statement_and_holds_the_lock_from_there(
    database: Database, visits: list[str], tmp_path: Path
) -> None:
    await _write(database, "warm", [])  # the pool's connection opened (its own visits)
    visits.clear()
    other = sqlite3.connect(tmp_path / "writers.db", timeout=0, isolation_level=None)

    async def write_then_fail() -> None:
        async with transaction(database.write_sessions) as session:
            await session.execute(
                text("INSERT INTO report_pending_cases (case_id, noted_at) VALUES ('c', 'x')")
            )
            # One visit for BEGIN IMMEDIATE and the statement, and the lock held from it:
            # another writer is refused at once (busy timeout 0) until the transaction ends.
            assert len(visits) == 1
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            raise RuntimeError("rolled back: the INSERT was in the transaction")

    try:
        with pytest.raises(RuntimeError, match="rolled back"):
            await write_then_fail()
        assert other.execute("SELECT count(*) FROM report_pending_cases").fetchone() == (0,)
    finally:
        other.close()
    assert len(visits) == 2  # the statement with its BEGIN, then the ROLLBACK


async def test_a_transaction_that_sends_nothing_costs_no_visit(
    database: Database, visits: list[str]
) -> None:
    await _write(database, "warm", [])  # the pool's connection opened (its own visits)
    visits.clear()
    async with transaction(database.write_sessions) as session:
        await session.connection()  # begun, as a request's session is by its authentication
    assert visits == []
    async with transaction(database.read_sessions) as session:
        await session.connection()
    assert visits == []
    await _write(database, "after", [])  # the gate given back, the next writer not blocked
    assert len(visits) == 2  # its statement with the BEGIN, its COMMIT
