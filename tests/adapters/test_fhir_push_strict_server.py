"""A referral's journey pushed by the ``fhir_push`` adapter to a strict FHIR server on loopback
(tests/support/fhir_server: no update as create, references checked, resources validated), the
way a trust's integration team would try it. Both databases.

Today every update dead-letters (issue 15): the adapter writes ``PUT /Task/{our id}``, which a
server without update as create refuses (405), and the resources point at ids only the bridge
knows. ``test_push_to_a_strict_server_dead_letters_today`` pins that down;
``test_push_to_a_strict_server_lands_every_update`` is what issue 15 must make true. It is a
strict xfail: the day it passes it fails the suite, so whoever fixes write-back removes the
marker and the "today" test together.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.delivery.dispatcher import Dispatcher
from tests.conftest import ADMIN_KEY, Bridge
from tests.support.cases import OpenCase, open_case
from tests.support.fhir_test_server import FhirTestServer

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
START = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=1)
NHS_NUMBER = "9000000009"  # the example referral's patient


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


def at(day: float) -> str:
    return (START + dt.timedelta(days=day)).isoformat().replace("+00:00", "Z")


# A short journey that makes every kind of resource the referrer receives.
JOURNEY: list[dict[str, Any]] = [
    {"type": "case.accepted", "team": "Halton hub", "advisor": "A. Advisor"},
    {"type": "contact.attempted", "outcome": "reached", "method": "telephone"},
    {"type": "appointment.booked", "appointment_id": "AP-1", "start": at(5),
     "appointment_type": "face-to-face", "duration_minutes": 60},
    {"type": "appointment.attended", "appointment_id": "AP-1", "duration_minutes": 45},
    {"type": "prescription.created", "prescription_id": "RX-1", "category": "benefits-money",
     "provider": "Citizens Advice Halton", "activity": "Benefits check", "status": "active"},
    {"type": "outcome.recorded", "stage": "start", "items": [3, 2, 3, 3, 3, 2, 3]},
    {"type": "case.completed", "reason": "needs-met"},
]  # fmt: skip


async def route_to(bridge: Bridge, fhir_server: FhirTestServer) -> None:
    response = await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        json={"adapter": "fhir_push", "adapter_config": {"base_url": fhir_server.base_url}},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text


def seed_the_referrers_own_referral(fhir_server: FhirTestServer, case: OpenCase) -> None:
    """The referrer's server holds its own copy of the referral, under an id of its own."""
    fhir_server.seed(
        {
            "resourceType": "ServiceRequest",
            "id": "rio-referral-1",
            "status": "active",
            "intent": "order",
            "identifier": [
                {"system": "https://rio.example.nhs.uk/Id/referral", "value": case.referral_id}
            ],
            "subject": {
                "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS_NUMBER}
            },
        }
    )


async def journey_pushed(app: Any, bridge: Bridge, fhir_server: FhirTestServer) -> OpenCase:
    app.state.clock = lambda: START + dt.timedelta(days=30)
    await bridge.service()
    await route_to(bridge, fhir_server)
    case = await open_case(bridge, register=False)
    seed_the_referrers_own_referral(fhir_server, case)
    for day, body in enumerate(JOURNEY, start=1):
        await case.record({**body, "occurred_at": at(day)})
    dispatcher = Dispatcher(
        app.state.database, app.state.settings, app.state.http, clock=app.state.clock
    )
    await dispatcher.drain()
    return case


async def clinical_deliveries(bridge: Bridge) -> list[dict[str, Any]]:
    response = await bridge.http.get("/api/v1/deliveries", params={"limit": 100}, headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return [item for item in items if item["adapter"] == "fhir_push"]


async def test_push_to_a_strict_server_dead_letters_today(
    app: Any, bridge: Bridge, fhir_server: FhirTestServer
) -> None:
    """Issue 15's gap as it is: every update is refused, dead-lettered with the reason stored.
    Remove this test when write-back lands (with the xfail marker below)."""
    await journey_pushed(app, bridge, fhir_server)

    deliveries = await clinical_deliveries(bridge)
    assert len(deliveries) == len(JOURNEY) + 1  # referral.received, then one per event
    assert {d["state"] for d in deliveries} == {"dead"}
    assert {d["last_status_code"] for d in deliveries} == {405}
    detail = await bridge.http.get(f"/api/v1/deliveries/{deliveries[0]['id']}", headers=ADMIN)
    (attempt,) = detail.json()["history"]
    assert attempt["outcome"] == "dead"
    assert "update as create" in attempt["response_excerpt"]

    # What the server saw: a PUT of a Task by the bridge's id, refused, for every update.
    sent = fhir_server.requests()
    assert sent and all(r["method"] == "PUT" and r["status"] == 405 for r in sent)
    assert {r["url"].split("/")[0] for r in sent} >= {"Task", "Appointment"}
    assert fhir_server.search("Task") == []


@pytest.mark.xfail(strict=True, reason="issue 15: write-back assumes update-as-create")
async def test_push_to_a_strict_server_lands_every_update(
    app: Any, bridge: Bridge, fhir_server: FhirTestServer
) -> None:
    case = await journey_pushed(app, bridge, fhir_server)

    deliveries = await clinical_deliveries(bridge)
    assert deliveries and {d["state"] for d in deliveries} == {"delivered"}
    # The clinician's view on their own server is the bridge's: one Task, at its last state,
    # with every output there (the server checked that each reference resolves).
    ours = await case.task()
    (theirs,) = fhir_server.search("Task")
    assert (theirs["status"], theirs["businessStatus"]) == (ours["status"], ours["businessStatus"])
    assert len(theirs.get("output", [])) == len(ours["output"])
    assert theirs.get("note") == ours["note"]
    for output in theirs["output"]:
        resource_type, resource_id = output["valueReference"]["reference"].split("/")[-2:]
        assert fhir_server.read(resource_type, resource_id) is not None
