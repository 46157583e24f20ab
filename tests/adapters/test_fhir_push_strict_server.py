"""A referral's journey pushed by the ``fhir_push`` adapter to a FHIR server on loopback
(tests/support/fhir_server), the way a trust's integration team would try it: strict (no update
as create, references checked, resources validated) and permissive (update as create allowed),
in each write mode. Both databases.

The route reads the server's CapabilityStatement when it is saved and writes the best way it
offers (a transaction Bundle of conditional updates on the bridge's identifiers); a pinned mode
is used as it is, and PUT by id on a strict server dead-letters with the server's reason.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, Bridge
from tests.support.cases import OpenCase, open_case
from tests.support.delivery import dispatcher_for
from tests.support.fhir_test_server import FhirTestServer
from tests.support.receiver import free_port

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


async def route_to(bridge: Bridge, fhir_server: FhirTestServer, **config: Any) -> dict[str, Any]:
    response = await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        json={
            "adapter": "fhir_push",
            "adapter_config": {"base_url": fhir_server.base_url, **config},
        },
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    route: dict[str, Any] = response.json()
    return route


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


async def journey_pushed(
    app: Any, bridge: Bridge, fhir_server: FhirTestServer, **config: Any
) -> OpenCase:
    app.state.clock = lambda: START + dt.timedelta(days=30)
    await bridge.service()
    await route_to(bridge, fhir_server, **config)
    case = await open_case(bridge, register=False)
    seed_the_referrers_own_referral(fhir_server, case)
    for day, body in enumerate(JOURNEY, start=1):
        await case.record({**body, "occurred_at": at(day)})
    dispatcher = dispatcher_for(app, clock=app.state.clock)
    await dispatcher.drain()
    return case


async def clinical_deliveries(bridge: Bridge) -> list[dict[str, Any]]:
    response = await bridge.http.get("/api/v1/deliveries", params={"limit": 100}, headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return [item for item in items if item["adapter"] == "fhir_push"]


async def test_push_to_a_strict_server_lands_every_update(
    app: Any, bridge: Bridge, fhir_server: FhirTestServer
) -> None:
    case = await journey_pushed(app, bridge, fhir_server)
    await the_journey_landed(bridge, fhir_server, case)
    # One transaction Bundle per update, every entry a conditional update on our identifier.
    writes = [r for r in fhir_server.requests() if r["method"] != "GET"]
    assert len(writes) == len(JOURNEY) + 1
    for write in writes:
        assert (write["method"], write["url"], write["status"]) == ("POST", "", 200)
        assert write["body"]["type"] == "transaction"
        for entry in write["body"]["entry"]:
            assert entry["fullUrl"].startswith("urn:uuid:")
            assert entry["request"]["method"] == "PUT"


@pytest.mark.parametrize(
    ("permissive", "write_mode", "method"),
    [
        (False, "conditional", "PUT"),
        (True, "auto", "POST"),
        (True, "conditional", "PUT"),
        (True, "update", "PUT"),
    ],
)
async def test_the_journey_lands_in_every_mode_the_server_supports(
    app: Any,
    bridge: Bridge,
    fhir_server: FhirTestServer,
    permissive: bool,
    write_mode: str,
    method: str,
) -> None:
    fhir_server.reset(updateCreate=permissive)
    case = await journey_pushed(app, bridge, fhir_server, write_mode=write_mode)
    await the_journey_landed(bridge, fhir_server, case)
    writes = [r for r in fhir_server.requests() if r["method"] != "GET"]
    assert {r["method"] for r in writes} == {method}
    if write_mode == "update":
        assert {r["url"] for r in writes} >= {f"Task/{case.case_id}"}
    elif write_mode == "conditional":
        assert all("?identifier=" in r["url"] for r in writes)


async def test_put_by_id_on_a_strict_server_dead_letters_with_the_reason(
    app: Any, bridge: Bridge, fhir_server: FhirTestServer
) -> None:
    """A route pinned to PUT by id, against a server that refuses update as create: every
    update is refused (405) and dead-lettered with the server's reason stored."""
    await journey_pushed(app, bridge, fhir_server, write_mode="update")

    deliveries = await clinical_deliveries(bridge)
    assert len(deliveries) == len(JOURNEY) + 1
    assert {d["state"] for d in deliveries} == {"dead"}
    assert {d["last_status_code"] for d in deliveries} == {405}
    detail = await bridge.http.get(f"/api/v1/deliveries/{deliveries[0]['id']}", headers=ADMIN)
    (attempt,) = detail.json()["history"]
    assert attempt["outcome"] == "dead"
    assert "update as create" in attempt["response_excerpt"]
    assert fhir_server.search("Task") == []


async def test_the_route_reads_what_the_server_supports(
    bridge: Bridge, fhir_server: FhirTestServer
) -> None:
    route = await route_to(bridge, fhir_server)
    assert route["write_mode"] == "auto"
    assert route["capabilities"]["modes"] == ["transaction", "conditional"]
    assert route["capabilities"]["problem"] is None

    # The server is reconfigured: read again on demand.
    fhir_server.set_mode(updateCreate=True)
    refreshed = await bridge.http.post("/api/v1/clinical-routes/RW4/capabilities", headers=ADMIN)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["capabilities"]["modes"] == ["transaction", "conditional", "update"]
    assert refreshed.json()["updated_at"] > route["updated_at"]
    read = await bridge.http.get("/api/v1/clinical-routes/RW4", headers=ADMIN)
    assert read.json()["capabilities"] == refreshed.json()["capabilities"]


async def test_a_replay_never_moves_the_clinicians_view_backwards(
    app: Any, bridge: Bridge, fhir_server: FhirTestServer
) -> None:
    case = await journey_pushed(app, bridge, fhir_server)
    (before,) = fhir_server.search("Task")
    replayed = await bridge.http.post(
        "/api/v1/deliveries/replay", json={"referral": case.referral_id}, headers=ADMIN
    )
    assert replayed.status_code in (200, 202), replayed.text
    await dispatcher_for(app, clock=app.state.clock).drain()

    # Every delivery sent again, each with the current versions: still one Task, at its end.
    (after,) = fhir_server.search("Task")
    assert (after["status"], after["businessStatus"]) == (
        before["status"],
        before["businessStatus"],
    )
    assert after["output"] == before["output"]
    assert len(fhir_server.search("Appointment")) == 1
    await the_journey_landed(bridge, fhir_server, case)


async def the_journey_landed(bridge: Bridge, fhir_server: FhirTestServer, case: OpenCase) -> None:
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


async def test_a_server_that_does_not_answer_is_read_again_later(
    bridge: Bridge, fhir_server: FhirTestServer
) -> None:
    """Saved while the server is down: nothing learned, and the route says why (no 5xx); the
    first send reads it again."""
    down = f"http://127.0.0.1:{free_port()}/fhir"
    saved = await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        json={"adapter": "fhir_push", "adapter_config": {"base_url": down}},
        headers=ADMIN,
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["capabilities"]["unreachable"] is True
    refreshed = await bridge.http.post("/api/v1/clinical-routes/RW4/capabilities", headers=ADMIN)
    assert refreshed.status_code == 200, refreshed.text
    capabilities = refreshed.json()["capabilities"]
    assert capabilities["unreachable"] is True and capabilities["modes"] == []
    assert "connection failed" in capabilities["problem"]
