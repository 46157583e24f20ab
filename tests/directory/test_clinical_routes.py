"""Clinical routes (`/api/v1/clinical-routes/{organisation}`) and service registration: where a
referring organisation's updates go back, validated with the adapter's config and the URL policy,
and the route end to end: a referral's Task PUT to the referrer's FHIR server. Both databases.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.task import Task

from tests.conftest import ADMIN_KEY, Bridge, referral_resource, requester_of
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SECRET = "s3cr3t-RECOGNISABLE-42"
ROUTE_FIELDS = {
    "organisation",
    "adapter",
    "active",
    "destination_id",
    "updated_at",
    "write_mode",
    "capabilities",
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


def fhir_push(base_url: str, **config: Any) -> dict[str, Any]:
    return {"adapter": "fhir_push", "adapter_config": {"base_url": base_url, **config}}


async def put_route(
    bridge: Bridge, organisation: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Any:
    return await bridge.http.put(
        f"/api/v1/clinical-routes/{organisation}", json=body, headers=headers or ADMIN
    )


# --- PUT / GET ---------------------------------------------------------------------------------


async def test_put_creates_then_updates_the_same_route(app: Any, bridge: Bridge) -> None:
    created = await put_route(bridge, "RW4", fhir_push("http://127.0.0.1:8080/fhir"))
    assert created.status_code == 200, created.text
    route = created.json()
    assert set(route) == ROUTE_FIELDS
    assert route["organisation"] == "RW4"
    assert route["adapter"] == "fhir_push"
    assert route["active"] is True

    updated = await put_route(
        bridge,
        "RW4",
        {
            **fhir_push(
                "http://127.0.0.1:9090/other",
                auth={"type": "bearer", "token": SECRET},
                timeout=5.0,
            ),
            "active": False,
        },
    )
    assert updated.status_code == 200, updated.text
    again = updated.json()
    assert again["destination_id"] == route["destination_id"]
    assert again["active"] is False
    assert again["updated_at"] >= route["updated_at"]
    # The configuration (it may hold credentials) is never shown.
    assert SECRET not in updated.text

    read = await bridge.http.get("/api/v1/clinical-routes/RW4", headers=ADMIN)
    assert read.status_code == 200
    assert read.json() == again
    assert SECRET not in read.text

    await put_route(bridge, "RX1", fhir_push("http://127.0.0.1:8081/fhir"))
    await put_route(bridge, "AB123", fhir_push("https://93.184.216.34/fhir"))
    listed = await bridge.http.get("/api/v1/clinical-routes", headers=ADMIN)
    assert listed.status_code == 200
    assert [r["organisation"] for r in listed.json()] == ["AB123", "RW4", "RX1"]
    assert listed.json()[1] == again
    assert len({r["destination_id"] for r in listed.json()}) == 3
    assert SECRET not in listed.text


async def test_unknown_route_is_404(app: Any, bridge: Bridge) -> None:
    response = await bridge.http.get("/api/v1/clinical-routes/RW4", headers=ADMIN)
    assert response.status_code == 404
    assert response.json() == {
        "type": "about:blank",
        "title": "Not found",
        "status": 404,
        "detail": "No clinical route for this organisation",
    }
    listed = await bridge.http.get("/api/v1/clinical-routes", headers=ADMIN)
    assert listed.json() == []


@pytest.mark.parametrize(
    ("config", "mentions"),
    [
        ({"auth": {"type": "bearer", "token": SECRET}}, "base_url: Field required"),
        (
            {"base_url": "http://127.0.0.1:8080/fhir", "auth": {"type": "magic", "key": SECRET}},
            "auth: unknown 'type'; expected one of",
        ),
        (
            {"base_url": "http://127.0.0.1:8080/fhir", "password": SECRET},
            # The parent is named, never the unknown member (docs/SECURITY.md T7).
            "adapter_config: holds a member this API does not define",
        ),
        (
            {
                "base_url": "http://127.0.0.1:8080/fhir",
                "auth": {"type": "bearer", "token": SECRET, "extra": SECRET},
            },
            "adapter_config.auth.bearer: holds a member this API does not define",
        ),
        (
            {"base_url": "http://127.0.0.1:8080/fhir", "auth": {"type": "bearer", "token": ""}},
            "auth.bearer.token",
        ),
        (
            {
                "base_url": "http://127.0.0.1:8080/fhir",
                "auth": {"type": "bearer", "token": SECRET + " with spaces"},
            },
            "token must be visible ASCII characters without spaces",
        ),
        (
            {
                "base_url": "http://127.0.0.1:8080/fhir",
                "auth": {"type": "oauth2", "client_id": "spbridge", "client_secret": SECRET},
            },
            "auth.oauth2.token_url: Field required",
        ),
        (
            {
                "base_url": "http://127.0.0.1:8080/fhir",
                "auth": {
                    "type": "oauth2",
                    "token_url": f"http://spbridge:{SECRET}@127.0.0.1:8080/token",
                    "client_id": "spbridge",
                    "client_secret": SECRET,
                },
            },
            "token_url must not contain credentials",
        ),
        (
            {"base_url": f"http://user:{SECRET}@127.0.0.1:8080/fhir"},
            "base_url must not contain credentials",
        ),
        (
            {"base_url": f"http://127.0.0.1:8080/fhir?key={SECRET}"},
            "base_url must not have a query",
        ),
        ({"base_url": "not a url", "auth": {"type": "bearer", "token": SECRET}}, "base_url"),
        ({"base_url": "http://127.0.0.1:8080/fhir", "timeout": 0}, "timeout"),
        ({"base_url": "http://127.0.0.1:8080/fhir", "timeout": "10"}, "timeout"),
    ],
)
async def test_invalid_config_is_422_without_echoing_secrets(
    app: Any, bridge: Bridge, config: dict[str, Any], mentions: str
) -> None:
    response = await put_route(bridge, "RW4", {"adapter": "fhir_push", "adapter_config": config})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["title"] == "Unprocessable entity"
    assert body["errors"], body
    assert body["detail"] == body["errors"][0]["detail"]
    assert all(e["pointer"] == "adapter_config" for e in body["errors"])
    assert all(e["code"] == "value" for e in body["errors"])
    assert any(mentions in e["detail"] for e in body["errors"]), body
    assert SECRET not in response.text
    # Nothing was stored.
    assert (await bridge.http.get("/api/v1/clinical-routes/RW4", headers=ADMIN)).status_code == 404


async def test_a_token_pasted_into_the_auth_type_is_not_echoed(app: Any, bridge: Bridge) -> None:
    response = await put_route(
        bridge, "RW4", fhir_push("http://127.0.0.1:8080/fhir", auth={"type": f"Bearer {SECRET}"})
    )
    assert response.status_code == 422
    assert SECRET not in response.text


async def test_invalid_config_keeps_the_existing_route(app: Any, bridge: Bridge) -> None:
    route = (await put_route(bridge, "RW4", fhir_push("http://127.0.0.1:8080/fhir"))).json()
    refused = await put_route(bridge, "RW4", {"adapter": "fhir_push", "adapter_config": {}})
    assert refused.status_code == 422
    assert (await bridge.http.get("/api/v1/clinical-routes/RW4", headers=ADMIN)).json() == route


async def test_unknown_or_platform_adapter_is_refused(app: Any, bridge: Bridge) -> None:
    for adapter in ("no-such-adapter", "local"):
        response = await put_route(bridge, "RW4", {"adapter": adapter, "adapter_config": {}})
        assert response.status_code == 422, adapter
        body = response.json()
        assert body["detail"].startswith("adapter must be one of: ")
        assert "fhir_push" in body["detail"]
        assert "local" not in body["detail"]
        assert [e["pointer"] for e in body["errors"]] == ["adapter"]


async def test_malformed_route_bodies(app: Any, bridge: Bridge) -> None:
    for body, pointer in [
        ({"adapter_config": {"base_url": "http://127.0.0.1/"}}, "adapter"),
        ({**fhir_push("http://127.0.0.1/"), "colour": "blue"}, "body"),
        ({"adapter": "fhir_push", "adapter_config": SECRET}, "adapter_config"),
        ({**fhir_push("http://127.0.0.1/"), "active": "sometimes"}, "active"),
    ]:
        response = await put_route(bridge, "RW4", body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["pointer"] for e in response.json()["errors"]] == [pointer]
        assert SECRET not in response.text
    bad_json = await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        content=b'{"adapter": ',
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert bad_json.status_code == 400  # not JSON at all: where it breaks, not a field


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"base_url": "http://93.184.216.34/fhir"}, "adapter_config must use https"),
        ({"base_url": "https://169.254.169.254/fhir"}, "internal address"),
        ({"base_url": "https://10.0.0.1/fhir"}, "internal address"),
        ({"base_url": "https://[::1]/fhir"}, "internal address"),
        ({"base_url": "https://localhost/fhir"}, "internal address"),
        (
            {
                "base_url": "https://93.184.216.34/fhir",
                "auth": {
                    "type": "oauth2",
                    "token_url": "https://169.254.169.254/token",
                    "client_id": "spbridge",
                    "client_secret": SECRET,
                },
            },
            "internal address",
        ),
        (
            {
                "base_url": "http://127.0.0.1:8080/fhir",
                "auth": {
                    "type": "oauth2",
                    "token_url": "http://10.0.0.1/token",
                    "client_id": "spbridge",
                    "client_secret": SECRET,
                },
            },
            "adapter_config must use https",
        ),
    ],
)
async def test_url_policy_applies_to_base_url_and_token_url(
    app: Any, bridge: Bridge, config: dict[str, Any], message: str
) -> None:
    response = await put_route(bridge, "RW4", {"adapter": "fhir_push", "adapter_config": config})
    assert response.status_code == 422, response.text
    body = response.json()
    assert message in body["detail"]
    assert body["errors"] == [
        {"code": "business-rule", "detail": body["detail"], "pointer": "adapter_config"}
    ]
    assert SECRET not in response.text


async def test_allowed_urls_are_accepted(app: Any, bridge: Bridge) -> None:
    response = await put_route(
        bridge,
        "RW4",
        fhir_push(
            "https://93.184.216.34/fhir/",
            auth={
                "type": "oauth2",
                "token_url": "http://127.0.0.1:8080/token",
                "client_id": "spbridge",
                "client_secret": SECRET,
                "scope": "system/Task.write",
            },
        ),
    )
    assert response.status_code == 200, response.text
    assert SECRET not in response.text


async def test_only_admins_manage_routes(app: Any, bridge: Bridge) -> None:
    await put_route(bridge, "RW4", fhir_push("http://127.0.0.1:8080/fhir"))
    for role in ("clinical-system", "platform", "advisor", "reporting"):
        caller = await bridge.key(role, "RW4")
        for method, path, body in [
            ("PUT", "/api/v1/clinical-routes/RW4", fhir_push("http://127.0.0.1:1/fhir")),
            ("GET", "/api/v1/clinical-routes/RW4", None),
            ("GET", "/api/v1/clinical-routes", None),
        ]:
            response = await bridge.http.request(method, path, json=body, headers=caller)
            assert response.status_code == 403, (role, method, path)
            assert response.json() == {
                "type": "about:blank",
                "title": "Forbidden",
                "status": 403,
                "detail": f"The role '{role}' may not do 'route.manage'",
            }
    unauthenticated = await bridge.http.get("/api/v1/clinical-routes")
    assert unauthenticated.status_code == 401
    (route,) = (await bridge.http.get("/api/v1/clinical-routes", headers=ADMIN)).json()
    assert route["active"] is True


@pytest.mark.parametrize("organisation", ["rw4", "bad-code", "R1", "ABCDEFGHIJK", "RW4%20"])
async def test_bad_ods_code_in_path_is_422(app: Any, bridge: Bridge, organisation: str) -> None:
    for method, body in [("PUT", fhir_push("http://127.0.0.1:8080/fhir")), ("GET", None)]:
        response = await bridge.http.request(
            method, f"/api/v1/clinical-routes/{organisation}", json=body, headers=ADMIN
        )
        assert response.status_code == 422, (method, organisation)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"] == [
            {
                "code": "value",
                "detail": "organisation: String should match pattern '^[A-Z0-9]{3,10}$'",
                "pointer": "organisation",
            }
        ]
    assert (await bridge.http.get("/api/v1/clinical-routes", headers=ADMIN)).json() == []


# --- end to end ------------------------------------------------------------------------------


async def test_a_referral_is_pushed_to_its_organisations_route(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver()
    route = (
        await put_route(
            bridge,
            "RW4",
            fhir_push(receiver.url + "/fhir", auth={"type": "bearer", "token": SECRET}),
        )
    ).json()
    elsewhere = Receiver()
    other_route = (await put_route(bridge, "RX1", fhir_push(elsewhere.url + "/fhir"))).json()

    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    response = await bridge.refer({**referrer, "X-Correlation-ID": "corr-123"}, referral_resource())
    assert response.status_code == 201, response.text
    referral_id = response.json()["id"]
    tasks = await bridge.http.get(
        "/fhir/Task", params={"focus": f"ServiceRequest/{referral_id}"}, headers=referrer
    )
    assert tasks.status_code == 200, tasks.text
    (entry,) = tasks.json()["entry"]
    task_id = entry["resource"]["id"]

    listed = await bridge.http.get(
        "/api/v1/deliveries", params={"destination": route["destination_id"]}, headers=ADMIN
    )
    (delivery,) = listed.json()["items"]
    assert delivery["destination_kind"] == "clinical"
    assert delivery["adapter"] == "fhir_push"
    assert delivery["referral_id"] == referral_id
    assert delivery["event_type"] == "referral.received"
    assert delivery["correlation_id"] == "corr-123"
    # The other organisation's route gets nothing about this referral.
    none = await bridge.http.get(
        "/api/v1/deliveries", params={"destination": other_route["destination_id"]}, headers=ADMIN
    )
    assert none.json()["items"] == []

    await receiver.start()
    await elsewhere.start()
    try:
        await dispatcher_for(app).drain()
    finally:
        await receiver.stop()
        await elsewhere.stop()
    assert elsewhere.requests == []
    # The route's CapabilityStatement is read at the first send (the receiver was down when the
    # route was saved), then the update is written.
    metadata, request = receiver.requests
    assert (metadata.method, metadata.path) == ("GET", "/fhir/metadata")
    assert request.method == "PUT"
    assert request.path == f"/fhir/Task/{task_id}"
    assert request.headers["x-request-id"] == delivery["id"]
    assert request.headers["x-correlation-id"] == "corr-123"
    assert request.headers["content-type"] == "application/fhir+json"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    task = Task.model_validate(request.json())
    assert task.id == task_id
    assert task.status == "requested"
    assert task.intent == "order"
    # The referral by the identifier the referrer gave it (their server never had our id).
    assert task.focus is not None and task.focus.reference is None
    assert task.focus.identifier is not None and task.focus.identifier.value

    detail = (await bridge.http.get(f"/api/v1/deliveries/{delivery['id']}", headers=ADMIN)).json()
    assert detail["state"] == "delivered"
    assert [a["outcome"] for a in detail["history"]] == ["delivered"]


async def test_a_referral_from_another_organisation_is_not_pushed(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    route = (await put_route(bridge, "RW4", fhir_push("http://127.0.0.1:8080/fhir"))).json()
    referrer = await bridge.key("clinical-system", "RX1", default_service="life-rooms")
    response = await bridge.refer(referrer, referral_resource(requester=requester_of("RX1")))
    assert response.status_code == 201, response.text
    listed = await bridge.http.get(
        "/api/v1/deliveries", params={"destination": route["destination_id"]}, headers=ADMIN
    )
    assert listed.json()["items"] == []
    everything = await bridge.http.get("/api/v1/deliveries", headers=ADMIN)
    assert everything.json()["items"] == []


async def test_an_inactive_route_gets_nothing(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    route = (
        await put_route(bridge, "RW4", {**fhir_push("http://127.0.0.1:8080/fhir"), "active": False})
    ).json()
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    assert (await bridge.refer(referrer, referral_resource())).status_code == 201
    listed = await bridge.http.get(
        "/api/v1/deliveries", params={"destination": route["destination_id"]}, headers=ADMIN
    )
    assert listed.json()["items"] == []


# --- service registration (also validated now) ------------------------------------------------


def service_body(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "life-rooms",
        "name": "The Life Rooms",
        "organisation": "LR001",
        "adapter": "local",
        **overrides,
    }


async def test_register_service(app: Any, bridge: Bridge) -> None:
    response = await bridge.http.post("/api/v1/services", json=service_body(), headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id",
        "name",
        "organisation",
        "adapter",
        "created_at",
        "first_contact_target_days",
        "support_window_days",
    }
    assert (body["id"], body["name"], body["organisation"], body["adapter"]) == (
        "life-rooms",
        "The Life Rooms",
        "LR001",
        "local",
    )
    # Worklist targets default to the pilot's: first contact within a week, six weeks' support.
    assert (body["first_contact_target_days"], body["support_window_days"]) == (7, 42)
    again = await bridge.http.post("/api/v1/services", json=service_body(), headers=ADMIN)
    assert again.status_code == 409
    assert [e["pointer"] for e in again.json()["errors"]] == ["id"]


async def test_register_service_validates_adapter_and_config(app: Any, bridge: Bridge) -> None:
    for overrides, pointer in [
        ({"adapter": "fhir_push", "adapter_config": {"base_url": "http://127.0.0.1/"}}, "adapter"),
        ({"adapter": "no-such-adapter"}, "adapter"),
        ({"adapter_config": {"password": SECRET}}, "adapter_config"),
    ]:
        response = await bridge.http.post(
            "/api/v1/services", json=service_body(**overrides), headers=ADMIN
        )
        assert response.status_code == 422, (overrides, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert {e["pointer"] for e in response.json()["errors"]} == {pointer}
        assert SECRET not in response.text
    listed = await bridge.http.get("/api/v1/services", headers=ADMIN)
    assert listed.json() == []


async def test_only_admins_register_services(app: Any, bridge: Bridge) -> None:
    caller = await bridge.key("clinical-system", "RW4")
    response = await bridge.http.post("/api/v1/services", json=service_body(), headers=caller)
    assert response.status_code == 403
    assert response.json()["detail"] == "The role 'clinical-system' may not do 'service.manage'"
