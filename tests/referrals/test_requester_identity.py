"""Identity by the requester (issue 15 part 3): a client refers for its own organisation and for
those the installation's admin names; ServiceRequest.requester's ODS code must be one of them
(else 403 naming the element, nothing stored); the requester's organisation's clinical route
gets the updates and the Task's requester is the referral's. Both databases."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Bridge, referral_resource, requester_of, row_counts
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"]}


async def new_client(bridge: Bridge, organisation: str) -> tuple[str, dict[str, str]]:
    response = await bridge.http.post(
        "/api/v1/clients",
        json={
            "name": "integration engine",
            "role": "clinical-system",
            "organisation": organisation,
        },
        headers=bridge.admin,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], {"Authorization": f"Bearer {body['api_key']}"}


async def test_a_requester_the_client_may_not_refer_for_is_refused(
    bridge: Bridge, database_url: str
) -> None:
    await bridge.service()
    _, engine = await new_client(bridge, "RW4")
    before = await row_counts(database_url)

    response = await bridge.refer(engine, referral_resource(requester=requester_of("RXA")))

    assert response.status_code == 403, response.text
    (issue,) = response.json()["issue"]
    assert issue["expression"] == ["ServiceRequest.requester"]
    assert "RXA" not in issue["diagnostics"]  # the value is not quoted back
    assert await row_counts(database_url) == before


async def test_an_admin_names_the_organisations_a_client_refers_for(bridge: Bridge) -> None:
    await bridge.service()
    client_id, engine = await new_client(bridge, "RW4")
    org_admin = await bridge.key("admin", "RW4")

    # An organisation's admin cannot let its client speak for another organisation.
    refused = await bridge.http.put(
        f"/api/v1/clients/{client_id}/acts-for",
        json={"organisations": ["RXA"]},
        headers=org_admin,
    )
    assert refused.status_code == 403, refused.text
    bad = await bridge.http.put(
        f"/api/v1/clients/{client_id}/acts-for",
        json={"organisations": ["not an ods code"]},
        headers=bridge.admin,
    )
    assert bad.status_code == 422, bad.text

    named = await bridge.http.put(
        f"/api/v1/clients/{client_id}/acts-for",
        json={"organisations": ["RXA", "RW4", "RTV"]},
        headers=bridge.admin,
    )
    assert named.status_code == 200, named.text
    assert named.json()["acts_for"] == ["RTV", "RXA"]  # its own is implied

    for ods in ("RW4", "RXA", "RTV"):
        response = await bridge.refer(engine, referral_resource(requester=requester_of(ods)))
        assert response.status_code == 201, (ods, response.text)
    assert (
        await bridge.refer(engine, referral_resource(requester=requester_of("RQ3")))
    ).status_code == 403

    # Taken back: refused again.
    await bridge.http.put(
        f"/api/v1/clients/{client_id}/acts-for", json={"organisations": []}, headers=bridge.admin
    )
    response = await bridge.refer(engine, referral_resource(requester=requester_of("RXA")))
    assert response.status_code == 403


async def test_updates_go_to_the_requesters_route_and_the_task_names_it(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    client_id, engine = await new_client(bridge, "RW4")
    await bridge.http.put(
        f"/api/v1/clients/{client_id}/acts-for",
        json={"organisations": ["RXA"]},
        headers=bridge.admin,
    )
    engines_route, requesters_route = Receiver(), Receiver()
    for organisation, receiver in (("RW4", engines_route), ("RXA", requesters_route)):
        response = await bridge.http.put(
            f"/api/v1/clinical-routes/{organisation}",
            json={
                "adapter": "fhir_push",
                "adapter_config": {"base_url": receiver.url + "/fhir", "write_mode": "update"},
            },
            headers=bridge.admin,
        )
        assert response.status_code == 200, response.text

    response = await bridge.refer(engine, referral_resource(requester=requester_of("RXA")))
    assert response.status_code == 201, response.text
    referral_id = response.json()["id"]
    tasks = await bridge.http.get(
        "/fhir/Task", params={"focus": f"ServiceRequest/{referral_id}"}, headers=engine
    )
    (entry,) = tasks.json()["entry"]
    assert entry["resource"]["requester"]["identifier"]["value"] == "RXA"

    await engines_route.start()
    await requesters_route.start()
    try:
        await dispatcher_for(app).drain()
    finally:
        await engines_route.stop()
        await requesters_route.stop()
    assert engines_route.requests == []
    (pushed,) = requesters_route.requests
    assert pushed.method == "PUT" and pushed.path.startswith("/fhir/Task/")
    assert pushed.json()["requester"]["identifier"]["value"] == "RXA"
