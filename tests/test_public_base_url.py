"""Security-relevant URLs come from the settings, never from the Host header (issue 13 part 6;
DESIGN §10 "never build a security-relevant URL from the Host header").

The token endpoint's audience, journey links, FHIR fullUrls and Locations, and the links in
webhook notifications are built on SPBRIDGE_PUBLIC_BASE_URL. Outside sandbox mode the service
refuses to start without it (the lifespan, `spbridge serve` and `spbridge worker`, each with one
clear line); in sandbox mode, unset, it is the address `serve` binds (http://127.0.0.1:8000 by
default). The hostile run's repro: a private_key_jwt assertion with
aud=http://evil.example/oauth2/token sent with `Host: evil.example` got a token, and a journey link
was minted on http://evil.example/….
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from app import worker as worker_module
from app.cli import bound_base_url, cli
from app.config import MISSING_PUBLIC_BASE_URL, ConfigurationError, Settings, get_settings
from app.main import create_app
from tests.clients.test_oauth2 import assertion, ec_key, new_client, refused, register_key
from tests.conftest import FHIR_JSON, Bridge, empty_database, make_settings, referral_resource
from tests.support.cases import open_case
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver

EVIL = {"Host": "evil.example"}
OWN = "https://bridge.example.nhs.uk"


async def _client_for(application: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.fixture
async def sandbox_http(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app in sandbox mode with no public base URL configured."""
    await empty_database(database_url)
    application = create_app(make_settings(database_url, sandbox=True, public_base_url=None))
    async for http in _client_for(application):
        yield http


async def token_with_host(
    http: httpx.AsyncClient, signed: str, headers: dict[str, str]
) -> httpx.Response:
    return await http.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed,
        },
        headers=headers,
    )


async def _audiences(http: httpx.AsyncClient, own: str) -> None:
    """An assertion addressed to the Host the client chose is refused; one addressed to the
    bridge's own token endpoint is accepted, whatever Host header comes with it."""
    bridge = Bridge(http)
    client_id, _ = await new_client(bridge)
    key = ec_key()
    await register_key(bridge, client_id, key)
    now = dt.datetime.now(dt.UTC)
    forged = assertion(key, client_id, now, aud="http://evil.example/oauth2/token")
    description = refused(await token_with_host(http, forged, EVIL))
    assert description == "The client assertion's aud must be the token endpoint URL"
    for headers in (EVIL, {}):
        genuine = assertion(key, client_id, now, aud=f"{own}/oauth2/token")
        response = await token_with_host(http, genuine, headers)
        assert response.status_code == 200, response.text


async def _journey_and_fhir_urls(http: httpx.AsyncClient, own: str) -> None:
    bridge = Bridge(http)
    case = await open_case(bridge)
    link = await http.get(
        f"/api/v1/referrals/{case.referral_id}/journey-link", headers={**case.referrer, **EVIL}
    )
    assert link.status_code == 200, link.text
    assert link.json()["url"].startswith(f"{own}/journey/{case.referral_id}?token=")
    created = await http.post(
        "/fhir/ServiceRequest",
        json=referral_resource(),
        headers={**case.referrer, **FHIR_JSON, **EVIL},
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"].startswith(f"{own}/fhir/ServiceRequest/")
    search = await http.get(
        "/fhir/Task",
        params={"focus": f"ServiceRequest/{case.referral_id}"},
        headers={**case.referrer, **EVIL},
    )
    assert search.status_code == 200, search.text
    assert "evil.example" not in search.text
    assert search.json()["entry"][0]["fullUrl"].startswith(f"{own}/fhir/Task/")


async def test_sandbox_without_a_base_url_never_uses_the_host_header(
    sandbox_http: httpx.AsyncClient,
) -> None:
    await _audiences(sandbox_http, "http://127.0.0.1:8000")
    await _journey_and_fhir_urls(sandbox_http, "http://127.0.0.1:8000")
    landing = await sandbox_http.get("/", headers=EVIL)
    assert "BRIDGE=http://127.0.0.1:8000\n" in landing.text
    assert "evil.example" not in landing.text


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"public_base_url": OWN + "/", "allowed_outbound_hosts": ["127.0.0.1"]}


async def test_the_configured_base_url_wins_over_the_host_header(
    client: httpx.AsyncClient,
) -> None:
    await _audiences(client, OWN)
    await _journey_and_fhir_urls(client, OWN)


async def test_webhook_links_are_on_the_configured_base_url(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    receiver = await Receiver().start()
    try:
        created = await bridge.http.post(
            "/api/v1/subscriptions", json={"url": f"{receiver.url}/hook"}, headers=bridge.admin
        )
        assert created.status_code == 201, created.text
        referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
        response = await bridge.http.post(
            "/fhir/ServiceRequest",
            json=referral_resource(),
            headers={**referrer, **FHIR_JSON, **EVIL},
        )
        assert response.status_code == 201, response.text
        await dispatcher_for(app).drain()
    finally:
        await receiver.stop()
    (delivered,) = receiver.requests
    links = delivered.json()["data"]["links"]
    assert links and all(url.startswith(f"{OWN}/") for url in links.values()), links


# --- refusing to start without it --------------------------------------------------------------


async def test_the_lifespan_refuses_to_start_without_a_base_url_outside_sandbox(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    application = create_app(make_settings(database_url, public_base_url=None))
    with pytest.raises(ConfigurationError) as refusal:
        async with application.router.lifespan_context(application):
            pytest.fail("the app started without SPBRIDGE_PUBLIC_BASE_URL")
    assert str(refusal.value) == MISSING_PUBLIC_BASE_URL
    assert "SPBRIDGE_PUBLIC_BASE_URL is not set" in MISSING_PUBLIC_BASE_URL
    assert [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"] == [
        MISSING_PUBLIC_BASE_URL
    ]
    # Set to nothing is not set.
    application = create_app(make_settings(database_url, public_base_url=" "))
    with pytest.raises(ConfigurationError):
        async with application.router.lifespan_context(application):
            pass


@pytest.fixture
def cli_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """`spbridge` with a fresh SQLite database and neither uvicorn nor the worker loop really
    started: what they would have been given is recorded instead."""
    monkeypatch.setenv("SPBRIDGE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.delenv("SPBRIDGE_PUBLIC_BASE_URL", raising=False)
    monkeypatch.delenv("SPBRIDGE_SANDBOX", raising=False)
    started: dict[str, Any] = {"database": tmp_path / "cli.db"}

    def run(application: Any, **options: Any) -> None:
        started["serve"] = application.state.settings

    async def run_worker(settings: Settings) -> None:
        started["worker"] = settings

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(worker_module, "run_worker", run_worker)
    get_settings.cache_clear()
    yield started
    get_settings.cache_clear()
    gc.unfreeze()  # serve freezes what it imported, for a long-lived process; this one is not


@pytest.mark.parametrize("command", [["serve"], ["worker", "--migrate"]])
def test_serve_and_worker_refuse_to_start_without_a_base_url(
    cli_environment: dict[str, Any], command: list[str]
) -> None:
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr == f"error: {MISSING_PUBLIC_BASE_URL}\n"  # one line, no traceback
    assert result.stdout == ""
    # Refused before anything ran: no migration (no database file), no server, no worker.
    database = cli_environment.pop("database")
    assert cli_environment == {}
    assert not database.exists()


@pytest.mark.parametrize("command", [["serve", "--no-migrate"], ["worker"]])
def test_serve_and_worker_start_with_a_base_url(
    cli_environment: dict[str, Any], command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPBRIDGE_PUBLIC_BASE_URL", "https://bridge.example.nhs.uk/")
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    cli_environment.pop("database")
    (settings,) = cli_environment.values()
    assert settings.public_base_url == "https://bridge.example.nhs.uk"


def test_sandbox_serve_uses_the_address_it_binds(cli_environment: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli, ["serve", "--sandbox", "--port", "8123"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert cli_environment["serve"].public_base_url == "http://127.0.0.1:8123"


def test_the_bound_address_as_a_base_url() -> None:
    assert bound_base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert bound_base_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"  # noqa: S104
    assert bound_base_url("::", 8080) == "http://127.0.0.1:8080"
    assert bound_base_url("::1", 9000) == "http://[::1]:9000"
    assert bound_base_url("bridge.local", 80) == "http://bridge.local:80"


@pytest.mark.parametrize(
    "value",
    [
        "bridge.example.org",
        "ftp://bridge.example.org",
        "https://u:p@bridge.example.org",
        "https://b.example/?q=1",
    ],
)
def test_a_base_url_that_is_no_plain_http_address_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="public_base_url"):
        Settings(public_base_url=value)
