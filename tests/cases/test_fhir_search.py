"""Search as FHIR clients use it (issue 16 part 4): lenient by default, strict on request; Task
polling by what changed and by patient; chained and modified patient parameters; _summary,
_count, _total, _elements, _sort, _include / _revinclude; POST _search; never an empty entry."""

from __future__ import annotations

import asyncio
from typing import Any

from app.fhir.validation import validate_resource
from tests.conftest import Bridge, referral_resource
from tests.support.cases import OpenCase, open_case

NHS = "https://fhir.nhs.uk/Id/nhs-number"
OTHER_PATIENT = "9434765919"


async def search(
    bridge: Bridge, key: dict[str, str], path: str, params: Any = None, **headers: str
) -> dict[str, Any]:
    response = await bridge.http.get(path, params=params, headers={**key, **headers})
    assert response.status_code == 200, (path, params, response.text)
    bundle: dict[str, Any] = response.json()
    assert bundle["type"] == "searchset"
    assert bundle.get("entry") != []  # FHIR JSON has no empty arrays
    assert validate_resource(bundle) == [], bundle
    return bundle


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def patient_resource(nhs_number: str) -> dict[str, Any]:
    resource = referral_resource()
    for item in resource["contained"]:
        if item["resourceType"] == "Patient":
            item["identifier"][0]["value"] = nhs_number
    resource["subject"]["identifier"]["value"] = nhs_number
    return resource


async def test_a_referrer_polls_what_changed(bridge: Bridge) -> None:
    first = await open_case(bridge)
    second = await open_case(bridge, register=False)
    key = first.referrer  # both referrals are RW4's
    everything = await search(bridge, key, "/fhir/Task", {"requester": "RW4"})
    assert set(ids(everything)) == {first.case_id, second.case_id}
    mark = max(e["resource"]["meta"]["lastUpdated"] for e in everything["entry"])
    await asyncio.sleep(0.01)
    await first.record({"type": "case.accepted"})

    for requester in ("RW4", "Organization/RW4"):
        changed = await search(
            bridge, key, "/fhir/Task", {"requester": requester, "_lastUpdated": f"gt{mark}"}
        )
        assert ids(changed) == [first.case_id]
    changed = await search(
        bridge,
        key,
        "/fhir/Task",
        {
            "requester:identifier": "https://fhir.nhs.uk/Id/ods-organization-code|RW4",
            "_lastUpdated": f"gt{mark}",
            "status": "accepted",
            "business-status": "registered",
        },
    )
    assert ids(changed) == [first.case_id]
    newest_first = await search(
        bridge, key, "/fhir/Task", {"requester": "RW4", "_sort": "-_lastUpdated"}
    )
    assert ids(newest_first) == [first.case_id, second.case_id]
    nobody = await search(bridge, key, "/fhir/Task", {"requester": "RXA"})
    assert nobody["total"] == 0 and "entry" not in nobody
    # By owner, focus, _id, and the case's status.
    for params in (
        {"owner": "HealthcareService/life-rooms", "_id": first.case_id},
        {"focus": f"ServiceRequest/{first.referral_id}"},
        {"based-on": first.referral_id},
        {"status": "accepted"},
    ):
        assert ids(await search(bridge, key, "/fhir/Task", params)) == [first.case_id]


async def test_tasks_and_referrals_by_patient(bridge: Bridge) -> None:
    case = await open_case(bridge)
    other = await bridge.refer(case.referrer, patient_resource(OTHER_PATIENT))
    assert other.status_code == 201
    patient = (await case.detail()).json()["resources"]["patient"]
    for name, value in (
        ("patient", patient),
        ("patient:identifier", f"{NHS}|9000000009"),
        ("patient.identifier", "9000000009"),
        ("subject:identifier", f"{NHS}|9000000009"),
        ("subject", patient),
    ):
        tasks = await search(bridge, case.referrer, "/fhir/Task", {name: value})
        assert ids(tasks) == [case.case_id], name
        referrals = await search(bridge, case.referrer, "/fhir/ServiceRequest", {name: value})
        assert ids(referrals) == [case.referral_id], name
    patients = await search(bridge, case.referrer, "/fhir/Patient", {"identifier": OTHER_PATIENT})
    assert (
        len(ids(patients)) == 1
        and patients["entry"][0]["resource"]["identifier"][0]["value"] == OTHER_PATIENT
    )


async def test_result_parameters(bridge: Bridge) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    made = [(await bridge.refer(key, referral_resource())).json() for _ in range(5)]
    count = await search(bridge, key, "/fhir/ServiceRequest", {"_summary": "count"})
    assert count["total"] == 5 and "entry" not in count
    assert "entry" not in await search(bridge, key, "/fhir/ServiceRequest", {"_count": "0"})
    without_total = await search(bridge, key, "/fhir/ServiceRequest", {"_total": "none"})
    assert "total" not in without_total and len(ids(without_total)) == 5

    subset = await search(bridge, key, "/fhir/ServiceRequest", {"_elements": "identifier,priority"})
    resource = subset["entry"][0]["resource"]
    assert set(resource) == {
        "resourceType",
        "id",
        "meta",
        "identifier",
        "priority",
        # What R4 requires of a ServiceRequest is kept, so a subset is still valid R4, and
        # what its references point at.
        "status",
        "intent",
        "subject",
        "contained",
    }
    assert resource["meta"]["tag"][-1]["code"] == "SUBSETTED"

    # _sort, descending, paged with a cursor that keeps the order.
    seen: list[str] = []
    params: Any = {"_sort": "-_lastUpdated", "_count": "2"}
    url = "/fhir/ServiceRequest"
    while url:
        page = await search(bridge, key, url, params)
        seen += ids(page)
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = following[0].removeprefix("http://testserver") if following else ""
        params = None
        assert "_sort=-_lastUpdated" in page["link"][0]["url"]
    assert seen == [m["id"] for m in reversed(made)]
    by_status = await search(bridge, key, "/fhir/ServiceRequest", {"_sort": "status,-_lastUpdated"})
    assert ids(by_status) == [m["id"] for m in reversed(made)]


async def test_includes(bridge: Bridge) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})
    await case.record(
        {
            "type": "appointment.booked",
            "appointment_id": "A1",
            "start": "2030-01-01T10:00:00Z",
            "appointment_type": "telephone",
            "duration_minutes": 30,
        }
    )
    key = case.referrer
    with_tasks = await search(
        bridge,
        key,
        "/fhir/ServiceRequest",
        [
            ("_id", case.referral_id),
            ("_revinclude", "Task:focus"),
            ("_include", "ServiceRequest:patient"),
        ],
    )
    assert ids(with_tasks) == [case.referral_id]
    included = {e["resource"]["resourceType"]: e["resource"]["id"] for e in with_tasks["entry"][1:]}
    assert included["Task"] == case.case_id
    assert "Patient" in included
    with_focus = await search(
        bridge,
        key,
        "/fhir/Task",
        [("_id", case.case_id), ("_include", "Task:focus"), ("_include", "Task:output")],
    )
    assert ids(with_focus) == [case.case_id]
    kinds = sorted(
        e["resource"]["resourceType"]
        for e in with_focus["entry"]
        if e["search"]["mode"] == "include"
    )
    assert kinds == ["Appointment", "ServiceRequest"]


async def test_lenient_by_default_strict_when_asked(bridge: Bridge, app: Any) -> None:
    case = await open_case(bridge)
    key = case.referrer
    params = [
        ("colourZQX", "redZQX"),
        ("_pretty", "true"),
        ("_summary", "text"),
        ("_include", "Task:nope"),
    ]
    lenient = await search(bridge, key, "/fhir/ServiceRequest", params)
    assert ids(lenient) == [case.referral_id]
    outcome = lenient["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    issues = outcome["resource"]["issue"]
    assert [i["severity"] for i in issues] == ["warning"] * 3
    assert "ZQX" not in str(lenient)
    # The links say the search as it was carried out: nothing ignored is in them.
    assert lenient["link"][0]["url"] == "http://testserver/fhir/ServiceRequest?"
    for strict in ([("colourZQX", "redZQX")], [("_summary", "text")], [("_sort", "colourZQX")]):
        response = await bridge.http.get(
            "/fhir/ServiceRequest", params=strict, headers={**key, "Prefer": "handling=strict"}
        )
        assert response.status_code == 400, strict
        assert "ZQX" not in response.text
    # Values that cannot be read are an error either way.
    for bad in ({"_count": "lots"}, {"_lastUpdated": "yesterday"}, {"_cursor": "!!!"}):
        response = await bridge.http.get("/fhir/ServiceRequest", params=bad, headers=key)
        assert response.status_code == 400, bad


async def test_post_search_is_the_same_search(bridge: Bridge) -> None:
    case: OpenCase = await open_case(bridge)
    for path, form in (
        ("/fhir/Task", f"focus=ServiceRequest/{case.referral_id}&_include=Task:focus"),
        ("/fhir/ServiceRequest", "patient:identifier=9000000009&_revinclude=Task:focus"),
        ("/fhir/Patient", "identifier=9000000009"),
    ):
        posted = await bridge.http.post(
            f"{path}/_search",
            content=form.encode(),
            headers={**case.referrer, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert posted.status_code == 200, posted.text
        got = await search(bridge, case.referrer, f"{path}?{form}")
        assert [e["resource"] for e in posted.json()["entry"]] == [
            e["resource"] for e in got["entry"]
        ]
    wrong_type = await bridge.http.post(
        "/fhir/Task/_search",
        content=b"{}",
        headers={**case.referrer, "Content-Type": "application/json"},
    )
    assert wrong_type.status_code == 415
