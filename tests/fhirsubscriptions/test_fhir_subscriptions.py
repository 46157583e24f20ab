"""FHIR Subscriptions, R5 Backport IG on R4 (issue 17 part 3): a client subscribes to "referral
Task changed", gets a handshake, then id-only notifications in order as the Task changes,
recovers missed ones with $events; every notification validates against the R4 JSON schema;
organisation-scoped; never patient data. Real receivers on 127.0.0.1; both databases."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import orjson
import pytest

from app.fhir.validation import validate_resource
from app.outbox.topics import TOPIC_URL
from tests.conftest import ADMIN_KEY, FHIR_JSON, Bridge
from tests.support.cases import open_case
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
NHS_NUMBER = "9000000009"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


def subscription(
    endpoint: str,
    *,
    filters: str | None = None,
    content: str = "id-only",
    heartbeat: int | None = None,
    headers: list[str] | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{BACKPORT}/backport-subscription"]},
        "status": "requested",
        "reason": "Follow our referrals",
        "criteria": TOPIC_URL,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]
            },
        },
    }
    if filters:
        resource["_criteria"] = {
            "extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": filters}]
        }
    if heartbeat:
        resource["channel"]["extension"] = [
            {"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat}
        ]
    if headers:
        resource["channel"]["header"] = headers
    return resource


async def subscribe(bridge: Bridge, key: dict[str, str], resource: dict[str, Any]) -> Any:
    return await bridge.http.post(
        "/fhir/Subscription", content=orjson.dumps(resource), headers={**key, **FHIR_JSON}
    )


def status_of(bundle: dict[str, Any]) -> dict[str, Any]:
    """The notification's SubscriptionStatus parameters, by name (notification-event: a list)."""
    assert validate_resource(bundle) == [], validate_resource(bundle)
    assert bundle["type"] == "history"
    parameters = bundle["entry"][0]["resource"]
    assert parameters["resourceType"] == "Parameters"
    out: dict[str, Any] = {"notification-event": []}
    for parameter in parameters["parameter"]:
        if parameter["name"] == "notification-event":
            out["notification-event"].append(
                {
                    p["name"]: next(v for k, v in p.items() if k.startswith("value"))
                    for p in parameter["part"]
                }
            )
        else:
            out[parameter["name"]] = next(v for k, v in parameter.items() if k.startswith("value"))
    return out


async def drain(app: Any, clock: Any = None) -> None:
    dispatcher = dispatcher_for(app, clock=clock) if clock else dispatcher_for(app)
    for _ in range(5):
        await dispatcher.drain()


async def test_handshake_then_id_only_notifications_in_order(bridge: Bridge, app: Any) -> None:
    receiver = await Receiver().start()
    try:
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4")
        made = await subscribe(
            bridge,
            referrer,
            subscription(f"{receiver.url}/hook", headers=["Authorization: Bearer s3cret"]),
        )
        assert made.status_code == 201, made.text
        created = made.json()
        assert created["status"] == "requested"
        assert "s3cret" not in made.text  # header values are never read back
        assert validate_resource(created) == []
        subscription_id = created["id"]
        await drain(app)
        assert len(receiver.requests) == 1
        handshake = receiver.requests[0]
        assert handshake.headers["authorization"] == "Bearer s3cret"
        assert handshake.headers["content-type"].startswith("application/fhir+json")
        shake = status_of(handshake.json())
        assert shake["type"] == "handshake"
        assert shake["events-since-subscription-start"] == "0"
        assert shake["topic"] == TOPIC_URL
        read = await bridge.http.get(f"/fhir/Subscription/{subscription_id}", headers=referrer)
        assert read.json()["status"] == "active"

        case = await open_case(bridge, register=False)
        await case.record({"type": "case.accepted", "team": "Halton hub"})
        await case.record(
            {"type": "contact.attempted", "outcome": "reached", "method": "telephone"}
        )
        await drain(app)
        notes = [status_of(r.json()) for r in receiver.requests[1:]]
        assert [n["type"] for n in notes] == ["event-notification"] * 3
        numbers = [n["notification-event"][0]["event-number"] for n in notes]
        assert numbers == ["1", "2", "3"]  # received, accepted, contacted: in order
        for note, request in zip(notes, receiver.requests[1:], strict=True):
            focus = note["notification-event"][0]["focus"]["reference"]
            assert focus.endswith(f"/Task/{case.case_id}")
            body = request.json()
            assert body["entry"][1] == {
                "fullUrl": focus,
                "request": {"method": "PUT", "url": f"Task/{case.case_id}"},
                "response": {"status": "200"},
            }
            assert "resource" not in body["entry"][1]
            assert NHS_NUMBER not in request.body.decode()
            assert "Example" not in request.body.decode()  # the patient's name
        # The Task the notification names is there to read.
        task = await bridge.http.get(f"/fhir/Task/{case.case_id}", headers=referrer)
        assert task.json()["status"] == "in-progress"

        status = await bridge.http.get(
            f"/fhir/Subscription/{subscription_id}/$status", headers=referrer
        )
        assert status.status_code == 200
        assert validate_resource(status.json()) == []
        parameters = status.json()["entry"][0]["resource"]["parameter"]
        assert {"name": "events-since-subscription-start", "valueString": "3"} in parameters
    finally:
        await receiver.stop()


async def test_filters_and_organisation_scope(bridge: Bridge, app: Any) -> None:
    receiver = await Receiver().start()
    try:
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4")
        other = await bridge.key("clinical-system", "RXX")
        completed_only = await subscribe(
            bridge,
            referrer,
            subscription(f"{receiver.url}/done", filters="Task?status=completed,failed"),
        )
        patient = await subscribe(
            bridge,
            referrer,
            subscription(
                f"{receiver.url}/patient",
                filters="Task?patient=https://fhir.nhs.uk/Id/nhs-number|9999999999",
                content="empty",
            ),
        )
        outsider = await subscribe(bridge, other, subscription(f"{receiver.url}/other"))
        assert {completed_only.status_code, patient.status_code, outsider.status_code} == {201}
        await drain(app)
        case = await open_case(bridge, register=False)
        for body in (
            {"type": "case.accepted", "team": "Halton hub"},
            {"type": "contact.attempted", "outcome": "reached", "method": "telephone"},
            {"type": "case.completed", "reason": "needs-met"},
        ):
            await case.record(body)
        await drain(app)
        by_path: dict[str, list[dict[str, Any]]] = {}
        for request in receiver.requests:
            by_path.setdefault(request.path, []).append(status_of(request.json()))
        assert [n["type"] for n in by_path["/done"]] == ["handshake", "event-notification"]
        assert by_path["/done"][1]["notification-event"][0]["event-number"] == "1"
        assert [n["type"] for n in by_path["/patient"]] == ["handshake"]  # another patient
        assert [n["type"] for n in by_path["/other"]] == ["handshake"]  # not its referral
        # Another organisation's subscription is not there for it.
        sub_id = completed_only.json()["id"]
        assert (
            await bridge.http.get(f"/fhir/Subscription/{sub_id}", headers=other)
        ).status_code == 404
        listed = await bridge.http.get("/fhir/Subscription", headers=other)
        assert [e["resource"]["id"] for e in listed.json()["entry"]] == [outsider.json()["id"]]
    finally:
        await receiver.stop()


async def test_missed_notifications_are_recovered_with_events(bridge: Bridge, app: Any) -> None:
    receiver = await Receiver().start()
    try:
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4")
        made = await subscribe(bridge, referrer, subscription(f"{receiver.url}/hook"))
        subscription_id = made.json()["id"]
        await drain(app)
        receiver.default_status = 400  # the receiver refuses them: dead letters
        case = await open_case(bridge, register=False)
        await case.record({"type": "case.accepted", "team": "Halton hub"})
        await drain(app)
        dead = await bridge.http.get("/api/v1/deliveries", params={"state": "dead"}, headers=ADMIN)
        assert len(dead.json()["items"]) >= 1

        events = await bridge.http.get(
            f"/fhir/Subscription/{subscription_id}/$events",
            params={"eventsSinceNumber": 1},
            headers=referrer,
        )
        assert events.status_code == 200, events.text
        recovered = status_of(events.json())
        assert recovered["type"] == "query-event"
        assert [e["event-number"] for e in recovered["notification-event"]] == ["1", "2"]
        assert len(events.json()["entry"]) == 2  # the status, then the one Task
        only_two = await bridge.http.get(
            f"/fhir/Subscription/{subscription_id}/$events",
            params={"eventsSinceNumber": 2, "eventsUntilNumber": 2, "content": "empty"},
            headers=referrer,
        )
        second = status_of(only_two.json())
        assert [e["event-number"] for e in second["notification-event"]] == ["2"]
        assert "focus" not in second["notification-event"][0]
        assert len(only_two.json()["entry"]) == 1
        bad = await bridge.http.get(
            f"/fhir/Subscription/{subscription_id}/$events",
            params={"content": "full-resource"},
            headers=referrer,
        )
        assert bad.status_code == 400
    finally:
        await receiver.stop()


async def test_heartbeats_when_nothing_happens_and_delete_stops_everything(
    bridge: Bridge, app: Any
) -> None:
    receiver = await Receiver().start()
    try:
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4")
        made = await subscribe(bridge, referrer, subscription(f"{receiver.url}/hook", heartbeat=10))
        subscription_id = made.json()["id"]
        await drain(app)
        assert len(receiver.requests) == 1
        await drain(app)  # not yet due
        assert len(receiver.requests) == 1
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=11)
        await drain(app, clock=lambda: later)
        beat = status_of(receiver.requests[1].json())
        assert beat["type"] == "heartbeat"
        assert beat["status"] == "active"
        assert len(receiver.requests[1].json()["entry"]) == 1

        gone = await bridge.http.delete(f"/fhir/Subscription/{subscription_id}", headers=referrer)
        assert gone.status_code == 200
        case = await open_case(bridge, register=False)
        await case.record({"type": "case.accepted", "team": "Halton hub"})
        even_later = later + dt.timedelta(seconds=60)
        await drain(app, clock=lambda: even_later)
        assert len(receiver.requests) == 2
        read = await bridge.http.get(f"/fhir/Subscription/{subscription_id}", headers=referrer)
        assert read.status_code == 404
    finally:
        await receiver.stop()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (
            lambda r: r.update(criteria="https://example.org/SubscriptionTopic/x"),
            "Subscription.criteria",
        ),
        (lambda r: r["channel"].update(type="websocket"), "Subscription.channel.type"),
        (lambda r: r["channel"].update(payload="application/xml"), "Subscription.channel.payload"),
        (
            lambda r: r["channel"]["_payload"]["extension"][0].update(valueCode="full-resource"),
            "Subscription.channel._payload",
        ),
        (
            lambda r: r.update(
                _criteria={
                    "extension": [
                        {
                            "url": f"{BACKPORT}/backport-filter-criteria",
                            "valueString": "Task?code=x",
                        }
                    ]
                }
            ),
            "Subscription._criteria.extension[0].valueString",
        ),
        (
            lambda r: r["channel"].update(header=["X-Request-ID: mine"]),
            "Subscription.channel.header[0]",
        ),
        (
            lambda r: r["channel"].update(endpoint="http://10.0.0.1/hook"),
            "Subscription.channel.endpoint",
        ),
    ],
)
async def test_a_subscription_we_cannot_honour_is_refused_naming_the_element(
    bridge: Bridge, database_url: str, change: Any, where: str
) -> None:
    referrer = await bridge.key("clinical-system", "RW4")
    resource = copy.deepcopy(subscription("http://127.0.0.1:9/hook"))
    change(resource)
    refused = await subscribe(bridge, referrer, resource)
    assert refused.status_code == 422, refused.text
    expressions = [e for i in refused.json()["issue"] for e in i.get("expression", [])]
    assert any(e.startswith(where) for e in expressions), refused.text
    listed = await bridge.http.get("/fhir/Subscription", headers=referrer)
    assert listed.json()["total"] == 0


async def test_the_topic_is_served_at_a_stable_url(bridge: Bridge) -> None:
    referrer = await bridge.key("clinical-system", "RW4")
    topic = await bridge.http.get("/fhir/Basic/referral-task-changed", headers=referrer)
    assert topic.status_code == 200
    assert validate_resource(topic.json()) == []
    urls = {e["url"]: e for e in topic.json()["extension"]}
    assert (
        urls["http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.url"][
            "valueUri"
        ]
        == TOPIC_URL
    )
    filters = [
        next(x["valueString"] for x in e["extension"] if x["url"] == "filterParameter")
        for e in topic.json()["extension"]
        if e["url"].endswith("canFilterBy")
    ]
    assert filters == ["requester", "patient", "service", "status"]


def test_the_guides_notification_is_valid_r4_and_the_bridges_shape() -> None:
    """openapi/README.md's example notification is what the bridge sends (R4 valid, the same
    parameters in the same order as app.fhir.notifications makes)."""
    import json
    import re

    from app.fhir import notifications
    from tests.conftest import ROOT

    guide = (ROOT / "openapi" / "README.md").read_text()
    (example,) = [
        block
        for block in re.findall(r"```json\n(.*?)```", guide, re.S)
        if "events-since-subscription-start" in block
    ]
    documented = json.loads(example)
    assert validate_resource(documented) == []
    made = notifications.notification_bundle(
        bundle_id="x",
        subscription_url="http://127.0.0.1:8000/fhir/Subscription/s",
        topic=TOPIC_URL,
        status="active",
        kind="event-notification",
        events_since_start=3,
        events=[notifications.Event(3, "2026-12-07T09:30:00.000Z", "Task/t")],
        content="id-only",
        base="http://127.0.0.1:8000/fhir",
        now=dt.datetime(2026, 12, 7, 9, 30, tzinfo=dt.UTC),
    )

    def names(bundle: dict[str, Any]) -> list[str]:
        return [p["name"] for p in bundle["entry"][0]["resource"]["parameter"]]

    assert names(documented) == names(made)
    assert [set(e) for e in documented["entry"]] == [set(e) for e in made["entry"]]
