"""The circuit's position follows the destination's own rounds and probes and time, never the
size of a batch of failures (issue 13, part 2; DESIGN §10). A real receiver on 127.0.0.1, the
real dispatcher, both databases."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db import Database, utcnow
from app.outbox.models import Delivery, Destination
from tests.conftest import Bridge, referral_resource
from tests.support.delivery import dispatcher_for, subscribe
from tests.support.receiver import Receiver

BATCH = 50


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # The default retry schedule (5, 30, 120, 600, 1800, 3600 s) and circuit threshold (3).
    return {"allowed_outbound_hosts": ["127.0.0.1"]}


async def refer_many(bridge: Bridge, count: int) -> None:
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    for _ in range(count):
        response = await bridge.refer(referrer, referral_resource())
        assert response.status_code == 201, response.text


async def counts(app: Any) -> dict[str, int]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        rows = await session.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
        return {str(state): int(n) for state, n in rows}


async def tried(app: Any) -> int:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.attempts >= 1)
            )
            or 0
        )


async def destination(app: Any, ident: str) -> Destination:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        found = await session.get(Destination, ident)
        assert found is not None
        return found


async def test_a_three_second_outage_delays_a_batch_of_50_by_seconds_not_an_hour(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    receiver = Receiver()  # not listening: connections are refused
    subscription = await subscribe(bridge, receiver.url)
    await refer_many(bridge, BATCH)
    dispatcher = dispatcher_for(app)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 30
        while await tried(app) < BATCH:  # one round: all 50 failed together
            assert time.monotonic() < deadline, "the first round never ran"
            await asyncio.sleep(0.05)
        await asyncio.sleep(3)
        await receiver.start()
        back = time.monotonic()
        # Bounded well below the schedule's last step (an hour), and below its second (30 s).
        while (await counts(app)).get("delivered", 0) < BATCH:
            assert time.monotonic() - back < 15, (
                f"not delivered within 15 s of the receiver's return: {await counts(app)}"
            )
            await asyncio.sleep(0.05)
        recovered_in = time.monotonic() - back
    finally:
        await dispatcher.stop(grace=5)
        await receiver.stop()
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == BATCH
    assert recovered_in < 15
    circuit = await destination(app, subscription["id"])
    assert circuit.probe_at is None and circuit.consecutive_failures == 0


async def test_the_circuit_opens_after_failed_rounds_and_steps_through_the_schedule_by_probe(
    app: Any, bridge: Bridge
) -> None:
    app.state.settings.retry_schedule = [5.0, 30.0, 120.0]
    await bridge.service()
    receiver = Receiver(default_status=503)
    subscription = await subscribe(bridge, receiver.url)
    await refer_many(bridge, BATCH)
    now = [utcnow()]
    dispatcher = dispatcher_for(app, clock=lambda: now[0])

    async def probe_delay() -> float | None:
        found = await destination(app, subscription["id"])
        if found.probe_at is None:
            return None
        return (found.probe_at - now[0]).total_seconds()

    await receiver.start()
    try:
        # A batch of 50 failures is one failed round: the circuit stays closed.
        await dispatcher.run_once()
        assert len(receiver.requests) == BATCH
        assert await probe_delay() is None
        assert (await destination(app, subscription["id"])).consecutive_failures == 1
        # Two more failed rounds (each delivery at its own next step): the threshold, 3.
        for wait in (10, 40):
            now[0] += dt.timedelta(seconds=wait)
            await dispatcher.run_once()
        assert len(receiver.requests) == 3 * BATCH
        # Open, with the first probe after the schedule's FIRST step (±20 %), not its last.
        delay = await probe_delay()
        assert delay is not None and 4.0 <= delay <= 6.0, delay

        # Each failed probe moves one step on; the last step repeats.
        for low, high in ((24.0, 36.0), (96.0, 144.0), (96.0, 144.0)):
            before = len(receiver.requests)
            now[0] += dt.timedelta(seconds=delay + 0.001)
            await dispatcher.run_once()
            assert len(receiver.requests) == before + 1  # one probe at a time
            delay = await probe_delay()
            assert delay is not None and low <= delay <= high, (low, high, delay)

        # A Retry-After longer than the step is honoured.
        receiver.answer(429, headers={"Retry-After": "600"})
        now[0] += dt.timedelta(seconds=delay + 0.001)
        await dispatcher.run_once()
        delay = await probe_delay()
        assert delay is not None and delay >= 600

        # The first answer from the recovered receiver makes the whole backlog due at once.
        receiver.default_status = 200
        now[0] += dt.timedelta(seconds=delay + 0.001)
        await dispatcher.run_once()  # the probe
        assert await probe_delay() is None
        await dispatcher.run_once()  # everything else, without waiting for its own step
    finally:
        await receiver.stop()
    assert await counts(app) == {"delivered": BATCH}
    circuit = await destination(app, subscription["id"])
    assert circuit.consecutive_failures == 0 and circuit.failing_since is None
