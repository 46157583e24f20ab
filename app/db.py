"""Database engine, sessions and the declarative base.

The schema is made only by Alembic migrations (``migrations/``); nothing here creates tables.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson
from sqlalchemy import (
    JSON,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    cast,
    event,
    func,
    inspect,
    literal_column,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert as sqlalchemy_insert
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, make_transient_to_detached
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import EMPTY_DICT, await_

from app.caches import CACHES, CHANGES, DESTINATIONS, SENDER, SERVICES, Remembered, heard
from app.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


_log = logging.getLogger("spbridge.db")

# Set in session.info by code that wrote outbox rows: the request wakes the dispatcher on commit.
ENQUEUED = "spbridge.enqueued"
# In session.info: rows (by table) a writer gave to be written with the work's new rows
# (fold_rows), in the same statement on PostgreSQL.
FOLDED = "spbridge.folded"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


ModelT = TypeVar("ModelT", bound=Base)


def table_of(model: type[Base]) -> Table:
    """The table a model class is mapped to (typed: ``__table__`` is only a FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


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


@dataclass(frozen=True)
class PoolLimits:
    """How many connections a process keeps and opens, and how long a request waits for one.

    ``timeout`` bounds every wait for the database's attention: a free connection from the pool,
    a new connection to be opened (PostgreSQL), and on SQLite a writer's turn at its process's
    write gate and the write lock between processes (its busy timeout). A wait
    that runs out is :func:`unavailability` "pool_timeout" or "locked": the request is answered 503
    quickly instead of hanging. The defaults suit the command line; the server and workers take
    theirs from the settings (``SPBRIDGE_DATABASE_POOL_*``, :meth:`from_settings`)."""

    size: int = 10
    max_overflow: int = 0
    timeout: float = 30.0
    recycle: float = 1800.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolLimits:
        return cls(
            size=settings.database_pool_size,
            max_overflow=settings.database_pool_max_overflow,
            timeout=settings.database_pool_timeout,
            recycle=settings.database_pool_recycle,
        )


# In a pooled SQLite connection's info while it holds its process's write gate.
_WRITING = "spbridge.writing"


def _configure_sqlite(engine: AsyncEngine, busy_timeout: float) -> None:
    """WAL, a busy timeout and write transactions that take the lock up front (DESIGN §10)."""
    busy_ms = max(1, round(busy_timeout * 1000))

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves instead of the driver's deferred BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    # One writer at a time in this process, the others queued in turn. Left to SQLite's lock, a
    # waiting writer sleeps and retries (1, 2, 5, … 100 ms between tries), which under
    # concurrent requests put intake's p99 past a second (bench/intake.py); the busy timeout
    # still governs writers in other processes (a CLI import, a worker).
    gate = asyncio.Lock()

    async def _take_turn() -> None:
        # At once when no writer holds the gate or waits for it; else in turn, as long as the
        # pool's timeout at most (a free-looking gate with writers waiting is theirs first).
        try:
            async with asyncio.timeout(busy_timeout):
                await gate.acquire()
        except TimeoutError:
            raise sa_exc.TimeoutError(
                f"this process's other writers held the database for {busy_timeout:g} s"
            ) from None

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Sent with the transaction's first statement, in its visit to SQLite's thread
        # (_OneCallConnection.begin_with): a visit of its own cost more of the process's CPU
        # than SQLite's work, and a transaction that sends nothing then costs no visit at all.
        adapted: _OneCallConnection = conn.connection.dbapi_connection
        if conn.get_execution_options().get("read_only"):
            adapted.begin_with("BEGIN", conn)
            return
        if not conn.info.get(_WRITING):
            await_(_take_turn())
            # Held until the connection goes back to the pool: a session gives it back as its
            # transaction ends, right after the COMMIT or ROLLBACK.
            conn.info[_WRITING] = True
        adapted.begin_with("BEGIN IMMEDIATE", conn)

    def _release(_dbapi_connection: Any, record: Any, *_args: Any) -> None:
        if record is not None and record.info.pop(_WRITING, False):
            gate.release()

    # Every way a connection leaves its user: returned, invalidated (the transaction is gone
    # with it), closed or detached.
    for name in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
        event.listen(engine.sync_engine, name, _release)


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class _OneCallCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor, each statement in one call in the connection's thread:
    cursor, execute, rows and close together. SQLAlchemy's own makes three or four calls (an
    aiosqlite cursor, the statement, its rows, closing it), each a hop between threads that cost
    more of the process's CPU than SQLite's own work (app.db.write_batches)."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:  # no aiosqlite cursor: one per statement
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1  # sqlite3's

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        if parameters is None:
            self._run(lambda cursor: cursor.execute(operation))
        else:
            self._run(lambda cursor: cursor.execute(operation, parameters))

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._run(lambda cursor: cursor.executemany(operation, seq_of_parameters))

    def _run(self, call: Any) -> None:
        connection = self._connection
        adapted: Any = self._adapt_connection  # a _OneCallConnection
        # Listeners saw this statement already (SQLAlchemy dispatches before calling us): they
        # see its BEGIN just after it, though SQLite runs the BEGIN first.
        begin = adapted.begun()

        def work() -> tuple[Any, int, Any, list[Any]]:  # in the connection's thread
            if begin is not None:
                connection._conn.execute(begin)
            cursor = connection._conn.cursor()
            try:
                call(cursor)
                rows = cursor.fetchall() if cursor.description else []
                return cursor.description, cursor.rowcount, cursor.lastrowid, rows
            finally:
                cursor.close()

        async def in_turn() -> tuple[Any, int, Any, list[Any]]:
            async with self._adapt_connection._execute_mutex:
                return await connection._execute(work)  # type: ignore[no-any-return]

        try:
            self._description, self._rowcount, self._lastrowid, rows = await_(in_turn())
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._rows = collections.deque(rows)

    def close(self) -> None:
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        return  # nothing held open between calls


class _OneCallConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection, its BEGIN sent with the transaction's first statement
    and its COMMIT or ROLLBACK only for a transaction SQLite has begun."""

    __slots__ = ("_begin",)
    _cursor_cls = _OneCallCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        # The BEGIN still to send, and the SQLAlchemy connection whose listeners see it.
        self._begin: tuple[str, Any] | None = None

    def cursor(self, server_side: bool = False) -> Any:
        # Every cursor the one-call kind (rows read whole: SQLite is in the process), so that
        # no statement goes without the BEGIN before it.
        return self._cursor_cls(self)

    def begin_with(self, statement: str, conn: Any) -> None:
        self._begin = (statement, conn)

    def begun(self) -> str | None:
        """The BEGIN to send before the statement about to go (None: none), shown to the
        engine's listeners as it goes, as any statement is."""
        if self._begin is None:
            return None
        statement, conn = self._begin
        self._begin = None
        conn.dispatch.before_cursor_execute(conn, None, statement, (), None, False)
        return statement

    def commit(self) -> None:
        if self._begin is not None:  # nothing was sent: nothing to commit
            self._begin = None
            return
        super().commit()

    def rollback(self) -> None:
        # The pool rolls back every connection handed back to it, a committed one too. With no
        # transaction open that does nothing but cost a hop to aiosqlite's thread, and sqlite3
        # says whether one is open without the hop (a flag of the connection).
        self._begin = None
        connection = self._connection._connection  # sqlite3's, None once closed
        if connection is not None and not connection.in_transaction:
            return
        super().rollback()


class _OneCallDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI module, its connections making :class:`_OneCallCursor`."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        return _OneCallConnection(self, adapted._connection)


def create_engine(url: str, pool: PoolLimits | None = None) -> AsyncEngine:
    pool = pool or PoolLimits()
    kwargs: dict[str, Any] = {}
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(
                pool_size=pool.size, max_overflow=pool.max_overflow, pool_timeout=pool.timeout
            )
    else:
        kwargs.update(
            pool_size=pool.size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.timeout,
            pool_recycle=pool.recycle,
            # asyncpg waits 60 s for a new connection by default: as long as the pool's wait.
            connect_args={"timeout": pool.timeout},
        )
    # JSON columns (resources, versions, event data) written by orjson: the stdlib encoder was
    # a twentieth of an import's CPU. Compact text; values read back the same.
    if is_sqlite(url):
        kwargs["module"] = _OneCallDBAPI(aiosqlite, sqlite3)
    engine = create_async_engine(url, json_serializer=_json_text, **kwargs)
    if is_sqlite(url):
        _configure_sqlite(engine, pool.timeout)
    else:
        _drop_closed_connections(engine)
        _follow_statements_sent(engine)
    return engine


# In a PostgreSQL connection's info, for its current transaction: a statement has been sent
# (so the driver has begun a transaction), or its one statement has committed itself
# (``execute_made_once(..., final=True)``): anything after it would not be atomic with it.
_SENT = "spbridge.sent"
_ALONE = "spbridge.committed_alone"


def _follow_statements_sent(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _on_statement(connection: Any, *_args: Any) -> None:
        info = connection.info
        if info.get(_ALONE):
            raise sa_exc.InvalidRequestError(
                "a statement after the transaction's final one, which committed itself: it "
                "would not be atomic with it"
            )
        info[_SENT] = True

    def _over(connection: Any) -> None:
        if connection.invalidated:
            return  # its DBAPI connection is gone, and what was noted with it
        connection.info.pop(_SENT, None)
        connection.info.pop(_ALONE, None)

    event.listen(sync_engine, "commit", _over)
    event.listen(sync_engine, "rollback", _over)

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info.pop(_SENT, None)
        record.info.pop(_ALONE, None)


async def nothing_sent(session: AsyncSession) -> bool:
    """PostgreSQL: whether the session's transaction has sent no statement yet, so that a
    statement given as its final one (``execute_made_once(..., final=True)``) may commit
    itself, with no BEGIN and no COMMIT of its own: intake's one round trip. Always False on
    SQLite (its BEGIN goes with the first statement already). Nothing is flushed."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    connection = await _transaction_connection(session)
    return not connection.info.get(_SENT)


def _drop_closed_connections(engine: AsyncEngine) -> None:
    """Replace a pooled connection the server has closed, without a round trip.

    SQLAlchemy's ``pool_pre_ping`` costs three round trips per checkout on asyncpg (BEGIN, a
    ping, ROLLBACK): a fifth of a referral's. A server that restarts or terminates a backend
    closes the socket, which asyncpg notices on its own; such a connection is refused here and the
    pool opens a new one, so a restart costs no request. A connection dropped silently (no FIN,
    e.g. by a firewall) is not seen here: ``pool_recycle`` bounds its age, and a request that
    meets one is answered 503 with Retry-After while the pool replaces every older connection."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        is_closed = getattr(driver, "is_closed", None)
        if is_closed is not None and is_closed():
            raise sa_exc.DisconnectionError("the server closed this pooled connection")


@dataclass
class Database:
    engine: AsyncEngine
    write_sessions: async_sessionmaker[AsyncSession]
    read_sessions: async_sessionmaker[AsyncSession]
    # The process's caches (app.caches), carried by every session made here. Principals join
    # them when the app starts (its cache is the app's); services and destination sets are here.
    caches: dict[str, Remembered[Any, Any]]
    # Names this process on app.caches.CHANGES, so that it ignores its own notices (the
    # sessions carry it too: app.caches.SENDER).
    sender: str
    _follower: asyncio.Task[None] | None = None
    # Set while other processes' changes are followed (follow_changes is listening).
    following: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def from_url(
        cls, url: str, pool: PoolLimits | None = None, directory_cache_seconds: float = 5.0
    ) -> Database:
        engine = create_engine(url, pool)
        caches: dict[str, Remembered[Any, Any]] = {
            SERVICES: Remembered(directory_cache_seconds),
            DESTINATIONS: Remembered(directory_cache_seconds),
        }
        # The makers copy this dict's entries into each session's info (the same cache objects).
        sender = uuid.uuid4().hex
        info = {CACHES: caches, SENDER: sender}
        return cls(
            engine=engine,
            sender=sender,
            write_sessions=async_sessionmaker(engine, expire_on_commit=False, info=info),
            read_sessions=async_sessionmaker(
                engine.execution_options(read_only=True), expire_on_commit=False, info=info
            ),
            caches=caches,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls.from_url(
            settings.database_url,
            PoolLimits.from_settings(settings),
            settings.directory_cache_seconds,
        )

    async def follow_changes(self, retry: float = 1.0) -> None:
        """PostgreSQL: forget what other processes changed as soon as they commit it (they
        NOTIFY the caches they changed, app.caches.CHANGES), not only after the caches' time
        bound, which stays the limit while the listening connection is down. Nothing on SQLite.
        A process that serves or works calls this once; :meth:`dispose` stops it."""
        if is_sqlite(str(self.engine.url)) or self._follower is not None:
            return
        self._follower = asyncio.create_task(self._follow(retry), name="cache-changes")
        # Wait (briefly) for it to listen: it forgets everything when it starts, which had
        # better come before the first request than after it filled the caches.
        started = asyncio.ensure_future(self.following.wait())
        await asyncio.wait(
            {started, self._follower}, timeout=5, return_when=asyncio.FIRST_COMPLETED
        )
        started.cancel()

    async def _follow(self, retry: float) -> None:
        # Its own connection, outside the pool: it is held for the life of the process.
        engine = create_async_engine(
            self.engine.url, poolclass=NullPool, connect_args={"timeout": 10}
        )

        def changed(_connection: Any, _pid: int, _channel: str, notice: str) -> None:
            # This process forgot its own changes as it committed them; a second forget, once
            # the notice comes round, would only drop what it has read since.
            for name in heard(self.sender, notice):
                cache = self.caches.get(name)
                if cache is not None:
                    cache.forget_all()

        rounds = FailedRounds(_log, "not following other processes' cache changes")
        try:
            while True:
                try:
                    async with engine.connect() as connection:
                        listening = (await connection.get_raw_connection()).driver_connection
                        assert listening is not None
                        await listening.add_listener(CHANGES, changed)
                        rounds.succeeded()
                        # What changed while nobody listened is unknown: forget it all.
                        for cache in self.caches.values():
                            cache.forget_all()
                        closed = asyncio.Event()
                        listening.add_termination_listener(lambda _c, ended=closed: ended.set())
                        self.following.set()
                        try:
                            if not listening.is_closed():
                                await closed.wait()
                        finally:
                            self.following.clear()
                    pause = retry
                except Exception as exc:  # logged, and tried again: the time bounds still hold
                    pause = rounds.failed(exc) * retry
                await asyncio.sleep(pause)
        finally:
            await engine.dispose()

    async def stop_following(self) -> None:
        """From here other processes' changes count after the caches' time bound only."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def dispose(self) -> None:
        await self.stop_following()
        await self.engine.dispose()


# --- the database unavailable ------------------------------------------------------------------


@dataclass(frozen=True)
class Unavailable:
    """Why a database error means the database is unavailable (not a bug in the request):

    - ``connection``: refused, reset, closed, shut down, or no more connections allowed;
    - ``pool_timeout``: no pooled connection came free within the pool's timeout (overload);
    - ``locked``: SQLite's write lock did not come free within its busy timeout;
    - ``resources``: the server is out of disk, memory or I/O.

    ``error`` is the type of the exception that says so (the driver's, when there is one): it is
    what gets logged, never the exception's message, which may quote statement parameters."""

    reason: str
    error: str


# PostgreSQL SQLSTATEs: class 08 connection exception, class 53 insufficient resources, and the
# server going away (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now).
_PG_CONNECTION_CLASSES = ("08",)
_PG_RESOURCE_CLASSES = ("53",)
_PG_SHUTDOWN = frozenset({"57P01", "57P02", "57P03"})
_PG_TOO_MANY_CONNECTIONS = "53300"
# SQLite primary result codes (the low byte of an extended code).
_SQLITE_LOCKED = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_RESOURCES = frozenset({10, 13, 14})  # SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN
# Modules whose frames show that an OSError came from talking to the database.
_DATABASE_MODULES = ("sqlalchemy.", "asyncpg.", "aiosqlite.")


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then what SQLAlchemy wrapped (``orig``) and the causes, each once."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 8 and all(current is not e for e in found):
        found.append(current)
        wrapped = getattr(current, "orig", None)
        if isinstance(wrapped, BaseException) and all(wrapped is not e for e in found):
            current = wrapped
        else:
            current = current.__cause__ or current.__context__
    return found


def _from_database(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while talking to the database (its frames pass through
    SQLAlchemy or a driver), not by, say, an outbound HTTP call."""
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(_DATABASE_MODULES):
            return True
        tb = tb.tb_next
    return False


def _driver_reason(exc: BaseException) -> str | None:
    # PostgreSQL drivers' errors (asyncpg's, psycopg's, SQLAlchemy's adaptations) carry the
    # server's SQLSTATE.
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        if (
            sqlstate.startswith(_PG_CONNECTION_CLASSES)
            or sqlstate in _PG_SHUTDOWN
            or sqlstate == _PG_TOO_MANY_CONNECTIONS
        ):
            return "connection"
        if sqlstate.startswith(_PG_RESOURCE_CLASSES):
            return "resources"
        return None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            if code & 0xFF in _SQLITE_LOCKED:
                return "locked"
            if code & 0xFF in _SQLITE_RESOURCES:
                return "resources"
        return None
    if isinstance(exc, OSError) and _from_database(exc):
        # Refused, reset, unreachable or timed out while connecting: the driver raises these
        # itself, and SQLAlchemy passes them on unwrapped when a new connection fails.
        return "connection"
    return None


def violated_constraint(exc: BaseException) -> str | None:
    """The name of the constraint a database error says was violated, if it names one
    (asyncpg's errors do; SQLite's do not)."""
    for cause in _chain(exc):
        name = getattr(cause, "constraint_name", None)
        if isinstance(name, str):
            return name
    return None


def unavailability(exc: BaseException) -> Unavailable | None:
    """Whether ``exc`` means the database is unavailable, and why; None for anything else, which
    is a bug (a query the database refuses, a constraint, a programming error) and stays a 500.

    Decided by the exception's type and the connection's state, never by its message. Only a
    database error itself counts (a bug raised while handling one does not): SQLAlchemy's pool
    timeout, its wrapper of a driver error (whose chain is read for the driver's code), or a
    driver's error raised unwrapped while connecting."""
    if isinstance(exc, sa_exc.TimeoutError):
        return Unavailable("pool_timeout", _type_name(exc))
    if isinstance(exc, sa_exc.DBAPIError):
        chain = _chain(exc)
        for link in chain:
            reason = _driver_reason(link)
            if reason is not None:
                return Unavailable(reason, _type_name(link))
        if exc.connection_invalidated:
            # SQLAlchemy found the connection dead (and dropped it from the pool).
            return Unavailable("connection", _type_name(chain[-1]))
        return None
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return None
    reason = _driver_reason(exc)
    return Unavailable(reason, _type_name(exc)) if reason is not None else None


class FailedRounds:
    """How background work (dispatcher, reconciler, report drainer) meets a round that failed:
    one log line per round, WARNING with the reason and no stack when the database is
    unavailable (an outage is not a bug, and a stack a second fills the log), ERROR with the
    stack otherwise; then a pause that doubles with each failure in a row, from ``first`` up to
    ``cap`` seconds, so a database that is down or overloaded is not hammered. A round that
    works starts again from ``first``. Nothing is lost by a failed round: its transaction rolled
    back, and what it would have done is still there to do."""

    def __init__(
        self, logger: logging.Logger, message: str, first: float = 1.0, cap: float = 10.0
    ) -> None:
        self.logger = logger
        self.message = message
        self.first = first
        self.cap = cap
        self.in_a_row = 0

    def failed(self, exc: Exception, **extra: Any) -> float:
        """Log the failure; the seconds to pause before the next round."""
        self.in_a_row += 1
        found = unavailability(exc)
        if found is None:
            self.logger.error(self.message, exc_info=exc, extra=extra)
        else:
            self.logger.warning(
                self.message,
                extra={**extra, "reason": f"database {found.reason}", "error": found.error},
            )
        return float(min(self.cap, self.first * 2 ** (self.in_a_row - 1)))

    def succeeded(self) -> None:
        self.in_a_row = 0


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit when the body finishes, roll back when it raises."""
    async with factory() as session:
        try:
            yield session
            await write_folded(session)
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# The same unit of work for code that is not a request (dispatcher, CLI): ``async with``.
transaction = asynccontextmanager(session_scope)


# Beyond this many new rows (an import's longest histories) the unit of work's batched inserts
# take them, so that one statement's arrays stay of a bounded size. Below it folding pays for an
# import too: 1,000 referrals of ~10 events each loaded in 4.5 s, against 7.9 s with only
# pieces of 12 rows or fewer folded (bench/history.py on PostgreSQL).
FOLDED_AT_MOST = 5_000


@functools.lru_cache(maxsize=256)
def inserted_rows(
    table: Table, name: str, columns: tuple[str, ...], *, skip_existing: bool = False
) -> Any:
    """PostgreSQL: ``INSERT INTO table (columns) SELECT … FROM jsonb_array_elements(:name)``,
    the rows given as one JSON array of arrays (:func:`rows_parameters`), made once per shape.

    SQLAlchemy caches no compiled multi-row ``VALUES`` (its cache key would hold every row), so
    such a statement was compiled afresh on each request: about half of intake's CPU. This one's
    SQL is the same whatever the number of rows, so it is compiled once per process. One JSON
    parameter, not an array per column: each element of an array parameter costs the driver
    and SQLAlchemy's type processing several Python calls, the JSON none."""
    item = func.jsonb_array_elements(
        cast(bindparam(name, type_=Text()), JSONB), type_=JSONB
    ).column_valued("item")
    selected = [_element(item, place, table.c[key].type) for place, key in enumerate(columns)]
    statement = pg_insert(table).from_select(list(columns), select(*selected))
    return statement.on_conflict_do_nothing() if skip_existing else statement


def _element(item: Any, place: int, column_type: Any) -> Any:
    # The index in the SQL, not a parameter; JSONB's own operators, not custom ones, which are
    # slow to hash each time SQLAlchemy looks the statement up in its cache of compiled SQL.
    element = item[literal_column(str(place))]
    if isinstance(column_type, JSON):
        return element  # the value itself: a JSON null stays one, as the column's type has it
    text = element.astext
    # A string is inserted as text: the column's own assignment checks its length (a CAST to
    # VARCHAR(n) would cut it short instead).
    return text if isinstance(column_type, String) else cast(text, column_type)


def _json_instant(value: Any) -> str:
    # orjson hands datetimes here: UTCDateTime's rule (a naive one is a bug), kept in UTC.
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC).isoformat()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


_ROWS_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def rows_parameters(
    name: str, columns: tuple[str, ...], rows: list[dict[str, Any]]
) -> dict[str, str]:
    """The parameter of ``inserted_rows(…, name, columns)`` for these rows."""
    values = [[row[key] for key in columns] for row in rows]
    try:
        return {name: orjson.dumps(values, default=_json_instant, option=_ROWS_JSON).decode()}
    except orjson.JSONEncodeError as exc:
        raise (exc.__cause__ or exc) from None  # ours says what was wrong; orjson's only where


@functools.lru_cache(maxsize=256)
def _folded(statement: Any, shape: tuple[tuple[Table, tuple[str, ...]], ...]) -> Any:
    # The statement with one data-modifying CTE per table of new rows: one per shape.
    for table, columns in shape:
        name = f"new_{table.name}"
        statement = statement.add_cte(inserted_rows(table, name, columns).cte(name))
    return statement


@functools.cache
def _insert_plan(mapper: Any) -> tuple[tuple[str, str, bool, Any, bool], ...]:
    # Per mapped class, worked out once: each column attribute's key, its column's, whether it
    # is part of the primary key, and its Python-side default (None for none; called or not).
    plan = []
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        default = column.default
        if default is not None and default.is_scalar:
            value, called = default.arg, False
        elif default is not None and default.is_callable:
            value, called = default.arg, True
        else:
            value, called = None, False
        plan.append((prop.key, column.key, bool(column.primary_key), value, called))
    return tuple(plan)


def _insert_row(obj: Any) -> dict[str, Any] | None:
    """The row a new ORM object would be inserted as (its unset columns at their defaults), or
    None when the database must make part of it (a generated primary key)."""
    state = inspect(obj)
    held = state.dict
    row: dict[str, Any] = {}
    for key, column_key, primary, default, called in _insert_plan(state.mapper):
        if key in held:
            value = held[key]
        elif primary:
            return None
        else:
            value = default(None) if called else default
            held[key] = value  # the object as the row is: nothing left to load
        row[column_key] = value
    return row


def new_row(model: type[ModelT], **values: Any) -> ModelT:
    """A new object of ``model`` holding ``values``, made as the loader makes one: the
    constructor fires the attribute events for each value (four or five calls each), which a
    new row, inserted whole from what it holds, does not need. Columns not given get their
    defaults at insert, as with the constructor."""
    obj: ModelT = model.__mapper__.class_manager.new_instance()
    obj.__dict__.update(values)
    return obj


def fold_rows(session: AsyncSession, table: Table, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (each with the same keys, the rest at their defaults) with the session's
    next write of its new objects (:func:`execute_with_new`, :func:`insert_new`): in the same
    statement on PostgreSQL, with no round trip of their own. What no such write takes is
    written before the commit (:func:`write_folded`)."""
    session.info.setdefault(FOLDED, {}).setdefault(table, []).extend(rows)


async def write_folded(session: AsyncSession) -> None:
    """Insert what :func:`fold_rows` left unwritten, parents first (nothing, usually)."""
    folded: dict[Table, list[dict[str, Any]]] = session.info.pop(FOLDED, {})
    await write_batches(session, _inserts(folded))


def _new_rows(
    session: AsyncSession, foldable: tuple[type[Any], ...]
) -> tuple[list[Any], dict[Table, list[dict[str, Any]]]] | None:
    """The session's new objects and the rows to insert by table (theirs, and those given to
    :func:`fold_rows`), or None when the objects must be left to the unit of work: one not of
    the ``foldable`` classes (written with every key they need, no relationship to fill in),
    one whose key the database makes, or more than ``FOLDED_AT_MOST`` of them."""
    new = list(session.new)
    if len(new) > FOLDED_AT_MOST:
        return None
    rows: dict[Table, list[dict[str, Any]]] = {}
    for obj in new:
        row = _insert_row(obj) if isinstance(obj, foldable) else None
        if row is None:
            return None
        rows.setdefault(inspect(obj).mapper.local_table, []).append(row)
    for table, given in session.info.pop(FOLDED, {}).items():
        rows.setdefault(table, []).extend(given)
    return new, rows


def forget_unwritten(session: AsyncSession) -> None:
    """Drop what the session holds but has not written: its new objects and the rows given to
    :func:`fold_rows` (a piece of work the database refused before any of it was written)."""
    for obj in list(session.new):
        session.expunge(obj)
    session.info.pop(FOLDED, None)


def join_as_rows(session: AsyncSession, objects: Iterable[Any]) -> None:
    """Objects holding rows already in the database (written by a statement of ours, or
    remembered from an earlier read) join the session as if it had loaded them: nothing to
    flush, changes tracked from here."""
    for obj in objects:
        make_transient_to_detached(obj)
        session.add(obj)


async def execute_with_new(
    session: AsyncSession,
    statement: Any,
    parameters: dict[str, Any],
    foldable: tuple[type[Any], ...],
    *,
    final: bool = False,
) -> None:
    """Execute ``statement`` (PostgreSQL; made once, its values in ``parameters``) with the
    session's new objects inserted in it, as data-modifying CTEs: one round trip where the unit
    of work would make one per table, and SQL compiled once per shape (:func:`inserted_rows`).
    Foreign keys are checked at the statement's end, so the order of the inserts is free.
    Objects that cannot be folded (:func:`_new_rows`) are left to the unit of work (the
    statement's own autoflush). ``final``: as for :func:`execute_made_once`. When the statement
    fails, nothing of it joins the session: the new objects and folded rows are gone with it."""
    found = _new_rows(session, foldable)
    if found is None:
        await write_folded(session)
        await session.execute(statement, parameters)
        return
    new, rows = found
    shape = tuple((table, tuple(rows[table][0])) for table in _in_key_order(rows))
    folded = dict(parameters)
    for table, columns in shape:
        folded.update(rows_parameters(f"new_{table.name}", columns, rows[table]))
    for obj in new:
        session.expunge(obj)
    await execute_made_once(session, _folded(statement, shape), folded, final=final)
    join_as_rows(session, new)


async def execute_made_once(
    session: AsyncSession, statement: Any, parameters: dict[str, Any], *, final: bool = False
) -> list[Any]:
    """Execute ``statement`` (made once, not per request) with ``parameters`` in the session's
    transaction and return its rows as the driver gives them, by the driver with the SQL
    compiled once per shape (:func:`_compiled`): SQLAlchemy's execution of a statement (its
    cache key, execution context and result) cost more CPU than the driver's own work. On
    SQLite in one visit to its thread, the transaction's BEGIN with it. As for any statement:
    the session's pending objects are written first, the engine's listeners see it, and its
    errors are SQLAlchemy's (a lost connection invalidated).

    ``final``: the caller sends nothing more in this transaction. On PostgreSQL, when the
    transaction has sent nothing before it (:func:`nothing_sent`), the statement then commits
    itself (one round trip: no BEGIN, no COMMIT; one statement is atomic on its own), and any
    statement after it in the same transaction is refused (``InvalidRequestError``) rather than
    run outside it. If it fails, nothing of it was written and no transaction is left aborted:
    the session may go on to read."""
    connection = await _statement_connection(session)
    sync: Any = connection.sync_connection
    compiled = _compiled(sync.dialect, statement, tuple(parameters))
    if sync.dialect.name == "sqlite":
        return await _in_sqlite_thread(sync, [(compiled.sql, compiled.bound(parameters))])
    rows: list[Any] = await connection.run_sync(
        _on_driver_cursor, compiled.sql, compiled.bound(parameters), final
    )
    return rows


def _on_driver_cursor(sync: Any, sql: str, values: tuple[Any, ...], final: bool) -> list[Any]:
    # In SQLAlchemy's greenlet, as its own execution runs: the adapted driver begins the
    # transaction if it has not yet, and turns the driver's errors into DBAPI ones.
    adapted = sync.connection.dbapi_connection
    alone = final and not sync.info.get(_SENT)
    if alone:
        # The DBAPI's autocommit for this one statement: the adapter then begins no
        # transaction, and the session's COMMIT has none to end.
        adapted.autocommit = True
    try:
        sync.dispatch.before_cursor_execute(sync, None, sql, values, None, False)
        cursor = adapted.cursor()
        try:
            cursor.execute(sql, values)
            found = list(cursor.fetchall()) if cursor.description else []
        except BaseException as exc:
            # Wrapped and handled as SQLAlchemy does any statement's error: a lost connection,
            # or one whose statement was cut short (a cancelled task: an import's stop), is
            # invalidated, never handed out again in a state nobody knows.
            sync._handle_dbapi_exception(exc, sql, values, cursor, None)
            raise  # not reached: the line above raises
        finally:
            cursor.close()
    finally:
        if alone:
            adapted.autocommit = False
    if alone:
        sync.info[_ALONE] = True
    return found


async def insert_new(
    session: AsyncSession,
    foldable: tuple[type[Any], ...],
    then: Sequence[tuple[Any, list[dict[str, Any]]]] = (),
) -> None:
    """Insert the session's new objects with one Core INSERT per table, parents first, where the
    unit of work's flush would spend more of its CPU on bookkeeping than on the statements
    (SQLite, which has no data-modifying CTE), then the statements of ``then`` (each with its
    rows), all in one visit to SQLite's thread (:func:`write_batches`). Objects that cannot be
    taken so (:func:`_new_rows`) are left to the unit of work, as before."""
    found = _new_rows(session, foldable)
    if found is None:
        await write_folded(session)
        await write_batches(session, then)
        return
    new, rows = found
    for obj in new:
        session.expunge(obj)
    await write_batches(session, [*_inserts(rows), *then])
    join_as_rows(session, new)


async def write_batches(
    session: AsyncSession, batches: Sequence[tuple[Any, list[dict[str, Any]]]]
) -> None:
    """Execute each statement (an INSERT made once) with its rows, in order, in the session's
    transaction. On SQLite all in one call in the connection's thread: through SQLAlchemy each
    costs several calls there (a cursor, the statement, closing it: about 0.2 ms of CPU, against
    a few µs for SQLite's own work), and intake writes eight. Elsewhere, each as usual."""
    batches = [(statement, rows) for statement, rows in batches if rows]
    if not batches:
        return
    if session.get_bind().dialect.name != "sqlite":
        for statement, rows in batches:
            await session.execute(statement, rows)
        return
    sync = (await _statement_connection(session)).sync_connection
    await _in_sqlite_thread(
        sync, [_sqlite_parameters(sync, statement, rows) for statement, rows in batches]
    )


# In a session's info: its transaction and that transaction's connection, so that the next
# statement finds the connection without a visit to SQLAlchemy's greenlet (16 µs, and 12 µs
# more for a flush with nothing to write: two of each on every referral).
_STATEMENT_CONNECTION = "spbridge.statement_connection"


async def _statement_connection(session: AsyncSession) -> AsyncConnection:
    """The session's connection, its transaction begun and the session's pending objects
    written first, as session.execute would have them (autoflush): the statement sees what the
    session holds."""
    sync_session = session.sync_session
    if sync_session.autoflush and (sync_session.new or sync_session.deleted or sync_session.dirty):
        await session.flush()
    return await _transaction_connection(session)


async def _transaction_connection(session: AsyncSession) -> AsyncConnection:
    # The session's connection for its transaction (begun if it was not), kept in its info.
    sync_session = session.sync_session
    held = session.info.get(_STATEMENT_CONNECTION)
    transaction = sync_session.get_transaction()
    if (
        held is not None
        and transaction is not None
        and held[0] is transaction
        and transaction.is_active
    ):
        connection: AsyncConnection = held[1]
        return connection
    connection = await session.connection()
    session.info[_STATEMENT_CONNECTION] = (sync_session.get_transaction(), connection)
    return connection


def _sqlite_parameters(
    sync: Any, statement: Any, rows: list[dict[str, Any]]
) -> tuple[str, list[tuple[Any, ...]]]:
    # The statement's SQL for these rows and each row's parameters, as SQLAlchemy would bind
    # them (each column type's processing).
    compiled = _compiled(sync.dialect, statement, tuple(rows[0]))
    return compiled.sql, [compiled.bound(row) for row in rows]


async def _in_sqlite_thread(
    sync: Any, statements: Sequence[tuple[str, list[tuple[Any, ...]] | tuple[Any, ...]]]
) -> list[Any]:
    """Run each statement in one call in the thread of the SQLAlchemy connection ``sync``
    (aiosqlite's), after the transaction's BEGIN if it is still to send, its errors wrapped as
    SQLAlchemy wraps them; the last statement's rows. Each statement's parameters: a list of
    tuples (run for each) or one tuple (run once with it). The engine's listeners see each
    statement before it runs, as they would any other."""
    adapted: _OneCallConnection = sync.connection.dbapi_connection
    begin = adapted.begun()
    for sql, parameters in statements:
        many = isinstance(parameters, list)
        sync.dispatch.before_cursor_execute(sync, None, sql, parameters, None, many)
    driver: Any = adapted.driver_connection
    failed: list[str] = []

    def run() -> list[Any]:  # in aiosqlite's thread, the connection's own
        if begin is not None:
            failed[:] = [begin]
            driver._conn.execute(begin)
        rows: list[Any] = []
        for sql, parameters in statements:
            failed[:] = [sql]
            if isinstance(parameters, list):
                rows = driver._conn.executemany(sql, parameters).fetchall()
            else:
                rows = driver._conn.execute(sql, parameters).fetchall()
        return rows

    try:
        found: list[Any] = await driver._execute(run)  # aiosqlite's way to run in that thread
    except sqlite3.Error as exc:
        raise sa_exc.DBAPIError.instance(
            failed[0] if failed else None, None, exc, sqlite3.Error, dialect=sync.dialect
        ) from exc
    return found


@dataclass(frozen=True)
class _Compiled:
    """A statement's driver SQL for parameters of given keys (every column's, for an insert: no
    default is filled in), its parameters' order, each one's type processing (None: the value
    as it is) and the values the statement holds itself (a literal made a parameter, as
    pg_sleep(5)'s 5)."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Any, ...]
    held: dict[str, Any]

    def bound(self, parameters: dict[str, Any]) -> tuple[Any, ...]:
        """The driver's parameters for these values, as SQLAlchemy would bind them."""
        # A loop, not generators: this runs for every value of every row intake writes.
        values = []
        for name, process in zip(self.names, self.processors, strict=True):
            value = parameters[name] if name in parameters else self.held[name]
            values.append(value if process is None else process(value))
        return tuple(values)


@functools.lru_cache(maxsize=256)
def _compiled(dialect: Any, statement: Any, keys: tuple[str, ...]) -> _Compiled:
    # Worked out once per statement and shape of parameters.
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    names = tuple(compiled.positiontup or ())
    processors = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    held = {
        name: bind.effective_value
        for name, bind in compiled.binds.items()
        if name not in keys and not bind.required
    }
    return _Compiled(str(compiled), names, processors, held)


def _inserts(rows: dict[Table, list[dict[str, Any]]]) -> list[tuple[Any, list[dict[str, Any]]]]:
    # Each table's plain insert with its rows, parents first: SQLite checks keys at once.
    return [(_plain_insert(table), rows[table]) for table in _in_key_order(rows)]


def _in_key_order(tables: Iterable[Table]) -> list[Table]:
    """Parents before children: the order every writer takes tables in (and a sandbox reset
    locks them in), whether each is a statement of its own or a CTE of one statement."""
    order = _parents_first()
    return sorted(tables, key=order.__getitem__)


@functools.cache
def _parents_first() -> dict[Table, int]:
    # Each table's place in foreign-key order, worked out once: MetaData.sorted_tables sorts
    # every table each time it is read (39 µs), and this is on every write to a case.
    return {table: place for place, table in enumerate(Base.metadata.sorted_tables)}


@functools.lru_cache(maxsize=64)
def _plain_insert(table: Table) -> Any:
    return sqlalchemy_insert(table)
