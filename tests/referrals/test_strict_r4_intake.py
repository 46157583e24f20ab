"""Strict R4 at intake (issue 16 part 1): what the R4B models let through and HL7's R4 JSON schema
and FHIR's rules refuse is refused at every way in (a ServiceRequest, a transaction, a batch
entry, an update), 400 naming the element, never quoting it, storing nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.conftest import FHIR_JSON, NOTHING, Bridge, referral_resource, row_counts

Mutation = Callable[[dict[str, Any]], None]


def _patient(resource: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in resource["contained"] if r["resourceType"] == "Patient")
    return found


def pager(resource: dict[str, Any]) -> None:
    _patient(resource)["telecom"][0]["system"] = "pager2"


def bogus_name_use(resource: dict[str, Any]) -> None:
    _patient(resource)["name"][0]["use"] = "bogus"


def empty_note(resource: dict[str, Any]) -> None:
    resource["note"] = []


def modifier_extension(resource: dict[str, Any]) -> None:
    resource["modifierExtension"] = [
        {"url": "https://example.org/StructureDefinition/do-not-refer", "valueBoolean": True}
    ]


def null_priority(resource: dict[str, Any]) -> None:
    resource["priority"] = None


def requester_is_an_observation(resource: dict[str, Any]) -> None:
    resource["requester"] = {"reference": "Observation/abc"}


INVALID = [
    pytest.param(pager, "ServiceRequest.contained[0].telecom[0].system", id="telecom-pager2"),
    pytest.param(bogus_name_use, "ServiceRequest.contained[0].name[0].use", id="name-use-bogus"),
    pytest.param(empty_note, "ServiceRequest.note", id="empty-note"),
    pytest.param(modifier_extension, "ServiceRequest.modifierExtension[0]", id="modifierExtension"),
    pytest.param(null_priority, "ServiceRequest.priority", id="null"),
    pytest.param(requester_is_an_observation, "ServiceRequest.requester", id="reference-target"),
]


@pytest.fixture
async def referrer(bridge: Bridge) -> dict[str, str]:
    await bridge.service()
    return await bridge.key("clinical-system", "RW4")


def _refusal(response: Any, expression: str) -> None:
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert expression in [e for i in outcome["issue"] for e in i.get("expression", [])], outcome
    issue = next(i for i in outcome["issue"] if expression in i.get("expression", []))
    assert {c["code"] for c in issue["details"]["coding"]} == {
        "invalid-resource",
        "REC_BAD_REQUEST",
    }
    for value in ("pager2", "bogus", "do-not-refer", "Observation/abc"):
        assert value not in response.text


@pytest.mark.parametrize(("mutate", "expression"), INVALID)
async def test_invalid_r4_is_refused_and_nothing_is_stored(
    bridge: Bridge, referrer: dict[str, str], database_url: str, mutate: Mutation, expression: str
) -> None:
    resource = referral_resource()
    mutate(resource)
    _refusal(await bridge.refer(referrer, resource), expression)
    assert await row_counts(database_url) == NOTHING


@pytest.mark.parametrize(("mutate", "expression"), INVALID[:4])
async def test_invalid_r4_in_a_bundle_is_located_in_the_bundle(
    bridge: Bridge, referrer: dict[str, str], database_url: str, mutate: Mutation, expression: str
) -> None:
    good = referral_resource()
    bad = copy.deepcopy(good)
    mutate(bad)
    where = expression.replace("ServiceRequest", "Bundle.entry[0].resource", 1)
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": bad, "request": {"method": "POST", "url": "ServiceRequest"}}],
    }
    response = await bridge.http.post(
        "/fhir", content=orjson.dumps(transaction), headers={**referrer, **FHIR_JSON}
    )
    _refusal(response, where)
    assert await row_counts(database_url) == NOTHING

    # In a batch, the invalid entry alone is refused; the valid one is made.
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": bad, "request": {"method": "POST", "url": "ServiceRequest"}},
            {"resource": good, "request": {"method": "POST", "url": "ServiceRequest"}},
        ],
    }
    response = await bridge.http.post(
        "/fhir", content=orjson.dumps(batch), headers={**referrer, **FHIR_JSON}
    )
    assert response.status_code == 200, response.text
    refused, made = response.json()["entry"]
    assert refused["response"]["status"] == "400 Bad Request"
    assert where in refused["response"]["outcome"]["issue"][0]["expression"]
    assert made["response"]["status"] == "201 Created"
    assert (await row_counts(database_url))["referrals"] == 1


async def test_an_update_must_be_valid_r4_too(bridge: Bridge, referrer: dict[str, str]) -> None:
    created = (await bridge.refer(referrer, referral_resource())).json()
    change = copy.deepcopy(created)
    pager(change)
    response = await bridge.http.put(
        f"/fhir/ServiceRequest/{created['id']}",
        content=orjson.dumps(change),
        headers={**referrer, **FHIR_JSON, "If-Match": 'W/"1"'},
    )
    _refusal(response, "ServiceRequest.contained[0].telecom[0].system")
