"""Counting the round trips a request makes to the database (not timing them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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
    and BEGIN (asyncpg sends it on its own; SQLite's BEGIN IMMEDIATE is a statement) and
    COMMIT."""
    engine = app.state.database.engine.sync_engine
    seen = Trips()

    def sent(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.trips.append(" ".join(statement.split()[:3]))
        seen.statements.append(statement)

    def began(_conn: Any) -> None:
        if backend == "postgresql":  # SQLite's BEGIN IMMEDIATE is a statement, counted above
            seen.trips.append("BEGIN")

    def committed(_conn: Any) -> None:
        seen.trips.append("COMMIT")

    event.listen(engine, "before_cursor_execute", sent)
    event.listen(engine, "begin", began)
    event.listen(engine, "commit", committed)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", sent)
        event.remove(engine, "begin", began)
        event.remove(engine, "commit", committed)
