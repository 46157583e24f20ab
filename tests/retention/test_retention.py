"""Retention (issue 5, part 7): `spbridge purge` removes the patient data of cases closed longer
ago than the retention period, keeps what reports count, and records each run. Both databases.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select

from app.cases.models import Appointment, Case, CaseEvent, Prescription, Referral, WellbeingScore
from app.db import Base, Database, utcnow
from app.outbox.models import Delivery, DeliveryAttempt
from app.retention.models import PurgeRun
from app.retention.service import PSEUDONYM_SYSTEM, pseudonym, pseudonym_key, purge
from tests.conftest import ADMIN_KEY, FHIR_JSON, Bridge, referral_resource
from tests.support.cases import OpenCase, open_case
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver

SPBRIDGE = str(Path(sys.executable).parent / "spbridge")
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
RETENTION_DAYS = 2922
EXAMPLE_PATIENT = "9000000009"
NEWER_PATIENT = "9000000017"
OPEN_PATIENT = "9000000025"
NOW = utcnow()
# Nine years on, the cases closed now are past the default retention of eight.
LATER = NOW + dt.timedelta(days=9 * 365)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


def patient(nhs_number: str) -> dict[str, Any]:
    """Overrides for a referral about another patient."""
    resource = referral_resource()
    contained = copy.deepcopy(resource["contained"])
    contained[0]["identifier"][0]["value"] = nhs_number
    subject = {**resource["subject"], "identifier": {**resource["subject"]["identifier"]}}
    subject["identifier"]["value"] = nhs_number
    return {"contained": contained, "subject": subject}


async def worked(case: OpenCase) -> None:
    for body in (
        {"type": "case.accepted", "team": "Halton hub", "advisor": "A. Advisor"},
        {"type": "contact.attempted", "outcome": "reached", "method": "telephone"},
        {"type": "appointment.booked", "appointment_id": "AP-1",
         "start": (NOW + dt.timedelta(days=2)).isoformat(), "appointment_type": "telephone",
         "duration_minutes": 30},
        {"type": "appointment.attended", "appointment_id": "AP-1", "duration_minutes": 40},
        {"type": "prescription.created", "prescription_id": "RX-1", "category": "housing",
         "provider": "Halton Housing", "activity": "Tenancy support for Sam at Flat 2"},
        {"type": "prescription.updated", "prescription_id": "RX-1", "status": "active",
         "activity": "Tenancy support, weekly"},
        {"type": "outcome.recorded", "stage": "start", "items": [3, 2, 3, 3, 3, 2, 3]},
        {"type": "demographics.recorded", "age_band": "35-44", "ethnicity": "White British"},
    ):  # fmt: skip
        await case.record(body)


def columns(row: Any) -> dict[str, Any]:
    return {attr.key: getattr(row, attr.key) for attr in inspect(row).mapper.column_attrs}


async def snapshot(app: Any, model: type[Base]) -> dict[Any, dict[str, Any]]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        rows = await session.scalars(select(model))
        return {row.id: columns(row) for row in rows}


PURGED_BY = "spbridge purge (tester@testhost)"


async def run_purge(app: Any, **kwargs: Any) -> Any:
    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        return await purge(
            session,
            now=kwargs.pop("now", LATER),
            retention_days=kwargs.pop("retention_days", RETENTION_DAYS),
            run_by=PURGED_BY,
            **kwargs,
        )


async def purge_runs(app: Any) -> list[PurgeRun]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return list(await session.scalars(select(PurgeRun).order_by(PurgeRun.id)))


TABLES = (Referral, Case, CaseEvent, Appointment, Prescription, WellbeingScore, Delivery)


async def test_purge_removes_patient_data_past_retention_and_keeps_what_reports_count(
    app: Any, bridge: Bridge
) -> None:
    worklist = Receiver()
    await worklist.start()
    await bridge.service()
    subscription = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": worklist.url + "/hooks"}, headers=ADMIN
    )
    assert subscription.status_code == 201, subscription.text

    # Closed now (so nine years before the purge): a completed case and, for the same patient,
    # a referral the referrer cancelled.
    completed = await open_case(bridge, register=False)
    await worked(completed)
    await completed.record({"type": "case.completed", "reason": "needs-met"})
    cancelled = await open_case(bridge, register=False)
    await bridge.cancel(cancelled.referral_id)
    # Open, however old: kept.
    still_open = await open_case(bridge, register=False, **patient(OPEN_PATIENT))
    await still_open.record({"type": "case.accepted"})
    # Closed within the retention period (ten days before the purge): kept.
    newer = await open_case(bridge, register=False, **patient(NEWER_PATIENT))
    app.state.clock = lambda: LATER - dt.timedelta(days=10)
    await newer.record({"type": "case.accepted"})
    await newer.record({"type": "case.discharged", "reason": "no-longer-required"})
    del app.state.clock

    try:
        await dispatcher_for(app).drain()
    finally:
        await worklist.stop()
    before = {model.__tablename__: await snapshot(app, model) for model in TABLES}
    gone_ids = {completed.referral_id, cancelled.referral_id}
    kept_ids = {still_open.referral_id, newer.referral_id}

    # A dry run counts and changes nothing.
    dry = await run_purge(app, dry_run=True)
    assert (dry.dry_run, dry.referrals, dry.run_id) == (True, 2, None)
    assert dry.cutoff == LATER - dt.timedelta(days=RETENTION_DAYS)
    assert {model.__tablename__: await snapshot(app, model) for model in TABLES} == before
    assert await purge_runs(app) == []

    # --before may only bring the cutoff earlier.
    with pytest.raises(ValueError, match="within the retention period"):
        await run_purge(app, before=LATER - dt.timedelta(days=30))
    assert (await run_purge(app, before=NOW - dt.timedelta(days=1), dry_run=True)).referrals == 0

    result = await run_purge(app)
    assert (result.dry_run, result.referrals) == (False, 2)
    after = {model.__tablename__: await snapshot(app, model) for model in TABLES}

    # The patient on the old referrals is gone; the NHS number is one pseudonym per person.
    referrals = after["referrals"]
    database: Database = app.state.database
    async with database.read_sessions() as session:
        key = await pseudonym_key(session)
    expected = pseudonym(key, EXAMPLE_PATIENT)
    for referral_id in gone_ids:
        row = referrals[referral_id]
        assert row["purged_at"] == LATER
        assert row["nhs_number"] == expected
        assert len(expected) == 10 and not expected.isdigit()
        for name in ("patient_name", "birth_date", "phone", "postcode", "notes"):
            assert row[name] is None, name
        assert row["resource"]["subject"] == {
            "identifier": {"system": PSEUDONYM_SYSTEM, "value": expected}
        }
        for element in ("contained", "note", "supportingInfo", "reasonCode", "identifier"):
            assert element not in row["resource"]
        assert all("text" not in reason for reason in row["reasons"])
        assert [r["domain"] for r in row["reasons"]] == [
            r["domain"] for r in before["referrals"][referral_id]["reasons"]
        ]
        text = str(row)
        for value in ("Example", "Sam", "1990-01-01", "07700 900000", "WA7 1AA", "Loneliness",
                      "afternoon", EXAMPLE_PATIENT):  # fmt: skip
            assert value not in text, value
        # What reports use stays.
        for name in ("organisation", "referring_team", "priority", "gender", "created_at",
                     "service_id", "status", "requester_display"):  # fmt: skip
            assert row[name] == before["referrals"][referral_id][name], name
    assert referrals[newer.referral_id]["nhs_number"] == NEWER_PATIENT
    assert pseudonym(key, NEWER_PATIENT) != expected

    # The purge is in the audit trail: one record (action D) by whoever ran it, naming each
    # purged referral and its patient by pseudonym, found by the patient's NHS number.
    audit = await bridge.http.get(
        "/fhir/AuditEvent",
        params={"action": "D", "patient.identifier": EXAMPLE_PATIENT},
        headers=ADMIN,
    )
    assert audit.status_code == 200, audit.text
    (record,) = [entry["resource"] for entry in audit.json()["entry"]]
    assert record["agent"][0]["who"]["display"] == PURGED_BY
    assert record["subtype"][0]["code"] == "delete"
    purged_patients = [e for e in record["entity"] if e.get("role", {}).get("code") == "1"]
    assert {e["what"]["identifier"]["value"] for e in purged_patients} == {expected}
    assert {e["detail"][0]["valueString"] for e in purged_patients} == gone_ids

    # Untouched: the open case and the case closed within retention, with everything of theirs.
    for table, rows in after.items():
        for ident, row in rows.items():
            referral_id = row.get("referral_id") if table != "referrals" else ident
            case_referral = {c["id"]: c["referral_id"] for c in after["cases"].values()}
            referral_id = referral_id or case_referral.get(row.get("case_id"))
            if referral_id in kept_ids:
                assert row == before[table][ident], (table, ident)

    # Events: the same events, with their types, times and codes; only free text went.
    assert after["case_events"].keys() == before["case_events"].keys()
    for ident, event in after["case_events"].items():
        old = before["case_events"][ident]
        assert {k: v for k, v in event.items() if k != "data"} == {
            k: v for k, v in old.items() if k != "data"
        }
        assert event["data"] == {k: v for k, v in old["data"].items() if k != "activity"}
    by_type: dict[str, int] = {}
    for event in after["case_events"].values():
        by_type[event["type"]] = by_type.get(event["type"], 0) + 1
    assert by_type["prescription.created"] == 1 and by_type["outcome.recorded"] == 1
    demographics = [
        e for e in after["case_events"].values() if e["type"] == "demographics.recorded"
    ]
    assert demographics[0]["data"] == {"age_band": "35-44", "ethnicity": "White British"}
    # Records keep their codes, minutes and scores; the prescription's free text went.
    assert after["appointments"] == before["appointments"]
    assert after["wellbeing_scores"] == before["wellbeing_scores"]
    (prescription,) = after["prescriptions"].values()
    assert prescription["activity"] == ""
    assert (prescription["category"], prescription["provider"], prescription["status"]) == (
        "housing",
        "Halton Housing",
        "active",
    )
    cases = {c["referral_id"]: c for c in after["cases"].values()}
    assert cases[completed.referral_id]["summary"] is None
    assert cases[completed.referral_id]["state"] == "completed"
    assert (
        cases[completed.referral_id]["closed_at"] == before["cases"][completed.case_id]["closed_at"]
    )
    assert cases[newer.referral_id]["summary"] is not None

    # Deliveries keep their history but not the webhook bodies or the receivers' answers.
    for ident, row in after["deliveries"].items():
        if row["referral_id"] in gone_ids:
            assert row["payload"] is None
            assert row["state"] == "delivered"
        else:
            assert row == before["deliveries"][ident]
    async with database.read_sessions() as session:
        excerpts = dict(
            (
                await session.execute(
                    select(Delivery.referral_id, func.count(DeliveryAttempt.response_excerpt))
                    .join(DeliveryAttempt, DeliveryAttempt.delivery_id == Delivery.id)
                    .group_by(Delivery.referral_id)
                )
            ).all()
        )
    assert all(excerpts[r] == 0 for r in gone_ids)
    assert all(excerpts[r] > 0 for r in kept_ids)

    # The run is recorded.
    (run,) = await purge_runs(app)
    assert (run.id, run.referrals_purged, run.retention_days, run.run_by) == (
        result.run_id,
        2,
        RETENTION_DAYS,
        PURGED_BY,
    )
    assert run.cutoff == LATER - dt.timedelta(days=RETENTION_DAYS)
    assert run.started_at == LATER <= run.finished_at

    # A second run finds nothing more (a pseudonym is never pseudonymised again), and says so.
    again = await run_purge(app)
    assert again.referrals == 0
    assert (await snapshot(app, Referral)) == referrals
    assert [r.referrals_purged for r in await purge_runs(app)] == [2, 0]


async def test_a_purged_referral_answers_410(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})
    await case.record(
        {"type": "appointment.booked", "appointment_id": "A", "start": "2030-01-01T10:00:00Z",
         "appointment_type": "telephone", "duration_minutes": 20}
    )  # fmt: skip
    await case.record({"type": "case.discharged", "reason": "unable-to-contact"})
    # A journey link handed out just before the purge opens nothing afterwards.
    early_link = await bridge.http.get(
        f"/api/v1/referrals/{case.referral_id}/journey-link", headers=case.referrer
    )
    assert early_link.status_code == 200, early_link.text
    patient_id = (await case.detail()).json()["resources"]["patient"]
    kept = await open_case(bridge, register=False, **patient(NEWER_PATIENT))
    resource = referral_resource()
    sent = await bridge.refer(case.referrer, resource)
    assert sent.status_code == 201
    repeat_of = sent.json()
    await bridge.cancel(repeat_of["id"])
    assert (await run_purge(app)).referrals == 2

    referrer = case.referrer
    paths = [
        f"/fhir/ServiceRequest/{case.referral_id}",
        f"/fhir/ServiceRequest/{case.referral_id}/$journey",
        f"/fhir/Task/{case.case_id}",
        # The versions kept of its resources, and its Patient, are gone with it.
        f"/fhir/ServiceRequest/{case.referral_id}/_history",
        f"/fhir/ServiceRequest/{case.referral_id}/_history/1",
        f"/fhir/Task/{case.case_id}/_history/1",
        f"/fhir/{patient_id}",
        f"/fhir/{patient_id}/_history",
    ]
    for path in paths:
        response = await bridge.http.get(path, headers=referrer)
        assert response.status_code == 410, (path, response.text)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "deleted"
        assert EXAMPLE_PATIENT not in response.text
    link = await bridge.http.get(
        f"/api/v1/referrals/{case.referral_id}/journey-link", headers=referrer
    )
    assert link.status_code == 410, link.text
    assert link.json()["status"] == 410
    page = await bridge.http.get(early_link.json()["url"].removeprefix("http://testserver"))
    assert page.status_code == 404
    assert "holds no journey" in page.text and "Halton" not in page.text
    # A repeat of a purged referral, or a cancellation of one, is gone too.
    again = await bridge.refer(referrer, resource)
    assert again.status_code == 410, again.text
    held = {**repeat_of, "status": "revoked"}
    put = await bridge.http.put(
        f"/fhir/ServiceRequest/{repeat_of['id']}", json=held, headers={**referrer, **FHIR_JSON}
    )
    assert put.status_code == 410
    # Searches no longer find it, nor the resources of its case; the kept one still reads.
    for path, params in (
        ("/fhir/ServiceRequest", {"_id": case.referral_id}),
        ("/fhir/ServiceRequest", {"patient.identifier": EXAMPLE_PATIENT}),
        ("/fhir/Task", {"focus": f"ServiceRequest/{case.referral_id}"}),
        ("/fhir/Appointment", {"based-on": f"ServiceRequest/{case.referral_id}"}),
    ):
        found = await bridge.http.get(path, params=params, headers=ADMIN)
        assert found.status_code == 200, found.text
        assert found.json().get("entry", []) == [], path
    for path in (f"/fhir/Task/{kept.case_id}", f"/fhir/ServiceRequest/{kept.referral_id}"):
        for headers in (referrer, ADMIN):
            assert (await bridge.http.get(path, headers=headers)).status_code == 200, path
    # Another organisation still gets 404, not 410: it may not even learn the referral existed.
    stranger = await bridge.key("clinical-system", "ZZ999")
    response = await bridge.http.get(f"/fhir/ServiceRequest/{case.referral_id}", headers=stranger)
    assert response.status_code == 404


async def run_cli(database_url: str, *args: str, **env: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        SPBRIDGE,
        *args,
        # Wide enough that typer does not wrap its error box.
        env={**os.environ, "SPBRIDGE_DATABASE_URL": database_url, "COLUMNS": "300", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return await process.wait(), output.decode()


async def test_the_purge_command(app: Any, bridge: Bridge, database_url: str) -> None:
    closed = await open_case(bridge)
    await closed.record({"type": "case.discharged", "reason": "declined"})
    still_open = await open_case(bridge, register=False)
    before = await snapshot(app, Referral)
    # A retention of 0 days: every closed case is past it.
    env = {"SPBRIDGE_RETENTION_DAYS": "0"}

    code, output = await run_cli(database_url, "purge", "--dry-run", **env)
    assert code == 0, output
    assert "dry run: 1 referrals would be purged" in output
    assert "nothing changed" in output
    assert await snapshot(app, Referral) == before
    assert await purge_runs(app) == []

    code, output = await run_cli(database_url, "purge", "--before", "2000-01-01", **env)
    assert code == 0, output
    assert "purged 0 referrals (cases closed before 2000-01-01T00:00:00+00:00" in output
    code, output = await run_cli(database_url, "purge", "--before", "2999-01-01", **env)
    assert code == 2
    assert "within the retention period" in output
    code, output = await run_cli(database_url, "purge", "--before", "yesterday", **env)
    assert code == 2

    code, output = await run_cli(database_url, "purge", **env)
    assert code == 0, output
    assert "purged 1 referrals" in output
    after = await snapshot(app, Referral)
    assert after[closed.referral_id]["purged_at"] is not None
    assert after[closed.referral_id]["patient_name"] is None
    assert after[still_open.referral_id] == before[still_open.referral_id]
    runs = await purge_runs(app)
    assert [r.referrals_purged for r in runs] == [0, 1]
    assert runs[-1].run_by.startswith("spbridge purge (")
    assert runs[-1].retention_days == 0
    assert f"purge run {runs[-1].id}" in output
