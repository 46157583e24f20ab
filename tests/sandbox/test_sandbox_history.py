"""The sandbox as a newcomer finds it: a second service whose cases advisors work through the API,
holding cases received days or weeks ago whose events happened along their journeys on the
simulator's clock at real speed. So the worklist has realistic waiting times and flags from the
first minute, journey pages show weeks of history, and an advisor can record an event. On both
databases, through the API."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx
import pytest

from adapters import simulator
from app import sandbox
from app.db import Database, transaction
from app.sandbox import history
from tests.sandbox.test_sandbox import ADVISOR, CLINICAL, FAST, KEYS, refer

REPORTING = {"Authorization": f"Bearer {KEYS['reporting']}"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # No dispatcher or reconciler: these tests look at what seeding left, nothing moves.
    return {**FAST, "run_dispatcher": False}


@pytest.fixture(autouse=True)
def empty_books() -> None:
    simulator.forget_all()


@pytest.fixture
async def seeded(app: Any) -> Any:
    database: Database = app.state.database
    async with transaction(database.write_sessions) as session:
        await sandbox.seed_session(session, app.state.settings)
    return app


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def referral_of(client: httpx.AsyncClient, key: str) -> str:
    response = await client.get(
        "/fhir/ServiceRequest",
        params={"identifier": f"{history.SEEDED_IDENTIFIER_SYSTEM}|SBX-SEED-{key}"},
        headers=CLINICAL,
    )
    assert response.status_code == 200, response.text
    (entry,) = response.json()["entry"]
    referral_id: str = entry["resource"]["id"]
    return referral_id


async def worklist(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/worklist", params=params, headers=ADVISOR)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_the_simulated_clock_maps_journey_days_onto_instants() -> None:
    origin = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
    real = simulator.SimulatedClock(origin, simulator.REAL_TIME)
    assert real.at(0) == origin
    assert real.at(6.5) == origin + dt.timedelta(days=6, hours=12)
    fast = simulator.SimulatedClock(origin, 2.0)  # the sandbox's default: 2 days a second
    assert fast.at(42) == origin + dt.timedelta(seconds=21)


async def test_the_worklist_shows_open_cases_waiting_with_flags_from_the_start(
    seeded: Any, client: httpx.AsyncClient
) -> None:
    now = dt.datetime.now(dt.UTC)
    items = await worklist(client)
    by_referral = {item["referral_id"]: item for item in items}
    open_cases = [c for c in history.SEEDED_CASES if c.key not in ("completed", "discharged")]
    assert len(items) == len(open_cases)
    assert {item["service"] for item in items} == {history.COMMUNITY_HUB}
    for case in open_cases:
        item = by_referral[await referral_of(client, case.key)]
        # Waiting since the referral arrived, days ago.
        assert item["waiting_days"] == int(case.received_days_ago), case.key
        assert utc(item["received_at"]) < now - dt.timedelta(days=case.received_days_ago - 0.01)

    overdue = by_referral[await referral_of(client, "first-contact-overdue")]
    assert overdue["flags"] == {"first_contact_overdue": True, "support_window_exceeded": False}
    assert overdue["state"] == "in_progress" and overdue["first_contact_at"] is None
    assert overdue["advisor"] == "Priya Shah" and overdue["team"] == history.TEAM

    window = by_referral[await referral_of(client, "support-window")]
    assert window["flags"] == {"first_contact_overdue": False, "support_window_exceeded": True}

    next_week = by_referral[await referral_of(client, "appointment-next-week")]
    start = utc(next_week["next_appointment"]["start"])
    assert now + dt.timedelta(days=5) < start < now + dt.timedelta(days=8)
    assert next_week["days_to_first_contact"] == 2

    on_hold = by_referral[await referral_of(client, "on-hold")]
    assert on_hold["state"] == "on_hold"
    new = by_referral[await referral_of(client, "new-today")]
    assert new["state"] == "received" and new["waiting_days"] == 0
    flagged = await worklist(client, first_contact_overdue="true")
    assert [item["referral_id"] for item in flagged] == [overdue["referral_id"]]


async def test_journey_times_follow_the_journey_not_the_moment_of_seeding(
    seeded: Any, client: httpx.AsyncClient
) -> None:
    now = dt.datetime.now(dt.UTC)
    referral_id = await referral_of(client, "completed")
    bundle = await client.get(f"/fhir/ServiceRequest/{referral_id}/$journey", headers=CLINICAL)
    task = next(
        e["resource"] for e in bundle.json()["entry"] if e["resource"]["resourceType"] == "Task"
    )
    case = (await client.get(f"/api/v1/cases/{task['id']}", headers=ADVISOR)).json()
    assert case["state"] == "completed"
    times = [utc(event["occurred_at"]) for event in case["events"]]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(moment < now for moment in times)
    # Ten weeks ago to four weeks ago: six weeks and more of support.
    assert times[-1] - times[0] > dt.timedelta(weeks=6)
    assert now - times[0] > dt.timedelta(weeks=9)
    # Each event was recorded when it happened, as an advisor would have.
    assert all(e["recorded_at"] == e["occurred_at"] for e in case["events"][1:])

    appointments = await client.get(
        "/fhir/Appointment", params={"based-on": f"ServiceRequest/{referral_id}"}, headers=CLINICAL
    )
    resources = [e["resource"] for e in appointments.json()["entry"]]
    assert [a["status"] for a in resources] == ["noshow", "fulfilled", "fulfilled"]
    for appointment in resources:
        start, end = utc(appointment["start"]), utc(appointment["end"])
        assert end - start == dt.timedelta(minutes=appointment["minutesDuration"])
    starts = [utc(a["start"]) for a in resources]
    assert starts[-1] - starts[0] > dt.timedelta(weeks=3)


async def test_the_journey_page_shows_six_weeks(seeded: Any, client: httpx.AsyncClient) -> None:
    referral_id = await referral_of(client, "completed")
    link = await client.get(f"/api/v1/referrals/{referral_id}/journey-link", headers=CLINICAL)
    assert link.status_code == 200, link.text
    page = await client.get(link.json()["url"])
    assert page.status_code == 200
    stamps = [utc(s) for s in re.findall(r'<li><time datetime="([^"]+)"', page.text)]
    assert len(stamps) == 1 + len(history.SEEDED_CASES[0].steps)
    assert stamps[-1] - stamps[0] > dt.timedelta(weeks=6)
    assert "SANDBOX, Sam" in page.text
    assert "Completed — needs met" in page.text
    assert "Active" not in page.text  # every prescription was closed by the end
    assert "From 16.88 to 20.73" in page.text  # SWEMWBS raw 17 at the start, 23 at the end


async def test_an_advisor_records_an_event_on_the_community_hub_only(
    seeded: Any, client: httpx.AsyncClient
) -> None:
    overdue = await referral_of(client, "first-contact-overdue")
    (item,) = [i for i in await worklist(client) if i["referral_id"] == overdue]
    recorded = await client.post(
        f"/api/v1/cases/{item['case_id']}/events",
        json={"type": "contact.attempted", "outcome": "reached", "method": "telephone"},
        headers=ADVISOR,
    )
    assert recorded.status_code == 201, recorded.text
    after = next(i for i in await worklist(client) if i["referral_id"] == overdue)
    assert after["flags"]["first_contact_overdue"] is False
    assert after["days_to_first_contact"] == 9

    # The simulated platform's cases are changed there, not through the API.
    referral_id = await refer(client)
    task = await client.get(f"/fhir/Task?focus=ServiceRequest/{referral_id}", headers=CLINICAL)
    case_id = task.json()["entry"][0]["resource"]["id"]
    refused = await client.post(
        f"/api/v1/cases/{case_id}/events", json={"type": "case.accepted"}, headers=ADVISOR
    )
    assert refused.status_code == 409, refused.text


async def test_seeding_again_adds_nothing_and_reports_count_the_history(
    seeded: Any, client: httpx.AsyncClient
) -> None:
    database: Database = seeded.state.database
    async with transaction(database.write_sessions) as session:
        await sandbox.seed_session(session, seeded.state.settings)
        assert await history.seed_cases(session, seeded.state.settings, "SBXRIO") == 0
    listed = await client.get("/fhir/ServiceRequest", params={"_count": 50}, headers=CLINICAL)
    assert listed.json()["total"] == len(history.SEEDED_CASES)
    services = await client.get("/api/v1/services", headers=ADVISOR)
    assert [s["id"] for s in services.json()] == [history.COMMUNITY_HUB, sandbox.SANDBOX_SERVICE]
    report = await client.get(
        "/api/v1/reports/activity",
        params={"service": history.COMMUNITY_HUB, "format": "csv"},
        headers=REPORTING,
    )
    assert report.status_code == 200, report.text
    assert len(report.text.splitlines()) > 20
