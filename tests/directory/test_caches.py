"""Services and destination sets are remembered by a process (app.caches), so a warm referral
reads neither; a change made in this process counts at the next request (forgotten when it
commits, through the session's after-commit hook), a rolled-back one never, and one made by
another process within SPBRIDGE_DIRECTORY_CACHE_SECONDS. On both databases."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update

from app.caches import (
    CHANGES,
    DESTINATIONS,
    PRINCIPALS,
    SERVICES,
    Remembered,
    change_notice,
    heard,
    on_commit,
)
from app.cases.models import Referral
from app.db import Database
from app.directory.models import SocialPrescribingService
from app.directory.service import service_by_id
from app.outbox.models import Delivery, Destination, DestinationKind
from app.outbox.service import destinations_for
from tests.conftest import Bridge, referral_resource
from tests.support.round_trips import statements_sent

PUBLIC = "https://93.184.216.34/hooks"  # a public IP literal: no DNS needed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reads(sent: list[str], table: str) -> list[str]:
    return [s for s in sent if s.lstrip().upper().startswith("SELECT") and f"FROM {table}" in s]


async def _lookup(database: Database) -> list[str]:
    async with database.write_sessions() as session, session.begin():
        found = await destinations_for(
            session, service_id="life-rooms", referrer="RW4", provider="LR001"
        )
    return sorted(d.id for d in found)


async def _service_name(database: Database) -> str | None:
    """The service's name as this process's lookup gives it (remembered or read)."""
    async with database.read_sessions() as session:
        service = await service_by_id(session, "life-rooms")
    return None if service is None else service.name


async def _refer(bridge: Bridge, referrer: dict[str, str]) -> str:
    response = await bridge.refer(referrer, referral_resource())
    assert response.status_code == 201, response.text
    referral_id: str = response.json()["id"]
    return referral_id


async def _delivered_to(database: Database, referral_id: str) -> set[str]:
    async with database.read_sessions() as session:
        rows = await session.scalars(
            select(Delivery.destination_id).where(Delivery.referral_id == referral_id)
        )
        return set(rows)


def _destination(organisation: str | None = "RW4") -> Destination:
    now = dt.datetime.now(dt.UTC)
    return Destination(
        id=str(uuid.uuid4()),
        kind=DestinationKind.WEBHOOK,
        adapter="webhook",
        organisation=organisation,
        url=PUBLIC,
        secret="whsec_test",
        event_types=[],
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )


async def _remember_then_change_elsewhere(database: Database, url: str, clock: Clock) -> str:
    """The caches filled here (no destination; the service by its first name), then another
    process adds a destination (its id returned) and renames the service."""
    database.caches[DESTINATIONS] = Remembered(5, clock)
    database.caches[SERVICES] = Remembered(5, clock)
    assert await _lookup(database) == []
    async with database.read_sessions() as session:
        await service_by_id(session, "life-rooms")
    other = Database.from_url(url)
    try:
        async with other.write_sessions() as session, session.begin():
            added = _destination()
            session.add(added)
            service = await session.get(SocialPrescribingService, "life-rooms")
            assert service is not None
            service.name = "Renamed elsewhere"
    finally:
        await other.dispose()
    return added.id


async def test_a_warm_lookup_costs_no_query(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    database: Database = app.state.database
    await _lookup(database)
    async with database.write_sessions() as session, session.begin():
        await service_by_id(session, "life-rooms")
    with statements_sent(database) as sent:
        await _lookup(database)
        async with database.write_sessions() as session, session.begin():
            service = await service_by_id(session, "life-rooms")
            assert service is not None and service.organisation == "LR001"
            # The instance is this session's own, as if loaded: nothing to write back.
            assert service in session and not session.dirty
    assert not _reads(sent, "destinations") and not _reads(sent, "services"), sent


async def test_a_subscription_made_here_gets_the_next_referral(
    app: Any, client: httpx.AsyncClient, bridge: Bridge
) -> None:
    await bridge.service()
    database: Database = app.state.database
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    await _refer(bridge, referrer)  # the destination set is remembered from here
    created = await client.post("/api/v1/subscriptions", json={"url": PUBLIC}, headers=bridge.admin)
    assert created.status_code == 201, created.text
    subscription = created.json()["id"]
    assert subscription in await _delivered_to(database, await _refer(bridge, referrer))

    paused = await client.patch(
        f"/api/v1/subscriptions/{subscription}", json={"active": False}, headers=bridge.admin
    )
    assert paused.status_code == 200, paused.text
    assert subscription not in await _delivered_to(database, await _refer(bridge, referrer))

    resumed = await client.patch(
        f"/api/v1/subscriptions/{subscription}", json={"active": True}, headers=bridge.admin
    )
    assert resumed.status_code == 200, resumed.text
    assert subscription in await _delivered_to(database, await _refer(bridge, referrer))

    deleted = await client.delete(f"/api/v1/subscriptions/{subscription}", headers=bridge.admin)
    assert deleted.status_code == 204, deleted.text
    assert subscription not in await _delivered_to(database, await _refer(bridge, referrer))


async def test_a_change_by_statement_here_counts_at_once(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        session.add(_destination())
    assert len(await _lookup(database)) == 1
    async with database.write_sessions() as session, session.begin():
        await session.execute(update(Destination).values(active=False))
    assert await _lookup(database) == []


async def test_a_service_renamed_here_shows_at_once(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        service = await service_by_id(session, "life-rooms")
        assert service is not None and service.name == "Service life-rooms"
    async with database.write_sessions() as session, session.begin():
        service = await session.get(SocialPrescribingService, "life-rooms")
        assert service is not None
        service.name = "The Life Rooms"
    assert await _service_name(database) == "The Life Rooms"


async def test_a_rollback_neither_forgets_nor_leaks(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    database: Database = app.state.database
    assert await _lookup(database) == []
    async with database.write_sessions() as session:
        added = _destination()
        session.add(added)
        # The transaction that made the change sees it (it reads past the cache)...
        found = await destinations_for(
            session, service_id="life-rooms", referrer="RW4", provider="LR001"
        )
        assert [d.id for d in found] == [added.id]
        await session.rollback()
    # ...and nobody else ever does; what was remembered is still remembered.
    with statements_sent(database) as sent:
        assert await _lookup(database) == []
    assert not _reads(sent, "destinations"), sent


async def test_a_change_by_another_process_counts_within_the_bound(
    app: Any, bridge: Bridge, database_url: str
) -> None:
    """A second Database on the same database stands for another process: its change reaches
    this one when the remembered set is older than the bound, not before (on PostgreSQL, when
    this process is not following changes: the bound is what is left when it cannot)."""
    await bridge.service()
    database: Database = app.state.database
    await database.stop_following()
    clock = Clock()
    added_id = await _remember_then_change_elsewhere(database, database_url, clock)
    clock.now += 4.9  # within the bound: still the set remembered before
    assert await _lookup(database) == []
    assert await _service_name(database) == "Service life-rooms"
    clock.now += 0.2  # past it: read again
    assert await _lookup(database) == [added_id]
    assert await _service_name(database) == "Renamed elsewhere"


async def test_the_hook_runs_on_commit_only(app: Any, bridge: Bridge) -> None:
    """Not on a savepoint's release, not after a rollback."""
    await bridge.service()
    database: Database = app.state.database
    ran: list[str] = []
    async with database.write_sessions() as session:
        async with session.begin():
            async with session.begin_nested():
                on_commit(session, lambda: ran.append("committed"))
                await session.get(Referral, "none")
            assert ran == []  # the savepoint was released: nothing is committed yet
        assert ran == ["committed"]
        on_commit(session, lambda: ran.append("rolled back"))
        await session.get(Referral, "none")
        await session.rollback()
        await session.get(Referral, "none")
        await session.commit()
    assert ran == ["committed"]


async def test_a_failing_callback_neither_fails_the_commit_nor_stops_the_others(
    app: Any, bridge: Bridge
) -> None:
    database: Database = app.state.database
    ran: list[str] = []

    def fails() -> None:
        raise RuntimeError("a callback's bug")

    async with database.write_sessions() as session:
        on_commit(session, fails)
        on_commit(session, lambda: ran.append("second"))
        await session.get(Referral, "none")
        await session.commit()
    assert ran == ["second"]


async def test_on_postgresql_another_process_s_change_counts_at_once(
    app: Any, bridge: Bridge, database_url: str, backend: str
) -> None:
    """The process follows changes (a commit NOTIFYs the caches it changed): no waiting out the
    bound. On SQLite there is nothing to follow and the bound is the limit."""
    await bridge.service()
    database: Database = app.state.database
    if backend == "sqlite":
        await database.follow_changes()
        assert not database.following.is_set()
        return
    await asyncio.wait_for(database.following.wait(), 10)
    clock = Clock()  # frozen: the bound never passes
    added_id = await _remember_then_change_elsewhere(database, database_url, clock)
    for _ in range(100):  # the notification arrives on its own connection: at most 2 s
        if database.caches[DESTINATIONS].get(None) is None:
            break
        await asyncio.sleep(0.02)
    assert await _lookup(database) == [added_id]
    assert await _service_name(database) == "Renamed elsewhere"


def test_a_process_ignores_its_own_notice() -> None:
    """A process forgot its own change as it committed it: when the notice comes round on its
    listening connection it must not forget again what it has read since (seen in CI: a principal
    read just after the key was made was forgotten, and the next request queried again)."""
    mine, theirs = "a" * 32, "b" * 32
    assert heard(mine, change_notice(mine, [PRINCIPALS, SERVICES])) == []
    assert heard(mine, change_notice(theirs, [PRINCIPALS, SERVICES])) == [PRINCIPALS, SERVICES]
    assert heard(mine, change_notice(None, [DESTINATIONS])) == [DESTINATIONS]


@pytest.mark.postgresql_only
async def test_on_postgresql_its_own_notice_comes_round_and_empties_nothing(
    app: Any, bridge: Bridge, database_url: str
) -> None:
    """The notice of this process's own commit may come round after it has read again (the
    notice is sent here as its commit would send it, after the read, as happens under load).
    Another process, following too, stands witness that the notice was delivered."""
    await bridge.service()
    database: Database = app.state.database
    await asyncio.wait_for(database.following.wait(), 10)
    witness = Database.from_url(database_url)
    await witness.follow_changes()
    try:
        await asyncio.wait_for(witness.following.wait(), 10)
        clock = Clock()  # frozen: the bound never passes
        database.caches[DESTINATIONS] = Remembered(5, clock)
        witness.caches[DESTINATIONS] = Remembered(5, clock)
        witness.caches[DESTINATIONS].put(None, (), witness.caches[DESTINATIONS].generation)
        assert await _lookup(database) == []
        async with witness.write_sessions() as session, session.begin():
            await session.execute(
                text("SELECT pg_notify(:channel, :notice)"),
                {"channel": CHANGES, "notice": change_notice(database.sender, [DESTINATIONS])},
            )
        for _ in range(100):  # the notice reaches the witness: at most 2 s
            if witness.caches[DESTINATIONS].get(None) is None:
                break
            await asyncio.sleep(0.02)
        assert witness.caches[DESTINATIONS].get(None) is None
        await asyncio.sleep(0.2)  # and this process's listener, at about the same moment
        with statements_sent(database) as sent:
            assert await _lookup(database) == []
        assert not _reads(sent, "destinations")
    finally:
        await witness.dispose()
