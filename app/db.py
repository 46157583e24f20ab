"""Database engine, sessions and the declarative base.

The schema is made only by Alembic migrations (``migrations/``); nothing here creates tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Set in session.info by code that wrote outbox rows: the request wakes the dispatcher on commit.
ENQUEUED = "spbridge.enqueued"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONDoc = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# The instants the bridge takes from input (case events, appointments, searches, report periods):
# wide enough for any real referral, narrow enough that converting to UTC and the date arithmetic
# done on them (months of a report, an appointment's end, worklist deadlines) never overflow.
EARLIEST_INSTANT = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST_INSTANT = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def instant_range(earliest: dt.datetime, latest: dt.datetime) -> str:
    return f"must fall between the years {earliest.year} and {latest.year - 1}"


INSTANT_RANGE = instant_range(EARLIEST_INSTANT, LATEST_INSTANT)


def utc_in_range(
    value: dt.datetime,
    earliest: dt.datetime = EARLIEST_INSTANT,
    latest: dt.datetime = LATEST_INSTANT,
) -> dt.datetime:
    """An aware ``value`` in UTC; ValueError saying the range if it falls outside it, as
    0001-01-01T00:00:00+23:59 does (it has no UTC equivalent at all)."""
    try:
        instant = value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(instant_range(earliest, latest)) from None
    if not earliest <= instant < latest:
        raise ValueError(instant_range(earliest, latest))
    return instant


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout and write transactions that take the lock up front (DESIGN §10)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves instead of the driver's deferred BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        _configure_sqlite(engine)
    return engine


@dataclass
class Database:
    engine: AsyncEngine
    write_sessions: async_sessionmaker[AsyncSession]
    read_sessions: async_sessionmaker[AsyncSession]

    @classmethod
    def from_url(cls, url: str, pool_size: int = 10) -> Database:
        engine = create_engine(url, pool_size)
        return cls(
            engine=engine,
            write_sessions=async_sessionmaker(engine, expire_on_commit=False),
            read_sessions=async_sessionmaker(
                engine.execution_options(read_only=True), expire_on_commit=False
            ),
        )

    async def dispose(self) -> None:
        await self.engine.dispose()


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit when the body finishes, roll back when it raises."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# The same unit of work for code that is not a request (dispatcher, CLI): ``async with``.
transaction = asynccontextmanager(session_scope)
