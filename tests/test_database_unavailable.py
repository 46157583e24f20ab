"""The database unavailable: a real outage (a TCP proxy in front of PostgreSQL that is cut and
restored), an exhausted pool, SQLite's write lock held elsewhere. Each request that meets it is a
503 with Retry-After and the request's id, logged on one line without a stack and counted; a
genuine bug is still a logged 500; background work warns once a round and backs off; nothing
acknowledged is lost; and a request's transaction never waits for its client's body.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from fastapi import Request
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError

from app.cases.models import ReportPendingCase
from app.db import FailedRounds, create_engine, unavailability
from app.delivery.dispatcher import Dispatcher
from app.delivery.senders import standard_senders
from app.main import create_app
from app.reports.drainer import ReportDrainer
from tests.conftest import (
    ADMIN_KEY,
    FHIR_JSON,
    Bridge,
    empty_database,
    make_settings,
    prepared_url,
    referral_resource,
    row_counts,
)
from tests.support.dbproxy import DatabaseProxy
from tests.support.logs import captured_logs
from tests.support.receiver import Receiver, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """Everything logged, as the JSON lines `spbridge serve` writes (put back afterwards)."""
    with captured_logs("INFO") as stream:
        yield stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def about(stream: io.StringIO, request_id: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of each line logged for a request, the access line left out."""
    return [
        (line["level"], line["logger"], line["message"])
        for line in lines(stream)
        if line.get("request_id") == request_id and line["logger"] != "spbridge.access"
    ]


def line_of(stream: io.StringIO, request_id: str, message: str) -> dict[str, Any]:
    (found,) = [
        line
        for line in lines(stream)
        if line.get("request_id") == request_id and line["message"] == message
    ]
    return found


@asynccontextmanager
async def running(url: str, **overrides: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app on ``url`` (its lifespan run), and a client for it."""
    application = create_app(make_settings(url, **overrides))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield application, http


@asynccontextmanager
async def through_proxy(database_url: str) -> AsyncIterator[tuple[DatabaseProxy, str]]:
    """A proxy in front of the test's PostgreSQL database, and the URL that goes through it."""
    url = make_url(database_url)
    proxy = DatabaseProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    finally:
        await proxy.stop()


def unavailable_count(metrics: str, reason: str) -> float:
    name = f'spbridge_database_unavailable_responses_total{{reason="{reason}"}}'
    (value,) = [line.split()[-1] for line in metrics.splitlines() if line.startswith(name)]
    return float(value)


def assert_unavailable(response: httpx.Response, request_id: str, fhir: bool) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-request-id"] == request_id
    if fhir:
        assert response.headers["content-type"].startswith("application/fhir+json")
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "transient"
    else:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == 503


async def refer(
    http: httpx.AsyncClient, headers: dict[str, str], request_id: str
) -> httpx.Response:
    return await http.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource()),
        headers={**headers, **FHIR_JSON, "X-Request-ID": request_id},
    )


# --- a real outage (PostgreSQL) ------------------------------------------------------------


@pytest.mark.postgresql_only
async def test_an_outage_is_a_503_with_retry_after_then_referrals_are_taken_again(
    database_url: str, logged: io.StringIO
) -> None:
    await empty_database(database_url)
    async with (
        through_proxy(database_url) as (proxy, url),
        running(url, database_pool_timeout=1.0) as (_app, http),
    ):
        bridge = Bridge(http)
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
        assert (await refer(http, referrer, "before-1")).status_code == 201

        await proxy.cut()  # every connection reset, new ones refused
        began = time.monotonic()
        intake = await refer(http, referrer, "outage-1")
        listing = await http.get("/api/v1/clients", headers={**ADMIN, "X-Request-ID": "outage-2"})
        assert time.monotonic() - began < 5  # refused at once, not after a hang
        assert_unavailable(intake, "outage-1", fhir=True)
        assert_unavailable(listing, "outage-2", fhir=False)
        for request_id in ("outage-1", "outage-2"):
            # One line, a warning with the reason and the error's type, no stack.
            assert about(logged, request_id) == [("WARNING", "spbridge", "database unavailable")]
            line = line_of(logged, request_id, "database unavailable")
            assert line["reason"] == "connection"
            assert "exception" not in line
            assert line_of(logged, request_id, "request")["status"] == 503
        assert not [line for line in lines(logged) if line["level"] == "ERROR"]

        await proxy.restore()
        assert (await refer(http, referrer, "after-1")).status_code == 201
        metrics = (await http.get("/metrics")).text
        assert unavailable_count(metrics, "connection") == 2
        assert unavailable_count(metrics, "pool_timeout") == 0
    assert (await row_counts(database_url))["referrals"] == 2


@pytest.mark.postgresql_only
@pytest.mark.parametrize("warm", [True, False], ids=["one-statement", "after-a-read"])
async def test_a_connection_lost_in_the_middle_of_a_referral_is_a_503_and_writes_nothing(
    database_url: str, logged: io.StringIO, warm: bool
) -> None:
    """Cut as the referral's insert goes out: warm, in intake's one statement, which was to
    commit itself; cold, the installation's key read first, in the referral's own insert."""
    await empty_database(database_url)
    async with (
        through_proxy(database_url) as (proxy, url),
        running(url, database_pool_timeout=1.0) as (app, http),
    ):
        bridge = Bridge(http)
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
        if warm:
            assert (await refer(http, referrer, "midway-0")).status_code == 201
        before = await row_counts(database_url)
        armed = True

        @event.listens_for(app.state.database.engine.sync_engine, "before_cursor_execute")
        def cut_at_the_insert(*args: Any) -> None:
            nonlocal armed
            statement = str(args[2])
            if armed and "INSERT INTO referrals " in statement:
                armed = False
                proxy.cut_now()  # the referral's INSERT goes out on a dead connection
                cut.append(statement.startswith("WITH "))

        cut: list[bool] = []
        assert_unavailable(await refer(http, referrer, "midway-1"), "midway-1", fhir=True)
        assert cut == [warm]
        said = [line for line in about(logged, "midway-1") if line[1] != "spbridge.keys"]
        assert said == [("WARNING", "spbridge", "database unavailable")]
        assert await row_counts(database_url) == before
        await proxy.restore()
        assert (await refer(http, referrer, "midway-2")).status_code == 201


# --- overload and locks (both databases where they apply) ----------------------------------


async def test_an_exhausted_pool_is_a_quick_503(database_url: str, logged: io.StringIO) -> None:
    await empty_database(database_url)
    tiny = {
        "database_pool_size": 1,
        "database_pool_max_overflow": 0,
        "database_pool_timeout": 0.5,
    }
    async with running(database_url, **tiny) as (app, http):
        bridge = Bridge(http)
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
        async with app.state.database.engine.connect() as held:  # the pool's one connection
            await held.execute(text("SELECT 1"))
            began = time.monotonic()
            refused = await refer(http, referrer, "overload-1")
            assert time.monotonic() - began < 3
        assert_unavailable(refused, "overload-1", fhir=True)
        assert about(logged, "overload-1") == [("WARNING", "spbridge", "database unavailable")]
        assert line_of(logged, "overload-1", "database unavailable")["reason"] == "pool_timeout"
        assert (await refer(http, referrer, "overload-2")).status_code == 201
        metrics = (await http.get("/metrics")).text
        assert unavailable_count(metrics, "pool_timeout") == 1


async def test_sqlite_locked_by_another_writer_is_a_quick_503(
    tmp_path_factory: pytest.TempPathFactory, logged: io.StringIO
) -> None:
    url = prepared_url("sqlite", tmp_path_factory)
    await empty_database(url)
    async with running(url, database_pool_timeout=0.5) as (_app, http):
        bridge = Bridge(http)
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
        other = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            began = time.monotonic()
            refused = await asyncio.wait_for(refer(http, referrer, "locked-1"), 10)
            assert time.monotonic() - began < 3
        finally:
            other.rollback()
            other.close()
        assert_unavailable(refused, "locked-1", fhir=True)
        assert line_of(logged, "locked-1", "database unavailable")["reason"] == "locked"
        assert (await refer(http, referrer, "locked-2")).status_code == 201


# --- a bug is still a 500 ------------------------------------------------------------------


async def test_a_bug_is_still_a_logged_500_with_the_request_id(
    app: Any, database_url: str, logged: io.StringIO
) -> None:
    async def query_bug(request: Request) -> None:
        async with request.app.state.database.read_sessions() as session:
            await session.execute(text("SELECT * FROM no_such_table"))

    async def plain_bug() -> None:
        raise ZeroDivisionError

    app.add_api_route("/api/v1/test-only/query-bug", query_bug, methods=["GET"])
    app.add_api_route("/api/v1/test-only/plain-bug", plain_bug, methods=["GET"])
    # The app answers: nothing is raised on to the server (which would log it a second time).
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for name in ("query-bug", "plain-bug"):
            response = await http.get(
                f"/api/v1/test-only/{name}", headers={"X-Request-ID": f"bug-{name}"}
            )
            assert response.status_code == 500, response.text
            assert response.headers["x-request-id"] == f"bug-{name}"
            assert "retry-after" not in response.headers
            assert about(logged, f"bug-{name}") == [("ERROR", "spbridge", "unhandled error")]
            assert line_of(logged, f"bug-{name}", "unhandled error")["exception"]["frames"]
            assert line_of(logged, f"bug-{name}", "request")["status"] == 500
        metrics = (await http.get("/metrics")).text
    for reason in ("connection", "pool_timeout", "locked", "resources"):
        assert unavailable_count(metrics, reason) == 0


async def test_an_error_in_a_middleware_still_answers_with_the_request_id(
    app: Any, logged: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_scope: Any) -> None:
        raise RuntimeError("a bug outside the routes")

    monkeypatch.setattr("app.audit.trail.begin", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/fhir/metadata", headers={"X-Request-ID": "outside-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "outside-1"
    assert response.headers["x-correlation-id"] == "outside-1"
    unhandled = [line for line in lines(logged) if line["message"] == "unhandled error"]
    assert [line["request_id"] for line in unhandled] == ["outside-1"]


# --- transactions wait for nothing but the database ----------------------------------------


async def test_a_referral_whose_body_is_still_arriving_holds_no_transaction(
    app: Any, bridge: Bridge, database_url: str, backend: str
) -> None:
    await bridge.service()
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    body = orjson.dumps(referral_resource())
    first_part_taken = asyncio.Event()
    rest_may_come = asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield body[:100]
        first_part_taken.set()  # the app asked for more: it is waiting for the client
        await rest_may_come.wait()
        yield body[100:]

    pending = asyncio.create_task(
        bridge.http.post(
            "/fhir/ServiceRequest", content=slowly(), headers={**referrer, **FHIR_JSON}
        )
    )
    try:
        await asyncio.wait_for(first_part_taken.wait(), 5)
        if backend == "postgresql":
            engine = create_engine(database_url)
            try:
                async with engine.connect() as connection:
                    idle = await connection.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND state LIKE 'idle in transaction%'"
                        )
                    )
            finally:
                await engine.dispose()
            assert idle == 0
        # Another writer goes ahead meanwhile (on SQLite: the write lock is free).
        other = await asyncio.wait_for(bridge.key("advisor", "LR001"), 5)
        assert other["Authorization"].startswith("Bearer ")
    finally:
        rest_may_come.set()
        response = await asyncio.wait_for(pending, 10)
    assert response.status_code == 201, response.text


# --- background work -----------------------------------------------------------------------


def test_failed_rounds_pause_longer_each_time_up_to_a_cap_and_start_again_after_success() -> None:
    rounds = FailedRounds(logging.getLogger("spbridge.test"), "round failed", first=0.5, cap=3)
    pauses = [rounds.failed(RuntimeError("bug")) for _ in range(5)]
    assert pauses == [0.5, 1.0, 2.0, 3.0, 3.0]
    rounds.succeeded()
    assert rounds.failed(RuntimeError("bug")) == 0.5


@pytest.mark.postgresql_only
async def test_background_work_warns_once_a_round_backs_off_and_loses_nothing(
    database_url: str, logged: io.StringIO
) -> None:
    await empty_database(database_url)
    receiver = await Receiver().start()
    settings = {
        "allowed_outbound_hosts": ["127.0.0.1"],
        "dispatch_poll_interval": 0.05,
        "database_pool_timeout": 1.0,
    }
    try:
        async with (
            through_proxy(database_url) as (proxy, url),
            running(url, **settings) as (app, http),
        ):
            bridge = Bridge(http)
            await bridge.service()
            response = await http.post(
                "/api/v1/subscriptions", json={"url": receiver.url + "/hooks"}, headers=ADMIN
            )
            assert response.status_code == 201, response.text
            referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
            assert (await refer(http, referrer, "queued-1")).status_code == 201
            await proxy.cut()
            database, config = app.state.database, app.state.settings
            dispatcher = Dispatcher(
                database, config, app.state.http, senders=standard_senders(config)
            )
            drainer = ReportDrainer(database, interval=0.05)
            dispatcher.start()
            drainer.start()
            try:
                await asyncio.sleep(2.5)
                failed = [
                    line
                    for line in lines(logged)
                    if line["logger"] in ("spbridge.delivery", "spbridge.reports")
                    and line["level"] != "INFO"
                ]
                assert failed, "the rounds during the outage must have failed"
                assert {line["level"] for line in failed} == {"WARNING"}
                assert not [line for line in failed if "exception" in line]
                assert {line["reason"] for line in failed} == {"database connection"}
                # Backing off: 0.25, 0.5, 1, 2 s between the dispatcher's rounds (and 0.05 s
                # doubling for the drainer's), not one round every 0.05 s.
                for logger in ("spbridge.delivery", "spbridge.reports"):
                    mine = [line for line in failed if line["logger"] == logger]
                    assert 1 <= len(mine) <= 8, (logger, len(mine))
                await proxy.restore()
                # Nothing lost: the webhook goes out, the report queue drains.
                await wait_for(lambda: bool(receiver.requests), timeout=10)
                for _ in range(200):
                    async with database.read_sessions() as session:
                        if await session.scalar(select(ReportPendingCase.case_id)) is None:
                            break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the report queue was not drained after the outage")
            finally:
                await drainer.stop()
                await dispatcher.stop(grace=5)
    finally:
        await receiver.stop()
    assert not [line for line in lines(logged) if line["level"] == "ERROR"]


def test_only_a_database_error_itself_means_the_database_is_unavailable() -> None:
    lost = DBAPIError("SELECT 1", None, ConnectionResetError(), connection_invalidated=True)
    found = unavailability(lost)
    assert found is not None and found.reason == "connection"
    # A bug raised while handling a lost connection is still a bug (a 500, with its stack).
    bug = KeyError("a bug")
    bug.__cause__ = bug.__context__ = lost
    assert unavailability(bug) is None
    # What the database refuses is the request's fault or a bug, not an outage.
    assert unavailability(IntegrityError("INSERT", None, ValueError())) is None
    assert unavailability(ProgrammingError("SELECT", None, ValueError())) is None
    # A refused connection counts only when raised by the database layer, not by, say, httpx.
    assert unavailability(ConnectionRefusedError()) is None


@pytest.mark.postgresql_only
async def test_a_server_restart_costs_no_request_and_takes_no_ping(
    database_url: str, logged: io.StringIO
) -> None:
    """Pooled connections the server closed (a restart, a terminated backend) are replaced when
    taken from the pool, not met by a request; and taking one costs no round trip (no pre-ping)."""
    await empty_database(database_url)
    async with running(database_url) as (app, http):
        bridge = Bridge(http)
        await bridge.service()
        referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
        # Fill the pool with several connections.
        warm = await asyncio.gather(*(refer(http, referrer, f"warm-{i}") for i in range(4)))
        assert [r.status_code for r in warm] == [201] * 4
        pool = app.state.database.engine.pool
        assert pool.checkedin() >= 2

        admin = create_engine(database_url)
        async with admin.connect() as connection:
            # Every other backend of this database ends, as in a restart (FATAL 57P01).
            ended = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        assert ended >= 2
        await asyncio.sleep(0.2)  # the sockets' close reaches the event loop

        for i in range(4):
            assert (await refer(http, referrer, f"after-{i}")).status_code == 201
        assert not [line for line in lines(logged) if line["message"] == "database unavailable"]

        # A pre-ping is BEGIN, a ping, ROLLBACK: the rolled-back transactions tell.
        rollbacks = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        async with admin.connect() as connection:
            await connection.execute(text("SELECT pg_stat_clear_snapshot()"))
            before = await connection.scalar(text(rollbacks))
        for i in range(4):
            assert (await refer(http, referrer, f"counted-{i}")).status_code == 201
        await asyncio.sleep(0.6)  # backends report their counters at most every 500 ms
        async with admin.connect() as connection:
            assert await connection.scalar(text(rollbacks)) == before
        await admin.dispose()
