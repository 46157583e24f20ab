"""HealthcareService and Organization on /fhir: what the Task's owner, an Appointment's
participant, an Observation's performer and a social prescription's requester point at, so
every reference the bridge serves resolves on the bridge. Both databases."""

from __future__ import annotations

from typing import Any

from app.fhir.codes import ODS_ORGANISATION_SYSTEM, SERVICE_ID_SYSTEM
from app.fhir.validation import check_reference_targets, validate_resource
from tests.conftest import ADMIN_KEY, Bridge
from tests.support.cases import open_case

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def resolve(bridge: Bridge, reference: dict[str, Any], headers: dict[str, str]) -> Any:
    response = await bridge.http.get(f"/fhir/{reference['reference']}", headers=headers)
    assert response.status_code == 200, (reference, response.text)
    resource = response.json()
    assert resource["resourceType"] == reference["type"]
    assert validate_resource(resource) == [] and check_reference_targets(resource) == []
    return resource


async def test_every_reference_of_a_journey_resolves_here(bridge: Bridge) -> None:
    case = await open_case(bridge)
    for event in (
        {"type": "case.accepted"},
        {"type": "appointment.booked", "appointment_id": "AP-1", "start": "2030-01-02T10:00:00Z",
         "appointment_type": "face-to-face", "duration_minutes": 30},
        {"type": "prescription.created", "prescription_id": "RX-1", "category": "benefits-money",
         "provider": "Citizens Advice", "activity": "Benefits check", "status": "active"},
        {"type": "outcome.recorded", "stage": "start", "items": [3, 2, 3, 3, 3, 2, 3]},
    ):  # fmt: skip
        await case.record(event)
    task = await case.task()
    served = [task]
    for output in task["output"]:
        served.append(await resolve(bridge, output["valueReference"], case.referrer))

    checked = 0
    for resource in served:
        for reference in _references(resource):
            if reference.get("reference", "").split("/")[0] in ("Patient",):
                continue  # served by issue 16's reads, tested there
            if "reference" not in reference:
                continue
            target = await resolve(bridge, reference, case.referrer)
            checked += 1
            if target["resourceType"] == "HealthcareService":
                assert target["identifier"] == [
                    {"system": SERVICE_ID_SYSTEM, "value": target["id"]}
                ]
                organisation = await resolve(bridge, target["providedBy"], case.referrer)
                assert organisation["identifier"][0]["system"] == ODS_ORGANISATION_SYSTEM
    assert checked >= 6


async def test_an_organisation_the_bridge_does_not_know_is_not_found(bridge: Bridge) -> None:
    case = await open_case(bridge)
    unknown = await bridge.http.get("/fhir/Organization/ZZZ99", headers=case.referrer)
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"
    bad = await bridge.http.get("/fhir/Organization/not-ods", headers=case.referrer)
    assert bad.status_code in (400, 422)
    missing = await bridge.http.get("/fhir/HealthcareService/no-such", headers=case.referrer)
    assert missing.status_code == 404


def _references(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, list):
        for item in node:
            found += _references(item)
    elif isinstance(node, dict):
        if "type" in node and ("reference" in node or "identifier" in node):
            found.append(node)
        for key, value in node.items():
            if key != "contained":
                found += _references(value)
    return found
