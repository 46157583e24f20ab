"""The fhir_push clinical adapter against a mocked FHIR server and token endpoint (no database)."""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import respx
from pydantic import ValidationError

from adapters.base import (
    AdapterConfig,
    ClinicalUpdate,
    FHIRResourceUpdate,
    Gone,
    Outbound,
    Outcome,
    PermanentError,
    RetryableError,
)
from adapters.fhir_push import FhirPushAdapter, FhirPushConfig

BASE = "https://fhir.trust.example.nhs.uk/R4"
TOKEN_URL = "https://auth.trust.example.nhs.uk/oauth2/token"
CLIENT_ID = "spbridge client"
# Characters that need form-encoding before the Basic header (RFC 6749 §2.3.1).
SECRET = "s3cret/Zx9+q=&%"
TASK_URL = f"{BASE}/Task/task-1"
APPOINTMENT_URL = f"{BASE}/Appointment/appt-1"
OUTBOUND = Outbound(request_id="delivery-0001", correlation_id="corr-0001")
FHIR_JSON = "application/fhir+json"


# The referrer's own ServiceRequest, by its business identifier (which their server resolves).
REFERRAL = {
    "type": "ServiceRequest",
    "identifier": {"system": "https://rio.example.nhs.uk/Id/referral", "value": "R-1"},
}


def task(**overrides: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": "task-1",
        "status": "accepted",
        "intent": "order",
        "focus": REFERRAL,
        "lastModified": "2026-11-20T10:00:00Z",
        **overrides,
    }


def appointment(**overrides: Any) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": "appt-1",
        "status": "booked",
        "basedOn": [REFERRAL],
        "participant": [{"status": "accepted"}],
        **overrides,
    }


def update(*resources: dict[str, Any]) -> ClinicalUpdate:
    return ClinicalUpdate(
        referral_id="ref-1",
        event_type="case.accepted",
        resources=[FHIRResourceUpdate(r["resourceType"], r["id"], r) for r in resources],
    )


def oauth2(scope: str | None = "system/Task.write") -> dict[str, Any]:
    return {
        "type": "oauth2",
        "token_url": TOKEN_URL,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "scope": scope,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_adapter(
    auth: dict[str, Any] | None = None, clock: Clock | None = None, **config: Any
) -> FhirPushAdapter:
    # PUT by id unless a test says otherwise: these tests are about that write, its conflicts and
    # authentication; the other modes are tested in test_fhir_push_modes.py.
    settings = FhirPushConfig.model_validate(
        {"base_url": BASE, "write_mode": "update", **({"auth": auth} if auth else {}), **config}
    )
    return FhirPushAdapter(settings, clock=clock or Clock())


def fhir(status: int, resource: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    content = orjson.dumps(resource) if resource is not None else b""
    return httpx.Response(status, content=content, headers={"Content-Type": FHIR_JSON, **headers})


def tokens(lifetime: int = 3600) -> Callable[[httpx.Request], httpx.Response]:
    """A token endpoint side effect issuing token-1, token-2, …"""
    issued = 0

    def issue(request: httpx.Request) -> httpx.Response:
        nonlocal issued
        issued += 1
        return httpx.Response(
            200,
            json={
                "access_token": f"token-{issued}",
                "token_type": "Bearer",
                "expires_in": lifetime,
            },
        )

    return issue


def body_of(call: Any) -> Any:
    return orjson.loads(call.request.content)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    # Any request without a route fails the test (assert_all_mocked).
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


# --- the PUTs -----------------------------------------------------------------------------------


async def test_puts_each_resource_in_order_with_headers(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    put_task = mock.put(TASK_URL).mock(return_value=fhir(200, {"resourceType": "Task"}))
    put_appt = mock.put(APPOINTMENT_URL).mock(
        return_value=fhir(201, {"resourceType": "Appointment", "id": "appt-1"})
    )

    outcome = await make_adapter().send_update(http, update(task(), appointment()), OUTBOUND)

    assert [str(call.request.url) for call in mock.calls] == [TASK_URL, APPOINTMENT_URL]
    assert put_task.call_count == 1
    assert put_appt.call_count == 1
    for call, resource in zip(mock.calls, [task(), appointment()], strict=True):
        request = call.request
        assert request.method == "PUT"
        assert body_of(call) == resource
        assert request.headers["Content-Type"] == FHIR_JSON
        assert request.headers["Accept"] == FHIR_JSON
        assert request.headers["X-Request-ID"] == "delivery-0001"
        assert request.headers["X-Correlation-ID"] == "corr-0001"
        assert "Authorization" not in request.headers
        assert "If-Match" not in request.headers
    # The outcome is the last PUT's.
    assert outcome.status_code == 201
    assert outcome.response_excerpt is not None
    assert orjson.loads(outcome.response_excerpt) == {"resourceType": "Appointment", "id": "appt-1"}


async def test_put_by_id_refers_by_identifier_to_what_it_does_not_write(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """A reference to a resource only the bridge has (the referral, the service) goes as a
    logical reference; one to a resource it writes there under the same id is kept."""
    mine = {"system": "https://fhir.spbridge.org/Id/resource", "value": "appt-1"}
    sent = task(
        focus={"reference": "ServiceRequest/ours-only", "display": "Referral"},
        owner={"reference": "HealthcareService/svc", "identifier": {"system": "s", "value": "v"}},
        output=[{"valueReference": {"reference": "Appointment/appt-1", "identifier": mine}}],
    )
    put = mock.put(TASK_URL).mock(return_value=fhir(200, {"resourceType": "Task"}))

    await make_adapter().send_update(http, update(sent), OUTBOUND)

    body = body_of(put.calls[0])
    assert body["focus"] == {"type": "ServiceRequest", "display": "Referral"}
    assert body["owner"] == {
        "type": "HealthcareService",
        "identifier": {"system": "s", "value": "v"},
    }
    assert body["output"] == sent["output"]


async def test_trailing_slash_and_configured_timeout(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = mock.put(TASK_URL).mock(return_value=fhir(200))
    adapter = make_adapter(base_url=BASE + "/", timeout=2.5)

    await adapter.send_update(http, update(task()), OUTBOUND)

    assert route.call_count == 1
    assert route.calls.last.request.extensions["timeout"]["read"] == 2.5


async def test_no_correlation_id_header_without_one(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = mock.put(TASK_URL).mock(return_value=fhir(200))

    await make_adapter().send_update(http, update(task()), Outbound("delivery-2", None))

    headers = route.calls.last.request.headers
    assert headers["X-Request-ID"] == "delivery-2"
    assert "X-Correlation-ID" not in headers


async def test_nothing_to_send(mock: respx.MockRouter, http: httpx.AsyncClient) -> None:
    assert await make_adapter().send_update(http, update(), OUTBOUND) == Outcome()
    assert not mock.calls


async def test_a_failure_stops_the_update_there(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    mock.put(TASK_URL).mock(return_value=fhir(503))
    put_appt = mock.put(APPOINTMENT_URL).mock(return_value=fhir(200))

    with pytest.raises(RetryableError):
        await make_adapter().send_update(http, update(task(), appointment()), OUTBOUND)

    assert put_appt.call_count == 0


@pytest.mark.parametrize(
    ("resource_type", "resource_id", "resource"),
    [
        ("Task", "../Patient/9000000009", task(id="../Patient/9000000009")),
        ("Task", "task-1", task(id="task-2")),
        ("Task", "task-1", appointment(id="task-1")),
        ("task", "task-1", task(resourceType="task")),
    ],
)
async def test_refuses_a_resource_that_does_not_match_its_url(
    mock: respx.MockRouter,
    http: httpx.AsyncClient,
    resource_type: str,
    resource_id: str,
    resource: dict[str, Any],
) -> None:
    bad = ClinicalUpdate(
        "ref-1", "case.accepted", [FHIRResourceUpdate(resource_type, resource_id, resource)]
    )

    with pytest.raises(PermanentError):
        await make_adapter().send_update(http, bad, OUTBOUND)

    assert not mock.calls


# --- errors -------------------------------------------------------------------------------------


async def test_503_with_retry_after_is_retryable(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    mock.put(TASK_URL).mock(
        return_value=fhir(503, {"resourceType": "OperationOutcome"}, **{"Retry-After": "120"})
    )

    with pytest.raises(RetryableError) as caught:
        await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert caught.value.retry_after == 120.0
    assert caught.value.status_code == 503
    assert "OperationOutcome" in (caught.value.response_excerpt or "")


async def test_429_is_retryable(mock: respx.MockRouter, http: httpx.AsyncClient) -> None:
    mock.put(TASK_URL).mock(return_value=fhir(429))

    with pytest.raises(RetryableError) as caught:
        await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert caught.value.status_code == 429


async def test_400_is_permanent(mock: respx.MockRouter, http: httpx.AsyncClient) -> None:
    mock.put(TASK_URL).mock(return_value=fhir(400, {"resourceType": "OperationOutcome"}))

    with pytest.raises(PermanentError) as caught:
        await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert type(caught.value) is PermanentError
    assert caught.value.status_code == 400


async def test_410_is_gone(mock: respx.MockRouter, http: httpx.AsyncClient) -> None:
    mock.put(TASK_URL).mock(return_value=fhir(410))

    with pytest.raises(Gone):
        await make_adapter().send_update(http, update(task()), OUTBOUND)


@pytest.mark.parametrize("error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])
async def test_timeouts_and_connection_failures_are_retryable(
    mock: respx.MockRouter, http: httpx.AsyncClient, error: Exception
) -> None:
    mock.put(TASK_URL).mock(side_effect=error)

    with pytest.raises(RetryableError) as caught:
        await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert caught.value.status_code is None


async def test_error_messages_carry_no_resource_content(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    mock.put(TASK_URL).mock(return_value=fhir(422))
    secret_note = task(note=[{"text": "Patient 9000000009 lives alone"}])

    with pytest.raises(PermanentError) as caught:
        await make_adapter().send_update(http, update(secret_note), OUTBOUND)

    assert str(caught.value) == "PUT Task: HTTP 422"


# --- version conflicts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "server_time",
    [
        "2026-11-20T10:00:00Z",
        "2026-11-20T10:00:00.000+00:00",
        "2026-11-20T11:30:00+01:00",
        "2026-11-21T09:00:00Z",
    ],
)
async def test_conflict_when_the_server_already_has_our_task_or_newer(
    mock: respx.MockRouter, http: httpx.AsyncClient, server_time: str
) -> None:
    put = mock.put(TASK_URL).mock(return_value=fhir(412))
    server_copy = task(
        lastModified=server_time,
        meta={"versionId": "9", "lastUpdated": "2026-11-21T09:00:01Z"},
        text={"status": "generated", "div": "<div>…</div>"},
    )
    get = mock.get(TASK_URL).mock(return_value=fhir(200, server_copy, ETag='W/"9"'))

    outcome = await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert put.call_count == 1  # no second PUT
    assert get.call_count == 1
    assert get.calls.last.request.headers["Accept"] == FHIR_JSON
    assert get.calls.last.request.headers["X-Request-ID"] == "delivery-0001"
    assert outcome.status_code == 200


async def test_conflict_when_the_server_has_an_older_task_puts_again_with_if_match(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    put = mock.put(TASK_URL).mock(side_effect=[fhir(409), fhir(200, {"resourceType": "Task"})])
    older = task(status="requested", lastModified="2026-11-20T09:59:59Z", meta={"versionId": "6"})
    mock.get(TASK_URL).mock(return_value=fhir(200, older, ETag='W/"7"'))

    outcome = await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert put.call_count == 2
    first, second = (call.request for call in put.calls)
    assert "If-Match" not in first.headers
    assert second.headers["If-Match"] == 'W/"7"'  # the ETag wins over meta.versionId
    assert second.headers["X-Request-ID"] == "delivery-0001"
    assert orjson.loads(second.content) == task()
    assert outcome.status_code == 200


async def test_if_match_falls_back_to_the_copys_version_id(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    put = mock.put(TASK_URL).mock(side_effect=[fhir(412), fhir(200)])
    older = task(lastModified="2026-11-19T10:00:00Z", meta={"versionId": "4"})
    mock.get(TASK_URL).mock(return_value=fhir(200, older))

    await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert put.calls.last.request.headers["If-Match"] == 'W/"4"'


async def test_a_task_without_our_last_modified_is_overwritten(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    put = mock.put(TASK_URL).mock(side_effect=[fhir(409), fhir(200)])
    theirs = task(meta={"versionId": "2"})
    del theirs["lastModified"]
    mock.get(TASK_URL).mock(return_value=fhir(200, theirs))

    await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert put.call_count == 2


async def test_conflict_on_a_resource_without_last_modified_compares_content(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    put = mock.put(APPOINTMENT_URL).mock(return_value=fhir(409))
    # The same content; the server rewrote meta and text.
    same = appointment(meta={"versionId": "3"}, text={"status": "generated", "div": "<div/>"})
    mock.get(APPOINTMENT_URL).mock(return_value=fhir(200, same))

    outcome = await make_adapter().send_update(http, update(appointment()), OUTBOUND)

    assert put.call_count == 1
    assert outcome.status_code == 200


async def test_conflict_on_a_resource_with_other_content_puts_again(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    put = mock.put(APPOINTMENT_URL).mock(side_effect=[fhir(409), fhir(200)])
    other = appointment(status="proposed", meta={"versionId": "3"})
    mock.get(APPOINTMENT_URL).mock(return_value=fhir(200, other))

    await make_adapter().send_update(http, update(appointment(status="fulfilled")), OUTBOUND)

    assert put.call_count == 2
    assert put.calls.last.request.headers["If-Match"] == 'W/"3"'
    assert body_of(put.calls.last)["status"] == "fulfilled"


@pytest.mark.parametrize("second", [409, 412])
async def test_conflict_twice_is_retryable(
    mock: respx.MockRouter, http: httpx.AsyncClient, second: int
) -> None:
    put = mock.put(TASK_URL).mock(side_effect=[fhir(409), fhir(second)])
    mock.get(TASK_URL).mock(
        return_value=fhir(200, task(lastModified="2026-11-01T00:00:00Z"), ETag='W/"2"')
    )

    with pytest.raises(RetryableError) as caught:
        await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert put.call_count == 2
    assert caught.value.status_code == second


@pytest.mark.parametrize(
    "read",
    [
        httpx.Response(500),
        httpx.Response(404),
        httpx.Response(403),
        httpx.Response(200, content=b"<html>maintenance</html>"),
        httpx.Response(200, json=["not", "a", "resource"]),
    ],
)
async def test_a_failed_read_after_a_conflict_is_retryable(
    mock: respx.MockRouter, http: httpx.AsyncClient, read: httpx.Response
) -> None:
    put = mock.put(TASK_URL).mock(return_value=fhir(409))
    mock.get(TASK_URL).mock(return_value=read)

    with pytest.raises(RetryableError):
        await make_adapter().send_update(http, update(task()), OUTBOUND)

    assert put.call_count == 1


async def test_a_read_timeout_after_a_conflict_is_retryable(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    mock.put(TASK_URL).mock(return_value=fhir(412))
    mock.get(TASK_URL).mock(side_effect=httpx.ReadTimeout("slow"))

    with pytest.raises(RetryableError):
        await make_adapter().send_update(http, update(task()), OUTBOUND)


# --- bearer token -------------------------------------------------------------------------------


async def test_bearer_token(mock: respx.MockRouter, http: httpx.AsyncClient) -> None:
    route = mock.put(TASK_URL).mock(return_value=fhir(200))

    await make_adapter({"type": "bearer", "token": "static-token"}).send_update(
        http, update(task()), OUTBOUND
    )

    assert route.calls.last.request.headers["Authorization"] == "Bearer static-token"


async def test_bearer_401_is_permanent_and_not_repeated(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = mock.put(TASK_URL).mock(return_value=fhir(401))

    with pytest.raises(PermanentError) as caught:
        await make_adapter({"type": "bearer", "token": "static-token"}).send_update(
            http, update(task()), OUTBOUND
        )

    assert route.call_count == 1
    assert "static-token" not in str(caught.value)


# --- OAuth2 client credentials ------------------------------------------------------------------


async def test_oauth2_token_is_fetched_once_and_reused(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    token = mock.post(TOKEN_URL).mock(side_effect=tokens())
    put = mock.put(TASK_URL).mock(return_value=fhir(200))
    adapter = make_adapter(oauth2())

    await adapter.send_update(http, update(task()), OUTBOUND)
    await adapter.send_update(http, update(task(status="in-progress")), OUTBOUND)

    assert token.call_count == 1
    assert [c.request.headers["Authorization"] for c in put.calls] == ["Bearer token-1"] * 2
    request = token.calls.last.request
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["system/Task.write"],
    }
    scheme, _, encoded = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert urllib.parse.unquote_plus(user) == CLIENT_ID
    assert urllib.parse.unquote_plus(password) == SECRET
    assert SECRET not in request.content.decode()


async def test_oauth2_without_scope_sends_none(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    token = mock.post(TOKEN_URL).mock(side_effect=tokens())
    mock.put(TASK_URL).mock(return_value=fhir(200))

    await make_adapter(oauth2(scope=None)).send_update(http, update(task()), OUTBOUND)

    form = urllib.parse.parse_qs(token.calls.last.request.content.decode())
    assert form == {"grant_type": ["client_credentials"]}


async def test_oauth2_token_is_refreshed_30_seconds_before_expiry(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    token = mock.post(TOKEN_URL).mock(side_effect=tokens(lifetime=3600))
    put = mock.put(TASK_URL).mock(return_value=fhir(200))
    clock = Clock()
    adapter = make_adapter(oauth2(), clock=clock)

    await adapter.send_update(http, update(task()), OUTBOUND)
    clock.now += 3600 - 30 - 1
    await adapter.send_update(http, update(task()), OUTBOUND)
    assert token.call_count == 1
    clock.now += 1
    await adapter.send_update(http, update(task()), OUTBOUND)

    assert token.call_count == 2
    assert [c.request.headers["Authorization"] for c in put.calls] == [
        "Bearer token-1",
        "Bearer token-1",
        "Bearer token-2",
    ]


async def test_a_short_lived_token_is_used_but_not_kept(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    token = mock.post(TOKEN_URL).mock(side_effect=tokens(lifetime=20))
    put = mock.put(TASK_URL).mock(return_value=fhir(200))
    adapter = make_adapter(oauth2())

    await adapter.send_update(http, update(task()), OUTBOUND)
    await adapter.send_update(http, update(task()), OUTBOUND)

    assert token.call_count == 2
    assert put.calls.last.request.headers["Authorization"] == "Bearer token-2"


async def test_oauth2_401_refreshes_the_token_and_repeats_once(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    token = mock.post(TOKEN_URL).mock(side_effect=tokens())
    put = mock.put(TASK_URL).mock(side_effect=[fhir(401), fhir(200), fhir(200)])
    adapter = make_adapter(oauth2())

    outcome = await adapter.send_update(http, update(task()), OUTBOUND)
    await adapter.send_update(http, update(task()), OUTBOUND)

    assert outcome.status_code == 200
    assert token.call_count == 2  # the new token is kept for the next send
    assert [c.request.headers["Authorization"] for c in put.calls] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-2",
    ]
    assert [c.request.headers["X-Request-ID"] for c in put.calls] == ["delivery-0001"] * 3


async def test_oauth2_401_twice_is_permanent(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    token = mock.post(TOKEN_URL).mock(side_effect=tokens())
    put = mock.put(TASK_URL).mock(return_value=fhir(401))

    with pytest.raises(PermanentError) as caught:
        await make_adapter(oauth2()).send_update(http, update(task()), OUTBOUND)

    assert put.call_count == 2
    assert token.call_count == 2
    assert "token-" not in str(caught.value)


async def test_concurrent_sends_fetch_one_token(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    issue = tokens()

    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)  # let every send reach the token fetch
        return issue(request)

    token = mock.post(TOKEN_URL).mock(side_effect=slow_token)
    mock.put(url__regex=rf"{BASE}/Task/t\d").mock(return_value=fhir(200))
    adapter = make_adapter(oauth2())

    await asyncio.gather(
        *(adapter.send_update(http, update(task(id=f"t{i}")), OUTBOUND) for i in range(5))
    )

    assert token.call_count == 1


async def test_a_late_401_does_not_drop_a_newer_token(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    issue = tokens()

    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # both sends start with token-1
        return issue(request)

    token = mock.post(TOKEN_URL).mock(side_effect=slow_token)

    async def server(request: httpx.Request) -> httpx.Response:
        # "late" answers after "early" has been refused and has fetched a new token.
        await asyncio.sleep(0.05 if request.url.path.endswith("/late") else 0.01)
        if request.headers["Authorization"] == "Bearer token-1":
            return fhir(401)
        return fhir(200)

    mock.put(url__regex=rf"{BASE}/Task/(early|late)").mock(side_effect=server)
    adapter = make_adapter(oauth2())

    await asyncio.gather(
        adapter.send_update(http, update(task(id="early")), OUTBOUND),
        adapter.send_update(http, update(task(id="late")), OUTBOUND),
    )

    assert token.call_count == 2  # token-1, then token-2 shared by both repeats
    late = [c.request.headers["Authorization"] for c in mock.calls if "late" in c.request.url.path]
    assert late == ["Bearer token-1", "Bearer token-2"]


@pytest.mark.parametrize("status", [400, 401])
async def test_token_endpoint_refusal_is_permanent_and_keeps_the_secret(
    mock: respx.MockRouter, http: httpx.AsyncClient, status: int
) -> None:
    # A careless server echoing the secret back.
    mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(
            status, json={"error": "invalid_client", "error_description": f"bad {SECRET}"}
        )
    )
    put = mock.put(TASK_URL).mock(return_value=fhir(200))

    with pytest.raises(PermanentError) as caught:
        await make_adapter(oauth2()).send_update(http, update(task()), OUTBOUND)

    error = caught.value
    assert type(error) is PermanentError
    assert error.status_code == status
    assert "invalid_client" in str(error)
    assert SECRET not in str(error)
    assert SECRET not in repr(error.args)
    assert error.response_excerpt is not None
    assert "invalid_client" in error.response_excerpt
    assert SECRET not in error.response_excerpt
    assert put.call_count == 0


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(503, headers={"Retry-After": "30"}),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
    ],
)
async def test_token_endpoint_outage_is_retryable(
    mock: respx.MockRouter, http: httpx.AsyncClient, answer: Any
) -> None:
    route = mock.post(TOKEN_URL)
    if isinstance(answer, Exception):
        route.mock(side_effect=answer)
    else:
        route.mock(return_value=answer)
    put = mock.put(TASK_URL).mock(return_value=fhir(200))

    with pytest.raises(RetryableError) as caught:
        await make_adapter(oauth2()).send_update(http, update(task()), OUTBOUND)

    assert put.call_count == 0
    if isinstance(answer, httpx.Response):
        assert caught.value.retry_after == 30.0


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>login</html>"),
        httpx.Response(200, json={"token_type": "Bearer"}),
        httpx.Response(200, json={"access_token": "mac-token-value", "token_type": "mac"}),
    ],
)
async def test_an_unusable_token_response_is_permanent(
    mock: respx.MockRouter, http: httpx.AsyncClient, answer: httpx.Response
) -> None:
    mock.post(TOKEN_URL).mock(return_value=answer)

    with pytest.raises(PermanentError) as caught:
        await make_adapter(oauth2()).send_update(http, update(task()), OUTBOUND)

    assert "mac-token-value" not in str(caught.value)
    assert caught.value.response_excerpt is None


# --- configuration ------------------------------------------------------------------------------


def test_config_defaults_and_normalisation() -> None:
    config = FhirPushConfig.model_validate({"base_url": " https://FHIR.example.org/R4/ "})

    assert config.base_url == "https://fhir.example.org/R4"
    assert config.auth.type == "none"
    assert config.timeout == 10


def test_config_round_trips_through_json() -> None:
    config = FhirPushConfig.model_validate({"base_url": BASE, "auth": oauth2()})

    assert FhirPushConfig.model_validate(config.model_dump(mode="json")) == config


def test_secrets_stay_out_of_reprs() -> None:
    oauth = FhirPushConfig.model_validate({"base_url": BASE, "auth": oauth2()})
    bearer = FhirPushConfig.model_validate(
        {"base_url": BASE, "auth": {"type": "bearer", "token": "static-token"}}
    )

    assert SECRET not in repr(oauth)
    assert "static-token" not in repr(bearer)


def test_outbound_urls() -> None:
    assert make_adapter().outbound_urls() == [BASE]
    assert make_adapter({"type": "bearer", "token": "t"}).outbound_urls() == [BASE]
    assert make_adapter(oauth2()).outbound_urls() == [BASE, TOKEN_URL]


@pytest.mark.parametrize(
    "config",
    [
        {"base_url": "ftp://fhir.example.org"},
        {"base_url": "not a url"},
        {"base_url": "https://"},
        {"base_url": "fhir.example.org/R4"},
        {"base_url": "https://fhir example.org"},
        {"base_url": "https://user:pass@fhir.example.org"},
        {"base_url": "https://fhir.example.org/R4?_format=json"},
        {"base_url": "https://fhir.example.org/R4#top"},
        {"base_url": BASE, "auth": {"type": "basic", "username": "u", "password": "p"}},
        {"base_url": BASE, "auth": {"token": "t"}},
        {"base_url": BASE, "auth": {"type": "bearer"}},
        {"base_url": BASE, "auth": {"type": "bearer", "token": ""}},
        {"base_url": BASE, "auth": {"type": "bearer", "token": "a b\r\nX-Evil: 1"}},
        {"base_url": BASE, "auth": {"type": "none", "token": "t"}},
        {"base_url": BASE, "auth": {**oauth2(), "token_url": "file:///etc/passwd"}},
        {"base_url": BASE, "auth": {**oauth2(), "client_secret": ""}},
        {"base_url": BASE, "auth": {**oauth2(), "audience": "x"}},
        {"base_url": BASE, "timeout": 0},
        {"base_url": BASE, "timeout": 61},
        {"base_url": BASE, "timeout": "5"},
        {"base_url": BASE, "retries": 3},
        {},
    ],
)
def test_config_refuses(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FhirPushConfig.model_validate(config)


def test_the_adapter_needs_its_own_config() -> None:
    with pytest.raises(TypeError):
        FhirPushAdapter(AdapterConfig())
