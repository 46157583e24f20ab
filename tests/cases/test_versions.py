"""Versions of every resource we serve (issue 16 part 3): vread and _history, the create's
Location resolves, If-None-Match answers 304, Prefer: return= is honoured, and only FHIR JSON is
served (406 otherwise)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from app.cases.models import ResourceVersion
from app.db import Database
from app.fhir.validation import validate_resource
from tests.conftest import FHIR_JSON, Bridge, referral_resource
from tests.support.cases import OpenCase, open_case

SERVED = (
    "ServiceRequest",
    "Task",
    "Patient",
    "Appointment",
    "Observation",
    "QuestionnaireResponse",
)


async def worked_case(bridge: Bridge) -> tuple[OpenCase, dict[str, str]]:
    """A case with an appointment (booked, then attended), a prescription and a score: every
    type we serve, some at version 2. Returns the case and one id of each type."""
    case = await open_case(bridge)
    for body in (
        {"type": "case.accepted"},
        {
            "type": "appointment.booked",
            "appointment_id": "A1",
            "start": "2030-01-01T10:00:00Z",
            "appointment_type": "telephone",
            "duration_minutes": 30,
        },
        {"type": "appointment.attended", "appointment_id": "A1"},
        {
            "type": "prescription.created",
            "prescription_id": "P1",
            "category": "housing",
            "provider": "Citizens Advice",
            "activity": "Housing advice",
        },
        {"type": "outcome.recorded", "stage": "start", "items": [3, 3, 3, 3, 3, 3, 3]},
    ):
        await case.record(body)
    resources = (await case.detail()).json()["resources"]
    ids = {
        "ServiceRequest": case.referral_id,
        "Task": case.case_id,
        "Patient": resources["patient"].removeprefix("Patient/"),
        "Appointment": resources["appointments"][0].removeprefix("Appointment/"),
        "Observation": resources["observations"][0].removeprefix("Observation/"),
        "QuestionnaireResponse": resources["questionnaire_responses"][0].partition("/")[2],
        "prescription": resources["prescriptions"][0].removeprefix("ServiceRequest/"),
    }
    return case, ids


async def test_every_resource_has_its_versions(bridge: Bridge) -> None:
    case, ids = await worked_case(bridge)
    http, key = bridge.http, case.referrer
    for resource_type, ident in [
        *((t, ids[t]) for t in SERVED),
        ("ServiceRequest", ids["prescription"]),
    ]:
        path = f"/fhir/{resource_type}/{ident}"
        read = await http.get(path, headers=key)
        assert read.status_code == 200, (path, read.text)
        current = read.json()
        version = int(current["meta"]["versionId"])
        assert read.headers["etag"] == f'W/"{version}"'
        assert read.headers["last-modified"].endswith("GMT")

        history = await http.get(f"{path}/_history", headers=key)
        assert history.status_code == 200, history.text
        bundle = history.json()
        assert bundle["type"] == "history" and bundle["total"] == version
        assert [int(e["resource"]["meta"]["versionId"]) for e in bundle["entry"]] == list(
            range(version, 0, -1)
        )
        assert bundle["entry"][0]["resource"] == current
        assert bundle["entry"][-1]["request"] == {"method": "POST", "url": resource_type}
        assert validate_resource(bundle) == []
        for number in range(1, version + 1):
            vread = await http.get(f"{path}/_history/{number}", headers=key)
            assert vread.status_code == 200, vread.text
            assert vread.json()["meta"]["versionId"] == str(number)
            assert vread.json() == bundle["entry"][version - number]["resource"]
            assert validate_resource(vread.json()) == []
        for missing in (version + 1, 0):
            gone = await http.get(f"{path}/_history/{missing}", headers=key)
            assert gone.status_code == 404
        assert (await http.get(f"{path}/_history/x", headers=key)).status_code == 404

        # If-None-Match with the current version: 304 without a body; an older one: the read.
        same = await http.get(path, headers={**key, "If-None-Match": f'W/"{version}"'})
        assert same.status_code == 304 and same.content == b""
        assert same.headers["etag"] == f'W/"{version}"'
        if version > 1:
            older = await http.get(path, headers={**key, "If-None-Match": 'W/"1"'})
            assert older.status_code == 200
    # Versions 1 and 2 of the appointment differ as the appointment did.
    appointment = f"/fhir/Appointment/{ids['Appointment']}/_history"
    statuses = [
        (await http.get(f"{appointment}/{n}", headers=key)).json()["status"] for n in (1, 2)
    ]
    assert statuses == ["booked", "fulfilled"]
    task = f"/fhir/Task/{ids['Task']}/_history"
    first_task = (await http.get(f"{task}/1", headers=key)).json()
    assert (first_task["status"], "output" in first_task) == ("requested", False)


async def test_a_version_is_kept_when_superseded_and_the_current_one_served_from_its_row(
    bridge: Bridge, app: Any
) -> None:
    """A new referral keeps no copy of its first versions (its rows serve them); the event that
    supersedes the Task keeps version 1 as it was served."""
    case = await open_case(bridge)
    database: Database = app.state.database

    async def kept() -> list[tuple[str, int]]:
        async with database.read_sessions() as session:
            rows = await session.execute(
                select(ResourceVersion.resource_type, ResourceVersion.version_id)
                .where(ResourceVersion.referral_id == case.referral_id)
                .order_by(ResourceVersion.resource_type, ResourceVersion.version_id)
            )
            return [(kind, number) for kind, number in rows]

    assert await kept() == []
    first = await case.task()
    assert first["meta"]["versionId"] == "1"
    await case.record({"type": "case.accepted"})
    assert await kept() == [("Task", 1)]
    task = f"/fhir/Task/{case.case_id}/_history"
    assert (await bridge.http.get(f"{task}/1", headers=case.referrer)).json() == first


async def test_versions_are_seen_only_as_the_resource_is(bridge: Bridge) -> None:
    _case, ids = await worked_case(bridge)
    stranger = await bridge.key("clinical-system", "RXA")
    for resource_type in SERVED:
        path = f"/fhir/{resource_type}/{ids[resource_type]}"
        for suffix in ("", "/_history", "/_history/1"):
            response = await bridge.http.get(path + suffix, headers=stranger)
            assert response.status_code == 404, (path + suffix, response.text)


async def test_the_create_location_resolves_and_prefer_is_honoured(bridge: Bridge) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    created = await bridge.refer(key, referral_resource())
    location = created.headers["location"]
    assert location.endswith("/_history/1")
    read = await bridge.http.get(location.removeprefix("http://testserver"), headers=key)
    assert read.status_code == 200 and read.json() == created.json()

    for prefer, body_type in (("minimal", None), ("OperationOutcome", "OperationOutcome")):
        response = await bridge.http.post(
            "/fhir/ServiceRequest",
            content=orjson.dumps(referral_resource()),
            headers={**key, **FHIR_JSON, "Prefer": f"return={prefer}"},
        )
        assert response.status_code == 201, response.text
        assert response.headers["preference-applied"] == f"return={prefer}"
        assert response.headers["location"].endswith("/_history/1")
        if body_type is None:
            assert response.content == b""
        else:
            assert response.json()["resourceType"] == body_type
            assert response.json()["issue"][0]["severity"] == "information"
    full = await bridge.http.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource()),
        headers={**key, **FHIR_JSON, "Prefer": "return=representation"},
    )
    assert full.json()["resourceType"] == "ServiceRequest"
    assert full.headers["preference-applied"] == "return=representation"


async def test_only_fhir_json_is_served(bridge: Bridge) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    created = (await bridge.refer(key, referral_resource())).json()
    path = f"/fhir/ServiceRequest/{created['id']}"
    refused: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        (path, {"_format": "xml"}, {}),
        (path, {"_format": "application/fhir+xml"}, {}),
        (path, {}, {"Accept": "application/fhir+xml"}),
        ("/fhir/metadata", {"_format": "xml"}, {}),
        ("/fhir/ServiceRequest", {"_format": "ttl"}, {}),
        (path, {}, {"Accept": "text/html;q=1, application/fhir+json;q=0"}),
    ]
    for url, params, headers in refused:
        response = await bridge.http.get(url, params=params, headers={**key, **headers})
        assert response.status_code == 406, (url, params, headers, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
        assert "not-acceptable" in {
            c["code"] for c in response.json()["issue"][0]["details"]["coding"]
        }
    served: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"_format": "json"}, {}),
        ({"_format": "application/fhir+json"}, {}),
        ({}, {"Accept": "application/fhir+json"}),
        ({}, {"Accept": "application/json"}),
        ({}, {"Accept": "*/*"}),
        ({}, {"Accept": "application/fhir+xml;q=0.9, application/fhir+json"}),
    ]
    for params, headers in served:
        response = await bridge.http.get(path, params=params, headers={**key, **headers})
        assert response.status_code == 200, (params, headers)
        assert response.headers["content-type"].startswith("application/fhir+json")
