"""Published FHIR examples (HL7 Gravity SDOH CC, NHS England BaRS) posted as an integrator would.

Each example goes, unchanged, to the endpoint an integrator would try: ``/fhir`` for Bundles,
``/fhir/ServiceRequest`` for everything else. None is a referral we can take as it stands, so
each must be refused with the exact 4xx, issue code and FHIRPath we expect, and leave nothing
behind. Then real examples adapted to UK Core must be accepted. Sources: fixtures/.../SOURCES.md.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from app.db import create_engine
from app.fhir.resources import OperationOutcome, ServiceRequest, model_class
from tests.conftest import FHIR_JSON, NOTHING, Bridge, row_counts

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir-examples"
FOOD_PANTRY_SR = (
    "sdoh-clinicalcare/"
    "ServiceRequest-SDOHCC-ServiceRequestActiveFoodPantryApplicationAssistExample.json"
)
SUMMER_FOOD_SR = (
    "sdoh-clinicalcare/ServiceRequest-SDOHCC-ServiceRequestSubreferralSummerFoodProgramExample.json"
)
FOOD_INSECURITY_CONDITION = "sdoh-clinicalcare/Condition-SDOHCC-ConditionFoodInsecurityExample.json"
DISCLOSURE_CONSENT = "sdoh-clinicalcare/Consent-SDOHCC-ConsentInformationDisclosureExample.json"
BARS_REFERRAL_MESSAGE = "bars/process_message/request/ValidationRequest (POST) .json"

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SDOHCC_CODES = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
VALID_NHS_NUMBER = "9434765919"  # passes modulus 11 (the BaRS examples' 3478526985 does not)

# The Gravity referrals lack everything UK Core intake requires (no NHS number on the subject:
# only a literal reference to a Patient we do not hold), all reported together.
GRAVITY_MISSING = [
    ("required", "ServiceRequest.identifier"),
    ("required", "ServiceRequest.authoredOn"),
    ("required", "ServiceRequest.subject"),
    ("required", "ServiceRequest.requester"),
    ("required", "ServiceRequest.supportingInfo"),
]
NOT_A_SERVICE_REQUEST = [("invalid", "resourceType")]
MESSAGE_BUNDLE = [("not-supported", "Bundle.type")]

REFUSED = [
    pytest.param(FOOD_PANTRY_SR, 422, GRAVITY_MISSING, id="gravity-food-pantry-referral"),
    pytest.param(
        SUMMER_FOOD_SR,
        422,
        [("value", "ServiceRequest.status"), *GRAVITY_MISSING],  # status completed
        id="gravity-summer-food-subreferral",
    ),
    pytest.param(BARS_REFERRAL_MESSAGE, 422, MESSAGE_BUNDLE, id="bars-referral-message"),
    pytest.param(
        "bars/process_message/request/ValidationResponse (POST) .json",
        422,
        MESSAGE_BUNDLE,
        id="bars-response-message",
    ),
    pytest.param(
        "bars/process_message/request/Booking (POST).json",
        422,
        MESSAGE_BUNDLE,
        id="bars-booking-message",
    ),
    pytest.param(
        "bars/service_request/id/GET-success.json",
        400,
        [("structure", "ServiceRequest.basedOn"), ("structure", "ServiceRequest")],
        # basedOn is an object; PatientInstruction is no element (located at its parent: T7)
        id="bars-servicerequest-read",
    ),
    pytest.param(
        "bars/service_request/GET-success.json",
        400,
        [("value", "Bundle.entry[0].resourceType")],  # the ServiceRequest sits in entry itself
        id="bars-servicerequest-search",
    ),
    pytest.param(
        "bars/message_definition/MessageDefinition_ServiceRequest-request_CaseTransfer.json",
        400,
        [("value", "Bundle.entry[0].resource.useContext[0].code")],  # code is an array
        id="bars-messagedefinition-search",
    ),
    pytest.param(
        "bars/metadata/BaRS_API_Capability_Statement.json",
        400,
        NOT_A_SERVICE_REQUEST,
        id="bars-capabilitystatement",
    ),
    pytest.param(
        "bars/appointment/id/GET-success.json", 400, NOT_A_SERVICE_REQUEST, id="bars-appointment"
    ),
    pytest.param(
        "bars/OperationOutcome/REC/400-REC_BAD_REQUEST-invalid.json",
        400,
        NOT_A_SERVICE_REQUEST,
        id="bars-operationoutcome-400",
    ),
    pytest.param(
        "bars/OperationOutcome/REC/409-REC_CONFLICT-duplicate.json",
        400,
        NOT_A_SERVICE_REQUEST,
        id="bars-operationoutcome-409",
    ),
    pytest.param(
        "bars/OperationOutcome/REC/422-REC_UNPROCESSABLE_ENTITY-not-supported.json",
        400,
        NOT_A_SERVICE_REQUEST,
        id="bars-operationoutcome-422",
    ),
]

# As recorded in fixtures/fhir-examples/SOURCES.md ("Parses" column).
NOT_R4B_PARSEABLE = {
    "bars/service_request/id/GET-success.json",
    "bars/service_request/GET-success.json",
    "bars/metadata/BaRS_API_Capability_Statement.json",
    "bars/message_definition/MessageDefinition_ServiceRequest-request_CaseTransfer.json",
}


def example(relative: str) -> dict[str, Any]:
    return orjson.loads((EXAMPLES / relative).read_bytes())


def endpoint_for(resource: dict[str, Any]) -> str:
    return "/fhir" if resource.get("resourceType") == "Bundle" else "/fhir/ServiceRequest"


def issues(response: httpx.Response) -> list[tuple[str, str | None]]:
    body = response.json()
    OperationOutcome.model_validate(body)
    assert response.headers["content-type"].startswith("application/fhir+json")
    return [(i["code"], (i.get("expression") or [None])[0]) for i in body["issue"]]


async def stored_counts(
    http: httpx.AsyncClient, key: dict[str, str], database_url: str
) -> tuple[int, dict[str, int]]:
    search = await http.get("/fhir/ServiceRequest", headers=key)
    assert search.status_code == 200, search.text
    return search.json()["total"], await row_counts(database_url)


async def stored_reasons(database_url: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            reasons = (await connection.execute(text("SELECT reasons FROM referrals"))).scalar_one()
    finally:
        await engine.dispose()
    return orjson.loads(reasons) if isinstance(reasons, str) else reasons


@pytest.fixture
async def referrer(bridge: Bridge) -> dict[str, str]:
    """A clinical-system client whose referrals go to its default service."""
    return await bridge.key(default_service=await bridge.service())


# --- the examples as published --------------------------------------------------------------


def test_every_copied_example_has_an_expected_outcome() -> None:
    covered = {param.values[0] for param in REFUSED}
    copied = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.json")}
    supporting_only = {FOOD_INSECURITY_CONDITION, DISCLOSURE_CONSENT}
    assert covered == copied - supporting_only


@pytest.mark.parametrize(
    "relative", sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.json"))
)
def test_examples_parse_with_r4b_as_recorded(relative: str) -> None:
    data = example(relative)
    try:
        model_class(data["resourceType"]).model_validate(data)
        parses = True
    except ValueError:  # pydantic's ValidationError is a ValueError
        parses = False
    assert parses == (relative not in NOT_R4B_PARSEABLE)


@pytest.mark.parametrize(("relative", "status", "expected"), REFUSED)
async def test_published_example_is_refused_precisely(
    client: httpx.AsyncClient,
    referrer: dict[str, str],
    database_url: str,
    relative: str,
    status: int,
    expected: list[tuple[str, str | None]],
) -> None:
    body = (EXAMPLES / relative).read_bytes()  # byte for byte as published
    path = endpoint_for(orjson.loads(body))
    response = await client.post(path, content=body, headers={**referrer, **FHIR_JSON})

    assert response.status_code == status, response.text
    assert await stored_counts(client, referrer, database_url) == (0, NOTHING)
    assert issues(response) == expected


# --- BaRS: the referral message re-sent as a transaction --------------------------------------


def bars_referral_as_transaction() -> dict[str, Any]:
    """The BaRS referral's ServiceRequest, Patient and Consent as our transaction Bundle."""
    message = example(BARS_REFERRAL_MESSAGE)
    kept = [
        e
        for e in message["entry"]
        if e["resource"]["resourceType"] in ("ServiceRequest", "Patient", "Consent")
    ]
    assert [e["resource"]["resourceType"] for e in kept] == ["ServiceRequest", "Patient", "Consent"]
    for entry in kept:
        entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    return {"resourceType": "Bundle", "type": "transaction", "entry": kept}


async def test_bars_referral_as_transaction_is_refused_for_its_content(
    client: httpx.AsyncClient, referrer: dict[str, str], database_url: str
) -> None:
    response = await client.post(
        "/fhir",
        content=orjson.dumps(bars_referral_as_transaction()),
        headers={**referrer, **FHIR_JSON},
    )

    assert response.status_code == 422, response.text
    assert await stored_counts(client, referrer, database_url) == (0, NOTHING)
    body = response.json()
    # intent 'plan' (value), no identifier, no authoredOn, and NHS number 3478526985 fails mod 11.
    assert sorted(i["code"] for i in body["issue"]) == ["required", "required", "value", "value"]
    nhs_issues = [i for i in body["issue"] if "NHS number" in i["diagnostics"]]
    assert [i["code"] for i in nhs_issues] == ["value"]
    assert "3478526985" not in response.text  # diagnostics never echo patient data


async def test_bars_referral_fixed_up_is_accepted(
    client: httpx.AsyncClient, referrer: dict[str, str]
) -> None:
    bundle = bars_referral_as_transaction()
    service_request, patient, _consent = (e["resource"] for e in bundle["entry"])
    service_request["intent"] = "order"
    service_request["identifier"] = [
        {"system": "https://ers.example.nhs.uk/Id/ubrn", "value": str(uuid.uuid4())}
    ]
    service_request["authoredOn"] = "2021-11-26T15:00:00+00:00"
    patient["identifier"][0]["value"] = VALID_NHS_NUMBER

    response = await client.post(
        "/fhir", content=orjson.dumps(bundle), headers={**referrer, **FHIR_JSON}
    )

    assert response.status_code == 200, response.text
    # The referral and its Patient are resources of their own; the Consent is kept inside.
    assert [e["response"]["status"] for e in response.json()["entry"]] == [
        "201 Created",
        "201 Created",
        "200 OK",
    ]
    found = await client.get(
        f"/fhir/ServiceRequest?patient.identifier={VALID_NHS_NUMBER}", headers=referrer
    )
    assert found.json()["total"] == 1
    stored = found.json()["entry"][0]["resource"]
    ServiceRequest.model_validate(stored)
    contained = {f"#{r['id']}": r for r in stored["contained"]}
    assert contained[stored["subject"]["reference"]]["name"][0]["text"] == "Mrs Julie Jones"
    consent = next(r for r in stored["contained"] if r["resourceType"] == "Consent")
    assert consent["patient"]["reference"] == stored["subject"]["reference"]


# --- Gravity: the food-pantry referral adapted to UK Core --------------------------------------


def gravity_referral_uk_core(*, with_reason_code: bool = True) -> dict[str, Any]:
    """The Gravity food-pantry ServiceRequest with what UK Core intake needs added.

    Added: a referral identifier, authoredOn, an NHS number on the subject reference, the
    requesting organisation, and the Gravity Consent and food-insecurity Condition contained
    (narrative dropped, as contained resources carry none) and referenced.
    """
    sr = example(FOOD_PANTRY_SR)
    consent = example(DISCLOSURE_CONSENT)
    condition = example(FOOD_INSECURITY_CONDITION)
    for resource, local_id in ((consent, "consent"), (condition, "condition")):
        resource["id"] = local_id
        del resource["text"]
    sr["contained"] = [consent, condition]
    sr["identifier"] = [
        {"system": "https://rio.example-trust.nhs.uk/Id/referral", "value": str(uuid.uuid4())}
    ]
    sr["authoredOn"] = "2024-05-01T09:30:00Z"
    sr["subject"]["identifier"] = {"system": NHS_NUMBER_SYSTEM, "value": VALID_NHS_NUMBER}
    sr["requester"] = {
        "type": "Organization",
        "identifier": {"system": ODS_SYSTEM, "value": "RW4"},
        "display": "Halton Crisis Resolution Team",
    }
    sr["supportingInfo"] = [{"reference": "#consent"}]
    sr["reasonReference"] = [{"reference": "#condition"}]
    if with_reason_code:
        # The example's own SDOH category, given as the reason for referral.
        food_insecurity = next(
            c for c in sr["category"] if c["coding"][0]["system"] == SDOHCC_CODES
        )
        sr["reasonCode"] = [copy.deepcopy(food_insecurity)]
    return sr


async def test_gravity_referral_adapted_to_uk_core_is_accepted(
    bridge: Bridge, client: httpx.AsyncClient, referrer: dict[str, str], database_url: str
) -> None:
    response = await bridge.refer(referrer, gravity_referral_uk_core())

    assert response.status_code == 201, response.text
    referral_id = response.json()["id"]
    read = await client.get(f"/fhir/ServiceRequest/{referral_id}", headers=referrer)
    assert read.status_code == 200
    stored = read.json()
    ServiceRequest.model_validate(stored)
    assert stored["code"]["coding"][0]["code"] == "467771000124109"  # food pantry assistance
    assert stored["subject"]["identifier"]["value"] == VALID_NHS_NUMBER
    assert [(r["resourceType"], r["id"]) for r in stored["contained"]] == [
        ("Consent", "consent"),
        ("Condition", "condition"),
    ]
    assert stored["reasonReference"] == [{"reference": "#condition"}]

    reasons = await stored_reasons(database_url)
    assert [(r["domain"], r["mapped"]) for r in reasons[:1]] == [("food-support", True)]
    # The contained Condition maps through its Gravity category (its code is SNOMED CT 733423003).
    assert [(r["domain"], r["code"]) for r in reasons[1:]] == [("food-support", "food-insecurity")]

    tasks = await client.get(f"/fhir/Task?focus=ServiceRequest/{referral_id}", headers=referrer)
    assert [e["resource"]["status"] for e in tasks.json()["entry"]] == ["requested"]


async def test_gravity_food_insecurity_condition_maps_to_food_support(
    bridge: Bridge, referrer: dict[str, str], database_url: str
) -> None:
    response = await bridge.refer(referrer, gravity_referral_uk_core(with_reason_code=False))

    assert response.status_code == 201, response.text
    reasons = await stored_reasons(database_url)
    assert [(r["domain"], r["mapped"]) for r in reasons] == [("food-support", True)]


async def test_gravity_resources_bundled_keep_their_references(
    client: httpx.AsyncClient, referrer: dict[str, str]
) -> None:
    """The Gravity SR's own references (Condition/<id>, Consent/<id>) resolve to bundled entries."""
    sr = gravity_referral_uk_core(with_reason_code=False)
    del sr["contained"]
    sr["reasonReference"] = [{"reference": "Condition/SDOHCC-ConditionFoodInsecurityExample"}]
    sr["supportingInfo"] = [{"reference": "Consent/SDOHCC-ConsentInformationDisclosureExample"}]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for resource in (sr, example(FOOD_INSECURITY_CONDITION), example(DISCLOSURE_CONSENT))
        ],
    }

    response = await client.post(
        "/fhir", content=orjson.dumps(bundle), headers={**referrer, **FHIR_JSON}
    )

    assert response.status_code == 200, response.text
    stored = response.json()["entry"][0]["resource"]
    ServiceRequest.model_validate(stored)
    contained = {f"#{r['id']}": r["resourceType"] for r in stored["contained"]}
    assert contained[stored["reasonReference"][0]["reference"]] == "Condition"
    assert contained[stored["supportingInfo"][0]["reference"]] == "Consent"
