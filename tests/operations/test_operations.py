"""Operations: liveness, readiness (false when the database is gone), metrics present and moving,
and a graceful shutdown of `spbridge serve` that lets the delivery in flight finish."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import Database
from app.main import create_app
from app.migrate import alembic_config, upgrade_async
from app.outbox.models import Delivery
from tests.conftest import (
    ADMIN_KEY,
    Bridge,
    _admin_execute,
    make_settings,
    postgres_database_async,
    referral_resource,
)
from tests.support.cases import open_case
from tests.support.delivery import dispatcher_for, subscribe
from tests.support.receiver import Receiver, free_port, wait_for

SPBRIDGE = str(Path(sys.executable).parent / "spbridge")
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.02]}


Samples = list[tuple[str, dict[str, str], float]]


async def scrape(http: httpx.AsyncClient) -> tuple[str, Samples]:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample with this name and exactly these labels (None if absent)."""
    found = [v for n, sample_labels, v in samples if n == name and sample_labels == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


async def client_of(application: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


# --- liveness and readiness --------------------------------------------------------------------


async def test_liveness_and_readiness_of_a_healthy_process(client: httpx.AsyncClient) -> None:
    live = await client.get("/healthz")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.headers["cache-control"] == "no-store"
    assert ready.json() == {
        "status": "ready",
        "checks": {
            "database": {"ok": True, "detail": None},
            "migrations": {"ok": True, "detail": None},
            # The test app does not run the dispatcher: workers would.
            "dispatcher": {"ok": True, "detail": "not run in this process: workers deliver"},
            # The report read model is of this code's counting (app.reports.version).
            "reports": {"ok": True, "detail": None},
        },
    }


@pytest.fixture
async def own_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of this test's own, which it may break."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"
        return
    name = f"spbridge_test_ready_{os.getpid()}"
    url = await postgres_database_async(name)
    yield url
    await _admin_execute([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


def _replace_with_a_directory(path: Path) -> None:
    path.rename(path.with_suffix(".moved"))
    path.mkdir()


async def make_database_unreachable(url: str, database: Database) -> None:
    if make_url(url).get_backend_name() == "sqlite":
        # The file goes away and a directory takes its name: SQLite can no longer open it.
        await database.engine.dispose()
        _replace_with_a_directory(Path(make_url(url).database or ""))
    else:
        name = make_url(url).database
        await _admin_execute([f'DROP DATABASE "{name}" WITH (FORCE)'])


async def test_readiness_follows_the_schema_and_turns_false_when_the_database_is_gone(
    own_database: str,
) -> None:
    scripts = ScriptDirectory.from_config(alembic_config(own_database))
    head = scripts.get_current_head()
    assert head is not None
    previous = scripts.get_revision(head).down_revision
    assert isinstance(previous, str)
    application = create_app(make_settings(own_database))
    async with application.router.lifespan_context(application):
        async for http in client_of(application):
            # No schema at all.
            response = await http.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"]["migrations"] == {
                "ok": False,
                "detail": "the database has no schema: run `spbridge migrate`",
            }

            # One migration behind.
            await upgrade_async(own_database, previous)
            response = await http.get("/readyz")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "not ready"
            assert body["checks"]["database"] == {"ok": True, "detail": None}
            assert body["checks"]["migrations"] == {
                "ok": False,
                "detail": f"the database is at {previous}, this code needs {head}: "
                "run `spbridge migrate`",
            }

            # At head: ready.
            await upgrade_async(own_database)
            response = await http.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "ready"

            # The database goes away: not ready (never a 500), and alive all the same.
            await make_database_unreachable(own_database, application.state.database)
            for _ in range(2):  # and again: nothing cached the good answer
                response = await http.get("/readyz")
                assert response.status_code == 503, response.text
                body = response.json()
                assert body["status"] == "not ready"
                assert body["checks"]["database"]["ok"] is False
                assert body["checks"]["database"]["detail"].startswith(
                    "the database did not answer ("
                )
                assert body["checks"]["migrations"] == {
                    "ok": False,
                    "detail": "not checked: the database did not answer",
                }
                assert body["checks"]["dispatcher"]["ok"] is True
                # No secret or location of the database in the answer.
                assert "127.0.0.1" not in response.text and "own.db" not in response.text
            assert (await http.get("/healthz")).status_code == 200
            # The metrics still answer, saying the database is down.
            _text, samples = await scrape(http)
            assert value(samples, "spbridge_database_up") == 0
            assert value(samples, "spbridge_delivery_dead_letters") is None


async def test_readiness_needs_the_dispatcher_when_this_process_runs_it(
    database_url: str, app: Any
) -> None:
    # (``app`` empties the database.)
    application = create_app(make_settings(database_url, run_dispatcher=True))
    async with application.router.lifespan_context(application):
        async for http in client_of(application):
            response = await http.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["dispatcher"] == {"ok": True, "detail": None}
            _text, samples = await scrape(http)
            assert value(samples, "spbridge_dispatcher_running") == 1

            await application.state.dispatcher.stop(grace=1)
            response = await http.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"]["dispatcher"] == {
                "ok": False,
                "detail": "the dispatcher is not running",
            }
            _text, samples = await scrape(http)
            assert value(samples, "spbridge_dispatcher_running") == 0


# --- metrics -----------------------------------------------------------------------------------


async def test_metrics_are_present_and_move(app: Any, bridge: Bridge) -> None:
    http = bridge.http
    _text, before = await scrape(http)
    for name in (
        "spbridge_build_info",
        "spbridge_database_up",
        "spbridge_delivery_oldest_pending_age_seconds",
        "spbridge_delivery_dead_letters",
        "process_resident_memory_bytes",
    ):
        assert any(sample[0] == name for sample in before), name
    assert value(before, "spbridge_database_up") == 1
    assert value(before, "spbridge_delivery_dead_letters") == 0
    assert value(before, "spbridge_delivery_oldest_pending_age_seconds") == 0
    # Every case event type is there from the start, at 0, so rates work from the first event.
    assert value(before, "spbridge_case_events_total", type="referral.received") == 0
    assert value(before, "spbridge_case_events_total", type="case.accepted") == 0
    # Not run in this process (tests drive the dispatcher): not reported.
    assert value(before, "spbridge_dispatcher_running") is None

    # A referral, a webhook subscription of the service's advisors, and one case event.
    worklist = Receiver(default_status=400)  # refuses everything: dead letters
    case = await open_case(bridge)
    await subscribe(bridge, worklist.url, headers=case.advisor)
    await case.record({"type": "case.accepted"})
    # A path with an NHS number in it that no route serves, and a method no one uses.
    assert (await http.get("/fhir/Practitioner/9434765919")).status_code == 404
    assert (await http.request("BREW", "/healthz")).status_code == 405

    text, after = await scrape(http)
    requests = "spbridge_http_requests_total"
    assert value(after, requests, method="POST", route="/fhir/ServiceRequest", status="201") == 1
    assert (
        value(after, requests, method="POST", route="/api/v1/cases/{case_id}/events", status="201")
        == 1
    )
    assert value(after, requests, method="GET", route="unmatched", status="404") == 1
    assert value(after, requests, method="other", route="/healthz", status="405") == 1
    assert (
        value(
            after,
            "spbridge_http_request_duration_seconds_count",
            method="POST",
            route="/fhir/ServiceRequest",
        )
        == 1
    )
    # Nothing that identifies anyone: no path, id or number that was in a request.
    for identifier in (case.referral_id, case.case_id, "9434765919", "life-rooms", "LR001"):
        assert identifier not in text

    assert value(after, "spbridge_case_events_total", type="referral.received") == 1
    assert value(after, "spbridge_case_events_total", type="case.accepted") == 1
    webhook = {"destination_kind": "webhook", "adapter": "webhook"}
    # Only case.accepted went to the worklist: it subscribed after the referral arrived.
    assert value(after, "spbridge_deliveries", state="pending", **webhook) == 1
    assert value(after, "spbridge_deliveries", state="dead", **webhook) == 0
    assert value(after, "spbridge_delivery_queue_depth", **webhook) == 1
    oldest = value(after, "spbridge_delivery_oldest_pending_age_seconds")
    assert oldest is not None and 0 < oldest < 60

    # The worklist refuses it: a dead letter, and the queue is empty again.
    await worklist.start()
    try:
        await dispatcher_for(app).drain()
    finally:
        await worklist.stop()
    _text, drained = await scrape(http)
    assert value(drained, "spbridge_deliveries", state="pending", **webhook) == 0
    assert value(drained, "spbridge_deliveries", state="dead", **webhook) == 1
    assert value(drained, "spbridge_delivery_queue_depth", **webhook) == 0
    assert value(drained, "spbridge_delivery_dead_letters") == 1
    assert value(drained, "spbridge_delivery_oldest_pending_age_seconds") == 0
    # Scrapes are requests too: the two before this one (it is counted once it has answered).
    assert value(drained, requests, method="GET", route="/metrics", status="200") == 2


# --- graceful shutdown of `spbridge serve` -----------------------------------------------------


async def test_serve_stops_gracefully_letting_the_delivery_in_flight_finish(
    tmp_path: Path,
) -> None:
    """SIGTERM to `spbridge serve` (uvicorn): the lifespan stops the in-process dispatcher,
    which finishes the delivery it is sending within SPBRIDGE_SHUTDOWN_GRACE_SECONDS."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"
    port = free_port()
    receiver = Receiver(delay=2.0)
    env = {
        **os.environ,
        "SPBRIDGE_DATABASE_URL": url,
        "SPBRIDGE_ADMIN_API_KEY": ADMIN_KEY,
        "SPBRIDGE_ALLOWED_OUTBOUND_HOSTS": "127.0.0.1",
        "SPBRIDGE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "SPBRIDGE_SHUTDOWN_GRACE_SECONDS": "10",
        "SPBRIDGE_DISPATCH_POLL_INTERVAL": "0.05",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        process = await asyncio.create_subprocess_exec(
            SPBRIDGE, "serve", "--port", str(port), env=env, stdout=handle, stderr=handle
        )
    await receiver.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 60
            while True:
                assert process.returncode is None, log.read_text()
                try:
                    ready = await http.get("/readyz")
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.2)
            # A real process: the in-process dispatcher is running and reported so.
            assert ready.json()["checks"]["dispatcher"] == {"ok": True, "detail": None}

            bridge = Bridge(http)
            await bridge.service()
            await subscribe(bridge, receiver.url)
            referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
            response = await bridge.refer(referrer, referral_resource())
            assert response.status_code == 201, response.text
        await wait_for(lambda: len(receiver.requests) == 1, timeout=30)
        # The receiver is still answering (2 s) when the process is told to stop.
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=30)
        took = time.monotonic() - began
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await receiver.stop()
    output = log.read_text()
    # Uvicorn raises the signal again once it has shut down, so the exit says what stopped it.
    assert code in (0, -signal.SIGTERM), output
    assert '"dispatcher stopped"' in output
    assert '"Application shutdown complete."' in output
    assert took < 10, took  # it waited for the delivery (≤ 2 s), not for the whole grace
    database = Database.from_url(url)
    try:
        async with database.read_sessions() as session:
            rows = list(await session.execute(select(Delivery.state, Delivery.attempts)))
    finally:
        await database.dispose()
    assert [(state, attempts) for state, attempts in rows] == [("delivered", 1)]
    assert len(receiver.requests) == 1  # sent once, finished, not released and sent again


def test_settings_grace_is_what_serve_gives_uvicorn() -> None:
    from app.cli import graceful_timeout

    assert graceful_timeout(Settings(shutdown_grace_seconds=20)) == 20
    assert graceful_timeout(Settings(shutdown_grace_seconds=2.5)) == 3
    assert graceful_timeout(Settings(shutdown_grace_seconds=0)) == 0


def test_a_schema_newer_than_the_code_is_ready_with_a_note() -> None:
    """During a rolling upgrade the new release migrates first; the old processes stay ready."""
    from app.operations.readiness import migrations_check

    scripts = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))
    head = scripts.get_current_head()
    check = migrations_check(scripts, "9999_from_the_future")
    assert check.ok is True
    assert check.detail == (
        f"the database is at 9999_from_the_future, newer than this code ({head}): a rolling "
        "upgrade is under way"
    )
    assert migrations_check(scripts, head).ok is True
