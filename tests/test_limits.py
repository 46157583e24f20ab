"""Limits and abuse (DESIGN §8, app/limits.py): rate per client and per address, body size and
JSON nesting outside /fhir, CORS off by default. Time is an injected clock: nothing sleeps."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import update

from app.config import Settings
from app.db import Database, utcnow
from app.limits import RateLimits, TokenBuckets, json_depth
from app.security.models import ApiClient
from tests.conftest import ADMIN_KEY, FHIR_JSON, Bridge
from tests.support.cases import open_case

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SMALL_BODIES = {"max_body_bytes": 2048}
JSON_TYPE = (b"content-type", b"application/json")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app: Any) -> Clock:
    fake = Clock()
    app.state.rate_limits.clock = fake
    return fake


def client_from(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


# --- the token bucket -------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    buckets = TokenBuckets(per_minute=60, burst=3)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == pytest.approx(1.0)
    assert buckets.take("a", 0.25) == pytest.approx(0.75)  # refusals take nothing
    assert buckets.take("a", 1.0) == 0.0
    assert buckets.take("a", 1.0) == pytest.approx(1.0)
    assert buckets.take("b", 1.0) == 0.0  # another key, another bucket
    # Idle for an hour: full again, but never above the burst.
    assert [buckets.take("a", 3601.0) for _ in range(4)][-1] == pytest.approx(1.0)


def test_a_clock_going_back_refills_nothing() -> None:
    buckets = TokenBuckets(per_minute=60, burst=1)
    assert buckets.take("a", 10.0) == 0.0
    assert buckets.take("a", 5.0) == pytest.approx(1.0)
    assert buckets.take("a", 10.5) == pytest.approx(0.5)


def test_buckets_are_bounded_least_recently_used_first() -> None:
    buckets = TokenBuckets(per_minute=60, burst=1, max_keys=3)
    for key in "abc":
        buckets.take(key, 0.0)
    buckets.take("a", 0.0)  # used again: now the most recent
    buckets.take("d", 0.0)
    assert len(buckets) == 3
    assert buckets.take("b", 0.0) == 0.0  # forgotten, so full again
    assert buckets.take("a", 0.0) > 0  # remembered, still empty


def test_zero_turns_a_limit_off() -> None:
    limits = RateLimits(Settings(rate_limit_per_minute=0, rate_limit_anonymous_per_minute=0))
    assert all(limits.wait("client", "10.0.0.1") == 0 for _ in range(1000))
    assert all(limits.wait(None, "10.0.0.1") == 0 for _ in range(1000))


def test_the_defaults() -> None:
    settings = Settings()
    assert settings.rate_limit_per_minute == 1200
    assert settings.rate_limit_burst == 600
    assert settings.rate_limit_anonymous_per_minute == 300
    assert settings.rate_limit_anonymous_burst == 300
    assert settings.max_json_depth == 64
    assert settings.cors_origins == []
    parsed = Settings(cors_origins=" https://a.example , https://b.example:8443,")  # type: ignore[arg-type]
    assert parsed.cors_origins == ["https://a.example", "https://b.example:8443"]


# --- rate per client, through the app ---------------------------------------------------------


CLIENT_LIMITS = {
    "rate_limit_per_minute": 60,
    "rate_limit_burst": 3,
    "rate_limit_anonymous_per_minute": 0,  # off: only the clients' buckets count here
}


def assert_throttled(response: httpx.Response, retry_after: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == retry_after
    assert response.headers["x-request-id"]  # the ids are still there, for the logs


@pytest.mark.parametrize("settings_overrides", [CLIENT_LIMITS])
async def test_each_client_has_its_own_bucket(app: Any, bridge: Bridge, clock: Clock) -> None:
    await bridge.service()
    referrer = await bridge.key("clinical-system")
    advisor = await bridge.key("advisor", "LR001")
    search = {"identifier": "https://rio.example.nhs.uk/Id/referral|nothing"}

    async def referrer_search() -> httpx.Response:
        return await bridge.http.get("/fhir/ServiceRequest", params=search, headers=referrer)

    # A key's first request is what shows it valid (it counts per address, off here); then its
    # client's bucket holds three.
    assert (await referrer_search()).status_code == 200
    for _ in range(3):
        assert (await referrer_search()).status_code == 200
    refused = await referrer_search()
    assert_throttled(refused, "1")
    assert refused.headers["content-type"] == "application/fhir+json"
    assert refused.json() == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "throttled",
                "details": {
                    "coding": [
                        {
                            "system": "https://fhir.spbridge.org/CodeSystem/outcome-details",
                            "code": "too-many-requests",
                        }
                    ]
                },
                "diagnostics": "Too many requests; try again in 1 seconds",
            }
        ],
    }
    # Others are not held back by it: the advisor and the bootstrap admin have buckets of their own.
    for _ in range(4):
        assert (await bridge.http.get("/api/v1/worklist", headers=advisor)).status_code == 200
    worklist = await bridge.http.get("/api/v1/worklist", headers=advisor)
    assert_throttled(worklist, "1")
    assert worklist.headers["content-type"] == "application/problem+json"
    assert worklist.json() == {
        "type": "about:blank",
        "title": "Too many requests",
        "status": 429,
        "detail": "Too many requests; try again in 1 seconds",
    }
    assert (await bridge.http.get("/api/v1/clients", headers=ADMIN)).status_code == 200

    clock.now += 1.0  # one token back
    assert (await referrer_search()).status_code == 200
    assert_throttled(await referrer_search(), "1")
    clock.now += 2.5
    assert (await referrer_search()).status_code == 200
    assert (await referrer_search()).status_code == 200
    assert_throttled(await referrer_search(), "1")
    # Probes and the metrics scrape are never limited.
    for _ in range(10):
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert (await bridge.http.get(probe)).status_code == 200, probe


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_per_minute": 6, "rate_limit_burst": 1}]
)
async def test_retry_after_is_the_wait_for_the_next_token(
    app: Any, bridge: Bridge, clock: Clock
) -> None:
    assert (await bridge.http.get("/api/v1/clients", headers=ADMIN)).status_code == 200  # learnt
    assert (await bridge.http.get("/api/v1/clients", headers=ADMIN)).status_code == 200
    assert_throttled(await bridge.http.get("/api/v1/clients", headers=ADMIN), "10")
    clock.now += 7.2
    assert_throttled(await bridge.http.get("/api/v1/clients", headers=ADMIN), "3")
    clock.now += 2.8
    assert (await bridge.http.get("/api/v1/clients", headers=ADMIN)).status_code == 200


ANONYMOUS_LIMITS = {"rate_limit_anonymous_per_minute": 30, "rate_limit_anonymous_burst": 2}


@pytest.mark.parametrize("settings_overrides", [ANONYMOUS_LIMITS])
async def test_requests_without_a_valid_key_are_limited_per_address(
    app: Any, bridge: Bridge, clock: Clock
) -> None:
    # The admin's key is shown valid first (its first request counts against the address).
    assert (await bridge.http.get("/api/v1/clients", headers=ADMIN)).status_code == 200
    assert (await bridge.http.get("/api/v1/clients")).status_code == 401
    # Each wrong key is new, yet they all count against the one address.
    wrong = {"Authorization": "Bearer spb_guess_1"}
    assert_throttled(await bridge.http.get("/api/v1/clients", headers=wrong), "2")
    assert_throttled(
        await bridge.http.get("/api/v1/clients", headers={"Authorization": "Bearer spb_guess_2"}),
        "2",
    )
    assert_throttled(await bridge.http.get("/journey/x?token=v1.1.abc"), "2")
    # A known key is counted as its client, not as the address.
    for _ in range(5):
        assert (await bridge.http.get("/api/v1/clients", headers=ADMIN)).status_code == 200
    # Another address has its own bucket.
    async with client_from(app, "192.0.2.7") as elsewhere:
        assert (await elsewhere.get("/api/v1/clients", headers=wrong)).status_code == 401
        assert (await elsewhere.get("/api/v1/clients", headers=wrong)).status_code == 401
        assert_throttled(await elsewhere.get("/api/v1/clients", headers=wrong), "2")
    clock.now += 2.0
    assert (await bridge.http.get("/api/v1/clients")).status_code == 401


@pytest.mark.parametrize("settings_overrides", [ANONYMOUS_LIMITS])
async def test_a_key_that_stops_working_counts_against_the_address_again(
    app: Any, bridge: Bridge, clock: Clock
) -> None:
    limits: RateLimits = app.state.rate_limits
    # The admin's first request and the new key's each take one of the address's two tokens.
    key = await bridge.key("clinical-system")
    path = "/fhir/ServiceRequest"
    for _ in range(5):
        assert (await bridge.http.get(path, headers=key)).status_code == 200
    assert len(limits.known) == 2
    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        await session.execute(update(ApiClient).values(revoked_at=utcnow()))
    # Revoked behind the app's back (as by another process): once its principal cache has
    # forgotten the key (SPBRIDGE_PRINCIPAL_CACHE_SECONDS), it is refused.
    app.state.principals.forget_all()
    # Still counted as its client once more; the 401 makes the bridge forget the key…
    assert (await bridge.http.get(path, headers=key)).status_code == 401
    assert len(limits.known) == 1
    # …so from now on it counts against the address, whose bucket is empty.
    assert_throttled(await bridge.http.get(path, headers=key), "2")
    clock.now += 2.0
    assert (await bridge.http.get(path, headers=key)).status_code == 401
    assert len(limits.known) == 1  # refused keys are never learnt


# --- bodies outside /fhir ---------------------------------------------------------------------


async def call_asgi(
    app: Any,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: AsyncIterator[bytes] | list[bytes],
) -> tuple[int, dict[str, str], bytes, int]:
    """One request straight through ASGI: the status, headers, body, and chunks read."""
    read = 0
    pending = list(chunks) if isinstance(chunks, list) else None
    iterator = chunks if not isinstance(chunks, list) else None
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if pending is not None:
            if not pending:
                return {"type": "http.disconnect"}
            read += 1
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        assert iterator is not None
        read += 1
        return {"type": "http.request", "body": await anext(iterator), "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, body, read


@pytest.mark.parametrize("settings_overrides", [SMALL_BODIES])
async def test_a_too_large_content_length_is_refused_before_reading(app: Any) -> None:
    auth = (b"authorization", f"Bearer {ADMIN_KEY}".encode())
    status, headers, body, read = await call_asgi(
        app,
        "POST",
        "/api/v1/subscriptions",
        [auth, (b"content-type", b"application/json"), (b"content-length", b"2049")],
        [b"{" + b" " * 2047 + b"}"],
    )
    assert status == 413
    assert read == 0
    assert headers["content-type"] == "application/problem+json"
    assert orjson.loads(body) == {
        "type": "about:blank",
        "title": "Payload too large",
        "status": 413,
        "detail": "The request body is larger than 2048 bytes",
    }
    status, _, body, _ = await call_asgi(
        app, "POST", "/api/v1/subscriptions", [auth, (b"content-length", b"12a")], [b"{}"]
    )
    assert status == 400
    assert orjson.loads(body)["detail"] == "Content-Length is not a number"


@pytest.mark.parametrize("settings_overrides", [SMALL_BODIES])
async def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(app: Any) -> None:
    async def endless() -> AsyncIterator[bytes]:
        yield b'{"url": "'
        while True:
            yield b"a" * 1000

    auth = (b"authorization", f"Bearer {ADMIN_KEY}".encode())
    status, _, body, read = await call_asgi(
        app, "POST", "/api/v1/subscriptions", [auth, JSON_TYPE],
        endless(),
    )  # fmt: skip
    assert status == 413
    assert read == 4  # 9 + 1000 + 1000 bytes fit in 2048; the fourth chunk passes it
    assert orjson.loads(body)["title"] == "Payload too large"


@pytest.mark.parametrize("settings_overrides", [SMALL_BODIES])
async def test_bodies_within_the_limit_reach_the_route_whole(app: Any, bridge: Bridge) -> None:
    body = orjson.dumps({"url": "https://93.184.216.34/" + "a" * 1500})
    assert len(body) < 2048
    response = await bridge.http.post(
        "/api/v1/subscriptions",
        content=body,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    # In pieces, without a Content-Length: put together again for the route.
    pieces = [body[:10], body[10:700], body[700:]]
    status, _, answer, read = await call_asgi(
        app,
        "POST",
        "/api/v1/subscriptions",
        [(b"authorization", f"Bearer {ADMIN_KEY}".encode()), JSON_TYPE],
        pieces,
    )
    assert status == 201, answer
    assert read == 3


@pytest.mark.parametrize("settings_overrides", [SMALL_BODIES])
async def test_fhir_bodies_keep_their_own_limit_and_outcome(app: Any, bridge: Bridge) -> None:
    key = await bridge.key("clinical-system")
    response = await bridge.http.post(
        "/fhir/ServiceRequest", content=b"{" + b" " * 4096 + b"}", headers={**key, **FHIR_JSON}
    )
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for n in range(depth):
        value = [value] if n % 2 else {"a": value}
    return value


def test_json_depth() -> None:
    assert json_depth(b"") == 0
    assert json_depth(b"12") == 0
    assert json_depth(b'"[[[["') == 0
    assert json_depth(b"{}") == 1
    assert json_depth(b'{"a": [1, {"b": []}], "c": {}}') == 4
    assert json_depth(json.dumps(nested(64)).encode()) == 64
    assert json_depth(json.dumps(nested(65)).encode()) == 65
    # Brackets inside strings, also after escaped quotes and backslashes, do not count.
    assert json_depth(json.dumps({"a": '[[[["\\' + "{" * 100, "b": ["]]]"]}).encode()) == 2
    assert json_depth(rb'["\"[", "\\", "[\\\"["]') == 1
    # Not JSON: counted as well as it can be, never an error.
    assert json_depth(b'["unterminated [[[[') == 1
    assert json_depth(b"]]]]") == 0
    # Inputs built to make a scanner backtrack are read in one pass (a quadratic scan of these
    # would not finish in the lifetime of the test run).
    assert json_depth(b'"\\"' * 300_000) == 0
    assert json_depth(b'["' + b"\\" * 1_000_000) == 1
    assert json_depth(b"[" * 1_000_000) == 1_000_000


DEPTH_LIMIT = {"max_json_depth": 64}


@pytest.mark.parametrize("settings_overrides", [DEPTH_LIMIT])
async def test_json_nested_too_deeply_is_400_not_500(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    json_admin = {**ADMIN, "Content-Type": "application/json"}
    deep = [
        json.dumps({"url": "https://93.184.216.34/", "description": nested(64)}).encode(),
        json.dumps({"url": "https://93.184.216.34/", "description": nested(300)}).encode(),
        b'{"url": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ]
    for body in deep:
        response = await bridge.http.post("/api/v1/subscriptions", content=body, headers=json_admin)
        assert response.status_code == 400, response.text
        assert response.json() == {
            "type": "about:blank",
            "title": "Bad request",
            "status": 400,
            "detail": "The request body is nested too deeply: arrays and objects may nest at "
            "most 64 levels",
        }
    # At the limit the body goes on to the route, which judges it on its merits (422).
    body = {"url": "https://93.184.216.34/", "description": nested(63)}
    response = await bridge.http.post(
        "/api/v1/subscriptions", content=json.dumps(body).encode(), headers=json_admin
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["pointer"] == "description"
    # Unparseable and deep: still a 4xx.
    broken = await bridge.http.post(
        "/api/v1/subscriptions", content=b"[" * 200_000, headers=json_admin
    )
    assert broken.status_code == 400
    # Bodies that are not JSON are not read as JSON: they are refused for their media type.
    form = await bridge.http.post(
        "/api/v1/subscriptions",
        content=b"[" * 100,
        headers={**ADMIN, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415


# --- CORS -------------------------------------------------------------------------------------


PREFLIGHT = {
    "Origin": "https://ehr.example.nhs.uk",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_cors_is_off_by_default(app: Any, bridge: Bridge) -> None:
    preflight = await bridge.http.options("/fhir/ServiceRequest", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code in (401, 405)
    simple = await bridge.http.get(
        "/api/v1/clients", headers={**ADMIN, "Origin": "https://ehr.example.nhs.uk"}
    )
    assert simple.status_code == 200
    assert not [h for h in simple.headers if h.startswith("access-control-")]


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": ["https://ehr.example.nhs.uk"]}])
async def test_cors_for_listed_origins_only(app: Any, bridge: Bridge) -> None:
    preflight = await bridge.http.options("/fhir/ServiceRequest", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://ehr.example.nhs.uk"
    allowed_headers = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers
    assert "access-control-allow-credentials" not in preflight.headers

    other = await bridge.http.options(
        "/fhir/ServiceRequest", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers

    simple = await bridge.http.get(
        "/api/v1/clients", headers={**ADMIN, "Origin": "https://ehr.example.nhs.uk"}
    )
    assert simple.headers["access-control-allow-origin"] == "https://ehr.example.nhs.uk"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    stranger = await bridge.http.get(
        "/api/v1/clients", headers={**ADMIN, "Origin": "https://evil.example"}
    )
    assert stranger.status_code == 200  # CORS is the browser's check; the key is ours
    assert "access-control-allow-origin" not in stranger.headers


# --- NUL characters (PostgreSQL refuses them in text: they must never reach the database) --


async def test_nul_in_urls_and_bodies_is_refused_never_a_500(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    get = bridge.http.get
    for path, params, fhir in (
        ("/fhir/ServiceRequest/abc%00def", None, True),
        ("/fhir/Task", {"focus": "ServiceRequest/\x00"}, True),
        ("/fhir/ServiceRequest", {"identifier": "x|\x00"}, True),
        ("/fhir/Appointment", {"based-on": "ServiceRequest/a\x00"}, True),
        (f"/api/v1/cases/{case.case_id}%00", None, False),
        ("/api/v1/worklist", {"team": "a\x00b"}, False),
        ("/api/v1/deliveries", {"referral": "\x00"}, False),
    ):
        response = await get(path, params=params, headers=ADMIN)
        assert response.status_code == 400, (path, response.status_code, response.text)
        body = response.json()
        if fhir:
            assert body["resourceType"] == "OperationOutcome"
        else:
            assert body["status"] == 400
    for path, payload in (
        (f"/api/v1/cases/{case.case_id}/events", {"type": "case.accepted", "team": "a\x00"}),
        ("/api/v1/clients", {"name": "n\x00", "role": "advisor", "organisation": "LR001"}),
        ("/api/v1/subscriptions", {"url": "https://example.org/h", "description": "\x00"}),
    ):
        response = await bridge.http.post(path, content=orjson.dumps(payload), headers={
            **ADMIN, "Content-Type": "application/json"})  # fmt: skip
        assert response.status_code == 422, (path, response.text)
        # The field is named; the value is not quoted.
        field = next(k for k, v in payload.items() if "\x00" in v)
        assert response.json()["errors"][0]["pointer"] == field
        assert "\\u0000" not in response.text
    # A literal backslash followed by "u0000" is ordinary text.
    literal = await bridge.http.post(
        f"/api/v1/cases/{case.case_id}/events",
        content=b'{"type": "case.accepted", "team": "a\\\\u0000"}',
        headers={**case.advisor, "Content-Type": "application/json"},
    )
    assert literal.status_code == 201, literal.text
    assert literal.json()["event"]["data"]["team"] == "a\\u0000"
