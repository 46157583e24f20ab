"""The delivery engine end to end: real receivers on 127.0.0.1, the real dispatcher, both databases.

Time is compressed (a retry schedule of tens of milliseconds) or moved by an injected clock; no
test sleeps for the real schedule.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook

from app.db import Database, utcnow
from app.delivery.dispatcher import Dispatcher
from app.main import create_app
from app.outbox.models import Delivery, DeliveryAttempt, Destination
from tests.conftest import Bridge, make_settings, referral_resource
from tests.support.delivery import ADMIN, dispatcher_for, subscribe
from tests.support.receiver import Receiver, wait_for


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "retry_schedule": [0.02, 0.05],
        "allowed_outbound_hosts": ["127.0.0.1"],
        "circuit_threshold": 3,
        "delivery_lease_seconds": 30,
    }


async def refer_many(bridge: Bridge, count: int) -> list[str]:
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    ids = []
    for _ in range(count):
        response = await bridge.refer(referrer, referral_resource())
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def deliveries(app: Any) -> list[Delivery]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return list(await session.scalars(select(Delivery).order_by(Delivery.created_at)))


async def drain_until(dispatcher: Dispatcher, done: Any, rounds: int = 400) -> None:
    for _ in range(rounds):
        await dispatcher.run_once()
        if await done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the queue did not drain")


async def all_delivered(app: Any) -> bool:
    rows = await deliveries(app)
    return bool(rows) and all(d.state == "delivered" for d in rows)


# --- webhooks: outage, retries, order, signatures --------------------------------------------


async def test_outage_then_recovery_delivers_everything_in_order_with_stable_ids(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    receiver = Receiver()  # not listening yet: connections are refused, as in an outage
    subscription = await subscribe(bridge, receiver.url + "/hooks", description="worklist")
    referrals = await refer_many(bridge, 3)
    await bridge.cancel(referrals[1])
    dispatcher = dispatcher_for(app)

    for _ in range(5):  # attempts while the receiver is down
        await dispatcher.run_once()
        await asyncio.sleep(0.06)
    rows = await deliveries(app)
    assert rows and all(d.state == "pending" for d in rows)
    assert max(d.attempts for d in rows) >= 1

    receiver.answer(503, 503)  # up, but failing twice more
    await receiver.start()
    try:
        await drain_until(dispatcher, lambda: all_delivered(app))
    finally:
        await receiver.stop()

    rows = await deliveries(app)
    assert len(rows) == 4
    secret = subscription["secret"]
    verifier = Webhook(secret)
    by_id: dict[str, list[dict[str, str]]] = defaultdict(list)
    order: dict[str, list[int]] = defaultdict(list)
    for request in receiver.requests:
        payload = verifier.verify(request.body, request.headers)  # raises if forged
        by_id[request.headers["webhook-id"]].append(request.headers)
        order[payload["data"]["referral_id"]].append(payload["data"]["sequence"])
    # Every delivery arrived under its own id, the same id on each of its attempts.
    assert set(by_id) == {d.id for d in rows}
    retried = [ident for ident, attempts in by_id.items() if len(attempts) > 1]
    assert retried, "the two 503s must have caused a retry of some delivery"
    # In order per referral: the cancellation never before the referral it cancels.
    for referral_id, sequences in order.items():
        deduplicated = list(dict.fromkeys(sequences))
        assert deduplicated == sorted(deduplicated), referral_id
    assert order[referrals[1]][-1] == 2
    # Thin payloads: ids, state, links; no patient data.
    body = receiver.requests[-1].body.decode()
    for value in ("9000000009", "Example", "Sam", "07700", "WA7", "telephone call"):
        assert value not in body
    # Every attempt is on record; the connection failures too.
    database: Database = app.state.database
    async with database.read_sessions() as session:
        outcomes = list(await session.scalars(select(DeliveryAttempt.outcome)))
    assert outcomes.count("delivered") == 4
    assert outcomes.count("retry") >= 3


async def test_a_failing_referral_holds_back_only_its_own_deliveries(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    receiver = Receiver()
    await subscribe(bridge, receiver.url)
    first, second = await refer_many(bridge, 2)
    await bridge.cancel(first)
    await bridge.cancel(second)
    # The receiver chokes on everything about the first referral.
    receiver.rule = lambda r: (500, {}) if first.encode() in r.body else None
    await receiver.start()
    dispatcher = dispatcher_for(app)
    try:
        for _ in range(6):
            await dispatcher.run_once()
            await asyncio.sleep(0.03)
    finally:
        await receiver.stop()
    rows = await deliveries(app)
    state = {(d.referral_id, d.event_seq): d.state for d in rows}
    assert state[(second, 1)] == "delivered"
    assert state[(second, 2)] == "delivered"
    assert state[(first, 1)] == "pending"
    assert state[(first, 2)] == "pending"
    # The first referral's cancellation was never sent ahead of its creation.
    sent_about_first = [
        r.json()["data"]["sequence"] for r in receiver.requests if first.encode() in r.body
    ]
    assert set(sent_about_first) == {1}


async def test_permanent_error_goes_straight_to_dead_letters_and_alerts_admins(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    worklist = Receiver(default_status=400)
    alerts = Receiver()
    advisor = await bridge.key("advisor", "LR001")
    await subscribe(bridge, worklist.url, headers=advisor)
    await subscribe(bridge, alerts.url, events=["delivery.dead_lettered"])
    (referral,) = await refer_many(bridge, 1)
    await worklist.start()
    await alerts.start()
    dispatcher = dispatcher_for(app)
    try:
        await dispatcher.drain()
        await dispatcher.drain()
    finally:
        await worklist.stop()
        await alerts.stop()
    assert len(worklist.requests) == 1  # no retries for a 400
    rows = await deliveries(app)
    dead = [d for d in rows if d.state == "dead"]
    assert len(dead) == 1 and dead[0].attempts == 1 and dead[0].last_status_code == 400
    assert [b["type"] for b in alerts.bodies()] == ["delivery.dead_lettered"]
    alert = alerts.bodies()[0]["data"]
    assert alert["delivery_id"] == dead[0].id
    assert alert["referral_id"] == referral

    # Replay once the receiver is fixed: the same id goes out again and arrives.
    listing = await bridge.http.get("/api/v1/deliveries?state=dead", headers=ADMIN)
    assert [item["id"] for item in listing.json()["items"]] == [dead[0].id]
    replayed = await bridge.http.post(f"/api/v1/deliveries/{dead[0].id}/replay", headers=ADMIN)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["state"] == "pending"
    again = await bridge.http.post(f"/api/v1/deliveries/{dead[0].id}/replay", headers=ADMIN)
    assert again.status_code == 409
    worklist.default_status = 204
    await worklist.start()
    try:
        await dispatcher.drain()
    finally:
        await worklist.stop()
    assert [r.headers["webhook-id"] for r in worklist.requests] == [dead[0].id, dead[0].id]
    detail = (await bridge.http.get(f"/api/v1/deliveries/{dead[0].id}", headers=ADMIN)).json()
    assert detail["state"] == "delivered"
    assert [a["outcome"] for a in detail["history"]] == ["dead", "delivered"]
    assert detail["history"][0]["status_code"] == 400
    assert detail["history"][0]["response_excerpt"] == '{"ok": true}'


async def test_retries_end_in_dead_letter_after_the_retry_window(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver(default_status=503)
    await subscribe(bridge, receiver.url)
    await refer_many(bridge, 1)
    now = [utcnow()]
    dispatcher = dispatcher_for(app, clock=lambda: now[0])
    await receiver.start()
    try:
        await dispatcher.run_once()
        now[0] += dt.timedelta(seconds=app.state.settings.retry_max_age + 1)
        await dispatcher.run_once()
    finally:
        await receiver.stop()
    (row,) = await deliveries(app)
    assert row.state == "dead"
    assert row.attempts == 2


async def test_retry_after_is_honoured(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver()
    receiver.answer(429, headers={"Retry-After": "120"})
    await subscribe(bridge, receiver.url)
    await refer_many(bridge, 1)
    await receiver.start()
    before = utcnow()
    try:
        await dispatcher_for(app).run_once()
    finally:
        await receiver.stop()
    (row,) = await deliveries(app)
    assert row.state == "pending"
    assert row.next_attempt_at >= before + dt.timedelta(seconds=119)


async def test_circuit_probes_one_at_a_time_and_recovery_releases_the_backlog(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    receiver = Receiver(default_status=503)
    subscription = await subscribe(bridge, receiver.url)
    await refer_many(bridge, 8)
    now = [utcnow()]
    # A long schedule: without the circuit's release, recovery would wait an hour per item.
    app.state.settings.retry_schedule = [3600.0]
    dispatcher = dispatcher_for(app, clock=lambda: now[0])
    await receiver.start()
    try:
        # Three rounds in which all 8 fail (the threshold counts rounds, not deliveries): open.
        for round_ in range(1, 4):
            await dispatcher.run_once()
            assert len(receiver.requests) == 8 * round_
            now[0] += dt.timedelta(hours=2)
        database: Database = app.state.database
        async with database.read_sessions() as session:
            destination = await session.get(Destination, subscription["id"])
            assert destination is not None and destination.probe_at is not None
        await dispatcher.run_once()  # open circuit: one probe only
        assert len(receiver.requests) == 25
        receiver.default_status = 200
        now[0] += dt.timedelta(hours=2)
        await dispatcher.run_once()  # the probe succeeds...
        await dispatcher.run_once()  # ...and the whole backlog goes at once
    finally:
        await receiver.stop()
    assert await all_delivered(app)
    stats = (await bridge.http.get("/api/v1/deliveries/stats", headers=ADMIN)).json()
    assert stats["by_state"]["delivered"] == 8
    (queue,) = [q for q in stats["destinations"] if q["destination_id"] == subscription["id"]]
    assert queue["circuit"] == "closed"
    assert queue["by_state"]["pending"] == 0


async def test_410_disables_the_subscription_and_tells_the_admins(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    gone = Receiver(default_status=410)
    alerts = Receiver()
    advisor = await bridge.key("advisor", "LR001")
    subscription = await subscribe(bridge, gone.url, headers=advisor)
    await subscribe(bridge, alerts.url, events=["subscription.disabled"])
    await refer_many(bridge, 2)
    await gone.start()
    await alerts.start()
    try:
        await dispatcher_for(app).drain()
    finally:
        await gone.stop()
        await alerts.stop()
    shown = (
        await bridge.http.get(f"/api/v1/subscriptions/{subscription['id']}", headers=advisor)
    ).json()
    assert shown["active"] is False
    assert shown["disabled_reason"] == "gone"
    assert [b["type"] for b in alerts.bodies()] == ["subscription.disabled"]
    assert alerts.bodies()[0]["data"]["subscription_id"] == subscription["id"]
    # Nothing more is queued for it.
    await refer_many(bridge, 1)
    rows = [d for d in await deliveries(app) if d.destination_id == subscription["id"]]
    assert {d.state for d in rows} <= {"dead", "delivered"}
    assert len(rows) == 2


async def test_a_subscription_failing_for_the_whole_window_is_disabled(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    receiver = Receiver(default_status=503)
    subscription = await subscribe(bridge, receiver.url)
    await refer_many(bridge, 1)
    now = [utcnow()]
    dispatcher = dispatcher_for(app, clock=lambda: now[0])
    await receiver.start()
    try:
        await dispatcher.run_once()
        now[0] += dt.timedelta(seconds=app.state.settings.subscription_disable_after + 1)
        async with app.state.database.write_sessions() as session, session.begin():
            await session.execute(update(Delivery).values(next_attempt_at=now[0]))
        await dispatcher.run_once()
    finally:
        await receiver.stop()
    shown = (
        await bridge.http.get(f"/api/v1/subscriptions/{subscription['id']}", headers=ADMIN)
    ).json()
    assert shown["active"] is False and shown["disabled_reason"] == "failing"
    # What it missed is kept as dead letters, to replay once it is fixed.
    (row,) = await deliveries(app)
    assert row.state == "dead"


async def test_secret_rotation_signs_with_both_secrets_during_the_overlap(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    receiver = Receiver()
    subscription = await subscribe(bridge, receiver.url)
    rotated = await bridge.http.post(
        f"/api/v1/subscriptions/{subscription['id']}/rotate-secret",
        json={"overlap": 3600},
        headers=ADMIN,
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != subscription["secret"] and new_secret.startswith("whsec_")
    await refer_many(bridge, 1)
    await receiver.start()
    try:
        await dispatcher_for(app).drain()
    finally:
        await receiver.stop()
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(subscription["secret"]).verify(request.body, request.headers)
    Webhook(new_secret).verify(request.body, request.headers)


async def test_graceful_stop_releases_what_it_cannot_finish(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver(delay=2.0)
    await subscribe(bridge, receiver.url)
    await refer_many(bridge, 2)
    await receiver.start()
    dispatcher = dispatcher_for(app)
    try:
        dispatcher.start()
        for _ in range(200):
            if len(receiver.requests) == 2:
                break
            await asyncio.sleep(0.01)
        await dispatcher.stop(grace=0.1)  # too short to finish: the claims are given back
    finally:
        await receiver.stop()
    rows = await deliveries(app)
    assert [d.state for d in rows] == ["pending", "pending"]
    assert all(d.claimed_by is None and d.attempts == 0 for d in rows)
    # Another process picks them up at once.
    receiver.delay = 0
    await receiver.start()
    try:
        await dispatcher_for(app, name="another").drain()
    finally:
        await receiver.stop()
    assert await all_delivered(app)


async def test_in_process_dispatcher_is_woken_by_the_commit(
    database_url: str, app: Any, settings_overrides: dict[str, Any]
) -> None:
    """`spbridge serve` runs the dispatcher, and a commit that queued deliveries wakes it. The
    poll interval is an hour, so only the wake-up can deliver within the test's patience; no
    timing is asserted (speed is the benchmark's job). (``app`` empties the database.)"""
    application = create_app(
        make_settings(
            database_url,
            **{**settings_overrides, "run_dispatcher": True, "dispatch_poll_interval": 3600},
        )
    )
    receiver = Receiver()
    await receiver.start()
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
                local = Bridge(http)
                await local.service()
                await subscribe(local, receiver.url)
                for _ in range(3):  # each commit wakes it again, also mid-round
                    await refer_many(local, 1)
                await wait_for(lambda: len(receiver.requests) == 3, timeout=30)
    finally:
        await receiver.stop()
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 3
