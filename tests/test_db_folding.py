"""Rows given to ``app.db.fold_rows`` are written with the work's next write of its new rows (in
its one statement on PostgreSQL, as the audit record of a referral is), or before the commit
when no such write comes: never lost. The rows' one JSON parameter (app.db.rows_parameters)
keeps UTCDateTime's rule and each column's own checks. Both databases unless marked."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, func, insert, literal_column, select
from sqlalchemy import exc as sa_exc

from app.audit.models import AuditRecord
from app.db import (
    Database,
    execute_made_once,
    execute_with_new,
    fold_rows,
    insert_new,
    nothing_sent,
    rows_parameters,
    table_of,
    transaction,
)
from tests.conftest import empty_database
from tests.support.round_trips import statements_sent

WHEN = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)


def record(record_id: str, **overrides: Any) -> dict[str, Any]:
    """An audit record's row as app.audit.trail.write_record gives it."""
    row: dict[str, Any] = {
        "id": record_id,
        "recorded_at": WHEN,
        "source": "api",
        "client_id": None,
        "agent_name": "a test",
        "role": None,
        "organisation": "RW4",
        "action": "C",
        "interaction": "create",
        "method": "POST",
        "route": "/fhir/ServiceRequest",
        "resource_type": "ServiceRequest",
        "resource_id": None,
        "outcome": "0",
        "status": 201,
        "request_id": None,
        "correlation_id": None,
    }
    row.update(overrides)
    return row


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await empty_database(database_url)
    database = Database.from_url(database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def held(database: Database) -> list[tuple[str, dt.datetime, int | None, str | None]]:
    async with transaction(database.read_sessions) as session:
        rows = await session.execute(
            select(
                AuditRecord.id, AuditRecord.recorded_at, AuditRecord.status, AuditRecord.client_id
            ).order_by(AuditRecord.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_folded_rows_no_write_took_are_written_before_the_commit(
    database: Database,
) -> None:
    async with transaction(database.write_sessions) as session:
        fold_rows(session, table_of(AuditRecord), [record("r1"), record("r2", status=None)])
    assert await held(database) == [("r1", WHEN, 201, None), ("r2", WHEN, None, None)]


async def test_folded_rows_go_in_the_works_write_of_its_new_rows(
    database: Database, backend: str
) -> None:
    with statements_sent(database) as statements:
        async with transaction(database.write_sessions) as session:
            fold_rows(session, table_of(AuditRecord), [record("r1", client_id="c")])
            if backend == "postgresql":
                # Any statement: the rows go in it as a data-modifying CTE.
                await execute_with_new(session, select(literal_column("1")), {}, ())
                assert len(statements) == 1 and "INSERT INTO audit_events" in statements[0]
            else:
                await insert_new(session, ())
                written = [s.split("(")[0].strip() for s in statements if "BEGIN" not in s]
                assert written == ["INSERT INTO audit_events"]
            statements.clear()
        assert not [s for s in statements if "audit_events" in s]  # not written twice
    assert await held(database) == [("r1", WHEN, 201, "c")]


def test_a_naive_datetime_is_refused_as_the_column_refuses_it() -> None:
    naive = record("r1", recorded_at=WHEN.replace(tzinfo=None))
    with pytest.raises(ValueError, match="naive datetime"):
        rows_parameters("noted", tuple(naive), [naive])


@pytest.mark.postgresql_only
async def test_a_value_too_long_for_its_column_is_refused_not_cut_short(
    database: Database, backend: str
) -> None:
    async with transaction(database.write_sessions) as session:
        fold_rows(session, table_of(AuditRecord), [record("r1", role="x" * 33)])
        with pytest.raises(sa_exc.DBAPIError, match="too long"):
            await execute_with_new(session, select(literal_column("1")), {}, ())
        await session.rollback()
    assert await held(database) == []


async def test_a_statement_made_once_answers_its_rows_and_its_errors_as_sqlalchemys(
    database: Database,
) -> None:
    """``execute_made_once`` (PostgreSQL: on the driver's cursor, past SQLAlchemy's execution):
    the rows it returns, the engine's listeners, and a broken constraint raised as SQLAlchemy
    raises it, so that callers' handling (409s, 503s) stays as for any statement."""
    audit = table_of(AuditRecord)
    inserted = insert(audit).returning(audit.c.id)
    with statements_sent(database) as statements:
        async with transaction(database.write_sessions) as session:
            rows = await execute_made_once(session, inserted, record("r1"))
            assert [tuple(row) for row in rows] == [("r1",)]
    assert any("INSERT INTO audit_events" in s for s in statements)
    async with transaction(database.write_sessions) as session:
        with pytest.raises(sa_exc.IntegrityError):
            await execute_made_once(session, inserted, record("r1"))
        await session.rollback()
    assert await held(database) == [("r1", WHEN, 201, None)]


@pytest.mark.postgresql_only
async def test_a_statement_made_once_cut_short_leaves_no_connection_in_an_unknown_state(
    database: Database,
) -> None:
    """A task cancelled while its statement runs (an import's stop) must not hand its connection
    back as if nothing happened: as SQLAlchemy does, the connection is invalidated (seen: the
    next loader's referral written without its case)."""
    invalidated: list[object] = []
    event.listen(database.engine.sync_engine, "invalidate", lambda *args: invalidated.append(1))

    async def slow() -> None:
        async with transaction(database.write_sessions) as session:
            await execute_made_once(session, select(func.pg_sleep(5)), {})

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)
    assert invalidated
    async with transaction(database.write_sessions) as session:  # and the next one works
        assert [
            tuple(row) for row in await execute_made_once(session, select(literal_column("1")), {})
        ] == [(1,)]


async def test_a_sessions_statements_follow_its_transactions_and_see_what_it_holds(
    database: Database,
) -> None:
    """The connection a statement of ours runs on is kept for the transaction's next one
    (app.db._statement_connection), never past it: after a commit or a rollback the session's
    next statement is in a new transaction, on whatever connection that has; and the session's
    pending objects are written first, as SQLAlchemy's autoflush would."""
    audit = table_of(AuditRecord)
    inserted = insert(audit).returning(audit.c.id)
    session = database.write_sessions()
    try:
        await execute_made_once(session, inserted, record("r1"))
        await session.commit()
        await session.execute(select(literal_column("1")))  # the next transaction begun
        await execute_made_once(session, inserted, record("r2"))
        await session.rollback()  # r2 is gone with its transaction, r1 stays
        await execute_made_once(session, inserted, record("r3"))
        # A pending object is written before the statement that might depend on it.
        session.add(AuditRecord(**record("r4")))
        counted = select(func.count()).select_from(audit)  # r1, r3 and r4
        assert [tuple(row) for row in await execute_made_once(session, counted, {})] == [(3,)]
        await session.commit()
    finally:
        await session.close()
    assert [row[0] for row in await held(database)] == ["r1", "r3", "r4"]


@pytest.mark.postgresql_only
async def test_a_final_statement_commits_itself_when_nothing_went_before_it(
    database: Database,
) -> None:
    """``final=True`` with nothing sent before (intake's one round trip): the statement is
    committed when it returns (another session sees its row before this one commits), nothing
    may follow it in the same transaction, and the connection is itself again afterwards."""
    audit = table_of(AuditRecord)
    async with transaction(database.write_sessions) as session:
        assert await nothing_sent(session)
        await execute_made_once(session, insert(audit), record("r1"), final=True)
        assert [row[0] for row in await held(database)] == ["r1"]  # before our commit
        with pytest.raises(sa_exc.InvalidRequestError, match="final"):
            await session.execute(select(literal_column("1")))
        await session.rollback()
    async with transaction(database.write_sessions) as session:  # a transaction as any other
        assert await nothing_sent(session)
        await execute_made_once(session, insert(audit), record("r2"))
        assert not await nothing_sent(session)
        assert [row[0] for row in await held(database)] == ["r1"]  # r2 not committed yet
        await session.rollback()
    assert [row[0] for row in await held(database)] == ["r1"]


@pytest.mark.postgresql_only
async def test_a_final_statement_after_another_stays_in_the_transaction(
    database: Database,
) -> None:
    """A read went first: the final statement is then in the transaction, as any other, and
    a rollback takes it back."""
    audit = table_of(AuditRecord)
    async with transaction(database.write_sessions) as session:
        await session.execute(select(literal_column("1")))
        assert not await nothing_sent(session)
        await execute_made_once(session, insert(audit), record("r1"), final=True)
        assert await held(database) == []
        await session.rollback()
    assert await held(database) == []


@pytest.mark.postgresql_only
async def test_a_final_statement_refused_leaves_the_session_free_to_read(
    database: Database,
) -> None:
    """Refused (a broken constraint), a statement that was to commit itself wrote nothing and
    left no transaction aborted: the session's next statement runs (intake then reads the held
    referral), in a transaction of its own."""
    audit = table_of(AuditRecord)
    async with transaction(database.write_sessions) as session:
        await execute_made_once(session, insert(audit), record("r1"))
    async with transaction(database.write_sessions) as session:
        with pytest.raises(sa_exc.IntegrityError):
            await execute_made_once(session, insert(audit), record("r1", client_id="c"), final=True)
        assert await session.scalar(select(func.count()).select_from(audit)) == 1
        await execute_made_once(session, insert(audit), record("r2"))
    assert [row[0] for row in await held(database)] == ["r1", "r2"]
