"""Test fixtures: every database test runs on SQLite and on PostgreSQL.

Databases are built by running the Alembic migrations, once per backend per run, and emptied
between tests. PostgreSQL is required in CI (CI=true) or when SPBRIDGE_TEST_REQUIRE_POSTGRES=1;
elsewhere its tests are skipped, loudly, if it cannot be reached.

``fhir_server`` is a strict FHIR R4 server on loopback (tests/support/fhir_server/, Node.js),
started once per run and emptied before each test that uses it. It is required in CI or when
SPBRIDGE_TEST_REQUIRE_FHIR_SERVER=1; elsewhere its tests are skipped, loudly, without Node.
"""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app.config import Settings
from app.db import Base, create_engine
from app.main import create_app
from app.migrate import upgrade
from tests.support import conformance, fhir_test_server
from tests.support.audit import RequestRecorder, check_audit_completeness

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "spb_test_admin_key_" + "x" * 24
POSTGRES_URL = os.environ.get(
    "SPBRIDGE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = [
    b.strip()
    for b in os.environ.get("SPBRIDGE_TEST_DATABASES", "sqlite,postgresql").split(",")
    if b.strip()
]
REQUIRE_POSTGRES = (
    bool(os.environ.get("CI")) or os.environ.get("SPBRIDGE_TEST_REQUIRE_POSTGRES") == "1"
)
FHIR_JSON = {"Content-Type": "application/fhir+json"}


async def _admin_execute(statements: list[str]) -> None:
    engine = create_engine(POSTGRES_URL)
    try:
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def _unreachable(exc: BaseException) -> None:
    message = f"PostgreSQL is not reachable at {POSTGRES_URL}: {type(exc).__name__}: {exc}"
    if REQUIRE_POSTGRES:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _fresh_database_statements(name: str) -> list[str]:
    # A test database need not wait for its WAL to reach the disk at each commit: nothing here
    # tests a crash of PostgreSQL itself, and the suite commits thousands of times.
    return [
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        f'CREATE DATABASE "{name}"',
        f'ALTER DATABASE "{name}" SET synchronous_commit = off',
    ]


def _url_of(name: str) -> str:
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def postgres_database(name: str) -> str:
    """A new empty PostgreSQL database (outside an event loop)."""
    try:
        asyncio.run(_admin_execute(_fresh_database_statements(name)))
    except (OSError, DBAPIError) as exc:
        _unreachable(exc)
    return _url_of(name)


async def postgres_database_async(name: str) -> str:
    """A new empty PostgreSQL database (inside an event loop)."""
    try:
        await _admin_execute(_fresh_database_statements(name))
    except (OSError, DBAPIError) as exc:
        _unreachable(exc)
    return _url_of(name)


_prepared: dict[str, str] = {}


def prepared_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database for this backend, made once per test run."""
    if backend not in _prepared:
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        else:
            url = postgres_database(f"spbridge_test_{os.getpid()}")
        upgrade(url)
        _prepared[backend] = url
    return _prepared[backend]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "postgresql" in _prepared:
        name = make_url(_prepared["postgresql"]).database
        asyncio.run(_admin_execute([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = BACKENDS
        if metafunc.definition.get_closest_marker("postgresql_only"):
            backends = [b for b in BACKENDS if b == "postgresql"]
        metafunc.parametrize("backend", backends, scope="session")


@pytest.fixture(scope="session")
def fhir_server_process() -> Iterator[fhir_test_server.FhirTestServer]:
    """The test FHIR server, started once per run (see tests/support/fhir_test_server.py)."""
    try:
        server = fhir_test_server.start()
    except fhir_test_server.FhirServerUnavailable as exc:
        message = f"The test FHIR server is not available: {exc}"
        if fhir_test_server.REQUIRE_FHIR_SERVER:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fhir_server(
    fhir_server_process: fhir_test_server.FhirTestServer,
) -> fhir_test_server.FhirTestServer:
    """The test FHIR server, empty and strict (no update as create, references checked,
    resources validated); ``fhir_server.reset(updateCreate=True)`` or ``.set_mode(…)`` to change
    that, ``.base_url`` for a clinical route, ``.requests()`` for what it was sent."""
    server = fhir_server_process
    server.reset()
    recorder = conformance.current()
    if recorder is not None:
        # What the bridge sent it, checked at the end of the test (tests/support/conformance.py).
        recorder.sources.append(server.bodies_from_the_bridge)
    return server


@pytest.fixture(autouse=True)
def fhir_conformance(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every FHIR resource the bridge gives out during the test, checked as R4 afterwards:
    reported at the end of the run, or failing the test with SPBRIDGE_TEST_FHIR_CONFORMANCE=strict
    (tests/support/conformance.py); not for a test marked ``fhir_unchecked``."""
    unchecked = request.node.get_closest_marker("fhir_unchecked") is not None
    recorder = None if unchecked else conformance.start(request.node.nodeid)
    yield
    found = conformance.enforced(conformance.finish(recorder))
    if found:
        pytest.fail(conformance.failure_message(found), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if conformance.REPORT.resources_checked or conformance.MODE == "off":
        terminalreporter.section("FHIR conformance")
        for line in conformance.REPORT.lines():
            terminalreporter.write_line(line)
        if conformance.MODE != "off":
            conformance.REPORT.write()
            terminalreporter.write_line(f"  details: {conformance.REPORT_FILE}")


@pytest.fixture
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return prepared_url(backend, tmp_path_factory)


async def empty_database(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
            # The audit tables refuse deletion by trigger (migration 0007); between tests, and
            # only here, the triggers are set aside.
            if connection.dialect.name == "postgresql":
                # DELETE, all in one round trip (simple query protocol), not TRUNCATE: a test
                # leaves a few rows, and TRUNCATE of every table cost 65-165 ms a test.
                raw = (await connection.get_raw_connection()).driver_connection
                assert raw is not None
                await raw.execute(
                    "SET LOCAL session_replication_role = replica; "
                    + "; ".join(f"DELETE FROM {table}" for table in tables)
                )
            else:
                triggers = list(
                    await connection.execute(
                        text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
                    )
                )
                for name, _sql in triggers:
                    await connection.execute(text(f'DROP TRIGGER "{name}"'))
                for table in tables:
                    await connection.execute(text(f"DELETE FROM {table}"))
                for _name, sql in triggers:
                    await connection.execute(text(sql))
    finally:
        await engine.dispose()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    # Tests drive the dispatcher themselves unless they ask for the in-process one. The public
    # base URL is the test client's own address (outside sandbox mode it is required).
    values: dict[str, Any] = {
        "database_url": database_url,
        "admin_api_key": ADMIN_KEY,
        "run_dispatcher": False,
        "public_base_url": "http://testserver",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change the app's settings."""
    return {}


@pytest.fixture
async def app(database_url: str, settings_overrides: dict[str, Any]) -> AsyncIterator[Any]:
    await empty_database(database_url)
    application = create_app(make_settings(database_url, **settings_overrides))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def audit_check(request: pytest.FixtureRequest) -> bool:
    """Whether the client's requests are checked against the audit trail after the test (not for
    a test marked ``audit_unchecked``, which breaks the trail on purpose)."""
    return request.node.get_closest_marker("audit_unchecked") is None


@pytest.fixture
async def client(app: Any, audit_check: bool) -> AsyncIterator[httpx.AsyncClient]:
    # Every request through this client must leave exactly its audit records
    # (tests/support/audit.py): the suite as a whole is the audit-completeness test.
    recorder = RequestRecorder(app)
    transport = httpx.ASGITransport(app=recorder)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        event_hooks={"response": [_observe_fhir_answer]},
    ) as http:
        yield http
    if audit_check:
        await check_audit_completeness(app, recorder)


async def _observe_fhir_answer(response: httpx.Response) -> None:
    """Hand what the bridge served under /fhir to the test's conformance recorder."""
    recorder = conformance.current()
    if recorder is None or not response.request.url.path.startswith("/fhir"):
        return
    if "json" not in response.headers.get("content-type", ""):
        return
    await response.aread()
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return
    recorder.saw(f"served {response.request.method} {response.request.url.path}", body)


class Bridge:
    """Test helper around the API: register services and clients, make referrals."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def service(self, service_id: str = "life-rooms", organisation: str = "LR001") -> str:
        response = await self.http.post(
            "/api/v1/services",
            json={
                "id": service_id,
                "name": f"Service {service_id}",
                "organisation": organisation,
                "adapter": "local",
            },
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        return service_id

    async def key(
        self,
        role: str = "clinical-system",
        organisation: str = "RW4",
        default_service: str | None = None,
    ) -> dict[str, str]:
        body: dict[str, Any] = {
            "name": f"{role} {organisation}",
            "role": role,
            "organisation": organisation,
        }
        if default_service:
            body["default_service"] = default_service
        response = await self.http.post("/api/v1/clients", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['api_key']}"}

    async def refer(self, headers: dict[str, str], resource: dict[str, Any]) -> httpx.Response:
        return await self.http.post(
            "/fhir/ServiceRequest", content=orjson.dumps(resource), headers={**headers, **FHIR_JSON}
        )

    async def cancel(self, referral_id: str, organisation: str = "RW4") -> None:
        """The referrer revokes its referral (PUT with status revoked)."""
        referrer = await self.key("clinical-system", organisation)
        path = f"/fhir/ServiceRequest/{referral_id}"
        read = await self.http.get(path, headers=referrer)
        current = read.json()
        current["status"] = "revoked"
        headers = {**referrer, **FHIR_JSON, "If-Match": read.headers["etag"]}
        response = await self.http.put(path, json=current, headers=headers)
        assert response.status_code == 200, response.text


@pytest.fixture
def bridge(client: httpx.AsyncClient) -> Bridge:
    return Bridge(client)


_EXAMPLE = orjson.loads(
    (ROOT / "fhir" / "examples" / "ServiceRequest-social-prescribing-referral.json").read_bytes()
)


def referral_resource(service_id: str = "life-rooms", **overrides: Any) -> dict[str, Any]:
    """A valid referral with a fresh identifier; keyword arguments replace top-level elements."""
    resource = copy.deepcopy(_EXAMPLE)
    resource["identifier"] = [
        {"system": "https://rio.example.nhs.uk/Id/referral", "value": str(uuid.uuid4())}
    ]
    resource["performer"] = [{"reference": f"HealthcareService/{service_id}"}]
    resource.update(overrides)
    return resource


def requester_of(ods_code: str, display: str = "Halton Crisis Resolution Team") -> dict[str, Any]:
    """A referral's requester: an organisation by its ODS code (one the client refers for)."""
    return {
        "type": "Organization",
        "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods_code},
        "display": display,
    }


async def row_counts(url: str) -> dict[str, int]:
    """Rows in each table that a referral writes to."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return {
                table: (
                    await connection.execute(text(f"SELECT count(*) FROM {table}"))
                ).scalar_one()
                for table in ("referrals", "cases", "case_events", "deliveries")
            }
    finally:
        await engine.dispose()


NOTHING = {"referrals": 0, "cases": 0, "case_events": 0, "deliveries": 0}
