"""The CapabilityStatement describes BaRS messaging and FHIR Subscriptions (issue 17): what it
lists is served, and it names the topic a Subscription's criteria must be."""

from __future__ import annotations

from typing import Any

from app.fhir.validation import validate_resource
from app.outbox.topics import TOPIC_URL

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"


async def test_the_statement_names_process_message_subscriptions_and_the_topic(client: Any) -> None:
    statement = (await client.get("/fhir/metadata")).json()
    assert validate_resource(statement) == []
    rest = statement["rest"][0]
    assert [o["name"] for o in rest["operation"]] == ["process-message"]
    assert statement["messaging"][0]["supportedMessage"][0]["mode"] == "receiver"
    resources = {r["type"]: r for r in rest["resource"]}
    subscription = resources["Subscription"]
    assert subscription["extension"] == [
        {
            "url": f"{BACKPORT}/StructureDefinition/"
            "capabilitystatement-subscriptiontopic-canonical",
            "valueCanonical": TOPIC_URL,
        }
    ]
    assert {i["code"] for i in subscription["interaction"]} == {
        "create",
        "read",
        "delete",
        "search-type",
    }
    assert [o["name"] for o in subscription["operation"]] == ["status", "events"]
    assert [i["code"] for i in resources["Basic"]["interaction"]] == ["read"]

    # What it lists is there.
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "post" in paths["/fhir/$process-message"]
    assert {"get", "post"} <= set(paths["/fhir/Subscription"])
    assert {"get", "delete"} <= set(paths["/fhir/Subscription/{fhir_subscription_id}"])
    assert "get" in paths["/fhir/Subscription/{fhir_subscription_id}/$status"]
    assert "get" in paths["/fhir/Subscription/{fhir_subscription_id}/$events"]
    assert "get" in paths["/fhir/Basic/{basic_id}"]
