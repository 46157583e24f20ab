"""Amendments never vanish (issue 16 part 2, DESIGN §11): a repeat of a held identifier with other
content is 409; the referrer changes an open referral with a FHIR update (If-Match required),
which is a referral.updated event, sent on to the platform and to subscribers."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from app.cases.models import CaseEvent, Referral
from app.db import Database
from app.outbox.models import Delivery
from tests.conftest import ADMIN_KEY, FHIR_JSON, Bridge, referral_resource
from tests.support.cases import open_case
from tests.support.delivery import dispatcher_for
from tests.support.elemental_platform import FakePlatform, make_platform_app, serve

API_KEY = "elemental-test-key"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


async def put(
    bridge: Bridge, key: dict[str, str], resource: dict[str, Any], if_match: str | None
) -> Any:
    headers = {**key, **FHIR_JSON}
    if if_match is not None:
        headers["If-Match"] = if_match
    return await bridge.http.put(
        f"/fhir/ServiceRequest/{resource['id']}", content=orjson.dumps(resource), headers=headers
    )


def amended(held: dict[str, Any]) -> dict[str, Any]:
    """What a referrer may change: notes, priority, reasons and the patient's phone."""
    changed = copy.deepcopy(held)
    changed["note"] = [{"text": "Call in the morning now, please."}]
    changed["priority"] = "urgent"
    changed["reasonCode"] = [{"text": "Housing worries"}]
    patient = next(r for r in changed["contained"] if r["resourceType"] == "Patient")
    patient["telecom"] = [{"system": "phone", "value": "07700 900123", "use": "mobile"}]
    return changed


async def test_a_repeat_with_other_content_is_409_and_changes_nothing(bridge: Bridge) -> None:
    await bridge.service()
    referrer = await bridge.key("clinical-system", "RW4")
    resource = referral_resource()
    created = await bridge.refer(referrer, resource)
    assert created.status_code == 201
    held = created.json()

    same = await bridge.refer(referrer, copy.deepcopy(resource))
    assert same.status_code == 200
    assert same.json() == held

    changed = {**copy.deepcopy(resource), "note": [{"text": "A secret new note ZQX"}]}
    refused = await bridge.refer(referrer, changed)
    assert refused.status_code == 409, refused.text
    issue = refused.json()["issue"][0]
    assert issue["code"] == "duplicate"
    assert issue["expression"] == ["ServiceRequest.identifier"]
    assert f"PUT /fhir/ServiceRequest/{held['id']}" in issue["diagnostics"]
    assert "If-Match" in issue["diagnostics"]
    assert "ZQX" not in refused.text and resource["identifier"][0]["value"] not in refused.text
    assert {c["code"] for c in issue["details"]["coding"]} == {
        "identifier-conflict",
        "REC_CONFLICT",
    }
    read = await bridge.http.get(f"/fhir/ServiceRequest/{held['id']}", headers=referrer)
    assert read.json() == held


async def test_the_referrer_amends_an_open_referral(bridge: Bridge, app: Any) -> None:
    case = await open_case(bridge)
    referrer = case.referrer
    path = f"/fhir/ServiceRequest/{case.referral_id}"
    held = (await bridge.http.get(path, headers=referrer)).json()
    patient_id = (await case.detail()).json()["resources"]["patient"].removeprefix("Patient/")
    change = amended(held)

    assert (await put(bridge, referrer, change, None)).status_code == 428
    assert (await put(bridge, referrer, change, 'W/"7"')).status_code == 412
    response = await put(bridge, referrer, change, 'W/"1"')
    assert response.status_code == 200, response.text
    now = response.json()
    assert now["meta"]["versionId"] == "2" and response.headers["etag"] == 'W/"2"'
    assert now["note"] == change["note"] and now["priority"] == "urgent"
    assert now["status"] == "active"

    # A repeat of the update changes nothing, whatever version it names.
    again = await put(bridge, referrer, change, 'W/"1"')
    assert again.status_code == 200 and again.json()["meta"]["versionId"] == "2"

    # The change is an event through the one domain path, and the Task moved on with it.
    database: Database = app.state.database
    async with database.read_sessions() as session:
        events = list(
            await session.scalars(
                select(CaseEvent).where(CaseEvent.case_id == case.case_id).order_by(CaseEvent.seq)
            )
        )
        referral = await session.get(Referral, case.referral_id)
    assert [e.type for e in events] == ["referral.received", "referral.updated"]
    assert events[1].data == {"changed": ["priority", "note", "reasonCode", "Patient.telecom"]}
    assert events[1].source == "clinician"
    assert referral is not None and referral.priority == "urgent"
    assert referral.phone == "07700 900123"
    assert (await case.task())["meta"]["versionId"] == "2"

    # Both versions stay readable; so do the Patient's.
    first = await bridge.http.get(f"{path}/_history/1", headers=referrer)
    assert first.status_code == 200 and first.json() == held
    history = (await bridge.http.get(f"{path}/_history", headers=referrer)).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    patient = (await bridge.http.get(f"/fhir/Patient/{patient_id}", headers=referrer)).json()
    assert patient["meta"]["versionId"] == "2"
    assert patient["telecom"][0]["value"] == "07700 900123"
    old_patient = await bridge.http.get(f"/fhir/Patient/{patient_id}/_history/1", headers=referrer)
    assert old_patient.json()["telecom"][0]["value"] == "07700 900000"

    # A cancellation is still a change of status alone, at the current version.
    cancelled = await put(bridge, referrer, {**now, "status": "revoked"}, 'W/"2"')
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "revoked"
    # Every version it had is served as it was, the one the cancellation superseded too.
    history = (await bridge.http.get(f"{path}/_history", headers=referrer)).json()
    assert [e["resource"] for e in history["entry"]] == [cancelled.json(), now, held]


async def test_what_a_referrer_may_not_change_is_422_naming_it(bridge: Bridge) -> None:
    case = await open_case(bridge)
    path = f"/fhir/ServiceRequest/{case.referral_id}"
    held = (await bridge.http.get(path, headers=case.referrer)).json()
    change = copy.deepcopy(held)
    change["authoredOn"] = "2026-01-01T00:00:00Z"
    patient = next(r for r in change["contained"] if r["resourceType"] == "Patient")
    patient["name"] = [{"family": "Someone", "given": ["Else"]}]
    response = await put(bridge, case.referrer, change, 'W/"1"')
    assert response.status_code == 422, response.text
    assert [i["expression"] for i in response.json()["issue"]] == [
        ["ServiceRequest.authoredOn"],
        ["ServiceRequest.contained[0].name"],
    ]
    assert "Someone" not in response.text
    # An amendment must still meet every rule of a referral: consent taken away is refused.
    no_consent = {k: v for k, v in held.items() if k != "supportingInfo"}
    no_consent["contained"] = [r for r in held["contained"] if r["resourceType"] != "Consent"]
    refused = await put(bridge, case.referrer, no_consent, 'W/"1"')
    assert refused.status_code == 422
    read = await bridge.http.get(path, headers=case.referrer)
    assert read.json() == held


async def test_a_closed_referral_cannot_be_amended(bridge: Bridge) -> None:
    case = await open_case(bridge)
    for body in (
        {"type": "case.accepted"},
        {"type": "contact.attempted", "outcome": "reached"},
        {"type": "case.completed", "reason": "needs-met"},
    ):
        await case.record(body)
    path = f"/fhir/ServiceRequest/{case.referral_id}"
    held = (await bridge.http.get(path, headers=case.referrer)).json()
    response = await put(bridge, case.referrer, amended(held), f'W/"{held["meta"]["versionId"]}"')
    assert response.status_code == 409, response.text
    assert "already closed" in response.json()["issue"][0]["diagnostics"]
    # The Task says the case completed; the referral's status is its requester's (SDOH CC IG).
    assert (await bridge.http.get(path, headers=case.referrer)).json()["status"] == "active"
    assert (await case.task())["status"] == "completed"


@pytest.fixture
async def platform() -> AsyncIterator[tuple[FakePlatform, str]]:
    fake = FakePlatform(API_KEY)
    async with serve(make_platform_app(API_KEY, fake)) as base_url:
        yield fake, base_url


async def test_an_amendment_reaches_the_platform_and_subscribers(
    app: Any, bridge: Bridge, platform: tuple[FakePlatform, str]
) -> None:
    fake, base_url = platform
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    registered = await bridge.http.post(
        "/api/v1/services",
        json={
            "id": "life-rooms",
            "name": "The Life Rooms",
            "organisation": "LR001",
            "adapter": "elemental",
            "adapter_config": {"base_url": base_url, "api_key": API_KEY, "webhook_secret": SECRET},
        },
        headers=admin,
    )
    assert registered.status_code == 201, registered.text
    subscription = await bridge.http.post(
        "/api/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/hook", "events": ["referral.updated"]},
        headers=admin,
    )
    assert subscription.status_code == 201, subscription.text
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    created = (await bridge.refer(referrer, referral_resource())).json()
    await dispatcher_for(app).drain()
    (record,) = fake.referrals.values()

    response = await put(bridge, referrer, amended(created), 'W/"1"')
    assert response.status_code == 200, response.text
    for _ in range(20):
        await dispatcher_for(app).drain()
        if fake.updates:
            break
    (update,) = fake.updates
    assert update.method == "PATCH" and update.path == f"/api/v1/referrals/{record.id}"
    assert update.body["external_id"] == created["id"]
    assert update.body["urgency"] == "urgent"
    assert update.body["notes"] == "Call in the morning now, please."
    assert update.body["client"] == {"phone": "07700 900123", "postcode": "WA7 1AA"}
    assert update.headers["idempotency-key"]
    assert record.body["urgency"] == "urgent"

    database: Database = app.state.database
    async with database.read_sessions() as session:
        to_subscriber = list(
            await session.scalars(
                select(Delivery.event_type).where(
                    Delivery.destination_id == subscription.json()["id"]
                )
            )
        )
    assert to_subscriber == ["referral.updated"]
