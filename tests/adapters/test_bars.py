"""The ``bars`` clinical adapter (issue 17 part 2), end to end: a BaRS referral message comes in
at $process-message, the case moves, and the sender's BaRS receiver (a real HTTP server on
127.0.0.1) gets servicerequest-response messages answering the original message, in order,
retried by the dispatcher, each valid R4. Both databases."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

import orjson
import pytest

from adapters.bars import BarsAdapter, BarsConfig, response_message
from adapters.base import ClinicalUpdate, FHIRResourceUpdate
from app.fhir.validation import validate_resource
from tests.bars.test_process_message import bars_message, headers, send
from tests.conftest import ADMIN_KEY, Bridge
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ORIGINAL_BUNDLE = "86e3371d-1c15-4862-9552-d9560f8292ba"  # the BaRS example's Bundle.id


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


async def route_to(bridge: Bridge, receiver: Receiver) -> None:
    response = await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        json={
            "adapter": "bars",
            "adapter_config": {
                "endpoint": f"{receiver.url}/fhir/$process-message",
                "source_endpoint": "https://fhir.spbridge.org/Id/service|life-rooms",
                "organisation_ods": "LR001",
            },
        },
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text


async def bars_referral(bridge: Bridge) -> tuple[str, str, dict[str, str]]:
    """A BaRS referral made through $process-message: its referral id, case id, advisor key."""
    referrer = await bridge.key("clinical-system", "RW4")
    advisor = await bridge.key("advisor", "LR001")
    made = await send(bridge, bars_message(), headers(referrer))
    assert made.status_code == 200, made.text
    referral_id = made.headers["content-location"].removeprefix("ServiceRequest/")
    tasks = await bridge.http.get(
        "/fhir/Task", params={"focus": f"ServiceRequest/{referral_id}"}, headers=referrer
    )
    return referral_id, tasks.json()["entry"][0]["resource"]["id"], advisor


def check_response_message(body: dict[str, Any], referral_id: str) -> dict[str, Any]:
    """A valid R4 servicerequest-response answering the original message; its Task."""
    assert validate_resource(body) == []
    assert body["type"] == "message"
    header = body["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["code"] == "servicerequest-response"
    assert header["response"] == {"identifier": ORIGINAL_BUNDLE, "code": "ok"}
    assert header["destination"] == [
        {"endpoint": "http://fhir.nhs.uk/Id/dos-service-id|2222222222"}
    ]
    focus = header["focus"][0]["reference"]
    by_url = {e["fullUrl"]: e["resource"] for e in body["entry"]}
    service_request = by_url[focus]
    assert service_request["resourceType"] == "ServiceRequest"
    assert service_request["id"] == referral_id
    assert service_request["identifier"][0]["value"] == (
        "urn:uuid:236bb75d-90ef-461f-b71e-fde7f899802c"
    )
    tasks = [r for r in by_url.values() if r["resourceType"] == "Task"]
    assert len(tasks) == 1
    task: dict[str, Any] = tasks[0]
    return task


async def test_the_sender_hears_back_as_the_case_moves(bridge: Bridge, app: Any) -> None:
    receiver = await Receiver().start()
    try:
        await bridge.service()
        await route_to(bridge, receiver)
        referral_id, case_id, advisor = await bars_referral(bridge)
        dispatcher = dispatcher_for(app)
        await dispatcher.drain()
        assert receiver.requests == []  # received: nothing to tell yet

        async def record(body: dict[str, Any]) -> None:
            response = await bridge.http.post(
                f"/api/v1/cases/{case_id}/events", json=body, headers=advisor
            )
            assert response.status_code == 201, response.text

        receiver.answer(503)  # the first attempt fails: retried with the same message
        await record({"type": "case.accepted", "team": "Halton hub"})
        for _ in range(20):
            await dispatcher.drain()
            if len(receiver.requests) >= 2:
                break
        await record({"type": "contact.attempted", "outcome": "reached", "method": "telephone"})
        await record({"type": "case.completed", "reason": "needs-met"})
        await dispatcher.drain()
        # accepted (503, then again), completed; contact.attempted is not a BaRS response.
        assert [r.path for r in receiver.requests] == ["/fhir/$process-message"] * 3
        first, retried, completed = receiver.requests
        assert first.headers["x-request-id"] == retried.headers["x-request-id"]
        assert first.json()["id"] == retried.json()["id"]  # the same message on every retry
        assert retried.headers["content-type"].startswith("application/fhir+json")
        assert retried.headers["x-correlation-id"] == "corr-bars-1"
        assert retried.headers["nhsd-end-user-organisation-ods"] == "LR001"
        target = orjson.loads(base64.b64decode(retried.headers["nhsd-target-identifier"]))
        assert target == {"value": "2222222222", "system": "http://fhir.nhs.uk/Id/dos-service-id"}
        accepted = check_response_message(retried.json(), referral_id)
        assert (accepted["id"], accepted["status"]) == (case_id, "accepted")
        done = check_response_message(completed.json(), referral_id)
        assert done["status"] == "completed"
        assert completed.headers["x-request-id"] != retried.headers["x-request-id"]
    finally:
        await receiver.stop()


async def test_a_cancellation_message_is_answered_and_a_refusal_dead_letters(
    bridge: Bridge, app: Any
) -> None:
    receiver = await Receiver().start()
    try:
        await bridge.service()
        await route_to(bridge, receiver)
        referral_id, _case_id, _advisor = await bars_referral(bridge)
        referrer = await bridge.key("clinical-system", "RW4")
        receiver.answer(422)  # the sender's receiver refuses it: no retry helps
        cancelled = await send(bridge, bars_message(reason="cancel"), headers(referrer))
        assert cancelled.status_code == 200, cancelled.text
        await dispatcher_for(app).drain()
        assert len(receiver.requests) == 1
        task = check_response_message(receiver.requests[0].json(), referral_id)
        assert task["status"] == "cancelled"
        dead = await bridge.http.get("/api/v1/deliveries", params={"state": "dead"}, headers=ADMIN)
        assert dead.status_code == 200, dead.text
        assert [d["event_type"] for d in dead.json()["items"]] == ["referral.cancelled"]
    finally:
        await receiver.stop()


async def test_a_referral_that_did_not_come_by_bars_sends_nothing(bridge: Bridge, app: Any) -> None:
    from tests.support.cases import open_case

    receiver = await Receiver().start()
    try:
        await bridge.service()
        await route_to(bridge, receiver)
        case = await open_case(bridge, register=False)
        await case.record({"type": "case.accepted", "team": "Halton hub"})
        await dispatcher_for(app).drain()
        assert receiver.requests == []
        delivered = await bridge.http.get(
            "/api/v1/deliveries", params={"state": "delivered"}, headers=ADMIN
        )
        assert [d["event_type"] for d in delivered.json()["items"]] == ["case.accepted"]
    finally:
        await receiver.stop()


def test_the_response_message_is_stable_across_retries_and_valid_r4() -> None:
    config = BarsConfig(
        endpoint="https://sender.example/fhir/$process-message", source_endpoint="x|y"
    )
    update = ClinicalUpdate(
        referral_id="r1",
        event_type="case.rejected",
        resources=[
            FHIRResourceUpdate(
                "Task",
                "t1",
                {
                    "resourceType": "Task",
                    "id": "t1",
                    "status": "rejected",
                    "intent": "order",
                    "focus": {"reference": "ServiceRequest/r1"},
                },
            )
        ],
        origin={"channel": "bars", "bundle_id": ORIGINAL_BUNDLE, "source_endpoint": None},
        service_request={
            "resourceType": "ServiceRequest",
            "id": "r1",
            "status": "active",
            "intent": "order",
            "subject": {"identifier": {"value": "9000000009"}},
        },
    )
    message_id = str(uuid.uuid4())
    now = dt.datetime.now(dt.UTC)
    one = response_message(update, config, message_id, now)
    two = response_message(update, config, message_id, now)
    assert one == two
    assert validate_resource(one) == []
    assert "destination" not in one["entry"][0]["resource"]  # no source endpoint to answer
    assert BarsAdapter(config).outbound_urls() == [config.endpoint]


@pytest.mark.parametrize(
    "config",
    [
        {"endpoint": "ftp://sender.example/x", "source_endpoint": "x"},
        {"endpoint": "https://user:pw@sender.example/x", "source_endpoint": "x"},
        {"endpoint": "https://sender.example/x"},
        {"endpoint": "https://sender.example/x", "source_endpoint": "x", "bearer_token": "a b"},
    ],
)
async def test_an_unusable_route_is_refused_naming_the_setting(
    bridge: Bridge, config: dict[str, Any]
) -> None:
    response = await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        json={"adapter": "bars", "adapter_config": config},
        headers=ADMIN,
    )
    assert response.status_code == 422
    assert "adapter_config" in response.text
    assert "pw" not in response.text
