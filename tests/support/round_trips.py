"""Counting the round trips a request makes to the database (not timing them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import event


@dataclass
class Trips:
    """Each round trip's first words (BEGIN and COMMIT included), and each statement whole."""

    trips: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)


@contextmanager
def statements_sent(database: Any) -> Iterator[list[str]]:
    """Every statement ``database``'s engine sends while the block runs, whole."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextmanager
def counted(app: Any, backend: str) -> Iterator[Trips]:
    """Round trips of ``app``'s engine while the block runs: every statement the driver sends,
    and BEGIN and COMMIT as the driver sends them. On PostgreSQL those are asyncpg's own
    (``Connection.execute`` of BEGIN, COMMIT or ROLLBACK: SQLAlchemy's begin and commit events
    fire for a transaction the driver never began, a statement that committed itself); on
    SQLite BEGIN IMMEDIATE is a statement, counted with the others, and the commit event is
    the driver's COMMIT."""
    engine = app.state.database.engine.sync_engine
    seen = Trips()

    def sent(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.trips.append(" ".join(statement.split()[:3]))
        seen.statements.append(statement)

    def committed(_conn: Any) -> None:
        seen.trips.append("COMMIT")

    execute = asyncpg.Connection.execute

    async def executed(connection: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        word = query.split()[0].rstrip(";").upper() if query.split() else ""
        if word in ("BEGIN", "COMMIT", "ROLLBACK"):
            seen.trips.append(word)
        return await execute(connection, query, *args, **kwargs)

    event.listen(engine, "before_cursor_execute", sent)
    if backend == "postgresql":
        asyncpg.Connection.execute = executed  # type: ignore[method-assign]
    else:
        event.listen(engine, "commit", committed)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", sent)
        if backend == "postgresql":
            asyncpg.Connection.execute = execute  # type: ignore[method-assign]
        else:
            event.remove(engine, "commit", committed)
