"""The admins' view of the delivery queue: `/api/v1/deliveries` (list, read, stats, replay).

Deliveries are made the real way (subscriptions, referrals, cancellations) and moved on by a real
Dispatcher against a real Receiver on 127.0.0.1. Both databases.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.delivery.dispatcher import Dispatcher
from tests.conftest import ADMIN_KEY, Bridge, referral_resource
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Received, Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
DELIVERY_FIELDS = {
    "id",
    "destination_id",
    "destination_kind",
    "adapter",
    "referral_id",
    "event_type",
    "event_seq",
    "state",
    "attempts",
    "next_attempt_at",
    "last_status_code",
    "last_error",
    "created_at",
    "delivered_at",
    "correlation_id",
}
STATES = ["pending", "in_flight", "delivered", "dead", "cancelled"]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


def dispatcher(app: Any) -> Dispatcher:
    return dispatcher_for(app)


async def subscribe(bridge: Bridge, url: str, **body: Any) -> str:
    response = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": url, **body}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    subscription_id: str = response.json()["id"]
    return subscription_id


async def refer(bridge: Bridge, count: int = 1, **headers: str) -> list[str]:
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    ids = []
    for _ in range(count):
        response = await bridge.refer({**referrer, **headers}, referral_resource())
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def listing(bridge: Bridge, **params: Any) -> dict[str, Any]:
    response = await bridge.http.get("/api/v1/deliveries", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def all_pages(bridge: Bridge, **params: Any) -> list[list[dict[str, Any]]]:
    pages = []
    cursor = None
    for _ in range(100):
        page = await listing(bridge, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("paging never ended")


# --- listing ---------------------------------------------------------------------------------


async def test_empty_queue(app: Any, bridge: Bridge) -> None:
    assert await listing(bridge) == {"items": [], "next_cursor": None}
    stats = await bridge.http.get("/api/v1/deliveries/stats", headers=ADMIN)
    assert stats.status_code == 200
    assert stats.json() == {
        "by_state": dict.fromkeys(STATES, 0),
        "oldest_pending_age_seconds": None,
        "attempts": 0,
        "destinations": [],
    }


async def test_list_filters(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver(rule=lambda r: (400, {}) if r.path == "/b" else (200, {}))
    everything = await subscribe(bridge, receiver.url + "/a")
    cancellations = await subscribe(bridge, receiver.url + "/b", events=["referral.cancelled"])
    first, second = await refer(bridge, 2, **{"X-Correlation-ID": "corr-list"})
    await bridge.cancel(first)

    page = await listing(bridge)
    assert page["next_cursor"] is None
    items = page["items"]
    assert len(items) == 4
    for item in items:
        assert set(item) == DELIVERY_FIELDS
        assert item["destination_kind"] == "webhook"
        assert item["adapter"] == "webhook"
        assert item["state"] == "pending"
        assert item["attempts"] == 0
        assert item["next_attempt_at"] is not None
        assert item["delivered_at"] is None
    # Newest first.
    stamps = [item["created_at"] for item in items]
    assert stamps == sorted(stamps, reverse=True)

    def keys(page: dict[str, Any]) -> set[tuple[str, str, str]]:
        return {(i["destination_id"], i["referral_id"], i["event_type"]) for i in page["items"]}

    assert keys(await listing(bridge, destination=everything)) == {
        (everything, first, "referral.received"),
        (everything, second, "referral.received"),
        (everything, first, "referral.cancelled"),
    }
    assert keys(await listing(bridge, destination=cancellations)) == {
        (cancellations, first, "referral.cancelled")
    }
    assert keys(await listing(bridge, referral=second)) == {
        (everything, second, "referral.received")
    }
    assert keys(await listing(bridge, event_type="referral.cancelled")) == {
        (everything, first, "referral.cancelled"),
        (cancellations, first, "referral.cancelled"),
    }
    assert keys(
        await listing(
            bridge, referral=first, destination=everything, event_type="referral.received"
        )
    ) == {(everything, first, "referral.received")}
    assert (await listing(bridge, referral="no-such-referral"))["items"] == []
    assert (await listing(bridge, destination="no-such-destination"))["items"] == []
    assert (await listing(bridge, event_type="case.accepted"))["items"] == []
    assert len((await listing(bridge, state="pending"))["items"]) == 4
    assert (await listing(bridge, state="delivered"))["items"] == []
    # Sequences and correlation ids are shown.
    cancelled = (await listing(bridge, destination=cancellations))["items"][0]
    assert cancelled["event_seq"] == 2
    received = (await listing(bridge, referral=second))["items"][0]
    assert received["event_seq"] == 1
    assert received["correlation_id"] == "corr-list"

    await receiver.start()
    try:
        await dispatcher(app).drain()
    finally:
        await receiver.stop()
    delivered = (await listing(bridge, state="delivered"))["items"]
    assert {i["destination_id"] for i in delivered} == {everything}
    assert len(delivered) == 3
    assert all(i["delivered_at"] is not None and i["next_attempt_at"] is None for i in delivered)
    assert all(i["last_status_code"] == 200 and i["attempts"] == 1 for i in delivered)
    (dead,) = (await listing(bridge, state="dead"))["items"]
    assert dead["destination_id"] == cancellations
    assert dead["last_status_code"] == 400
    assert dead["next_attempt_at"] is None
    assert (await listing(bridge, state="pending"))["items"] == []
    assert (await listing(bridge, state="in_flight"))["items"] == []
    assert (await listing(bridge, state="cancelled"))["items"] == []
    both = await listing(bridge, state="delivered", event_type="referral.cancelled")
    assert keys(both) == {(everything, first, "referral.cancelled")}


async def test_cursor_paging(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    # Three subscriptions: the deliveries of one event share their created_at, so paging must
    # break the tie by id without losing or repeating any.
    for path in ("/a", "/b", "/c"):
        await subscribe(bridge, "https://93.184.216.34" + path)
    await refer(bridge, 4)
    everything = (await listing(bridge, limit=100))["items"]
    assert len(everything) == 12
    assert (await listing(bridge))["next_cursor"] is None  # the default page (50) holds them

    for limit in (1, 2, 3, 5, 11, 12):
        pages = await all_pages(bridge, limit=limit)
        assert all(len(p) == limit for p in pages[:-1]), limit
        assert 1 <= len(pages[-1]) <= limit
        flat = [item for p in pages for item in p]
        assert [i["id"] for i in flat] == [i["id"] for i in everything], limit
    assert len(await all_pages(bridge, limit=12)) == 1

    first = await listing(bridge, limit=5)
    assert len(first["items"]) == 5 and first["next_cursor"]
    # A cursor works with filters too.
    destination = everything[0]["destination_id"]
    pages = await all_pages(bridge, destination=destination, limit=3)
    assert [len(p) for p in pages] == [3, 1]
    assert {i["destination_id"] for p in pages for i in p} == {destination}


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"state": "lost"}, "state"),
        ({"state": "PENDING"}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"referral": "r" * 65}, "referral"),
        ({"destination": "d" * 65}, "destination"),
        ({"event_type": "e" * 65}, "event_type"),
    ],
)
async def test_invalid_query_is_422(
    app: Any, bridge: Bridge, params: dict[str, Any], pointer: str
) -> None:
    response = await bridge.http.get("/api/v1/deliveries", params=params, headers=ADMIN)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["title"] == "Unprocessable entity"
    assert [e["pointer"] for e in body["errors"]] == [pointer]


async def test_invalid_state_names_the_states(app: Any, bridge: Bridge) -> None:
    response = await bridge.http.get("/api/v1/deliveries?state=lost", headers=ADMIN)
    assert response.status_code == 422
    detail = "state: Input should be 'pending', 'in_flight', 'delivered', 'dead' or 'cancelled'"
    assert response.json() == {
        "type": "about:blank",
        "title": "Unprocessable entity",
        "status": 422,
        "detail": detail,
        "errors": [{"code": "value", "detail": detail, "pointer": "state"}],
    }


async def test_a_cursor_we_did_not_issue_is_refused_naming_cursor(app: Any, bridge: Bridge) -> None:
    response = await bridge.http.get("/api/v1/deliveries?cursor=not-a-cursor", headers=ADMIN)
    assert response.status_code == 422  # the statuses listDeliveries documents: 401, 403, 422
    assert [e["pointer"] for e in response.json()["errors"]] == ["cursor"]


async def test_a_cursor_we_did_not_issue_is_never_a_500(app: Any, bridge: Bridge) -> None:
    for cursor in ("not-a-cursor", "bm90fGE=", "%%%", "MjAyNi0wMS0wMXw="):
        response = await bridge.http.get(
            "/api/v1/deliveries", params={"cursor": cursor}, headers=ADMIN
        )
        assert 400 <= response.status_code < 500, (cursor, response.text)
        assert response.headers["content-type"] == "application/problem+json"


# --- one delivery ----------------------------------------------------------------------------


async def test_read_one_and_unknown_ids(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver()
    await subscribe(bridge, receiver.url)
    await refer(bridge)
    (item,) = (await listing(bridge))["items"]
    response = await bridge.http.get(f"/api/v1/deliveries/{item['id']}", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {**item, "history": []}

    await receiver.start()
    try:
        await dispatcher(app).drain()
    finally:
        await receiver.stop()
    detail = (await bridge.http.get(f"/api/v1/deliveries/{item['id']}", headers=ADMIN)).json()
    assert detail["state"] == "delivered"
    (attempt,) = detail["history"]
    assert attempt["number"] == 1
    assert attempt["outcome"] == "delivered"
    assert attempt["status_code"] == 200
    assert attempt["error"] is None

    not_found = {
        "type": "about:blank",
        "title": "Not found",
        "status": 404,
        "detail": "No such delivery",
    }
    for method, path in [
        ("GET", "/api/v1/deliveries/no-such-delivery"),
        ("POST", "/api/v1/deliveries/no-such-delivery/replay"),
    ]:
        response = await bridge.http.request(method, path, headers=ADMIN)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == not_found

    # A delivered one is not replayed.
    conflict = await bridge.http.post(f"/api/v1/deliveries/{item['id']}/replay", headers=ADMIN)
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == (
        "Only dead letters and cancelled deliveries can be replayed; this one is 'delivered'"
    )


# --- stats -----------------------------------------------------------------------------------


async def test_stats_while_pending_and_after(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver(rule=lambda r: (400, {}) if r.path == "/b" else (204, {}))
    a = await subscribe(bridge, receiver.url + "/a")
    b = await subscribe(bridge, receiver.url + "/b")
    await refer(bridge, 2)
    idle = await subscribe(bridge, receiver.url + "/idle")  # made after: nothing queued for it

    stats = (await bridge.http.get("/api/v1/deliveries/stats", headers=ADMIN)).json()
    assert set(stats) == {"by_state", "oldest_pending_age_seconds", "attempts", "destinations"}
    assert stats["by_state"] == {**dict.fromkeys(STATES, 0), "pending": 4}
    assert stats["oldest_pending_age_seconds"] is not None
    assert 0 <= stats["oldest_pending_age_seconds"] < 60
    assert stats["attempts"] == 0
    queues = {q["destination_id"]: q for q in stats["destinations"]}
    assert set(queues) == {a, b, idle}
    for ident in (a, b):
        queue = queues[ident]
        assert queue == {
            "destination_id": ident,
            "kind": "webhook",
            "adapter": "webhook",
            "service_id": None,
            "organisation": None,
            "active": True,
            "circuit": "closed",
            "failing_since": None,
            "consecutive_failures": 0,
            "by_state": {**dict.fromkeys(STATES, 0), "pending": 2},
            "oldest_pending_age_seconds": queue["oldest_pending_age_seconds"],
            "attempts": 0,
        }
        assert 0 <= queue["oldest_pending_age_seconds"] < 60
    assert queues[idle]["by_state"] == dict.fromkeys(STATES, 0)
    assert queues[idle]["oldest_pending_age_seconds"] is None

    await receiver.start()
    try:
        await dispatcher(app).drain()
    finally:
        await receiver.stop()
    stats = (await bridge.http.get("/api/v1/deliveries/stats", headers=ADMIN)).json()
    assert stats["by_state"] == {**dict.fromkeys(STATES, 0), "delivered": 2, "dead": 2}
    assert stats["oldest_pending_age_seconds"] is None
    assert stats["attempts"] == 4
    queues = {q["destination_id"]: q for q in stats["destinations"]}
    assert queues[a]["by_state"] == {**dict.fromkeys(STATES, 0), "delivered": 2}
    assert queues[b]["by_state"] == {**dict.fromkeys(STATES, 0), "dead": 2}
    assert queues[a]["attempts"] == queues[b]["attempts"] == 2
    assert queues[a]["oldest_pending_age_seconds"] is None


# --- replay by filter ------------------------------------------------------------------------


async def test_replay_by_filter(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver(default_status=400)
    a = await subscribe(bridge, receiver.url + "/a")
    b = await subscribe(bridge, receiver.url + "/b")
    first, second = await refer(bridge, 2)
    await receiver.start()
    try:
        await dispatcher(app).drain()
    finally:
        await receiver.stop()
    dead = (await listing(bridge, state="dead"))["items"]
    assert len(dead) == 4
    dead_of_a = {i["id"] for i in dead if i["destination_id"] == a}
    assert len(dead_of_a) == 2

    nothing = await bridge.http.post(
        "/api/v1/deliveries/replay", json={"destination": "no-such-destination"}, headers=ADMIN
    )
    assert nothing.status_code == 200
    assert nothing.json() == {"replayed": 0, "ids": []}
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    later = await bridge.http.post(
        "/api/v1/deliveries/replay", json={"dead_since": future}, headers=ADMIN
    )
    assert later.json() == {"replayed": 0, "ids": []}
    assert len((await listing(bridge, state="dead"))["items"]) == 4

    replayed = await bridge.http.post(
        "/api/v1/deliveries/replay", json={"destination": a}, headers=ADMIN
    )
    assert replayed.status_code == 200, replayed.text
    body = replayed.json()
    assert body["replayed"] == 2
    assert set(body["ids"]) == dead_of_a
    pending = (await listing(bridge, state="pending"))["items"]
    assert {i["id"] for i in pending} == dead_of_a
    assert all(i["next_attempt_at"] is not None for i in pending)
    # b's dead letters are untouched.
    still_dead = (await listing(bridge, state="dead"))["items"]
    assert {i["destination_id"] for i in still_dead} == {b}
    # Replaying again finds nothing more of a's.
    again = await bridge.http.post(
        "/api/v1/deliveries/replay", json={"destination": a}, headers=ADMIN
    )
    assert again.json() == {"replayed": 0, "ids": []}

    # Filters combine: b's, for the second referral only.
    narrow = await bridge.http.post(
        "/api/v1/deliveries/replay",
        json={"destination": b, "referral": second, "event_type": "referral.received"},
        headers=ADMIN,
    )
    (only,) = narrow.json()["ids"]
    assert narrow.json()["replayed"] == 1
    detail = (await bridge.http.get(f"/api/v1/deliveries/{only}", headers=ADMIN)).json()
    assert (detail["destination_id"], detail["referral_id"]) == (b, second)
    assert detail["state"] == "pending"
    wrong_event = await bridge.http.post(
        "/api/v1/deliveries/replay", json={"event_type": "case.accepted"}, headers=ADMIN
    )
    assert wrong_event.json() == {"replayed": 0, "ids": []}

    # Once the receiver is fixed, the replayed deliveries arrive under their old ids.
    receiver.default_status = 200
    await receiver.start()
    try:
        await dispatcher(app).drain()
    finally:
        await receiver.stop()
    resent: list[Received] = receiver.requests[4:]
    assert sorted(r.headers["webhook-id"] for r in resent) == sorted(dead_of_a | {only})
    delivered = (await listing(bridge, state="delivered"))["items"]
    assert {i["id"] for i in delivered} == dead_of_a | {only}
    (left,) = (await listing(bridge, state="dead"))["items"]
    assert (left["destination_id"], left["referral_id"]) == (b, first)


async def test_replay_filter_is_validated(app: Any, bridge: Bridge) -> None:
    for body, pointer in [
        ({"destinations": "x"}, "body"),  # no such member: located at its parent (T7)
        ({"dead_since": "yesterday"}, "dead_since"),
        ({"referral": 5}, "referral"),
    ]:
        response = await bridge.http.post("/api/v1/deliveries/replay", json=body, headers=ADMIN)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["pointer"] for e in response.json()["errors"]] == [pointer]
    bad_json = await bridge.http.post(
        "/api/v1/deliveries/replay",
        content=b"{",
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert bad_json.status_code == 400  # not JSON at all: where it breaks, not a field


async def test_replaying_to_a_deleted_subscription_is_refused(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    subscription = await subscribe(bridge, "https://93.184.216.34/")
    await refer(bridge)
    deleted = await bridge.http.delete(f"/api/v1/subscriptions/{subscription}", headers=ADMIN)
    assert deleted.status_code == 204
    (item,) = (await listing(bridge, destination=subscription))["items"]
    assert item["state"] == "cancelled"
    response = await bridge.http.post(f"/api/v1/deliveries/{item['id']}/replay", headers=ADMIN)
    assert response.status_code == 409, response.text


async def test_replay_by_filter_skips_deleted_subscriptions(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = Receiver(default_status=400)
    subscription = await subscribe(bridge, receiver.url)
    await refer(bridge)
    await receiver.start()
    try:
        await dispatcher(app).drain()
    finally:
        await receiver.stop()
    assert len((await listing(bridge, state="dead"))["items"]) == 1
    deleted = await bridge.http.delete(f"/api/v1/subscriptions/{subscription}", headers=ADMIN)
    assert deleted.status_code == 204
    response = await bridge.http.post("/api/v1/deliveries/replay", json={}, headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {"replayed": 0, "ids": []}
    stats = (await bridge.http.get("/api/v1/deliveries/stats", headers=ADMIN)).json()
    assert stats["by_state"]["pending"] == 0


# --- who may -------------------------------------------------------------------------------


async def test_only_admins(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    await subscribe(bridge, "https://93.184.216.34/")
    await refer(bridge)
    (item,) = (await listing(bridge))["items"]
    calls = [
        ("GET", "/api/v1/deliveries", None, "delivery.read"),
        ("GET", "/api/v1/deliveries/stats", None, "delivery.read"),
        ("GET", f"/api/v1/deliveries/{item['id']}", None, "delivery.read"),
        ("POST", f"/api/v1/deliveries/{item['id']}/replay", None, "delivery.replay"),
        ("POST", "/api/v1/deliveries/replay", {}, "delivery.replay"),
    ]
    for role in ("advisor", "clinical-system", "platform", "reporting"):
        caller = await bridge.key(role, "RW4")
        for method, path, body, operation in calls:
            response = await bridge.http.request(method, path, json=body, headers=caller)
            assert response.status_code == 403, (role, path)
            assert response.json() == {
                "type": "about:blank",
                "title": "Forbidden",
                "status": 403,
                "detail": f"The role '{role}' may not do '{operation}'",
            }
    for method, path, body, _ in calls:
        response = await bridge.http.request(method, path, json=body)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    # Nothing was changed by the refused calls.
    assert (await listing(bridge))["items"] == [item]
