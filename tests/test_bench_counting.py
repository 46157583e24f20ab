"""The intake benchmark's statement counters (bench/counting.py) count what they say they count:
on the wire for PostgreSQL (round trips, statements, statements prepared), and by listeners in
another process for SQLite. The benchmark's figures rest on them; no timing here."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bench.counting import WireCounter, read_counts
from tests.conftest import ROOT


def _difference(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


@pytest.mark.postgresql_only
async def test_the_wire_counter_counts_round_trips_statements_and_prepares(
    database_url: str,
) -> None:
    url = make_url(database_url)
    counter = WireCounter(url.host or "127.0.0.1", url.port or 5432)
    await counter.start()
    try:
        connection = await asyncpg.connect(
            host="127.0.0.1",
            port=counter.port,
            user=url.username,
            database=url.database,
            ssl=False,
            timeout=10,
        )
        try:
            start = counter.snapshot()
            await connection.execute("SELECT 1")  # no arguments: one simple Query
            simple = counter.snapshot()
            async with connection.transaction():  # BEGIN and COMMIT: simple Queries
                # The first prepares (Parse, Describe, Sync) then runs (Bind, Execute, Sync);
                # the second finds it in asyncpg's cache and only runs it.
                assert await connection.fetchval("SELECT $1::int", 1) == 1
                assert await connection.fetchval("SELECT $1::int", 2) == 2
            done = counter.snapshot()
        finally:
            await connection.close()
    finally:
        await counter.stop()
    assert counter.unreadable == 0
    assert _difference(start, simple) == {"round trips": 1, "statements": 1, "prepared": 0}
    assert _difference(simple, done) == {"round trips": 5, "statements": 4, "prepared": 1}


def test_the_wrapper_counts_what_another_process_sends_to_sqlite(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from pathlib import Path

            from sqlalchemy import create_engine, text

            engine = create_engine("sqlite:///{tmp_path / "counted.db"}")
            with engine.connect() as connection:
                connection.execute(text("CREATE TABLE t (x INTEGER)"))
                connection.execute(text("INSERT INTO t VALUES (1)"))
                connection.commit()
                connection.execute(text("INSERT INTO t VALUES (2)"))
                connection.rollback()
            Path("{ready}").touch()
            time.sleep(60)  # until the test has read the counts and stops it
            """
        )
    )
    counts_file = tmp_path / "counts.json"
    process = subprocess.Popen(  # noqa: S603 (the benchmark's own wrapper)
        [sys.executable, str(ROOT / "bench" / "counting.py"), str(counts_file), str(script)],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, "the counted script exited"
            assert time.monotonic() < deadline, "the counted script did not get ready"
            time.sleep(0.05)
        counts = asyncio.run(read_counts(process.pid, counts_file))
    finally:
        process.kill()
        process.wait(timeout=10)
    assert counts == {"statements": 3, "commits": 1, "rollbacks": 1}
