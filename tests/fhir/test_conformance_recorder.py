"""tests/support/conformance.py: what the suite checks around every test (no database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import conformance

ROOT = Path(__file__).resolve().parents[2]


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "fhir" / "examples" / name).read_text())
    return data


def test_it_finds_the_resources_in_a_body() -> None:
    task = example("Task-referral-in-progress.json")
    webhook = {"type": "case.accepted", "data": {"case_id": "c1"}}
    wrapped = {"items": [task, {"nested": {"resource": task}}], "resourceType": "NotFhir"}

    assert list(conformance.fhir_resources(task)) == [task]
    assert list(conformance.fhir_resources(webhook)) == []
    assert list(conformance.fhir_resources(wrapped)) == [task, task]


def test_a_recorder_names_the_resource_type_and_element_of_each_problem() -> None:
    recorder = conformance.ConformanceRecorder("test_x")
    journey = example("Bundle-journey.json")
    service = {"reference": "HealthcareService/s1", "type": "HealthcareService"}
    for entry in journey["entry"]:
        # Where R4 allows no HealthcareService (what the bridge sent before issue 15).
        if entry["resource"]["resourceType"] == "Observation":
            entry["resource"]["performer"] = [service]
        if entry["resource"]["resourceType"] == "ServiceRequest" and "basedOn" in entry["resource"]:
            entry["resource"]["requester"] = service  # a social prescription
    task = example("Task-referral-in-progress.json")
    task["note"] = []
    recorder.saw("served GET /fhir/Task/t1", task)
    recorder.sources.append(lambda: [("pushed PUT Bundle", journey)])

    checked, found = recorder.findings()

    assert checked == 2
    assert sorted((f.source, f.resource_type, f.element) for f in found) == [
        ("pushed PUT Bundle", "Observation", "Observation.performer"),
        ("pushed PUT Bundle", "ServiceRequest", "ServiceRequest.requester"),
        ("served GET /fhir/Task/t1", "Task", "Task.note"),
    ]
    note = next(f for f in found if f.element == "Task.note")
    assert note.kind == "is an empty array: leave it out"


def test_the_report_groups_findings_and_the_failure_names_them() -> None:
    recorder = conformance.ConformanceRecorder("test_y")
    observation = example("Observation-swemwbs.json")
    observation["performer"] = [{"reference": "HealthcareService/s1", "type": "HealthcareService"}]
    for _ in range(2):
        recorder.saw("served GET /fhir/Observation/o1", observation)
    report = conformance.ConformanceReport()

    checked, found = recorder.findings()
    report.add(checked, found)

    (row,) = report.grouped()
    assert row[:2] == ("Observation", "Observation.performer")
    assert row[3:] == (2, 1)  # twice, in one test
    message = conformance.failure_message(found)
    assert "served GET /fhir/Observation/o1: Observation.performer[0] refers to a" in message
    assert report.lines()[0].startswith(f"FHIR conformance ({conformance.MODE}): 2 resources")


def test_this_test_is_being_recorded() -> None:
    recorder = conformance.current()
    if conformance.MODE == "off":
        assert recorder is None
    else:
        assert recorder is not None and recorder.test.endswith("test_this_test_is_being_recorded")
