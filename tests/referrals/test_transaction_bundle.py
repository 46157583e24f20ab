"""POST /fhir: a referral as a transaction Bundle (DESIGN §6, §7).

The Bundle carries one ServiceRequest with its Patient, Consent, Condition and
QuestionnaireResponse, linked by urn:uuid references. The bridge keeps them contained in the
referral and answers with a transaction-response Bundle; anything else is refused whole.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from app.fhir.resources import Bundle, OperationOutcome, ServiceRequest
from tests.conftest import FHIR_JSON, NOTHING, Bridge, referral_resource, row_counts

NHS_NUMBER = "9434765919"  # on the bundled Patient only; the example's own number is 9000000009
SR, PATIENT, CONSENT, CONDITION, QUESTIONNAIRE_RESPONSE = range(5)


def referral_bundle() -> dict[str, Any]:
    """ServiceRequest, Patient, Consent, Condition, QuestionnaireResponse, linked by urn:uuid."""
    sr = referral_resource()
    patient, consent = sr.pop("contained")
    urls = [f"urn:uuid:{uuid.uuid4()}" for _ in range(5)]
    for resource in (patient, consent):
        del resource["id"]
    patient["identifier"][0]["value"] = NHS_NUMBER
    consent["patient"] = {"reference": urls[PATIENT]}
    # No identifier on the subject: the NHS number must come from the bundled Patient.
    sr["subject"] = {"reference": urls[PATIENT]}
    sr["supportingInfo"] = [{"reference": urls[CONSENT]}]
    sr["reasonReference"] = [{"reference": urls[CONDITION]}]
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"text": "Debt"},
        "subject": {"reference": urls[PATIENT]},
    }
    questionnaire_response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "basedOn": [{"reference": urls[SR]}],
        "subject": {"reference": urls[PATIENT]},
        "authored": "2026-01-05T10:00:00Z",
        "item": [
            {
                "linkId": "1",
                "text": "Feeling optimistic about the future",
                "answer": [{"valueInteger": 3}],
            }
        ],
    }
    resources = [sr, patient, consent, condition, questionnaire_response]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for url, resource in zip(urls, resources, strict=True)
        ],
    }


@pytest.fixture
async def referrer(bridge: Bridge) -> dict[str, str]:
    """A clinical-system client whose referrals go to its default service."""
    return await bridge.key(default_service=await bridge.service())


async def post_bundle(
    http: httpx.AsyncClient, key: dict[str, str], bundle: dict[str, Any]
) -> httpx.Response:
    return await http.post("/fhir", content=orjson.dumps(bundle), headers={**key, **FHIR_JSON})


async def search_total(http: httpx.AsyncClient, key: dict[str, str], query: str = "") -> int:
    response = await http.get(f"/fhir/ServiceRequest{query}", headers=key)
    assert response.status_code == 200, response.text
    return response.json()["total"]


def statuses(response: httpx.Response) -> list[str]:
    return [entry["response"]["status"] for entry in response.json()["entry"]]


# --- accepted ---------------------------------------------------------------------------------


async def test_transaction_makes_one_referral_with_its_resources_contained(
    client: httpx.AsyncClient, referrer: dict[str, str]
) -> None:
    response = await post_bundle(client, referrer, referral_bundle())

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    Bundle.model_validate(body)
    assert body["type"] == "transaction-response"
    # What really happened to each entry: the referral and its Patient were created as
    # resources of their own; the other resources are kept inside the referral.
    assert statuses(response) == ["201 Created", "201 Created", "200 OK", "200 OK", "200 OK"]
    referral_id = body["entry"][SR]["resource"]["id"]
    patient = body["entry"][1]["resource"]
    assert [e["response"].get("location") for e in body["entry"]] == [
        f"ServiceRequest/{referral_id}/_history/1",
        f"Patient/{patient['id']}/_history/1",
        None,
        None,
        None,
    ]
    # In order: each supporting entry says which contained resource it became.
    named = [
        re.findall(r"#[\w-]+", e["response"]["outcome"]["issue"][0]["diagnostics"])
        for e in body["entry"][1:]
    ]
    assert named == [["#patient"], ["#consent"], ["#condition"], ["#questionnaireresponse"]]
    # The Patient is served where the response says, with the NHS number it came with.
    read_patient = await client.get(f"/fhir/Patient/{patient['id']}", headers=referrer)
    assert read_patient.status_code == 200
    assert read_patient.json() == patient
    assert patient["identifier"][0]["value"] == NHS_NUMBER

    read = await client.get(f"/fhir/ServiceRequest/{referral_id}", headers=referrer)
    assert read.status_code == 200
    stored = read.json()
    ServiceRequest.model_validate(stored)
    assert "urn:uuid:" not in read.text
    contained = {f"#{r['id']}": r for r in stored["contained"]}
    assert [r["resourceType"] for r in stored["contained"]] == [
        "Patient",
        "Consent",
        "Condition",
        "QuestionnaireResponse",
    ]
    patient_ref = stored["subject"]["reference"]
    assert contained[patient_ref]["resourceType"] == "Patient"
    assert contained[stored["supportingInfo"][0]["reference"]]["resourceType"] == "Consent"
    assert contained[stored["reasonReference"][0]["reference"]]["resourceType"] == "Condition"
    consent, condition, questionnaire_response = stored["contained"][1:]
    assert consent["patient"]["reference"] == patient_ref
    assert condition["subject"]["reference"] == patient_ref
    assert questionnaire_response["subject"]["reference"] == patient_ref
    assert questionnaire_response["basedOn"] == [{"reference": "#"}]  # its container
    assert all("meta" not in r for r in stored["contained"])

    # The subject's NHS number was taken from the bundled Patient.
    assert await search_total(client, referrer, f"?patient.identifier={NHS_NUMBER}") == 1
    tasks = await client.get(f"/fhir/Task?focus=ServiceRequest/{referral_id}", headers=referrer)
    assert tasks.status_code == 200
    [task] = [e["resource"] for e in tasks.json()["entry"]]
    assert task["status"] == "requested"
    assert task["for"]["identifier"]["value"] == NHS_NUMBER


async def test_repeated_transaction_returns_the_referral_held(
    client: httpx.AsyncClient, referrer: dict[str, str], database_url: str
) -> None:
    bundle = referral_bundle()
    first = await post_bundle(client, referrer, bundle)
    assert first.status_code == 200, first.text

    again = await post_bundle(client, referrer, copy.deepcopy(bundle))

    assert again.status_code == 200, again.text
    assert statuses(again) == ["200 OK"] * 5
    locations = [e["response"].get("location") for e in first.json()["entry"]]
    assert [e["response"].get("location") for e in again.json()["entry"]] == locations
    assert await search_total(client, referrer) == 1
    assert (await row_counts(database_url))["referrals"] == 1


async def test_entry_if_none_exist_is_honoured(
    bridge: Bridge, client: httpx.AsyncClient, referrer: dict[str, str], database_url: str
) -> None:
    held = referral_resource()
    made = await bridge.refer(referrer, held)
    assert made.status_code == 201, made.text
    held_id = held["identifier"][0]
    bundle = referral_bundle()  # a different identifier of its own
    bundle["entry"][SR]["request"]["ifNoneExist"] = (
        f"identifier={held_id['system']}|{held_id['value']}"
    )

    response = await post_bundle(client, referrer, bundle)

    assert response.status_code == 200, response.text
    assert statuses(response) == ["200 OK"] * 5
    assert response.json()["entry"][SR]["resource"]["id"] == made.json()["id"]
    assert await search_total(client, referrer) == 1
    assert (await row_counts(database_url))["referrals"] == 1


# --- refused ----------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], dict[str, Any]]


def of_type(bundle_type: str) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> dict[str, Any]:
        bundle["type"] = bundle_type
        return bundle

    return mutate


def put_consent(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"][CONSENT]["request"] = {"method": "PUT", "url": "Consent/abc"}
    return bundle


def appending(resource: dict[str, Any]) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> dict[str, Any]:
        entry = {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource}
        bundle["entry"].append(
            {**entry, "request": {"method": "POST", "url": resource["resourceType"]}}
        )
        return bundle

    return mutate


def another_service_request(bundle: dict[str, Any]) -> dict[str, Any]:
    return appending(referral_resource())(bundle)


def without_service_request(bundle: dict[str, Any]) -> dict[str, Any]:
    del bundle["entry"][SR]
    return bundle


def entry_without_resource(bundle: dict[str, Any]) -> dict[str, Any]:
    del bundle["entry"][CONDITION]["resource"]
    return bundle


def unknown_element_in_patient(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"][PATIENT]["resource"]["favouriteColour"] = "blue"
    return bundle


def nul_in_patient_name(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"][PATIENT]["resource"]["name"][0]["family"] = "Ex\u0000ample"
    return bundle


def bare_service_request(bundle: dict[str, Any]) -> dict[str, Any]:
    return referral_resource()


def resource_type(value: Any) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> dict[str, Any]:
        bundle["entry"][PATIENT]["resource"] = {} if value is None else {"resourceType": value}
        return bundle

    return mutate


def invalid_nhs_number_on_patient(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"][PATIENT]["resource"]["identifier"][0]["value"] = "3478526985"  # fails mod 11
    return bundle


def intent_plan(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"][SR]["resource"]["intent"] = "plan"
    return bundle


OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "SWEMWBS"}}
REFUSALS = [
    pytest.param(of_type("message"), 422, "not-supported", "Bundle.type", id="message"),
    pytest.param(
        put_consent, 422, "not-supported", "Bundle.entry[2].request.method", id="PUT-entry"
    ),
    pytest.param(
        appending(OBSERVATION), 422, "not-supported", "Bundle.entry[5].resource", id="Observation"
    ),
    pytest.param(
        another_service_request, 422, "not-supported", "Bundle.entry[5].resource", id="two-SRs"
    ),
    pytest.param(without_service_request, 422, "required", "Bundle.entry", id="no-SR"),
    pytest.param(
        entry_without_resource, 422, "required", "Bundle.entry[3].resource", id="no-resource"
    ),
    pytest.param(
        unknown_element_in_patient,
        400,
        "structure",
        "Bundle.entry[1].resource",  # the parent: the unknown name is the client's
        id="unknown-element-in-Patient",
    ),
    pytest.param(
        nul_in_patient_name,
        422,
        "value",
        "Bundle.entry[1].resource.name[0].family",
        id="NUL-in-Patient",
    ),
    pytest.param(
        bare_service_request, 400, "invalid", "resourceType", id="ServiceRequest-not-Bundle"
    ),
    pytest.param(
        resource_type("Nope"),
        400,
        "structure",
        "Bundle.entry[1].resource.resourceType",
        id="unknown-resourceType",
    ),
    pytest.param(
        resource_type(None),
        400,
        "structure",
        "Bundle.entry[1].resource.resourceType",
        id="no-resourceType",
    ),
    pytest.param(
        invalid_nhs_number_on_patient,
        422,
        "value",
        "Bundle.entry[1].resource.identifier[0].value",
        id="invalid-NHS-number-path",
    ),
    pytest.param(
        intent_plan,
        422,
        "value",
        "Bundle.entry[0].resource.intent",
        id="intent-plan-path",
    ),
]


@pytest.mark.parametrize(("mutate", "status", "code", "expression"), REFUSALS)
async def test_refused_whole_with_nothing_stored(
    client: httpx.AsyncClient,
    referrer: dict[str, str],
    database_url: str,
    mutate: Mutation,
    status: int,
    code: str,
    expression: str,
) -> None:
    response = await post_bundle(client, referrer, mutate(referral_bundle()))

    assert response.status_code == status, response.text
    assert await search_total(client, referrer) == 0
    assert await row_counts(database_url) == NOTHING
    body = response.json()
    OperationOutcome.model_validate(body)
    assert [(i["code"], i.get("expression")) for i in body["issue"]] == [(code, [expression])]


@pytest.mark.parametrize(
    "mutate", [invalid_nhs_number_on_patient, intent_plan], ids=["NHS-number", "intent"]
)
async def test_business_rules_apply_to_bundled_resources(
    client: httpx.AsyncClient, referrer: dict[str, str], database_url: str, mutate: Mutation
) -> None:
    """Business rules apply to bundled resources as to contained ones."""
    response = await post_bundle(client, referrer, mutate(referral_bundle()))

    assert response.status_code == 422, response.text
    assert [i["code"] for i in response.json()["issue"]] == ["value"]
    assert "3478526985" not in response.text
    assert await row_counts(database_url) == NOTHING
