"""Discovery (issue 16 part 6): the CapabilityStatement names the OAuth2 token endpoint (SMART),
the SMART configuration serves backend services, and OperationOutcomes carry coded details (our
CodeSystem, and BaRS's http-error-codes where BaRS has the status)."""

from __future__ import annotations

import json
from typing import Any

from app.fhir.validation import validate_resource
from tests.conftest import ROOT, Bridge

OURS = "https://fhir.spbridge.org/CodeSystem/outcome-details"
BARS = "https://fhir.nhs.uk/CodeSystem/http-error-codes"


def codes(outcome: dict[str, Any]) -> dict[str, str]:
    return {c["system"]: c["code"] for c in outcome["issue"][0]["details"]["coding"]}


async def test_the_capability_statement_names_the_token_endpoint(client: Any) -> None:
    statement = (await client.get("/fhir/metadata")).json()
    assert validate_resource(statement) == []
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    (uris,) = security["extension"]
    assert uris["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert uris["extension"] == [{"url": "token", "valueUri": "http://testserver/oauth2/token"}]
    interactions = {i["code"] for i in statement["rest"][0]["interaction"]}
    assert interactions == {"transaction", "batch"}


async def test_smart_configuration_for_backend_services(client: Any) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        response = await client.get(path)
        assert response.status_code == 200
        config = response.json()
        assert config["token_endpoint"] == "http://testserver/oauth2/token"
        assert config["grant_types_supported"] == ["client_credentials"]
        assert set(config["token_endpoint_auth_methods_supported"]) == {
            "client_secret_basic",
            "private_key_jwt",
        }
        assert {"referrals:read", "referrals:write"} <= set(config["scopes_supported"])
        assert "client-confidential-asymmetric" in config["capabilities"]


async def test_operation_outcomes_carry_coded_details(bridge: Bridge) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    cases = [
        (await bridge.http.get("/fhir/Task/nothing", headers=key), 404, "not-found"),
        (await bridge.http.get("/fhir/Task"), 401, "unauthorized"),
        (
            await bridge.http.get("/fhir/Task", headers={**key, "Accept": "application/xml"}),
            406,
            "not-acceptable",
        ),
        (
            await bridge.http.post(
                "/fhir/ServiceRequest", content=b"{}", headers={**key, "Content-Type": "text/x"}
            ),
            415,
            "unsupported-media-type",
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert codes(response.json())[OURS] == code
    assert codes(cases[0][0].json())[BARS] == "REC_NOT_FOUND"
    assert codes(cases[1][0].json())[BARS] == "REC_UNAUTHORIZED"
    assert BARS not in codes(cases[2][0].json())  # BaRS has no code of its own for 406


def test_our_codes_are_a_codesystem_and_barss_are_its() -> None:
    """Every code the errors use is in fhir/CodeSystem-outcome-details.json; the BaRS codes
    used are those BaRS's own examples use for the same statuses."""
    from app.errors import BARS_BY_STATUS, DETAILS_BY_STATUS

    system = json.loads((ROOT / "fhir" / "CodeSystem-outcome-details.json").read_text())
    assert system["url"] == OURS
    declared = {c["code"] for c in system["concept"]}
    assert (
        set(DETAILS_BY_STATUS.values())
        | {
            "identifier-conflict",
            "invalid-resource",
            "search-ignored",
        }
        <= declared
    )
    examples = ROOT / "tests" / "fixtures" / "fhir-examples" / "bars" / "OperationOutcome" / "REC"
    for path in examples.glob("*.json"):
        status = int(path.name.split("-")[0])
        outcome = json.loads(path.read_text())
        bars = outcome["issue"][0]["details"]["coding"][0]["code"]
        assert BARS_BY_STATUS[status] == bars, path.name
