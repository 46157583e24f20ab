"""Organisation scope of the admin operations (issue 13 part 1, high): the hostile run's
reproductions in the sandbox, step by step, and the rule itself (app/security/scope.py).

The sandbox's admin key (organisation SBXLR, public on purpose) is an organisation's admin like
any other: it manages its own organisation's clients, services, clinical route, subscriptions
and deliveries, and nothing of another organisation's. Only the installation's bootstrap key
acts across organisations. Every route across organisations is in
tests/clients/test_authorisation.py; here are the attacks as they were run. Both databases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app import sandbox
from app.cases.models import Referral
from app.db import transaction
from app.errors import Forbidden, NotFound
from app.security import scope
from app.security.auth import Principal
from app.security.roles import Role
from tests.conftest import ADMIN_KEY, Bridge, referral_resource, requester_of
from tests.support.cases import open_case
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver

SANDBOX_ADMIN = {"Authorization": f"Bearer {sandbox.SANDBOX_KEYS[Role.ADMIN][0]}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Another organisation on the same installation: a trust that refers to a service of its own.
TRUST, PROVIDER, SERVICE = "RXTRUST", "RXPROV", "rx-service"
NHS_NUMBER = "9000000009"  # the example referral's patient


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"sandbox": True, "allowed_outbound_hosts": ["127.0.0.1"]}


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Receiver, Receiver]]:
    """The other organisation's FHIR server, and the one the attacker would point its route at."""
    theirs, attackers = await Receiver().start(), await Receiver().start()
    yield theirs, attackers
    await theirs.stop()
    await attackers.stop()


@dataclass
class Other:
    """The other organisation: its clinical system's client and key, and its patient's referral."""

    client_id: str
    clinical: dict[str, str]
    referral_id: str


async def other_organisation(app: Any, bridge: Bridge, route_url: str) -> Other:
    """The sandbox seeded, then another organisation set up by the installation's admin: a
    service, a clinical client, its clinical route, and a referral of its patient."""
    async with transaction(app.state.database.write_sessions) as session:
        await sandbox.seed_session(session, app.state.settings)
    await bridge.service(SERVICE, PROVIDER)
    response = await bridge.http.post(
        "/api/v1/clients",
        json={"name": "RiO", "role": "clinical-system", "organisation": TRUST},
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    client_id, clinical = (
        response.json()["id"],
        {"Authorization": f"Bearer {response.json()['api_key']}"},
    )
    route = await bridge.http.put(
        f"/api/v1/clinical-routes/{TRUST}",
        json={"adapter": "fhir_push", "adapter_config": {"base_url": route_url}},
        headers=ADMIN,
    )
    assert route.status_code == 200, route.text
    referred = await bridge.refer(
        clinical, referral_resource(SERVICE, requester=requester_of(TRUST))
    )
    assert referred.status_code == 201, referred.text
    return Other(client_id, clinical, referred.json()["id"])


async def token(http: httpx.AsyncClient, client_id: str, secret: str) -> dict[str, str]:
    response = await http.post(
        "/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_an_organisations_admin_cannot_take_over_another_organisations_client(
    app: Any, bridge: Bridge, receivers: tuple[Receiver, Receiver]
) -> None:
    # Was: POST …/secret → 200, then a token, then the other organisation's patient.
    other = await other_organisation(app, bridge, receivers[0].url + "/fhir")
    path = f"/api/v1/clients/{other.client_id}"
    stolen = await bridge.http.post(f"{path}/secret", headers=SANDBOX_ADMIN)
    assert stolen.status_code == 404, stolen.text
    assert "client_secret" not in stolen.text
    key = await bridge.http.put(
        f"{path}/public-key",
        json={
            "jwk": {
                "kty": "EC",
                "crv": "P-256",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
            }
        },
        headers=SANDBOX_ADMIN,
    )
    assert key.status_code == 404, key.text
    # Revoking it (a denial of service on the other organisation) is refused the same way.
    revoked = await bridge.http.post(f"{path}/revoke", headers=SANDBOX_ADMIN)
    assert revoked.status_code == 404, revoked.text
    read = await bridge.http.get(
        f"/fhir/ServiceRequest/{other.referral_id}", headers=other.clinical
    )
    assert read.status_code == 200, "the other organisation's key still works"

    # The chain the attack used is real: the installation's admin may issue that secret, and
    # its token reads the patient (name, birth date, NHS number).
    issued = await bridge.http.post(f"{path}/secret", headers=ADMIN)
    assert issued.status_code == 200, issued.text
    bearer = await token(bridge.http, other.client_id, issued.json()["client_secret"])
    patient = await bridge.http.get(f"/fhir/ServiceRequest/{other.referral_id}", headers=bearer)
    assert patient.status_code == 200 and NHS_NUMBER in patient.text
    # And the sandbox's admin manages its own organisation's clients.
    own = await bridge.http.post("/api/v1/clients/sandbox-advisor/secret", headers=SANDBOX_ADMIN)
    assert own.status_code == 200, own.text


async def test_an_organisations_admin_lists_and_creates_only_its_own_clients(
    app: Any, bridge: Bridge, receivers: tuple[Receiver, Receiver]
) -> None:
    # Was: every organisation's clients listed.
    other = await other_organisation(app, bridge, receivers[0].url + "/fhir")
    listed = await bridge.http.get("/api/v1/clients", headers=SANDBOX_ADMIN)
    assert listed.status_code == 200, listed.text
    assert {c["organisation"] for c in listed.json()} == {sandbox.SANDBOX_SERVICE_ORGANISATION}
    assert {c["id"] for c in listed.json()} == {
        f"sandbox-{role.value}"
        for role in (Role.ADVISOR, Role.PLATFORM, Role.REPORTING, Role.ADMIN)
    }
    everything = await bridge.http.get("/api/v1/clients", headers=ADMIN)
    assert other.client_id in {c["id"] for c in everything.json()}

    # Creating a client, or a service, for another organisation is refused (it would be that
    # organisation's key); for its own organisation it is done.
    for organisation, expected in [(TRUST, 403), (sandbox.SANDBOX_SERVICE_ORGANISATION, 201)]:
        body = {"name": "mine", "role": "admin", "organisation": organisation}
        response = await bridge.http.post("/api/v1/clients", json=body, headers=SANDBOX_ADMIN)
        assert response.status_code == expected, response.text
        service = {
            "id": f"svc-{organisation.lower()}",
            "name": "A service",
            "organisation": organisation,
            "adapter": "local",
        }
        response = await bridge.http.post("/api/v1/services", json=service, headers=SANDBOX_ADMIN)
        assert response.status_code == expected, response.text
    refused = await bridge.http.post(
        "/api/v1/clients",
        json={"name": "theirs", "role": "clinical-system", "organisation": TRUST},
        headers=SANDBOX_ADMIN,
    )
    assert refused.json()["detail"].startswith("organisation must be your own organisation")
    assert TRUST not in refused.text  # the value sent is not repeated


async def test_an_organisations_admin_cannot_repoint_another_organisations_route(
    app: Any, bridge: Bridge, receivers: tuple[Receiver, Receiver]
) -> None:
    # Was: PUT /api/v1/clinical-routes/{ods} → 200, and the next Task, with the NHS number,
    # went to the attacker's URL.
    theirs, attackers = receivers
    other = await other_organisation(app, bridge, theirs.url + "/fhir")
    await dispatcher_for(app).drain()
    assert theirs.requests, "the other organisation's route works"
    sent_before = len(theirs.requests)

    hijack = {"adapter": "fhir_push", "adapter_config": {"base_url": attackers.url + "/fhir"}}
    response = await bridge.http.put(
        f"/api/v1/clinical-routes/{TRUST}", json=hijack, headers=SANDBOX_ADMIN
    )
    assert response.status_code == 403, response.text
    assert (
        await bridge.http.get(f"/api/v1/clinical-routes/{TRUST}", headers=SANDBOX_ADMIN)
    ).status_code == 404
    assert (await bridge.http.get("/api/v1/clinical-routes", headers=SANDBOX_ADMIN)).json() == []

    # The next Task goes where the other organisation said, and nowhere else.
    advisor = await bridge.key("advisor", PROVIDER)
    tasks = await bridge.http.get(
        "/fhir/Task", params={"focus": f"ServiceRequest/{other.referral_id}"}, headers=advisor
    )
    case_id = tasks.json()["entry"][0]["resource"]["id"]
    recorded = await bridge.http.post(
        f"/api/v1/cases/{case_id}/events", json={"type": "case.accepted"}, headers=advisor
    )
    assert recorded.status_code == 201, recorded.text
    await dispatcher_for(app).drain()
    assert len(theirs.requests) > sent_before
    assert any(NHS_NUMBER in request.body.decode() for request in theirs.requests[sent_before:])
    assert attackers.requests == []

    # Its own organisation's route the sandbox's admin may set.
    own = sandbox.SANDBOX_SERVICE_ORGANISATION
    response = await bridge.http.put(
        f"/api/v1/clinical-routes/{own}", json=hijack, headers=SANDBOX_ADMIN
    )
    assert response.status_code == 200, response.text


async def test_an_organisations_admin_cannot_read_or_replay_another_organisations_deliveries(
    app: Any, bridge: Bridge, receivers: tuple[Receiver, Receiver]
) -> None:
    # Was: another organisation's deliveries listed, read and replayed.
    theirs, _ = receivers
    theirs.default_status = 400  # refused for good: dead letters at once
    other = await other_organisation(app, bridge, theirs.url + "/fhir")
    await dispatcher_for(app).drain()
    listed = await bridge.http.get(
        "/api/v1/deliveries", params={"referral": other.referral_id}, headers=ADMIN
    )
    dead = [d for d in listed.json()["items"] if d["state"] == "dead"]
    assert dead, listed.text
    delivery = dead[0]

    mine = await bridge.http.get(
        "/api/v1/deliveries", params={"referral": other.referral_id}, headers=SANDBOX_ADMIN
    )
    assert mine.status_code == 200 and mine.json()["items"] == []
    everything = await bridge.http.get("/api/v1/deliveries", headers=SANDBOX_ADMIN)
    assert other.referral_id not in everything.text
    path = f"/api/v1/deliveries/{delivery['id']}"
    assert (await bridge.http.get(path, headers=SANDBOX_ADMIN)).status_code == 404
    assert (await bridge.http.post(f"{path}/replay", headers=SANDBOX_ADMIN)).status_code == 404
    replayed = await bridge.http.post(
        "/api/v1/deliveries/replay", json={"referral": other.referral_id}, headers=SANDBOX_ADMIN
    )
    assert replayed.status_code == 200 and replayed.json() == {"replayed": 0, "ids": []}
    stats = await bridge.http.get("/api/v1/deliveries/stats", headers=SANDBOX_ADMIN)
    assert delivery["destination_id"] not in stats.text
    assert stats.json()["by_state"]["dead"] == 0
    # Still dead: nothing was sent again.
    again = await bridge.http.get(path, headers=ADMIN)
    assert again.json()["state"] == "dead"
    assert again.json()["attempts"] == delivery["attempts"]

    # The other organisation's own admin does see and replay them.
    their_admin = await bridge.key("admin", TRUST)
    assert (await bridge.http.get(path, headers=their_admin)).status_code == 200
    replayed = await bridge.http.post(f"{path}/replay", headers=their_admin)
    assert replayed.status_code == 200 and replayed.json()["state"] == "pending"


async def test_an_organisations_admin_reads_only_its_own_patients_in_the_audit_trail(
    app: Any, bridge: Bridge
) -> None:
    """A request that reached several organisations' referrals (the installation admin's search)
    is on each organisation's trail, showing each only its own referrals' patients: another
    organisation's referral ids are neither shown nor searchable."""
    ours = await open_case(bridge)  # RW4 → life-rooms of LR001
    theirs = await open_case(
        bridge, service="zz-service", service_organisation="ZZ001", referrer_organisation="RX1"
    )
    everyone = await bridge.http.get(
        "/fhir/ServiceRequest", params={"patient.identifier": NHS_NUMBER}, headers=ADMIN
    )
    assert everyone.json()["total"] == 2, everyone.text
    admin = await bridge.key("admin", "LR001")

    trail = await bridge.http.get(
        "/fhir/AuditEvent",
        params={"entity": f"ServiceRequest/{ours.referral_id}", "action": "E"},
        headers=admin,
    )
    assert trail.status_code == 200, trail.text
    searches = [entry["resource"] for entry in trail.json()["entry"]]
    assert any(e["agent"][0]["who"]["display"] == "bootstrap admin" for e in searches)
    assert ours.referral_id in trail.text
    assert theirs.referral_id not in trail.text
    for search in searches:
        record = await bridge.http.get(f"/fhir/AuditEvent/{search['id']}", headers=admin)
        assert record.status_code == 200 and theirs.referral_id not in record.text
    # Their referral finds nothing, though the same record reached it.
    probe = await bridge.http.get(
        "/fhir/AuditEvent", params={"entity": f"ServiceRequest/{theirs.referral_id}"}, headers=admin
    )
    assert probe.json()["total"] == 0, probe.text
    # The installation's admin sees the whole record.
    whole = await bridge.http.get(
        "/fhir/AuditEvent", params={"entity": f"ServiceRequest/{theirs.referral_id}"}, headers=ADMIN
    )
    assert whole.json()["total"] > 0 and ours.referral_id in whole.text


# --- the rule itself ----------------------------------------------------------------------------


def principal(role: Role, organisation: str | None) -> Principal:
    return Principal(client_id="c", name="n", role=role, organisation=organisation)


def test_only_the_installations_admin_acts_for_every_organisation() -> None:
    installation = Principal(client_id=None, name="bootstrap", role=Role.ADMIN, organisation=None)
    organisation_admin = principal(Role.ADMIN, "LR001")
    assert installation.sees_everything and not organisation_admin.sees_everything
    assert scope.acting_for(installation) is None
    assert scope.acting_for(organisation_admin) == "LR001"
    assert scope.owns(installation, "RW4") and scope.owns(installation, None)
    assert scope.owns(organisation_admin, "LR001")
    assert not scope.owns(organisation_admin, "RW4")
    # An installation-wide object (a bootstrap admin's subscription) is no organisation's.
    assert not scope.owns(organisation_admin, None)
    assert scope.owned_by(installation, Referral.organisation) is None
    assert scope.installation("metrics").sees_everything


async def test_a_principal_without_an_organisation_reaches_nothing(
    app: Any, bridge: Bridge
) -> None:
    """Not a state a client record can make; if one were made, it must see nothing rather than
    everything (the condition is false, not absent)."""
    await bridge.service()
    referrer = await bridge.key("clinical-system", "RW4")
    assert (await bridge.refer(referrer, referral_resource())).status_code == 201
    nobody = principal(Role.ADVISOR, None)
    condition = scope.owned_by(nobody, Referral.organisation)
    assert condition is not None
    async with app.state.database.read_sessions() as session:
        assert list(await session.scalars(select(Referral.id).where(condition))) == []
        everyone = scope.restrict(select(Referral.id), None)
        assert len(list(await session.scalars(everyone))) == 1


def test_refusals_name_the_element_not_the_value() -> None:
    with pytest.raises(Forbidden) as refused:
        scope.require_own(principal(Role.ADMIN, "LR001"), "RW4", expression="organisation")
    assert "RW4" not in str(refused.value)
    assert refused.value.issues[0].expression == "organisation"
    with pytest.raises(NotFound) as unknown:
        scope.require_found(principal(Role.ADMIN, "LR001"), "RW4", "No such client")
    assert str(unknown.value) == "No such client"
    scope.require_own(principal(Role.ADMIN, "LR001"), "LR001", expression="organisation")
    scope.require_found(principal(Role.ADMIN, "LR001"), "LR001", "No such client")
