"""What a process remembers of slowly changing data (who a key is, services, destination sets),
and the hook that makes a change to it count at once in this process.

A cache is a :class:`Remembered`: entries kept for ``ttl`` seconds, emptied by
:func:`forget_on_commit` when a transaction that changed the data commits. Another process
learns of it on PostgreSQL as it commits (the commit NOTIFYs :data:`CHANGES`; serving and working
processes listen, app.db.Database.follow_changes), else within ``ttl``. The caches of a process
hang on its database (app.db.Database), and every session it makes carries them in
``session.info``, so code holding only a session finds them (:func:`cache_of`) and code
changing the data can say "forget this when my transaction commits" (:func:`on_commit`),
whoever made the session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import event, text
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, object_session

# Where a session carries its process's caches (a dict name -> Remembered, shared by every
# session of one database) and the callbacks to run when its transaction commits.
CACHES = "spbridge.caches"
# The PostgreSQL channel on which a commit names the caches it changed, for other processes.
CHANGES = "spbridge_caches"
# Where a session carries the token naming its process on CHANGES: a process has forgotten its
# own changes as it committed them, and must not forget again what it has read since.
SENDER = "spbridge.sender"
_ON_COMMIT = "spbridge.on_commit"
# The caches' names.
PRINCIPALS = "principals"
SERVICES = "services"
DESTINATIONS = "destinations"

_log = logging.getLogger("spbridge.caches")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _HasInfo(Protocol):
    """A Session or an AsyncSession (whose ``info`` is its sync session's)."""

    @property
    def info(self) -> dict[Any, Any]: ...


class Remembered(Generic[K, V]):
    """Values remembered for ``ttl`` seconds (0: nothing is remembered).

    A generation counter, bumped by every forget, keeps a lookup that read the database before a
    change committed from storing what it read after the cache was emptied for that change: read
    :attr:`generation` before the query and give it to :meth:`put`. A value must be immutable
    (a frozen dataclass, a tuple): it is shared by every session of the process."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V, generation: int) -> None:
        if self.ttl > 0 and generation == self._generation:
            self._entries[key] = (self._clock() + self.ttl, value)

    def forget_all(self) -> None:
        self._generation += 1
        self._entries.clear()


def on_commit(session: _HasInfo, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction commits (not a savepoint's release);
    dropped if it rolls back or the session closes without committing."""
    session.info.setdefault(_ON_COMMIT, []).append(callback)


def _pending(session: _HasInfo) -> list[Callable[[], None]]:
    pending: list[Callable[[], None]] = session.info.get(_ON_COMMIT, [])
    return pending


@event.listens_for(Session, "after_commit")
def _run_on_commit(session: Session) -> None:
    # Fired on a savepoint's release too: only the outermost commit makes a change visible.
    if session.in_nested_transaction() or not session.info.get(_ON_COMMIT):
        return
    for callback in session.info.pop(_ON_COMMIT):
        try:
            callback()
        except Exception:
            # The change is committed: its writer must not see a failure, nor the next
            # callback be skipped.
            _log.exception("an after-commit callback failed")


@event.listens_for(Session, "before_commit")
def _tell_other_processes(session: Session) -> None:
    # On PostgreSQL the other processes following CHANGES (app.db.Database.follow_changes) are
    # told which caches to forget, in the transaction: only if it commits, as it commits.
    if session.in_nested_transaction():
        return
    names = sorted({c.name for c in _pending(session) if isinstance(c, _Forget)})
    if names and session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANGES, "payload": change_notice(session.info.get(SENDER), names)},
        )


def change_notice(sender: str | None, names: Iterable[str]) -> str:
    """What a commit says on CHANGES: who sent it (``-`` for a session of no process's
    database), then the names of the caches it changed."""
    return " ".join([sender or "-", *names])


def heard(sender: str, notice: str) -> list[str]:
    """The caches to forget on hearing ``notice``: none when this process sent it."""
    said_by, *names = notice.split()
    return [] if said_by == sender else names


@event.listens_for(Session, "after_transaction_end")
def _drop_on_end(session: Session, transaction: SessionTransaction) -> None:
    # After a commit the list is already gone; after a rollback or close nothing changed.
    if transaction.parent is None and _ON_COMMIT in session.info:
        del session.info[_ON_COMMIT]


def cache_of(session: _HasInfo, name: str) -> Remembered[Any, Any] | None:
    """The process's cache ``name``, or None when the session's maker has none, or when this
    session's transaction changed what it holds (it must read its own changes, and never store
    what others may not see yet)."""
    caches: dict[str, Remembered[Any, Any]] | None = session.info.get(CACHES)
    if caches is None:
        return None
    cache = caches.get(name)
    if cache is None or any(getattr(c, "forgets", None) is cache for c in _pending(session)):
        return None
    return cache


class _Forget:
    """A callback emptying one cache (marked so :func:`cache_of` knows the session changed it)."""

    __slots__ = ("forgets", "name")

    def __init__(self, name: str, cache: Remembered[Any, Any]) -> None:
        self.name = name
        self.forgets = cache

    def __call__(self) -> None:
        self.forgets.forget_all()


def forget_on_commit(session: _HasInfo, *names: str) -> None:
    """Called by code that changes what the caches ``names`` hold: each is emptied once the
    change commits (not before, or a request racing it could cache the old state again; the
    generation makes a lookup that read the old state before the commit drop it). Until then
    this session reads past them (:func:`cache_of`); a rollback leaves them as they were."""
    caches: dict[str, Remembered[Any, Any]] | None = session.info.get(CACHES)
    if caches is None:
        return
    for name in names:
        cache = caches.get(name)
        if cache is None or any(getattr(c, "forgets", None) is cache for c in _pending(session)):
            continue
        on_commit(session, _Forget(name, cache))


# Mapped classes whose rows caches hold (see :func:`watch`), and the caches each one feeds.
_WATCHED: dict[type, tuple[str, ...]] = {}
_WATCHED_TABLES: dict[str, tuple[str, ...]] = {}


def watch(cls: type[Any], attributes: Iterable[str], *names: str) -> None:
    """Forget the caches ``names`` when a transaction that adds a ``cls``, sets one of its
    ``attributes`` or deletes one commits. From the moment of the change (not only from its
    flush) the session reads past those caches, so it sees its own change. An INSERT, UPDATE or
    DELETE statement on its table run through a session counts too (whatever columns it sets);
    only SQL text is not seen: its caller says :func:`forget_on_commit` itself."""

    def changed(target: object, *_args: Any) -> None:
        session = object_session(target)
        if session is not None:
            forget_on_commit(session, *names)

    for attribute in attributes:
        event.listen(getattr(cls, attribute), "set", changed)
    event.listen(cls, "after_delete", lambda _mapper, _connection, target: changed(target))
    _WATCHED[cls] = names
    _WATCHED_TABLES[cls.__tablename__] = names


@event.listens_for(Session, "transient_to_pending")
def _added(session: Session, instance: object) -> None:
    names = _WATCHED.get(type(instance))
    if names:
        forget_on_commit(session, *names)


@event.listens_for(Session, "do_orm_execute")
def _statement(state: ORMExecuteState) -> None:
    if state.is_select or not (state.is_update or state.is_delete or state.is_insert):
        return
    names = _WATCHED_TABLES.get(getattr(getattr(state.statement, "table", None), "name", ""))
    if names:
        forget_on_commit(state.session, *names)
