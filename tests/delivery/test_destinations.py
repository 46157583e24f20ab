"""Destinations as one concept: a platform's adapter configuration lives in one row (its service's
platform destination) and every reader uses it; outbound senders are chosen by destination kind;
the adapter cache is bounded. Real fake platforms and receivers on 127.0.0.1, both databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, text, update

from adapters.base import PermanentError
from adapters.elemental import ElementalAdapter
from adapters.fhir_push import FhirPushAdapter
from app.db import Database, utcnow
from app.delivery.dispatcher import Dispatcher
from app.delivery.senders import Adapters, WebhookSender
from app.outbox.models import Delivery, Destination, DestinationKind
from app.platform.reconcile import Reconciler
from tests.conftest import ADMIN_KEY, Bridge, referral_resource
from tests.support.delivery import dispatcher_for, subscribe
from tests.support.elemental_platform import FakePlatform, make_platform_app, serve, signed_webhook
from tests.support.receiver import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FIRST_KEY, SECOND_KEY = "first-platform-key", "second-platform-key"
FIRST_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECOND_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


@pytest.fixture
async def platforms() -> AsyncIterator[tuple[tuple[FakePlatform, str], tuple[FakePlatform, str]]]:
    first, second = FakePlatform(FIRST_KEY), FakePlatform(SECOND_KEY)
    async with (
        serve(make_platform_app(FIRST_KEY, first)) as first_url,
        serve(make_platform_app(SECOND_KEY, second)) as second_url,
    ):
        yield (first, first_url), (second, second_url)


def elemental(base_url: str, api_key: str, secret: str) -> dict[str, str]:
    return {"base_url": base_url, "api_key": api_key, "webhook_secret": secret}


async def refer(bridge: Bridge) -> str:
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    response = await bridge.refer(referrer, referral_resource())
    assert response.status_code == 201, response.text
    referral_id: str = response.json()["id"]
    return referral_id


async def platform_destinations(app: Any) -> list[Destination]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return list(
            await session.scalars(
                select(Destination).where(Destination.kind == DestinationKind.PLATFORM)
            )
        )


async def test_a_platforms_configuration_lives_on_its_destination_and_every_reader_uses_it(
    app: Any,
    bridge: Bridge,
    platforms: tuple[tuple[FakePlatform, str], tuple[FakePlatform, str]],
) -> None:
    (first, first_url), (second, second_url) = platforms
    registered = await bridge.http.post(
        "/api/v1/services",
        json={
            "id": "life-rooms",
            "name": "The Life Rooms",
            "organisation": "LR001",
            "adapter": "elemental",
            "adapter_config": elemental(first_url, FIRST_KEY, FIRST_SECRET),
        },
        headers=ADMIN,
    )
    assert registered.status_code == 201, registered.text
    (destination,) = await platform_destinations(app)
    assert destination.service_id == "life-rooms" and destination.adapter == "elemental"
    assert destination.config == {
        **elemental(first_url, FIRST_KEY, FIRST_SECRET),
        "timeout": 10.0,  # the validated configuration, defaults filled in
    }
    database: Database = app.state.database
    async with database.read_sessions() as session:
        # The one copy is the destination's (the services column, retired, is left empty).
        retired = await session.scalar(text("SELECT adapter_config FROM services"))
    assert retired in ({}, "{}")

    # The service moves to another platform account: one row changes, and every reader follows.
    async with database.write_sessions() as session, session.begin():
        await session.execute(
            update(Destination)
            .where(Destination.id == destination.id)
            .values(config=elemental(second_url, SECOND_KEY, SECOND_SECRET), updated_at=utcnow())
        )

    # The dispatcher sends the new referral there.
    referral_id = await refer(bridge)
    await dispatcher_for(app).drain()
    assert first.requests == []
    (created,) = second.created
    assert created.body["external_id"] == referral_id
    (record,) = second.referrals.values()

    # Inbound webhooks are verified with the new secret; the old one no longer signs.
    path = "/api/v1/adapters/elemental/life-rooms/webhook"
    event = second.add_event("client.registered", record.id)
    body, headers = signed_webhook(FIRST_SECRET, event)
    stale = await bridge.http.post(path, content=body, headers=headers)
    assert stale.status_code == 401, stale.text
    body, headers = signed_webhook(SECOND_SECRET, event)
    applied = await bridge.http.post(path, content=body, headers=headers)
    assert applied.status_code == 200, applied.text
    assert applied.json() == {"status": "applied", "events": 1}

    # Reconciliation polls the new platform's feed.
    second.add_event("contact.logged", record.id, {"result": "spoke_to_client"})
    reconciler = Reconciler(app.state.database, app.state.settings, app.state.http)
    assert await reconciler.run_once() == 1  # the webhook's event was already applied
    assert first.requests == []
    assert any(r.path == "/api/v1/events" for r in second.requests)


async def test_a_local_service_has_no_destination_and_no_configuration(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()  # adapter `local`: the bridge itself holds the cases
    assert await platform_destinations(app) == []
    refused = await bridge.http.post(
        "/api/v1/services",
        json={
            "id": "other",
            "name": "Other",
            "organisation": "LR002",
            "adapter": "local",
            "adapter_config": {"base_url": "https://platform.example"},
        },
        headers=ADMIN,
    )
    assert refused.status_code == 422, refused.text
    inbound = await bridge.http.post(
        "/api/v1/adapters/local/life-rooms/webhook", content=b"{}", headers={}
    )
    assert inbound.status_code == 404
    # Its referrals reach no platform: nothing is queued but for subscriptions.
    await refer(bridge)
    database: Database = app.state.database
    async with database.read_sessions() as session:
        assert list(await session.scalars(select(Delivery))) == []


# --- senders by destination kind ------------------------------------------------------------


async def outcomes(app: Any) -> list[tuple[str, str | None]]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        rows = await session.execute(select(Delivery.state, Delivery.last_error))
        return [(state, error) for state, error in rows]


async def test_a_kind_without_a_sender_is_a_dead_letter_not_a_crash(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    receiver = Receiver()
    await subscribe(bridge, receiver.url)
    await refer(bridge)
    settings = app.state.settings
    # A dispatcher that knows only clinical adapters: webhooks have no sender here.
    dispatcher = Dispatcher(
        app.state.database,
        settings,
        app.state.http,
        senders={DestinationKind.CLINICAL: WebhookSender(settings)},
    )
    await receiver.start()
    try:
        assert await dispatcher.drain() == 1
    finally:
        await receiver.stop()
    assert receiver.requests == []
    assert await outcomes(app) == [("dead", "no sender for destinations of kind 'webhook'")]


async def test_an_event_a_platform_is_not_sent_is_a_permanent_error(
    app: Any, bridge: Bridge, platforms: tuple[tuple[FakePlatform, str], tuple[FakePlatform, str]]
) -> None:
    (first, first_url), _ = platforms
    registered = await bridge.http.post(
        "/api/v1/services",
        json={
            "id": "life-rooms",
            "name": "The Life Rooms",
            "organisation": "LR001",
            "adapter": "elemental",
            "adapter_config": elemental(first_url, FIRST_KEY, FIRST_SECRET),
        },
        headers=ADMIN,
    )
    assert registered.status_code == 201, registered.text
    await refer(bridge)
    await dispatcher_for(app).drain()
    assert len(first.created) == 1
    # Someone widens the platform's events to everything; the platform sender still sends only
    # what a platform understands.
    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        await session.execute(
            update(Destination)
            .where(Destination.kind == DestinationKind.PLATFORM)
            .values(event_types=[])
        )
    (record,) = first.referrals.values()
    body, headers = signed_webhook(FIRST_SECRET, first.add_event("client.registered", record.id))
    applied = await bridge.http.post(
        "/api/v1/adapters/elemental/life-rooms/webhook", content=body, headers=headers
    )
    assert applied.status_code == 200, applied.text
    before = len(first.requests)
    await dispatcher_for(app).drain()
    assert len(first.requests) == before  # nothing went to the platform
    async with database.read_sessions() as session:
        rows = await session.execute(
            select(Delivery.event_type, Delivery.state, Delivery.last_error).where(
                Delivery.event_type != "referral.received"
            )
        )
        assert list(rows) == [
            ("case.accepted", "dead", "a platform is not sent 'case.accepted' events")
        ]


# --- the adapter cache ------------------------------------------------------------------------


def clinical_route(ident: str, base_url: str, updated_at: dt.datetime) -> Destination:
    return Destination(
        id=ident,
        kind=DestinationKind.CLINICAL,
        adapter="fhir_push",
        config={"base_url": base_url},
        updated_at=updated_at,
    )


def test_the_adapter_cache_keeps_one_adapter_per_destination_and_is_bounded() -> None:
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    adapters = Adapters(size=2)
    a = clinical_route("a", "https://a.example/fhir", t0)
    first = adapters.of(a, FhirPushAdapter)
    assert adapters.of(a, FhirPushAdapter) is first  # kept while the destination is unchanged

    # A changed destination gets a new adapter, in place of the old one, not beside it.
    changed = clinical_route("a", "https://a2.example/fhir", t0 + dt.timedelta(seconds=1))
    rebuilt = adapters.of(changed, FhirPushAdapter)
    assert rebuilt is not first and rebuilt.config.model_dump()["base_url"].startswith("https://a2")
    assert len(adapters) == 1

    # Bounded: the least recently used goes first.
    b = clinical_route("b", "https://b.example/fhir", t0)
    c = clinical_route("c", "https://c.example/fhir", t0)
    kept_b = adapters.of(b, FhirPushAdapter)
    adapters.of(changed, FhirPushAdapter)  # "a" used again: "b" is now the oldest
    adapters.of(c, FhirPushAdapter)
    assert len(adapters) == 2
    assert adapters.of(changed, FhirPushAdapter) is rebuilt
    assert adapters.of(b, FhirPushAdapter) is not kept_b  # evicted, built again


def test_an_adapter_of_the_wrong_kind_or_an_unusable_configuration_is_a_permanent_error() -> None:
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    adapters = Adapters()
    route = clinical_route("a", "https://a.example/fhir", t0)
    with pytest.raises(PermanentError, match="does not serve a clinical"):
        adapters.of(route, ElementalAdapter)
    broken = clinical_route("b", "not a url", t0)
    with pytest.raises(PermanentError, match="configuration is not usable"):
        adapters.of(broken, FhirPushAdapter)
