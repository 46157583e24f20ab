"""Webhook subscriptions API: `/api/v1/subscriptions` (DESIGN §7, §8), on both databases.

The dispatcher end to end (retries, dead letters, rotation signatures on deliveries) is in
tests/test_delivery.py; this module is about the API contract around subscriptions.
"""

from __future__ import annotations

from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import ADMIN_KEY, Bridge, referral_resource
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PUBLIC = "https://93.184.216.34/hooks"  # a public IP literal: no DNS needed
SUBSCRIPTION_FIELDS = {
    "id",
    "url",
    "events",
    "service",
    "description",
    "organisation",
    "active",
    "disabled_reason",
    "failing_since",
    "created_at",
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


def problem(status: int, title: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if pointer is not None:
        body["errors"] = [{"code": "business-rule", "detail": detail, "pointer": pointer}]
    return body


NOT_FOUND = problem(404, "Not found", "No such subscription")


async def subscribe(
    bridge: Bridge, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    response = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": PUBLIC, **body}, headers=headers or ADMIN
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def refer(bridge: Bridge, organisation: str = "RW4", **headers: str) -> str:
    referrer = await bridge.key("clinical-system", organisation, default_service="life-rooms")
    response = await bridge.refer({**referrer, **headers}, referral_resource())
    assert response.status_code == 201, response.text
    referral_id: str = response.json()["id"]
    return referral_id


async def deliveries_to(bridge: Bridge, destination: str) -> list[dict[str, Any]]:
    response = await bridge.http.get(
        "/api/v1/deliveries", params={"destination": destination}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- create, read, list, patch, delete -------------------------------------------------------


async def test_create_returns_the_secret_once(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    advisor = await bridge.key("advisor", "LR001")
    response = await bridge.http.post(
        "/api/v1/subscriptions",
        json={
            "url": PUBLIC,
            "events": ["referral.received", "referral.cancelled"],
            "service": "life-rooms",
            "description": "Halton worklist",
        },
        headers=advisor,
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    created = response.json()
    assert set(created) == SUBSCRIPTION_FIELDS | {"secret"}
    secret = created.pop("secret")
    assert secret.startswith("whsec_")
    assert len(secret) > len("whsec_") + 40
    assert created["url"] == PUBLIC
    assert created["events"] == ["referral.cancelled", "referral.received"]
    assert created["service"] == "life-rooms"
    assert created["description"] == "Halton worklist"
    assert created["organisation"] == "LR001"
    assert created["active"] is True
    assert created["disabled_reason"] is None
    assert created["failing_since"] is None

    read = await bridge.http.get(f"/api/v1/subscriptions/{created['id']}", headers=advisor)
    assert read.status_code == 200
    assert read.json() == created
    assert secret not in read.text and "secret" not in read.json()

    listed = await bridge.http.get("/api/v1/subscriptions", headers=advisor)
    assert listed.status_code == 200
    assert listed.json() == [created]
    assert secret not in listed.text

    patched = await bridge.http.patch(
        f"/api/v1/subscriptions/{created['id']}", json={"description": "x"}, headers=advisor
    )
    assert patched.status_code == 200
    assert "secret" not in patched.json() and secret not in patched.text

    # Two subscriptions never share a secret.
    other = await subscribe(bridge, advisor)
    assert other["secret"] != secret and other["id"] != created["id"]


async def test_admin_subscription_has_no_organisation(app: Any, bridge: Bridge) -> None:
    created = await subscribe(bridge)
    assert created["organisation"] is None
    assert created["events"] == []
    assert created["service"] is None


async def test_patch_changes_only_what_is_sent(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    advisor = await bridge.key("advisor", "LR001")
    created = await subscribe(bridge, advisor, events=["referral.received"], description="a")
    created.pop("secret")
    url = f"/api/v1/subscriptions/{created['id']}"

    response = await bridge.http.patch(
        url,
        json={"url": "https://93.184.216.35/new", "events": ["case.accepted"]},
        headers=advisor,
    )
    assert response.status_code == 200, response.text
    expected = {**created, "url": "https://93.184.216.35/new", "events": ["case.accepted"]}
    assert response.json() == expected

    response = await bridge.http.patch(url, json={"service": "life-rooms"}, headers=advisor)
    assert response.json() == {**expected, "service": "life-rooms"}
    response = await bridge.http.patch(
        url, json={"service": None, "description": None}, headers=advisor
    )
    assert response.json() == {**expected, "description": None}

    # An empty patch changes nothing.
    response = await bridge.http.patch(url, json={}, headers=advisor)
    assert response.status_code == 200
    assert response.json() == {**expected, "description": None}
    assert (await bridge.http.get(url, headers=advisor)).json() == response.json()


async def test_patch_refuses_what_create_refuses(app: Any, bridge: Bridge) -> None:
    advisor = await bridge.key("advisor", "LR001")
    created = await subscribe(bridge, advisor)
    created.pop("secret")
    url = f"/api/v1/subscriptions/{created['id']}"
    for body, pointer in [
        ({"url": "https://10.0.0.1/"}, "url"),
        ({"url": "http://93.184.216.34/"}, "url"),
        ({"events": ["no.such.event"]}, "events[0]"),
        ({"events": ["delivery.dead_lettered"]}, "events[0]"),
        ({"service": "no-such-service"}, "service"),
    ]:
        response = await bridge.http.patch(url, json=body, headers=advisor)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["pointer"] for e in response.json()["errors"]] == [pointer]
    # Nothing was changed by the refused patches.
    assert (await bridge.http.get(url, headers=advisor)).json() == created


async def test_pause_and_reenable(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    created = await subscribe(bridge)
    url = f"/api/v1/subscriptions/{created['id']}"
    paused = await bridge.http.patch(url, json={"active": False}, headers=ADMIN)
    assert paused.status_code == 200
    assert paused.json()["active"] is False
    assert paused.json()["disabled_reason"] == "paused"
    # A paused subscription is not sent new events.
    await refer(bridge)
    assert await deliveries_to(bridge, created["id"]) == []

    resumed = await bridge.http.patch(url, json={"active": True}, headers=ADMIN)
    assert resumed.status_code == 200
    assert resumed.json()["active"] is True
    assert resumed.json()["disabled_reason"] is None
    await refer(bridge)
    assert len(await deliveries_to(bridge, created["id"])) == 1


async def test_reenabling_a_subscription_disabled_by_410_clears_its_failure(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service()
    receiver = Receiver(default_status=410)
    advisor = await bridge.key("advisor", "LR001")
    created = await subscribe(bridge, advisor, url=receiver.url + "/gone")
    await refer(bridge)
    await receiver.start()
    try:
        await dispatcher_for(app).drain()
    finally:
        await receiver.stop()
    url = f"/api/v1/subscriptions/{created['id']}"
    shown = (await bridge.http.get(url, headers=advisor)).json()
    assert shown["active"] is False
    assert shown["disabled_reason"] == "gone"

    response = await bridge.http.patch(url, json={"active": True}, headers=advisor)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["active"] is True
    assert body["disabled_reason"] is None
    assert body["failing_since"] is None
    assert (await bridge.http.get(url, headers=advisor)).json() == body
    # It gets new work again.
    await refer(bridge)
    states = sorted(d["state"] for d in await deliveries_to(bridge, created["id"]))
    assert states == ["dead", "pending"]


async def test_delete_cancels_pending_deliveries(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    doomed = await subscribe(bridge, description="doomed")
    kept = await subscribe(bridge, description="kept")
    await refer(bridge)
    await refer(bridge)
    assert [d["state"] for d in await deliveries_to(bridge, doomed["id"])] == [
        "pending",
        "pending",
    ]

    response = await bridge.http.delete(f"/api/v1/subscriptions/{doomed['id']}", headers=ADMIN)
    assert response.status_code == 204
    assert response.content == b""

    cancelled = await deliveries_to(bridge, doomed["id"])
    assert [d["state"] for d in cancelled] == ["cancelled", "cancelled"]
    assert {d["last_error"] for d in cancelled} == {"subscription deleted"}
    assert [d["next_attempt_at"] for d in cancelled] == [None, None]
    # Only that subscription's deliveries.
    assert [d["state"] for d in await deliveries_to(bridge, kept["id"])] == ["pending", "pending"]

    # Gone from the API, and sent nothing more.
    read = await bridge.http.get(f"/api/v1/subscriptions/{doomed['id']}", headers=ADMIN)
    assert read.status_code == 404
    assert read.json() == NOT_FOUND
    listed = (await bridge.http.get("/api/v1/subscriptions", headers=ADMIN)).json()
    assert [s["id"] for s in listed] == [kept["id"]]
    again = await bridge.http.delete(f"/api/v1/subscriptions/{doomed['id']}", headers=ADMIN)
    assert again.status_code == 404
    revived = await bridge.http.patch(
        f"/api/v1/subscriptions/{doomed['id']}", json={"active": True}, headers=ADMIN
    )
    assert revived.status_code == 404
    await refer(bridge)
    assert len(await deliveries_to(bridge, doomed["id"])) == 2
    assert len(await deliveries_to(bridge, kept["id"])) == 3


async def test_unknown_subscription_is_404(app: Any, bridge: Bridge) -> None:
    base = "/api/v1/subscriptions/00000000-0000-0000-0000-000000000000"
    for method, path in [
        ("GET", base),
        ("PATCH", base),
        ("DELETE", base),
        ("POST", base + "/rotate-secret"),
        ("POST", base + "/test"),
    ]:
        json_body = {} if method == "PATCH" else None
        response = await bridge.http.request(method, path, json=json_body, headers=ADMIN)
        assert response.status_code == 404, (method, path)
        assert response.json() == NOT_FOUND


# --- event and service filters ---------------------------------------------------------------


async def test_unknown_event_is_refused_naming_events(app: Any, bridge: Bridge) -> None:
    advisor = await bridge.key("advisor", "LR001")
    response = await bridge.http.post(
        "/api/v1/subscriptions",
        json={"url": PUBLIC, "events": ["referral.received", "referral.teleported"]},
        headers=advisor,
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["title"] == "Unprocessable entity"
    assert body["status"] == 422
    # Located by its position, never quoted (docs/SECURITY.md T7).
    assert body["detail"].startswith("events[1] is not a known event type; known: ")
    assert "teleported" not in response.text
    assert body["errors"] == [
        {"code": "business-rule", "detail": body["detail"], "pointer": "events[1]"}
    ]
    # Operational events are not offered to a non-admin.
    assert "delivery.dead_lettered" not in body["detail"]
    listed = await bridge.http.get("/api/v1/subscriptions", headers=advisor)
    assert listed.json() == []


@pytest.mark.parametrize("event", ["delivery.dead_lettered", "subscription.disabled"])
async def test_operational_events_are_for_admins_only(app: Any, bridge: Bridge, event: str) -> None:
    for role in ("advisor", "platform", "clinical-system"):
        caller = await bridge.key(role, "LR001")
        response = await bridge.http.post(
            "/api/v1/subscriptions", json={"url": PUBLIC, "events": [event]}, headers=caller
        )
        assert response.status_code == 422, role
        assert response.json()["errors"][0]["pointer"] == "events[0]"
        assert "events[0] is not a known event type;" in response.json()["detail"]
    created = await subscribe(bridge, events=[event, "referral.received"])
    assert created["events"] == sorted([event, "referral.received"])


async def test_events_are_deduplicated_and_sorted(app: Any, bridge: Bridge) -> None:
    created = await subscribe(
        bridge, events=["referral.received", "case.accepted", "referral.received"]
    )
    assert created["events"] == ["case.accepted", "referral.received"]


async def test_service_filter(app: Any, bridge: Bridge) -> None:
    await bridge.service("life-rooms")
    advisor = await bridge.key("advisor", "LR001")
    response = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": PUBLIC, "service": "no-such"}, headers=advisor
    )
    assert response.status_code == 422
    assert response.json() == problem(
        422, "Unprocessable entity", "service: no such service", "service"
    )
    malformed = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": PUBLIC, "service": "not a service!"}, headers=advisor
    )
    assert malformed.status_code == 422
    assert [e["pointer"] for e in malformed.json()["errors"]] == ["service"]
    created = await subscribe(bridge, advisor, service="life-rooms")
    assert created["service"] == "life-rooms"


async def test_service_filter_selects_the_referrals(app: Any, bridge: Bridge) -> None:
    await bridge.service("life-rooms")
    await bridge.service("other-service")
    mine = await subscribe(bridge, service="life-rooms")
    theirs = await subscribe(bridge, service="other-service")
    await refer(bridge)
    assert len(await deliveries_to(bridge, mine["id"])) == 1
    assert await deliveries_to(bridge, theirs["id"]) == []


# --- organisation isolation and roles --------------------------------------------------------


async def test_another_organisation_cannot_see_or_touch_a_subscription(
    app: Any, bridge: Bridge
) -> None:
    owner = await bridge.key("advisor", "LR001")
    colleague = await bridge.key("platform", "LR001")
    stranger = await bridge.key("advisor", "RX9")
    clinician = await bridge.key("clinical-system", "RW4")
    created = await subscribe(bridge, owner, description="LR001 worklist")
    created.pop("secret")
    own_of_stranger = await subscribe(bridge, stranger, description="RX9 worklist")
    own_of_stranger.pop("secret")
    admin_own = await subscribe(bridge, description="admin")
    admin_own.pop("secret")
    base = f"/api/v1/subscriptions/{created['id']}"

    for outsider in (stranger, clinician):
        for method, path, body in [
            ("GET", base, None),
            ("PATCH", base, {"description": "mine now"}),
            ("PATCH", base, {"active": False}),
            ("POST", base + "/rotate-secret", None),
            ("POST", base + "/test", None),
            ("DELETE", base, None),
        ]:
            response = await bridge.http.request(method, path, json=body, headers=outsider)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json() == NOT_FOUND
    stranger_list = (await bridge.http.get("/api/v1/subscriptions", headers=stranger)).json()
    assert stranger_list == [own_of_stranger]
    clinician_list = (await bridge.http.get("/api/v1/subscriptions", headers=clinician)).json()
    assert clinician_list == []
    # The owner's organisation sees it, unchanged; neither the other organisation's nor the admin's.
    assert (await bridge.http.get(base, headers=colleague)).json() == created
    owner_list = (await bridge.http.get("/api/v1/subscriptions", headers=owner)).json()
    assert owner_list == [created]
    # The admin sees every organisation's subscriptions.
    everything = (await bridge.http.get("/api/v1/subscriptions", headers=ADMIN)).json()
    assert {s["id"] for s in everything} == {created["id"], own_of_stranger["id"], admin_own["id"]}
    admin_read = await bridge.http.get(base, headers=ADMIN)
    assert admin_read.status_code == 200
    assert admin_read.json() == created
    # Another organisation's admin client is still of another organisation.
    other_admin = await bridge.key("admin", "RX9")
    assert (await bridge.http.get(base, headers=other_admin)).status_code == 404


async def test_a_subscription_hears_only_of_its_organisations_referrals(
    app: Any, bridge: Bridge
) -> None:
    await bridge.service("life-rooms", organisation="LR001")
    service_side = await subscribe(bridge, await bridge.key("advisor", "LR001"))
    referrer_side = await subscribe(bridge, await bridge.key("clinical-system", "RW4"))
    stranger = await subscribe(bridge, await bridge.key("advisor", "RX9"))
    admin = await subscribe(bridge)
    referral = await refer(bridge, "RW4")
    for seen in (service_side, referrer_side, admin):
        (delivery,) = await deliveries_to(bridge, seen["id"])
        assert delivery["referral_id"] == referral
    assert await deliveries_to(bridge, stranger["id"]) == []


async def test_the_same_organisation_may_manage_it(app: Any, bridge: Bridge) -> None:
    owner = await bridge.key("advisor", "LR001")
    colleague = await bridge.key("advisor", "LR001")
    created = await subscribe(bridge, owner)
    base = f"/api/v1/subscriptions/{created['id']}"
    rotated = await bridge.http.post(base + "/rotate-secret", headers=colleague)
    assert rotated.status_code == 200
    assert set(rotated.json()) == {"id", "secret", "previous_secret_expires_at"}
    assert rotated.json()["id"] == created["id"]
    deleted = await bridge.http.delete(base, headers=colleague)
    assert deleted.status_code == 204


@pytest.mark.parametrize("role", ["reporting"])
async def test_roles_without_subscriptions_are_forbidden(
    app: Any, bridge: Bridge, role: str
) -> None:
    created = await subscribe(bridge)
    caller = await bridge.key(role, "LR001")
    base = f"/api/v1/subscriptions/{created['id']}"
    forbidden = problem(403, "Forbidden", f"The role '{role}' may not do 'subscription.manage'")
    for method, path, body in [
        ("POST", "/api/v1/subscriptions", {"url": PUBLIC}),
        ("GET", "/api/v1/subscriptions", None),
        ("GET", base, None),
        ("PATCH", base, {"active": False}),
        ("DELETE", base, None),
        ("POST", base + "/rotate-secret", None),
        ("POST", base + "/test", None),
    ]:
        response = await bridge.http.request(method, path, json=body, headers=caller)
        assert response.status_code == 403, (method, path)
        assert response.json() == forbidden
    listed = (await bridge.http.get("/api/v1/subscriptions", headers=ADMIN)).json()
    assert [s["id"] for s in listed] == [created["id"]]
    assert listed[0]["active"] is True


async def test_no_key_is_401(app: Any, bridge: Bridge) -> None:
    for method, path in [("POST", "/api/v1/subscriptions"), ("GET", "/api/v1/subscriptions")]:
        response = await bridge.http.request(
            method, path, json={"url": PUBLIC} if method == "POST" else None
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == problem(
            401, "Authentication required", "Send an API key as 'Authorization: Bearer <key>'"
        )
    wrong = await bridge.http.get(
        "/api/v1/subscriptions", headers={"Authorization": "Bearer spb_nope"}
    )
    assert wrong.status_code == 401


# --- the URL policy through the API ----------------------------------------------------------


async def _create_status(bridge: Bridge, url: str) -> tuple[int, dict[str, Any]]:
    response = await bridge.http.post("/api/v1/subscriptions", json={"url": url}, headers=ADMIN)
    body: dict[str, Any] = response.json()
    return response.status_code, body


@pytest.mark.parametrize("settings_overrides", [{}])
async def test_url_policy_without_allow_list(app: Any, bridge: Bridge) -> None:
    port = free_port()
    refused = {
        "http://93.184.216.34/hooks": "url must use https",
        f"http://127.0.0.1:{port}/hooks": "url must use https",
        f"https://127.0.0.1:{port}/hooks": "internal address",
        "https://localhost/hooks": "internal address",
        "https://[::1]/hooks": "internal address",
        "http://169.254.169.254/latest/meta-data/": "url must use https",
        "https://169.254.169.254/latest/meta-data/": "internal address",
        "http://10.0.0.1/": "url must use https",
        "https://10.0.0.1/": "internal address",
        "https://user:secret@93.184.216.34/hooks": "url must not carry credentials",
        "ftp://93.184.216.34/": "url must be an absolute http(s) URL",
    }
    for url, message in refused.items():
        status, body = await _create_status(bridge, url)
        assert status == 422, url
        assert message in body["detail"], (url, body)
        assert body["errors"] == [
            {"code": "business-rule", "detail": body["detail"], "pointer": "url"}
        ]
        assert "secret" not in body["detail"]
    status, _ = await _create_status(bridge, "https://93.184.216.34/hooks")
    assert status == 201
    listed = (await bridge.http.get("/api/v1/subscriptions", headers=ADMIN)).json()
    assert [s["url"] for s in listed] == ["https://93.184.216.34/hooks"]


@pytest.mark.parametrize("settings_overrides", [{"allowed_outbound_hosts": ["127.0.0.1"]}])
async def test_url_policy_with_an_allowed_host(app: Any, bridge: Bridge) -> None:
    port = free_port()
    assert (await _create_status(bridge, f"http://127.0.0.1:{port}/hooks"))[0] == 201
    assert (await _create_status(bridge, "http://127.0.0.1/hooks"))[0] == 201
    for url in (
        "http://169.254.169.254/",
        "https://169.254.169.254/",
        "http://10.0.0.1/",
        "https://10.0.0.1/",
        f"https://localhost:{port}/",
        f"http://user:pw@127.0.0.1:{port}/",
    ):
        status, body = await _create_status(bridge, url)
        assert status == 422, url
        assert body["errors"][0]["pointer"] == "url"


@pytest.mark.parametrize("settings_overrides", [{"allowed_outbound_hosts": ["127.0.0.1:8123"]}])
async def test_url_policy_with_an_allowed_host_and_port(app: Any, bridge: Bridge) -> None:
    assert (await _create_status(bridge, "http://127.0.0.1:8123/hooks"))[0] == 201
    status, body = await _create_status(bridge, "http://127.0.0.1:8124/hooks")
    assert status == 422
    assert body["detail"].startswith("url must use https (http only for a host listed")
    status, body = await _create_status(bridge, "https://127.0.0.1:8124/hooks")
    assert status == 422
    assert "internal address" in body["detail"]
    status, body = await _create_status(bridge, "http://127.0.0.1/hooks")
    assert status == 422


@pytest.mark.parametrize("settings_overrides", [{"sandbox": True}])
async def test_url_policy_in_the_sandbox_allows_loopback(app: Any, bridge: Bridge) -> None:
    port = free_port()
    for url in (
        f"http://127.0.0.1:{port}/hooks",
        f"http://localhost:{port}/hooks",
        "http://93.184.216.34/hooks",
    ):
        status, body = await _create_status(bridge, url)
        assert status == 201, (url, body)
    status, body = await _create_status(bridge, f"http://user:pw@127.0.0.1:{port}/")
    assert status == 422
    assert body["detail"] == "url must not carry credentials"


# --- the test ping ---------------------------------------------------------------------------


async def test_ping_is_signed_and_reported(app: Any, bridge: Bridge) -> None:
    receiver = Receiver()
    advisor = await bridge.key("advisor", "LR001")
    created = await subscribe(bridge, advisor, url=receiver.url + "/hooks/ping")
    await receiver.start()
    try:
        response = await bridge.http.post(
            f"/api/v1/subscriptions/{created['id']}/test", headers=advisor
        )
    finally:
        await receiver.stop()
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == {"delivered", "status_code", "error", "duration_ms"}
    assert result["delivered"] is True
    assert result["status_code"] == 200
    assert result["error"] is None
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0

    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hooks/ping"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"].startswith("ping_")
    payload = Webhook(created["secret"]).verify(request.body, request.headers)
    assert payload["type"] == "ping"
    assert payload["data"] == {"subscription_id": created["id"]}
    assert payload["timestamp"].endswith("Z")
    # Signed with this subscription's secret only: another secret does not verify.
    other = await subscribe(bridge, advisor)
    with pytest.raises(Exception, match="No matching signature found"):
        Webhook(other["secret"]).verify(request.body, request.headers)
    # A ping is not a delivery: nothing queued.
    assert await deliveries_to(bridge, created["id"]) == []


async def test_ping_after_rotation_carries_both_signatures(app: Any, bridge: Bridge) -> None:
    receiver = Receiver()
    created = await subscribe(bridge, url=receiver.url)
    rotated = await bridge.http.post(
        f"/api/v1/subscriptions/{created['id']}/rotate-secret",
        json={"overlap": 600},
        headers=ADMIN,
    )
    assert rotated.status_code == 200
    await receiver.start()
    try:
        response = await bridge.http.post(
            f"/api/v1/subscriptions/{created['id']}/test", headers=ADMIN
        )
    finally:
        await receiver.stop()
    assert response.json()["delivered"] is True
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(created["secret"]).verify(request.body, request.headers)
    Webhook(rotated.json()["secret"]).verify(request.body, request.headers)


async def test_rotation_without_overlap_signs_with_the_new_secret_only(
    app: Any, bridge: Bridge
) -> None:
    receiver = Receiver()
    created = await subscribe(bridge, url=receiver.url)
    rotated = await bridge.http.post(
        f"/api/v1/subscriptions/{created['id']}/rotate-secret",
        json={"overlap": 0},
        headers=ADMIN,
    )
    assert rotated.status_code == 200
    await receiver.start()
    try:
        await bridge.http.post(f"/api/v1/subscriptions/{created['id']}/test", headers=ADMIN)
    finally:
        await receiver.stop()
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    Webhook(rotated.json()["secret"]).verify(request.body, request.headers)
    with pytest.raises(Exception, match="No matching signature found"):
        Webhook(created["secret"]).verify(request.body, request.headers)


@pytest.mark.parametrize("overlap", [-1, 7 * 86400 + 1, "soon"])
async def test_rotation_overlap_is_validated(app: Any, bridge: Bridge, overlap: Any) -> None:
    created = await subscribe(bridge)
    response = await bridge.http.post(
        f"/api/v1/subscriptions/{created['id']}/rotate-secret",
        json={"overlap": overlap},
        headers=ADMIN,
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["pointer"] for e in response.json()["errors"]] == ["overlap"]


async def test_ping_to_a_failing_receiver(app: Any, bridge: Bridge) -> None:
    receiver = Receiver(default_status=500)
    created = await subscribe(bridge, url=receiver.url + "/hooks")
    await receiver.start()
    try:
        response = await bridge.http.post(
            f"/api/v1/subscriptions/{created['id']}/test", headers=ADMIN
        )
    finally:
        await receiver.stop()
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["delivered"] is False
    assert result["status_code"] == 500
    assert result["error"]
    assert len(receiver.requests) == 1  # a ping is tried once, never retried
    # A failed ping does not count against the subscription.
    shown = (await bridge.http.get(f"/api/v1/subscriptions/{created['id']}", headers=ADMIN)).json()
    assert shown["active"] is True
    assert shown["failing_since"] is None


async def test_ping_to_a_receiver_that_is_down(app: Any, bridge: Bridge) -> None:
    receiver = Receiver()  # never started: the connection is refused
    created = await subscribe(bridge, url=receiver.url)
    response = await bridge.http.post(f"/api/v1/subscriptions/{created['id']}/test", headers=ADMIN)
    assert response.status_code == 200
    result = response.json()
    assert result["delivered"] is False
    assert result["status_code"] is None
    assert result["error"]


# --- malformed requests ----------------------------------------------------------------------


async def test_malformed_bodies_are_problem_json(app: Any, bridge: Bridge) -> None:
    created = await subscribe(bridge)
    json_headers = {**ADMIN, "Content-Type": "application/json"}
    for method, path in [
        ("POST", "/api/v1/subscriptions"),
        ("PATCH", f"/api/v1/subscriptions/{created['id']}"),
    ]:
        bad_json = await bridge.http.request(
            method, path, content=b'{"url": ', headers=json_headers
        )
        assert bad_json.status_code == 400, (method, bad_json.text)
        assert bad_json.headers["content-type"] == "application/problem+json"
        body = bad_json.json()
        assert body["title"] == "Bad request"
        assert body["status"] == 400
        assert body["detail"] == (
            "The request body is not valid JSON: expecting value at line 1, column 9"
        )

        unknown = await bridge.http.request(
            method, path, json={"url": PUBLIC, "colour": "blue"}, headers=ADMIN
        )
        assert unknown.status_code == 422
        assert unknown.headers["content-type"] == "application/problem+json"
        assert unknown.json() == {
            "type": "about:blank",
            "title": "Unprocessable entity",
            "status": 422,
            # The body is named, not the member: its name is the client's (T7).
            "detail": "body: holds a member this API does not define",
            "errors": [
                {
                    "code": "value",
                    "detail": "body: holds a member this API does not define",
                    "pointer": "body",
                }
            ],
        }

        not_an_object = await bridge.http.request(method, path, json=[PUBLIC], headers=ADMIN)
        assert not_an_object.status_code == 422
        assert not_an_object.headers["content-type"] == "application/problem+json"

        wrong_type = await bridge.http.request(
            method, path, json={"url": PUBLIC, "events": "referral.received"}, headers=ADMIN
        )
        assert wrong_type.status_code == 422
        assert [e["pointer"] for e in wrong_type.json()["errors"]] == ["events"]

    missing_url = await bridge.http.post("/api/v1/subscriptions", json={}, headers=ADMIN)
    assert missing_url.status_code == 422
    assert missing_url.json()["detail"] == "url: Field required"
    too_long = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": PUBLIC + "a" * 2000}, headers=ADMIN
    )
    assert too_long.status_code == 422
    assert [e["pointer"] for e in too_long.json()["errors"]] == ["url"]
    # Nothing but the first subscription was made.
    listed = (await bridge.http.get("/api/v1/subscriptions", headers=ADMIN)).json()
    assert [s["id"] for s in listed] == [created["id"]]
