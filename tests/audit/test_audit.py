"""The audit trail (security issue part 3).

Completeness across the whole suite is checked by the `client` fixture (tests/support/audit.py):
every request a test makes to a patient-data route must leave exactly one record. Here: the
table of audited routes matches the routes, what a record says, the AuditEvent search and its
isolation, that a request fails when its record cannot be written, and that records cannot be
changed (no API does it, and the database refuses UPDATE, DELETE and TRUNCATE).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.audit.trail import AUDITED_ROUTES
from app.main import create_app
from app.security.policy import route_rules
from tests.conftest import (
    ADMIN_KEY,
    FHIR_JSON,
    Bridge,
    make_settings,
    referral_resource,
    row_counts,
)
from tests.support.audit import patient_data_routes
from tests.support.cases import open_case

NHS_NUMBER = "9000000009"  # the example referral's patient
OTHER_NHS_NUMBER = "9434765919"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PSEUDONYM_SYSTEM = "https://fhir.spbridge.org/Id/patient-pseudonym"


def _other_patient() -> dict[str, Any]:
    resource = referral_resource()
    resource["subject"] = {
        "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": OTHER_NHS_NUMBER},
        "display": "Other Patient",
    }
    return resource


async def _audit(bridge: Bridge, headers: dict[str, str] | None = None, **params: Any) -> Any:
    response = await bridge.http.get("/fhir/AuditEvent", params=params, headers=headers or ADMIN)
    assert response.status_code == 200, response.text
    bundle = response.json()
    Bundle.model_validate(bundle)
    for entry in bundle.get("entry", []):
        AuditEvent.model_validate(entry["resource"])  # every record is a valid R4 AuditEvent
    return bundle


def _events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle.get("entry", [])]


def _patients(event: dict[str, Any]) -> list[str]:
    return [
        entity["what"]["identifier"]["value"]
        for entity in event.get("entity", [])
        if entity.get("role", {}).get("code") == "1"
    ]


def _request_id(event: dict[str, Any]) -> str | None:
    for entity in event.get("entity", []):
        if entity["type"]["code"] == "XrequestId":
            value: str = entity["what"]["identifier"]["value"]
            return value
    return None


# --- the table ----------------------------------------------------------------------------------


def test_every_patient_data_route_is_audited_and_nothing_else() -> None:
    app = create_app(make_settings("sqlite+aiosqlite:///:memory:"))
    assert set(AUDITED_ROUTES) == patient_data_routes(app)
    # The trail has no route that changes it: only reads, for admins.
    audit_routes = {key for key in route_rules(app) if key[1].startswith("/fhir/AuditEvent")}
    assert audit_routes == {("GET", "/fhir/AuditEvent"), ("GET", "/fhir/AuditEvent/{audit_id}")}


# --- what a record says ------------------------------------------------------------------------


async def test_a_journey_leaves_one_record_per_access(bridge: Bridge) -> None:
    case = await open_case(bridge)
    http = bridge.http
    ids = {"X-Request-ID": "req-audit-1", "X-Correlation-ID": "corr-audit-1"}
    read = await http.get(
        f"/fhir/ServiceRequest/{case.referral_id}", headers={**case.referrer, **ids}
    )
    assert read.status_code == 200
    await case.record({"type": "case.accepted"})

    bundle = await _audit(bridge, **{"patient.identifier": NHS_NUMBER})
    events = _events(bundle)
    # Newest first: event, read, Task search (open_case), create.
    summary = [(e["action"], e["subtype"][0]["code"], e["outcomeDesc"]) for e in events]
    assert summary == [
        ("U", "update", "success (HTTP 201): POST /api/v1/cases/{case_id}/events"),
        ("R", "read", "success (HTTP 200): GET /fhir/ServiceRequest/{referral_id}"),
        ("E", "search-type", "success (HTTP 200): GET /fhir/Task"),
        ("C", "create", "success (HTTP 201): POST /fhir/ServiceRequest"),
    ]
    assert all(e["outcome"] == "0" for e in events)
    update, read_event, _search, create = events
    # The patient by pseudonym, the same one each time, never the NHS number.
    pseudonyms = {p for e in events for p in _patients(e)}
    assert len(pseudonyms) == 1
    (pseudonym,) = pseudonyms
    assert pseudonym.startswith("P") and len(pseudonym) == 10
    assert NHS_NUMBER not in str(bundle["entry"])
    # Who: the client, its role and organisation.
    assert read_event["agent"][0]["who"]["display"] == "clinical-system RW4 (RW4)"
    assert read_event["agent"][0]["type"]["coding"][0]["code"] == "clinical-system"
    assert update["agent"][0]["who"]["display"] == "advisor LR001 (LR001)"
    # What: the resource, the request's ids.
    assert read_event["entity"][0]["what"]["reference"] == f"ServiceRequest/{case.referral_id}"
    assert create["entity"][0]["what"]["reference"] == f"ServiceRequest/{case.referral_id}"
    assert update["entity"][0]["what"]["reference"] == f"Task/{case.case_id}"
    assert _request_id(read_event) == "req-audit-1"
    correlation = [
        entity["what"]["identifier"]["value"]
        for entity in read_event["entity"]
        if entity.get("description") == "X-Correlation-ID"
    ]
    assert correlation == ["corr-audit-1"]
    # A second patient has another pseudonym, and a search by their number finds only theirs.
    other = await bridge.refer(case.referrer, _other_patient())
    assert other.status_code == 201
    theirs = _events(await _audit(bridge, **{"patient.identifier": OTHER_NHS_NUMBER}))
    assert [e["subtype"][0]["code"] for e in theirs] == ["create"]
    assert _patients(theirs[0]) != [pseudonym]
    by_system = await _audit(
        bridge, **{"patient.identifier": f"https://fhir.nhs.uk/Id/nhs-number|{NHS_NUMBER}"}
    )
    # The four accesses, and the first search for this patient's records (itself an access).
    assert by_system["total"] == 5
    assert _events(by_system)[0]["entity"][0]["what"]["identifier"]["value"] == pseudonym


async def test_refusals_and_failures_are_recorded(bridge: Bridge) -> None:
    case = await open_case(bridge)
    http = bridge.http
    # No key: recorded as an unauthenticated caller, refused, no patient reached.
    anonymous = await http.get(f"/fhir/ServiceRequest/{case.referral_id}")
    assert anonymous.status_code == 401
    # Another organisation: 404, and no patient reached either.
    stranger = await bridge.key("clinical-system", "XYZ")
    hidden = await http.get(f"/fhir/ServiceRequest/{case.referral_id}", headers=stranger)
    assert hidden.status_code == 404
    # A refused transition: the case was reached (its patient is named), nothing changed.
    refused = await case.post({"type": "case.completed", "reason": "needs-met"})
    assert refused.status_code == 409

    refusals = _events(await _audit(bridge, outcome="4"))
    described = [(e["agent"][0]["who"]["display"], e["outcomeDesc"]) for e in refusals]
    assert described == [
        ("advisor LR001 (LR001)", "refused (HTTP 409): POST /api/v1/cases/{case_id}/events"),
        ("clinical-system XYZ (XYZ)", "refused (HTTP 404): GET /fhir/ServiceRequest/{referral_id}"),
        ("unauthenticated caller", "refused (HTTP 401): GET /fhir/ServiceRequest/{referral_id}"),
    ]
    assert len(_patients(refusals[0])) == 1
    assert _patients(refusals[1]) == [] and _patients(refusals[2]) == []


async def test_search_filters(bridge: Bridge) -> None:
    case = await open_case(bridge)
    listed = (await bridge.http.get("/api/v1/clients", headers=ADMIN)).json()
    clients = {client["name"]: client["id"] for client in listed}
    await case.record({"type": "case.accepted"})
    referrer = clients["clinical-system RW4"]
    by_agent = _events(await _audit(bridge, agent=referrer))
    assert [e["subtype"][0]["code"] for e in by_agent] == ["search-type", "create"]
    assert _events(await _audit(bridge, agent=f"Device/{referrer}")) == by_agent
    assert [e["action"] for e in _events(await _audit(bridge, action="U"))] == ["U"]
    assert len(_events(await _audit(bridge, action="C,U"))) == 2
    today = dt.datetime.now(dt.UTC).date()
    assert (await _audit(bridge, date=today.isoformat()))["total"] >= 3
    assert (await _audit(bridge, date=f"lt{today.isoformat()}"))["total"] == 0
    assert (await _audit(bridge, date=[f"ge{today.isoformat()}", f"le{today.isoformat()}"]))[
        "total"
    ] >= 3
    tomorrow = today + dt.timedelta(days=1)
    assert (await _audit(bridge, date=f"ge{tomorrow.isoformat()}"))["total"] == 0
    through_referral = await _audit(bridge, entity=f"ServiceRequest/{case.referral_id}")
    assert through_referral["total"] >= 3
    task = await _audit(bridge, entity=f"Task/{case.case_id}")
    assert [e["action"] for e in _events(task)] == ["U"]
    # Paging: newest first, a next link that carries on where the page stopped.
    first = await _audit(bridge, _count=1)
    next_links = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert next_links
    second = await bridge.http.get(next_links[0], headers=ADMIN)  # absolute, on this server
    assert second.status_code == 200
    assert second.json()["entry"][0]["resource"]["id"] != first["entry"][0]["resource"]["id"]
    assert (
        second.json()["entry"][0]["resource"]["recorded"]
        <= (first["entry"][0]["resource"]["recorded"])
    )


@pytest.mark.parametrize(
    ("params", "expression"),
    [
        ({"action": "X"}, "action"),
        ({"outcome": "2"}, "outcome"),
        ({"date": "yesterday"}, "date"),
        ({"patient.identifier": "http://example.org|123"}, "patient.identifier"),
        ({"entity": "nothing"}, "entity"),
        ({"name": "Smith"}, None),
    ],
)
async def test_bad_searches_are_refused(
    bridge: Bridge, params: dict[str, str], expression: str | None
) -> None:
    response = await bridge.http.get("/fhir/AuditEvent", params=params, headers=ADMIN)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    if expression:
        assert outcome["issue"][0]["expression"] == [expression]


async def test_only_admins_read_the_trail_and_only_their_organisations(bridge: Bridge) -> None:
    await open_case(bridge)
    for role, organisation in [("clinical-system", "RW4"), ("advisor", "LR001")]:
        headers = await bridge.key(role, organisation)
        assert (await bridge.http.get("/fhir/AuditEvent", headers=headers)).status_code == 403
    # The service's admin sees the access to its referral's patient; another admin sees none.
    service_admin = await bridge.key("admin", "LR001")
    seen = await _audit(bridge, service_admin, **{"patient.identifier": NHS_NUMBER})
    assert seen["total"] == 2  # the referral's creation and the Task search
    stranger_admin = await bridge.key("admin", "XYZ")
    unseen = await _audit(bridge, stranger_admin, **{"patient.identifier": NHS_NUMBER})
    assert unseen["total"] == 0
    one = _events(seen)[0]["id"]
    mine = await bridge.http.get(f"/fhir/AuditEvent/{one}", headers=service_admin)
    assert mine.status_code == 200 and mine.json()["id"] == one
    AuditEvent.model_validate(mine.json())
    theirs = await bridge.http.get(f"/fhir/AuditEvent/{one}", headers=stranger_admin)
    assert theirs.status_code == 404
    # Reading the trail is itself recorded (by pseudonym of the number searched for).
    searches = _events(await _audit(bridge, entity="AuditEvent/" + one))
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in searches] == [
        ("read", "4"),
        ("read", "0"),
    ]


# --- no access without its record --------------------------------------------------------------


@pytest.mark.audit_unchecked  # it breaks the trail on purpose
async def test_a_request_fails_when_its_record_cannot_be_written(
    bridge: Bridge, database_url: str
) -> None:
    await bridge.service()
    referrer = await bridge.key()
    case = await open_case(bridge, register=False)
    before = await row_counts(database_url)
    from app.db import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
        try:
            made = await bridge.refer(referrer, referral_resource())
            assert made.status_code == 503, made.text
            assert made.headers["content-type"].startswith("application/fhir+json")
            assert made.json()["issue"][0]["code"] == "transient"
            assert await row_counts(database_url) == before  # no referral without its record
            read = await bridge.http.get(
                f"/fhir/ServiceRequest/{case.referral_id}", headers=case.referrer
            )
            assert read.status_code == 503
            assert NHS_NUMBER not in read.text and "Patient" not in read.text
            detail = await case.detail()
            assert detail.status_code == 503
            assert detail.headers["content-type"].startswith("application/problem+json")
            event = await case.post({"type": "case.accepted"})
            assert event.status_code == 503
            assert (await case.detail()).status_code == 503
        finally:
            async with engine.begin() as connection:
                await connection.execute(
                    text("ALTER TABLE audit_events_away RENAME TO audit_events")
                )
    finally:
        await engine.dispose()
    # The event was not applied: the case is still received.
    assert (await case.detail()).json()["state"] == "received"


# --- immutability ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET outcome = '0'",
        "DELETE FROM audit_events",
        "UPDATE audit_event_patients SET patient = 'PXXXXXXXXX'",
        "DELETE FROM audit_event_patients",
    ],
)
async def test_the_database_refuses_to_change_a_record(
    bridge: Bridge, database_url: str, statement: str
) -> None:
    await open_case(bridge)
    from app.db import create_engine

    engine = create_engine(database_url)
    try:
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as connection:
                await connection.execute(text(statement))
        async with engine.connect() as connection:
            count = (await connection.execute(text("SELECT count(*) FROM audit_events"))).scalar()
        assert count == 2
    finally:
        await engine.dispose()


@pytest.mark.postgresql_only
async def test_postgresql_refuses_truncate(bridge: Bridge, database_url: str) -> None:
    await open_case(bridge)
    from app.db import create_engine

    engine = create_engine(database_url)
    try:
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as connection:
                await connection.execute(text("TRUNCATE audit_events CASCADE"))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "POST"])
async def test_no_api_changes_a_record(bridge: Bridge, method: str) -> None:
    await open_case(bridge)
    record = _events(await _audit(bridge))[0]
    response = await bridge.http.request(
        method, f"/fhir/AuditEvent/{record['id']}", json=record, headers={**ADMIN, **FHIR_JSON}
    )
    assert response.status_code == 405
    again = await bridge.http.get(f"/fhir/AuditEvent/{record['id']}", headers=ADMIN)
    assert again.json() == record
