"""Leases (issue 13, part 8): a live sender keeps its claims while its sends are in flight and
records a result only for a claim it still holds; a database outage shorter than the lease sends
nothing twice. Real receivers on 127.0.0.1, real dispatchers, both databases."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from app.db import Database, utcnow
from app.delivery.dispatcher import Dispatcher
from app.delivery.senders import standard_senders
from app.outbox.models import Delivery, DeliveryAttempt
from tests.conftest import Bridge, referral_resource
from tests.support.delivery import dispatcher_for, subscribe
from tests.support.receiver import Receiver, wait_for
from tests.support.round_trips import statements_sent


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "allowed_outbound_hosts": ["127.0.0.1"],
        "retry_schedule": [0.05],
        "delivery_lease_seconds": 1.0,
        "dispatch_poll_interval": 0.05,
    }


async def backlog(bridge: Bridge, receiver: Receiver, count: int) -> None:
    await bridge.service()
    await subscribe(bridge, receiver.url)
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    for _ in range(count):
        response = await bridge.refer(referrer, referral_resource())
        assert response.status_code == 201, response.text


async def rows(app: Any) -> list[Delivery]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return list(await session.scalars(select(Delivery)))


async def attempts(app: Any) -> list[DeliveryAttempt]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return list(await session.scalars(select(DeliveryAttempt)))


def webhook_ids(receiver: Receiver) -> list[str]:
    return [r.headers["webhook-id"] for r in receiver.requests]


async def test_a_live_sender_keeps_its_claims_while_a_slow_send_is_in_flight(
    app: Any, bridge: Bridge
) -> None:
    receiver = Receiver(delay=3.0)  # three leases long
    await backlog(bridge, receiver, 3)
    await receiver.start()
    first = dispatcher_for(app, name="worker-a")
    second = dispatcher_for(app, name="worker-b")
    try:
        round_a = asyncio.create_task(first.run_once())
        await wait_for(lambda: len(receiver.requests) == 3, timeout=10)
        # While A's sends are in flight, B looks for work again and again, past A's lease.
        taken = 0
        deadline = time.monotonic() + 20
        while not round_a.done():
            assert time.monotonic() < deadline
            taken += await second.run_once()
            await asyncio.sleep(0.05)
        assert await round_a == 3
    finally:
        await receiver.stop()
    assert taken == 0, "another worker took claims whose sender was alive"
    assert len(webhook_ids(receiver)) == len(set(webhook_ids(receiver))) == 3
    assert {d.state for d in await rows(app)} == {"delivered"}
    assert {a.worker for a in await attempts(app)} == {"worker-a"}


@pytest.mark.parametrize("holder", ["worker-b", "worker-a"])
async def test_a_claim_taken_again_is_not_recorded_by_its_old_holder(
    app: Any, bridge: Bridge, holder: str, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver(delay=1.5)
    await backlog(bridge, receiver, 1)
    await receiver.start()
    dispatcher = dispatcher_for(app, name="worker-a")
    try:
        with caplog.at_level(logging.WARNING, logger="spbridge.delivery"):
            round_a = asyncio.create_task(dispatcher.run_once())
            await wait_for(lambda: len(receiver.requests) == 1, timeout=10)
            # Meanwhile the claim lapsed and was taken again, by another worker or by this one
            # (a claim counts one more attempt).
            database: Database = app.state.database
            async with database.write_sessions() as session, session.begin():
                await session.execute(
                    update(Delivery).values(
                        claimed_by=holder,
                        attempts=Delivery.attempts + 1,
                        lease_expires_at=utcnow(),
                    )
                )
            assert await asyncio.wait_for(round_a, timeout=10) == 1
    finally:
        await receiver.stop()
    (row,) = await rows(app)
    assert (row.state, row.claimed_by, row.attempts) == ("in_flight", holder, 2)
    assert await attempts(app) == []  # the old claim's result is not recorded
    # Its heartbeat found the claim gone while the send was in flight.
    assert any("claims lost" in r.getMessage() for r in caplog.records)


@pytest.fixture
async def own_database(database_url: str) -> AsyncIterator[tuple[Database, list[bool]]]:
    """A Database of the dispatcher's own, with a switch that makes every statement on it fail
    as if the server were down (the test's own reads go through the app's)."""
    database = Database.from_url(database_url)
    down = [False]

    def outage(connection: Connection, *_args: Any) -> None:
        if down[0]:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("the database is down"))

    event.listen(database.engine.sync_engine, "before_cursor_execute", outage)
    try:
        yield database, down
    finally:
        await database.dispose()


async def test_a_database_outage_shorter_than_the_lease_sends_nothing_twice(
    app: Any, bridge: Bridge, own_database: tuple[Database, list[bool]]
) -> None:
    database, down = own_database
    settings = app.state.settings
    settings.delivery_lease_seconds = 2.0
    receiver = Receiver()
    loop = asyncio.get_running_loop()
    outages: list[float] = []

    def outage_begins(_request: Any) -> None:
        # The database goes down once, while the first round's sends are on the wire, for half
        # a lease.
        if not outages:
            outages.append(time.monotonic())
            down[0] = True
            loop.call_later(1.0, down.__setitem__, 0, False)

    receiver.rule = lambda request: outage_begins(request)
    await backlog(bridge, receiver, 5)
    await receiver.start()
    dispatcher = Dispatcher(
        database, settings, app.state.http, senders=standard_senders(settings), name="worker-a"
    )
    dispatcher.start()
    try:
        deadline = time.monotonic() + 20
        while {d.state for d in await rows(app)} != {"delivered"}:
            assert time.monotonic() < deadline, [d.state for d in await rows(app)]
            await asyncio.sleep(0.05)
        # Long enough for a lapsed lease (2 s) to be claimed and sent again, were it dropped.
        await asyncio.sleep(3.0)
    finally:
        await dispatcher.stop(grace=5)
        await receiver.stop()
    assert len(outages) == 1
    ids = webhook_ids(receiver)
    assert len(ids) == len(set(ids)) == 5, "a delivery was sent twice after the outage"
    assert sorted(a.outcome for a in await attempts(app)) == ["delivered"] * 5


async def test_recording_a_result_locks_the_destination_before_its_delivery(
    app: Any, bridge: Bridge
) -> None:
    """Parents first, as every writer (and a sandbox reset's LOCK TABLE) takes them: locked
    after its delivery, a destination could be held by a reset waiting for that delivery, a
    deadlock (seen in CI)."""
    receiver = Receiver()
    await backlog(bridge, receiver, 1)
    await receiver.start()
    dispatcher = dispatcher_for(app, name="worker-a")
    try:
        with statements_sent(app.state.database) as sent:
            assert await dispatcher.run_once() == 1
    finally:
        await receiver.stop()
    recorded = next(
        i
        for i, sql in enumerate(sent)
        if "FROM deliveries" in sql and "deliveries.claimed_by = " in sql
    )
    destinations = [
        i
        for i, sql in enumerate(sent[:recorded])
        if "FROM destinations" in sql and "ORDER BY destinations.id" in sql
    ]
    assert destinations, sent[:recorded]
    # Nothing of the recording transaction before the destinations are locked.
    assert not any("delivery_attempts" in sql for sql in sent[: destinations[-1]])
