"""The sandbox end to end, on both databases: the app in sandbox mode with its lifespan running
the real dispatcher and reconciler, the simulated platform on a fast clock, signed webhooks to a
receiver on 127.0.0.1, the reset; and the landing page."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from adapters import simulator
from adapters.simulator.journeys import ACTIVE, COMPLETED, Journey, plan
from app import sandbox
from app.db import Database, transaction
from app.fhir.nhs_number import is_valid
from app.sandbox import history
from app.sandbox.patients import PATIENTS, referral_resource
from tests.conftest import ADMIN_KEY, FHIR_JSON
from tests.support.receiver import Receiver

SEED = 11
KEYS = {role.value: key for role, (key, _) in sandbox.SANDBOX_KEYS.items()}
CLINICAL = {"Authorization": f"Bearer {KEYS['clinical-system']}"}
ADVISOR = {"Authorization": f"Bearer {KEYS['advisor']}"}
SANDBOX_ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
FAST = {
    "sandbox": True,
    "sandbox_seed": SEED,
    "sandbox_clock_speed": 400.0,  # a 12-week journey in a fifth of a second
    "run_dispatcher": True,
    "dispatch_poll_interval": 0.05,
    "reconcile_interval": 0.05,
}
# Where each kind of ending leaves the Task (DESIGN §5), written out by hand.
TASK_STATUS = {
    ("completed", "needs-met"): "completed",
    ("completed", "referred-on"): "completed",
    ("discharged", "did-not-attend"): "failed",
    ("discharged", "unable-to-contact"): "failed",
    ("discharged", "no-longer-required"): "cancelled",
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return FAST


@pytest.fixture(autouse=True)
def empty_books() -> None:
    simulator.forget_all()  # journeys of an earlier test's app must not reach this one


@pytest.fixture
async def seeded(app: Any) -> Any:
    database: Database = app.state.database
    async with transaction(database.write_sessions) as session:
        await sandbox.seed_session(session, app.state.settings)
    return app


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = await Receiver().start()
    yield hooks
    await hooks.stop()


def new_referral(patient: int = 0) -> dict[str, Any]:
    return referral_resource(
        PATIENTS[patient],
        identifier=f"SBX-TEST-{time.monotonic_ns()}",
        authored_on="2026-01-05T09:00:00Z",
        requester=sandbox.SANDBOX_REFERRER_ORGANISATION,
        service=sandbox.SANDBOX_SERVICE,
    )


async def refer(client: httpx.AsyncClient, patient: int = 0) -> str:
    response = await client.post(
        "/fhir/ServiceRequest", json=new_referral(patient), headers={**CLINICAL, **FHIR_JSON}
    )
    assert response.status_code == 201, response.text
    referral_id: str = response.json()["id"]
    return referral_id


async def case_of(client: httpx.AsyncClient, referral_id: str) -> dict[str, Any]:
    bundle = (
        await client.get(f"/fhir/Task?focus=ServiceRequest/{referral_id}", headers=CLINICAL)
    ).json()
    (entry,) = bundle["entry"]
    response = await client.get(f"/api/v1/cases/{entry['resource']['id']}", headers=ADVISOR)
    assert response.status_code == 200, response.text
    case: dict[str, Any] = response.json()
    return case


async def wait_until_played(
    client: httpx.AsyncClient, referral_id: str, journey: Journey, timeout: float = 60
) -> dict[str, Any]:
    """The case once every planned event is recorded (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        case = await case_of(client, referral_id)
        if len(case["events"]) >= 1 + len(journey.events):
            return case
        if time.monotonic() > deadline:
            raise AssertionError(f"journey not played in {timeout}s: {case['events'][-1]}")
        await asyncio.sleep(0.1)


async def search(client: httpx.AsyncClient, path: str, referral_id: str) -> list[dict[str, Any]]:
    response = await client.get(
        path, params={"based-on": f"ServiceRequest/{referral_id}"}, headers=CLINICAL
    )
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


async def test_a_referral_goes_through_its_simulated_journey_with_webhooks_then_reset(
    seeded: Any, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    subscription = await client.post(
        "/api/v1/subscriptions", json={"url": f"{receiver.url}/hooks"}, headers=ADVISOR
    )
    assert subscription.status_code == 201, subscription.text
    secret = subscription.json()["secret"]

    # Refer until one journey closes (nine in ten do); keep the others to check too.
    referrals: list[tuple[str, Journey]] = []
    while not any(journey.outcome != ACTIVE for _, journey in referrals):
        referral_id = await refer(client, len(referrals) % len(PATIENTS))
        referrals.append((referral_id, plan(SEED, referral_id)))
        assert len(referrals) < 6

    for referral_id, journey in referrals:
        case = await wait_until_played(client, referral_id, journey)
        # Every planned event arrived once, in order, from the platform, through the domain.
        assert [event["type"] for event in case["events"]] == [
            "referral.received",
            *(event.type for event in journey.events),
        ]
        assert {event["source"] for event in case["events"][1:]} == {"platform"}
        assert case["external_reference"] == f"sim-{referral_id}"
        task = (await client.get(f"/fhir/Task/{case['case_id']}", headers=CLINICAL)).json()
        if journey.outcome == ACTIVE:
            assert task["status"] in ("accepted", "in-progress")
        elif journey.reason == "inappropriate-referral":
            assert task["status"] in ("rejected", "cancelled")
        else:
            assert task["status"] == TASK_STATUS[journey.outcome, journey.reason]
            assert task["businessStatus"]["coding"][0]["code"] == journey.reason

        # The resources the journey made, readable under /fhir.
        appointments = await search(client, "/fhir/Appointment", referral_id)
        assert len(appointments) == journey.count("appointment.booked")
        fulfilled = sum(1 for a in appointments if a["status"] == "fulfilled")
        assert fulfilled == journey.count("appointment.attended")
        noshow = sum(1 for a in appointments if a["status"] == "noshow")
        assert noshow == journey.count("appointment.did_not_attend")
        prescriptions = await search(client, "/fhir/ServiceRequest", referral_id)
        assert len(prescriptions) == journey.count("prescription.created")
        observations = await search(client, "/fhir/Observation", referral_id)
        assert len(observations) == journey.count("outcome.recorded")
        outputs = {o["valueReference"]["reference"] for o in task.get("output", [])}
        for resource in appointments + prescriptions + observations:
            assert f"{resource['resourceType']}/{resource['id']}" in outputs

    closed_id, closed = next((r, j) for r, j in referrals if j.outcome != ACTIVE)
    if closed.outcome == COMPLETED:
        assert len(await search(client, "/fhir/Observation", closed_id)) == 2

    # Signed webhooks for every change of the closed case reached the receiver.
    def closing_hook() -> bool:
        return any(
            body["type"] == closed.events[-1].type and body["data"]["referral_id"] == closed_id
            for body in receiver.bodies()
        )

    deadline = time.monotonic() + 30
    while not closing_hook():
        assert time.monotonic() < deadline, "no webhook for the closing event"
        await asyncio.sleep(0.05)
    verifier = Webhook(secret)
    hooks = [r for r in receiver.requests if r.json()["data"].get("referral_id") == closed_id]
    for hook in hooks:
        verifier.verify(hook.body.decode(), hook.headers)  # raises when a signature is wrong
        assert "9990000" not in hook.body.decode()  # ids and links only, never the patient
    assert [hook.json()["type"] for hook in hooks] == [
        "referral.received",
        *(event.type for event in closed.events),
    ]

    # Reset: everything made since start-up is gone, journeys stop, the keys still work.
    refused = await client.post("/api/v1/sandbox/reset", headers=ADVISOR)
    assert refused.status_code == 403, refused.text
    response = await client.post("/api/v1/sandbox/reset", headers=SANDBOX_ADMIN)
    assert response.status_code == 200, response.text
    removed = response.json()["removed"]
    # The referrals made here and the community hub's seeded cases.
    seeded = len(history.SEEDED_CASES)
    assert removed["referrals"] == len(referrals) + seeded
    assert removed["cases"] == len(referrals) + seeded
    assert simulator.held(sandbox.SANDBOX_PLATFORM) == []
    for referral_id, _ in referrals:
        gone = await client.get(f"/fhir/ServiceRequest/{referral_id}", headers=CLINICAL)
        assert gone.status_code == 404, gone.text
    # Seeded again: only the community hub's cases, timed from the reset.
    held = await client.get("/fhir/ServiceRequest", params={"_count": 50}, headers=CLINICAL)
    assert held.json()["total"] == seeded
    assert (await client.get("/api/v1/subscriptions", headers=ADVISOR)).json() == []
    for key in KEYS.values():
        services = await client.get("/api/v1/services", headers={"Authorization": f"Bearer {key}"})
        assert services.status_code == 200, services.text
        assert [s["id"] for s in services.json()] == [
            history.COMMUNITY_HUB,
            sandbox.SANDBOX_SERVICE,
        ]
    # The seeded service still has its simulated platform: a new referral moves on.
    again = await refer(client)
    first_event = plan(SEED, again).events[0].type
    deadline = time.monotonic() + 30
    while len((await case_of(client, again))["events"]) < 2:
        assert time.monotonic() < deadline, "no journey after the reset"
        await asyncio.sleep(0.05)
    assert (await case_of(client, again))["events"][1]["type"] == first_event == "case.accepted"


@pytest.mark.parametrize("settings_overrides", [{**FAST, "sandbox_clock_speed": 5.0}])
async def test_journeys_stop_with_the_process_and_resume_after_a_restart(
    seeded: Any, client: httpx.AsyncClient
) -> None:
    referral_id = await refer(client)
    journey = plan(SEED, referral_id)
    while journey.events[-1].day < 20:  # one that lasts four seconds at 5 days per second
        referral_id = await refer(client)
        journey = plan(SEED, referral_id)
    deadline = time.monotonic() + 30
    while len((await case_of(client, referral_id))["events"]) < 2:
        assert time.monotonic() < deadline, "the platform never accepted the case"
        await asyncio.sleep(0.02)
    # The process goes away: its platform book with it. Nothing moves on its own.
    simulator.forget_all()
    # A poll already under way may still bring what it read; then nothing more comes (the
    # journey would otherwise move on every 200 ms at this clock speed).
    deadline = time.monotonic() + 15
    stalled = len((await case_of(client, referral_id))["events"])
    while True:
        await asyncio.sleep(0.5)
        now_held = len((await case_of(client, referral_id))["events"])
        if now_held == stalled:
            break
        assert time.monotonic() < deadline, "the journey kept moving without its platform"
        stalled = now_held
    await asyncio.sleep(0.5)
    assert len((await case_of(client, referral_id))["events"]) == stalled
    assert stalled < 1 + len(journey.events)
    # A new process seeds the sandbox, which gives the platform its open cases back.
    database: Database = seeded.state.database
    async with transaction(database.write_sessions) as session:
        assert await sandbox.resume_journeys(session) >= 1
    case = await wait_until_played(client, referral_id, journey)
    assert [event["type"] for event in case["events"]] == [
        "referral.received",
        *(event.type for event in journey.events),
    ]


@pytest.mark.parametrize("settings_overrides", [{}])
async def test_reset_is_not_there_outside_the_sandbox(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/sandbox/reset", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert response.status_code == 404, response.text
    assert "sandbox is not enabled" in response.text
    page = await client.get("/")
    assert page.status_code == 200
    assert 'href="/docs"' in page.text and 'href="/redoc"' in page.text
    assert "spb_sandbox" not in page.text


async def test_the_landing_page_shows_the_clients_keys_patients_and_examples(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    text = page.text
    assert 'href="/docs"' in text and 'href="/redoc"' in text
    for key in (
        "spb_sandbox_clinical_system",
        "spb_sandbox_advisor",
        "spb_sandbox_platform",
        "spb_sandbox_reporting",
        "spb_sandbox_admin",
    ):
        assert f"<code>{key}</code>" in text
    numbers = re.findall(r"<td><code>(\d{10})</code></td>", text)
    assert numbers[:3] == ["9990000018", "9990000026", "9990000034"]
    assert len(numbers) == len(PATIENTS)
    assert all(n.startswith("999") and is_valid(n) for n in numbers)
    examples = re.findall(r'<pre data-example="(\w+)">', text)
    assert examples == [
        "webhook",
        "referral",
        "follow",
        "journey",
        "worklist",
        "advisor",
        "report",
        "subscription",
        "bars",
        "reset",
    ]
    # The cases the sandbox starts with are listed, with where each stands.
    for case in history.SEEDED_CASES:
        assert f"<code>{case.identifier}</code>" in text
    # The examples point at this server (the test client's base URL).
    assert "BRIDGE=http://testserver\n" in text


def test_a_reset_locks_the_tables_in_the_order_writers_take_them() -> None:
    """Parents before children, and the report tables after every table a piece of work writes
    before it queues its case for the reports (at its end): a writer holding one finishes rather
    than deadlocking with a reset (seen in CI: the reset had the queue, a writer its case)."""
    wiped = sandbox._wiped_tables()
    order = sandbox.lock_order(wiped)
    place = {name: position for position, name in enumerate(order)}
    assert sorted(order) == sorted(wiped)
    assert place["referrals"] < place["cases"] < place["case_events"] < place["deliveries"]
    written_before = ("referrals", "cases", "patients", "resource_versions", "deliveries")
    assert place["report_pending_cases"] > max(place[name] for name in written_before)
    assert place["report_pending_cases"] < place["report_case_facts"] < place["report_counts"]
