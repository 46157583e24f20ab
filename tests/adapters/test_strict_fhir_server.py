"""The strict test FHIR server itself (tests/support/fhir_server/): that it behaves as strict
production servers do, so the end-to-end tests that push to it mean something. No database."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.fhir_test_server import HARNESS_AGENT, FhirTestServer

# The harness's own requests (invalid on purpose, some of them) are not the bridge's.
FHIR_JSON = {"Content-Type": "application/fhir+json", "User-Agent": HARNESS_AGENT}
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
TASK_IDS = "https://fhir.spbridge.org/Id/task"


@pytest.fixture
def fhir(fhir_server: FhirTestServer) -> httpx.Client:
    with httpx.Client(base_url=fhir_server.base_url, headers=FHIR_JSON, timeout=30) as client:
        yield client


def task(**changes: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "identifier": [{"system": TASK_IDS, "value": "case-1"}],
        "status": "requested",
        "intent": "order",
        "requester": {"type": "Organization", "identifier": {"system": ODS, "value": "RW4"}},
        **changes,
    }


def issue_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    (issue,) = body["issue"]
    issue_dict: dict[str, Any] = issue
    return issue_dict


# --- update as create ---------------------------------------------------------------------------


def test_it_refuses_update_as_create(fhir_server: FhirTestServer, fhir: httpx.Client) -> None:
    response = fhir.put("/Task/our-case-id", json=task(id="our-case-id"))

    assert response.status_code == 405
    issue = issue_of(response)
    assert issue["code"] == "not-supported"
    assert issue["expression"] == ["Task.id"]
    assert "update as create" in issue["diagnostics"]
    assert fhir_server.read("Task", "our-case-id") is None


def test_a_permissive_server_takes_update_as_create(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    fhir_server.set_mode(updateCreate=True)

    first = fhir.put("/Task/our-case-id", json=task(id="our-case-id"))
    second = fhir.put("/Task/our-case-id", json=task(id="our-case-id", status="accepted"))

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.headers["etag"] == 'W/"2"'
    held = fhir_server.read("Task", "our-case-id")
    assert held is not None and held["status"] == "accepted"


def test_a_create_gets_an_id_of_the_servers_choosing(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    response = fhir.post("/Task", json=task(id="our-case-id"))

    assert response.status_code == 201
    created = response.json()
    assert created["id"] != "our-case-id"
    assert created["meta"]["versionId"] == "1"
    assert response.headers["location"] == (
        f"{fhir_server.base_url}/Task/{created['id']}/_history/1"
    )
    # Updating what the server holds is fine, and needs no update as create.
    updated = fhir.put(f"/Task/{created['id']}", json={**created, "status": "accepted"})
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"


def test_if_match_guards_an_update(fhir: httpx.Client) -> None:
    created = fhir.post("/Task", json=task()).json()
    stale = fhir.put(f"/Task/{created['id']}", json=created, headers={"If-Match": 'W/"7"'})
    fresh = fhir.put(f"/Task/{created['id']}", json=created, headers={"If-Match": 'W/"1"'})
    assert (stale.status_code, fresh.status_code) == (412, 200)


# --- references ---------------------------------------------------------------------------------


def test_it_refuses_a_dangling_literal_reference(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    response = fhir.post("/Task", json=task(focus={"reference": "ServiceRequest/not-here"}))

    assert response.status_code == 400
    issue = issue_of(response)
    assert issue["code"] == "not-found"
    assert issue["expression"] == ["Task.focus.reference"]
    assert fhir_server.search("Task") == []


def test_references_to_what_it_holds_and_by_identifier_are_fine(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    fhir_server.seed({"resourceType": "ServiceRequest", "id": "their-referral", "status": "active",
                      "intent": "order", "subject": {"reference": "Patient/p1"}})  # fmt: skip
    resource = task(
        focus={"reference": "ServiceRequest/their-referral"},
        basedOn=[{"reference": f"{fhir_server.base_url}/ServiceRequest/their-referral"}],
        owner={"type": "Organization", "identifier": {"system": ODS, "value": "LR001"}},
    )

    assert fhir.post("/Task", json=resource).status_code == 201


def test_a_conditional_reference_is_resolved_to_its_one_match(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    referral = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "identifier": [{"system": "https://rio.example/Id/referral", "value": "R-1"}],
                "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number",
                                           "value": "9000000009"}}}  # fmt: skip
    referral_id = fhir.post("/ServiceRequest", json=referral).json()["id"]
    query = "ServiceRequest?identifier=https://rio.example/Id/referral|R-1"

    created = fhir.post("/Task", json=task(focus={"reference": query}))
    missing = fhir.post("/Task", json=task(focus={"reference": query.replace("R-1", "R-2")}))

    assert created.status_code == 201
    assert created.json()["focus"] == {"reference": f"ServiceRequest/{referral_id}"}
    assert missing.status_code == 400
    assert issue_of(missing)["expression"] == ["Task.focus.reference"]


def test_a_permissive_server_can_leave_references_unchecked(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    fhir_server.set_mode(checkReferences=False)
    assert fhir.post("/Task", json=task(focus={"reference": "ServiceRequest/x"})).status_code == 201


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        ({"resourceType": "Patient", "telecom": [{"system": "pager2", "value": "1"}]},
         "Patient.telecom[0].system"),
        ({"resourceType": "Patient", "name": [{"use": "bogus", "family": "X"}]},
         "Patient.name[0].use"),
        (task(status="sent"), "Task.status"),
        (task(priority="whenever"), "Task.priority"),  # a required binding HL7's schema leaves out
        (task(note=[]), "Task.note"),
        (task(frobnicate=1), "Task.frobnicate"),
        ({**task(), "intent": None}, "Task.intent"),
        (task(modifierExtension=[{"url": "https://x.org/e", "valueBoolean": True}]),
         "Task.modifierExtension"),
    ],
)  # fmt: skip
def test_it_refuses_an_invalid_resource_naming_the_element(
    fhir_server: FhirTestServer, fhir: httpx.Client, resource: dict[str, Any], expression: str
) -> None:
    response = fhir.post(f"/{resource['resourceType']}", json=resource)

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert expression in [e for issue in body["issue"] for e in issue.get("expression", [])]
    assert fhir_server.search(resource["resourceType"]) == []


def test_it_refuses_a_reference_to_a_type_r4_does_not_allow(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    fhir_server.seed({"resourceType": "HealthcareService", "id": "life-rooms"})
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "SWEMWBS"},
                   "performer": [{"reference": "HealthcareService/life-rooms"}]}  # fmt: skip

    response = fhir.post("/Observation", json=observation)

    assert response.status_code == 400
    assert issue_of(response)["expression"] == ["Observation.performer[0]"]


def test_a_permissive_server_can_skip_validation(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    fhir_server.set_mode(validate=False)
    assert fhir.post("/Task", json=task(status="sent")).status_code == 201


# --- conditional create and update, search ------------------------------------------------------


def test_a_conditional_create_is_idempotent(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    condition = {"If-None-Exist": f"identifier={TASK_IDS}|case-1"}

    first = fhir.post("/Task", json=task(), headers=condition)
    again = fhir.post("/Task", json=task(status="accepted"), headers=condition)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    (held,) = fhir_server.search("Task", identifier=f"{TASK_IDS}|case-1")
    assert held["status"] == "requested" and held["meta"]["versionId"] == "1"


def test_a_conditional_update_creates_then_updates_the_one_match(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    url = f"/Task?identifier={TASK_IDS}|case-1"

    first = fhir.put(url, json=task())
    second = fhir.put(url, json=task(status="accepted"))

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["meta"]["versionId"] == "2"
    (held,) = fhir_server.search("Task", identifier=f"{TASK_IDS}|case-1")
    assert held["status"] == "accepted"


def test_a_conditional_update_with_our_id_and_no_match_needs_update_as_create(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    url = f"/Task?identifier={TASK_IDS}|case-1"

    refused = fhir.put(url, json=task(id="our-case-id"))
    fhir_server.set_mode(updateCreate=True)
    taken = fhir.put(url, json=task(id="our-case-id"))

    assert refused.status_code == 400
    assert issue_of(refused)["expression"] == ["Task.id"]
    assert taken.status_code == 201 and taken.json()["id"] == "our-case-id"


def test_a_conditional_update_matching_two_resources_is_412(fhir: httpx.Client) -> None:
    fhir.post("/Task", json=task())
    fhir.post("/Task", json=task())
    response = fhir.put(f"/Task?identifier={TASK_IDS}|case-1", json=task())
    assert response.status_code == 412


# --- transactions -------------------------------------------------------------------------------

PATIENT_URL = "urn:uuid:0b7c1d4e-5f6a-4b8c-9d0e-1f2a3b4c5d6e"


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_a_transaction_resolves_urn_uuids_and_conditional_references(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    nhs_number = {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}
    fhir_server.seed({"resourceType": "Organization", "id": "rw4",
                      "identifier": [{"system": ODS, "value": "RW4"}]})  # fmt: skip
    bundle = transaction(
        {"fullUrl": PATIENT_URL,
         "resource": {"resourceType": "Patient", "identifier": [nhs_number]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier="
                     "https://fhir.nhs.uk/Id/nhs-number|9000000009"}},
        {"resource": task(**{"for": {"reference": PATIENT_URL},
                             "requester": {"reference": f"Organization?identifier={ODS}|RW4"}}),
         "request": {"method": "PUT", "url": f"Task?identifier={TASK_IDS}|case-1"}},
    )  # fmt: skip

    response = fhir.post("", json=bundle)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201", "201"]
    (patient,) = fhir_server.search("Patient")
    (held,) = fhir_server.search("Task")
    assert held["for"] == {"reference": f"Patient/{patient['id']}"}
    assert held["requester"] == {"reference": "Organization/rw4"}

    again = fhir.post("", json=bundle)  # the same again: the patient is found, the Task updated
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200", "200"]
    assert len(fhir_server.search("Patient")) == 1
    assert fhir_server.search("Task")[0]["meta"]["versionId"] == "2"


def test_a_transaction_is_all_or_nothing(fhir_server: FhirTestServer, fhir: httpx.Client) -> None:
    bundle = transaction(
        {"fullUrl": PATIENT_URL, "resource": {"resourceType": "Patient", "active": True},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": task(focus={"reference": "ServiceRequest/not-here"}),
         "request": {"method": "POST", "url": "Task"}},
    )  # fmt: skip

    response = fhir.post("", json=bundle)

    assert response.status_code == 400
    assert issue_of(response)["expression"] == ["Task.focus.reference"]
    assert fhir_server.search("Patient") == [] and fhir_server.search("Task") == []


# --- the CapabilityStatement, reset and the journal ---------------------------------------------


def test_the_capability_statement_says_what_the_mode_does(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    def task_capability() -> dict[str, Any]:
        statement = fhir.get("/metadata").json()
        assert statement["resourceType"] == "CapabilityStatement"
        assert statement["fhirVersion"] == "4.0.1"
        (rest,) = statement["rest"]
        assert {"code": "transaction"} in rest["interaction"]
        (capability,) = [r for r in rest["resource"] if r["type"] == "Task"]
        result: dict[str, Any] = capability
        return result

    strict = task_capability()
    assert strict["updateCreate"] is False
    assert strict["conditionalCreate"] is True and strict["conditionalUpdate"] is True
    assert "enforced" in strict["referencePolicy"]
    fhir_server.set_mode(updateCreate=True, checkReferences=False)
    permissive = task_capability()
    assert permissive["updateCreate"] is True
    assert "enforced" not in permissive["referencePolicy"]


def test_reset_empties_the_store_the_journal_and_restores_strictness(
    fhir_server: FhirTestServer, fhir: httpx.Client
) -> None:
    fhir_server.set_mode(updateCreate=True)
    fhir.put("/Task/t1", json=task(id="t1"), headers={"X-Request-ID": "delivery-1"})
    (sent,) = fhir_server.requests()
    assert (sent["method"], sent["url"], sent["status"]) == ("PUT", "Task/t1", 201)
    assert sent["headers"]["x-request-id"] == "delivery-1"
    assert sent["body"] == task(id="t1")

    fhir_server.reset()

    assert fhir_server.requests() == []
    assert fhir_server.read("Task", "t1") is None
    assert fhir.put("/Task/t1", json=task(id="t1")).status_code == 405


def test_it_answers_only_on_loopback(fhir_server: FhirTestServer) -> None:
    assert fhir_server.base_url.startswith("http://127.0.0.1:")
    assert fhir_server.process.poll() is None
