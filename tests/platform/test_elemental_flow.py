"""The `elemental` platform end to end: a fake Elemental on 127.0.0.1, the real dispatcher, the
bridge's signed inbound webhook and the reconciliation poll, on both databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from adapters.base import PlatformAdapter
from app.cases.models import Case, CaseEvent
from app.db import Database
from app.delivery.dispatcher import Dispatcher
from app.platform.reconcile import Reconciler
from tests.conftest import ADMIN_KEY, Bridge, referral_resource
from tests.support.delivery import dispatcher_for
from tests.support.elemental_platform import (
    FakePlatform,
    make_platform_app,
    serve,
    signed_webhook,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
API_KEY = "elemental-test-key"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


@pytest.fixture
async def platform() -> AsyncIterator[tuple[FakePlatform, str]]:
    fake = FakePlatform(API_KEY)
    async with serve(make_platform_app(API_KEY, fake)) as base_url:
        yield fake, base_url


async def register(bridge: Bridge, base_url: str, secret: str = SECRET) -> None:
    response = await bridge.http.post(
        "/api/v1/services",
        json={
            "id": "life-rooms",
            "name": "The Life Rooms",
            "organisation": "LR001",
            "adapter": "elemental",
            "adapter_config": {"base_url": base_url, "api_key": API_KEY, "webhook_secret": secret},
        },
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text


async def refer(bridge: Bridge) -> str:
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    response = await bridge.refer(referrer, referral_resource())
    assert response.status_code == 201, response.text
    referral_id: str = response.json()["id"]
    return referral_id


def dispatcher(app: Any) -> Dispatcher:
    return dispatcher_for(app)


async def post_event(bridge: Bridge, body: bytes, headers: dict[str, str]) -> Any:
    return await bridge.http.post(
        "/api/v1/adapters/elemental/life-rooms/webhook", content=body, headers=headers
    )


async def task_of(bridge: Bridge, referral_id: str) -> dict[str, Any]:
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    bundle = (
        await bridge.http.get(f"/fhir/Task?focus=ServiceRequest/{referral_id}", headers=referrer)
    ).json()
    task: dict[str, Any] = bundle["entry"][0]["resource"]
    return task


async def event_count(app: Any) -> int:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(CaseEvent)) or 0)


async def test_referral_becomes_a_platform_case_and_platform_events_move_it(
    app: Any, bridge: Bridge, platform: tuple[FakePlatform, str]
) -> None:
    fake, base_url = platform
    await register(bridge, base_url)
    referral_id = await refer(bridge)
    fake.fail_next(1, status=503)  # the platform is briefly unwell
    for _ in range(50):
        await dispatcher(app).drain()
        if fake.created:
            break
    (created,) = fake.created
    assert created.body["external_id"] == referral_id
    assert created.headers["authorization"] == f"Bearer {API_KEY}"
    assert created.headers["idempotency-key"] == created.headers["x-request-id"]
    (record,) = fake.referrals.values()
    database: Database = app.state.database
    async with database.read_sessions() as session:
        case = await session.scalar(select(Case).where(Case.referral_id == referral_id))
    assert case is not None and case.external_reference == record.id

    # The platform registers the client and books an appointment: signed webhooks.
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    for event_type, data in (
        ("client.registered", {}),
        ("contact.logged", {"result": "spoke_to_client"}),
        (
            "appointment.booked",
            {
                "appointment_id": "apt-1",
                "starts_at": start.isoformat(),
                "ends_at": (start + dt.timedelta(minutes=45)).isoformat(),
                "format": "phone",
            },
        ),
    ):
        body, headers = signed_webhook(SECRET, fake.add_event(event_type, record.id, data))
        response = await post_event(bridge, body, headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "applied", "events": 1}
    task = await task_of(bridge, referral_id)
    assert task["status"] == "in-progress"
    assert task["businessStatus"]["coding"][0]["code"] == "appointment-booked"
    async with database.read_sessions() as session:
        booked = await session.scalar(
            select(CaseEvent).where(CaseEvent.type == "appointment.booked")
        )
    assert booked is not None
    assert booked.source == "platform"
    assert booked.data["appointment_type"] == "telephone" and booked.data["duration_minutes"] == 45

    # The referrer cancels: the cancellation follows to the platform.
    await bridge.cancel(referral_id)
    await dispatcher(app).drain()
    (cancelled,) = fake.cancels
    assert cancelled.path == f"/api/v1/referrals/{record.id}/cancel"
    assert record.status == "cancelled"
    # The platform is told only of new referrals and cancellations, never its own events back.
    assert len(fake.created) == 1


async def test_platform_events_make_the_same_fhir_resources_and_obey_the_same_rules(
    app: Any, bridge: Bridge, platform: tuple[FakePlatform, str]
) -> None:
    """Inbound platform events go through the one domain function: the same records and FHIR
    resources as the advisor API, and the same refusals (here: an unknown appointment)."""
    fake, base_url = platform
    await register(bridge, base_url)
    referral_id = await refer(bridge)
    await dispatcher(app).drain()
    (record,) = fake.referrals.values()
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    slot = {
        "appointment_id": "apt-9",
        "starts_at": start.isoformat(),
        "ends_at": (start + dt.timedelta(minutes=30)).isoformat(),
        "format": "in_person",
    }
    for event_type, data in (("client.registered", {}), ("appointment.booked", slot)):
        body, headers = signed_webhook(SECRET, fake.add_event(event_type, record.id, data))
        assert (await post_event(bridge, body, headers)).status_code == 200
    before = await event_count(app)
    body, headers = signed_webhook(
        SECRET,
        fake.add_event(
            "appointment.outcome_recorded", record.id, {"appointment_id": "apt-X", "outcome": "dna"}
        ),
    )
    refused = await post_event(bridge, body, headers)
    assert refused.status_code == 422, refused.text
    assert await event_count(app) == before

    task = await task_of(bridge, referral_id)
    (output,) = task["output"]
    reference = output["valueReference"]["reference"]
    referrer = await bridge.key("clinical-system", "RW4")
    appointment = (await bridge.http.get(f"/fhir/{reference}", headers=referrer)).json()
    assert appointment["status"] == "booked"
    assert appointment["identifier"][0]["value"] == "apt-9"
    assert appointment["appointmentType"]["coding"][0]["code"] == "face-to-face"
    assert appointment["minutesDuration"] == 30


async def test_duplicate_platform_events_are_applied_once(
    app: Any, bridge: Bridge, platform: tuple[FakePlatform, str]
) -> None:
    fake, base_url = platform
    await register(bridge, base_url)
    referral_id = await refer(bridge)
    await dispatcher(app).drain()
    (record,) = fake.referrals.values()
    body, headers = signed_webhook(SECRET, fake.add_event("client.registered", record.id))
    first = await post_event(bridge, body, headers)
    assert first.json() == {"status": "applied", "events": 1}
    before = await event_count(app)
    repeat = await post_event(bridge, body, headers)
    assert repeat.status_code == 200
    assert repeat.json() == {"status": "duplicate", "events": 0}
    assert await event_count(app) == before
    task = await task_of(bridge, referral_id)
    assert task["status"] == "accepted"


async def test_forged_stale_or_unsigned_platform_events_are_refused_and_change_nothing(
    app: Any, bridge: Bridge, platform: tuple[FakePlatform, str]
) -> None:
    fake, base_url = platform
    await register(bridge, base_url)
    referral_id = await refer(bridge)
    await dispatcher(app).drain()
    (record,) = fake.referrals.values()
    event = fake.add_event("client.registered", record.id)
    before = await event_count(app)

    forged_body, forged_headers = signed_webhook(
        "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY", event
    )
    stale_body, stale_headers = signed_webhook(
        SECRET, event, timestamp=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    )
    good_body, good_headers = signed_webhook(SECRET, event)
    tampered = good_body.replace(b"client.registered", b"referral.rejected")
    unsigned = {k: v for k, v in good_headers.items() if k != "webhook-signature"}
    for body, headers in (
        (forged_body, forged_headers),
        (stale_body, stale_headers),  # a captured message replayed later
        (tampered, good_headers),
        (good_body, unsigned),
        (good_body, {**good_headers, "webhook-signature": "v1,not-base64!"}),
    ):
        response = await post_event(bridge, body, headers)
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await event_count(app) == before
    assert (await task_of(bridge, referral_id))["status"] == "requested"

    # Another service's path, or an adapter the service does not use: not found.
    wrong = await bridge.http.post(
        "/api/v1/adapters/local/life-rooms/webhook", content=good_body, headers=good_headers
    )
    assert wrong.status_code == 404


async def test_events_for_unknown_cases_are_refused_whole(
    app: Any, bridge: Bridge, platform: tuple[FakePlatform, str]
) -> None:
    _, base_url = platform
    await register(bridge, base_url)
    await refer(bridge)
    await dispatcher(app).drain()
    event = {
        "id": "evt_x",
        "type": "client.registered",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "data": {"referral_id": "ELM-99999", "external_id": None},
    }
    body, headers = signed_webhook(SECRET, event)
    before = await event_count(app)
    response = await post_event(bridge, body, headers)
    assert response.status_code == 422, response.text
    assert await event_count(app) == before
    # Not recorded as seen: once the case exists a redelivery can still apply.
    again = await post_event(bridge, body, headers)
    assert again.status_code == 422


async def test_reconciliation_poll_applies_missed_events_once(
    app: Any, bridge: Bridge, platform: tuple[FakePlatform, str]
) -> None:
    fake, base_url = platform
    await register(bridge, base_url)
    referral_id = await refer(bridge)
    await dispatcher(app).drain()
    (record,) = fake.referrals.values()
    # One event arrived by webhook; two more only in the feed (their webhooks were lost).
    body, headers = signed_webhook(SECRET, fake.add_event("client.registered", record.id))
    assert (await post_event(bridge, body, headers)).status_code == 200
    fake.add_event("contact.logged", record.id, {"result": "no_answer"})
    fake.add_event("contact.logged", record.id, {"result": "spoke_to_client"})

    reconciler = Reconciler(app.state.database, app.state.settings, app.state.http)
    assert await reconciler.run_once() == 2  # the webhook's event is recognised, not re-applied
    task = await task_of(bridge, referral_id)
    assert task["businessStatus"]["coding"][0]["code"] == "contacted"
    # Not due again until the interval has passed; when it is, nothing new is applied.
    assert await reconciler.run_once() == 0
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=app.state.settings.reconcile_interval)
    assert await reconciler.run_once(now=later) == 0
    database: Database = app.state.database
    async with database.read_sessions() as session:
        types = list(await session.scalars(select(CaseEvent.type).order_by(CaseEvent.seq)))
    assert types == ["referral.received", "case.accepted", "contact.attempted", "contact.attempted"]


def test_elemental_is_a_polling_platform_adapter() -> None:
    from adapters.registry import adapter_class

    cls = adapter_class("elemental")
    assert issubclass(cls, PlatformAdapter) and cls.polls
    assert cls.event_types == {"referral.received", "referral.updated", "referral.cancelled"}
