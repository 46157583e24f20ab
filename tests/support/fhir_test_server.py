"""The strict FHIR R4 test server (tests/support/fhir_server/server.mjs) from Python.

``start()`` installs the server's npm dependencies if they are missing (``npm ci``), starts it
with Node on 127.0.0.1 on a free port and waits for its first line. ``FhirTestServer`` gives its
base URL, resets its data and switches its mode between tests, reads what it holds and what it
was sent, and stops it. The fixtures are in tests/conftest.py (``fhir_server``).

It starts in about 1.5-2 s (Node reads the R4 StructureDefinitions; measured on this project's
2-core machine under load) and a reset takes about 7 ms, so the fixtures start it once per run
and reset it before each test that uses it.

Requirement (as for PostgreSQL): in CI (``CI`` set) or with ``SPBRIDGE_TEST_REQUIRE_FHIR_SERVER=1``
a server that cannot start fails the tests that need it; elsewhere they are skipped, loudly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

SERVER_DIR = Path(__file__).resolve().parent / "fhir_server"
NODE_MODULES = SERVER_DIR / "node_modules"
REQUIRE_FHIR_SERVER = (
    bool(os.environ.get("CI")) or os.environ.get("SPBRIDGE_TEST_REQUIRE_FHIR_SERVER") == "1"
)
# The tests' own requests to the server say so, and are not taken for the bridge's.
HARNESS_AGENT = "spbridge-tests"
START_TIMEOUT = 60.0
INSTALL_TIMEOUT = 300.0
# What a test server refuses unless told otherwise: what strict production servers do.
STRICT = {
    "updateCreate": False,
    "checkReferences": True,
    "validate": True,
    "externalReferences": True,
}


class FhirServerUnavailable(RuntimeError):
    """The test FHIR server cannot be started here (no Node, npm ci failed, it did not start)."""


def install() -> None:
    """``npm ci`` in tests/support/fhir_server when its node_modules is missing."""
    if (NODE_MODULES / "@medplum" / "fhir-router").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise FhirServerUnavailable("npm is not installed (Node.js 20.19+ with npm is needed)")
    try:
        done = subprocess.run(  # noqa: S603 (npm from PATH, fixed arguments)
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SERVER_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FhirServerUnavailable(f"npm ci took more than {INSTALL_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise FhirServerUnavailable(f"npm ci failed ({done.returncode}): {done.stderr[-2000:]}")


@dataclass
class FhirTestServer:
    """A running test FHIR server: ``base_url`` is its FHIR base (``http://127.0.0.1:N/fhir``)."""

    process: subprocess.Popen[bytes]
    port: int
    startup_seconds: float
    node_startup_ms: int
    stderr: list[str] = field(default_factory=list)
    http: httpx.Client = field(
        default_factory=lambda: httpx.Client(timeout=30.0, headers={"User-Agent": HARNESS_AGENT})
    )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/_admin"

    # --- the test hooks ----------------------------------------------------------------------

    def reset(self, **mode: bool) -> dict[str, bool]:
        """Empty the store and the request journal; mode back to strict, changed by ``mode``
        (``updateCreate``, ``checkReferences``, ``validate``, ``externalReferences``)."""
        return self._admin("POST", "reset", {**STRICT, **mode})

    def set_mode(self, **mode: bool) -> dict[str, bool]:
        return self._admin("PUT", "mode", mode)

    def requests(self) -> list[dict[str, Any]]:
        """Every FHIR request since the last reset, in order: method, url (below the base),
        headers (content-type, if-match, if-none-exist, if-none-match, prefer, x-request-id,
        x-correlation-id), the authorization scheme, body, status, response."""
        journal: list[dict[str, Any]] = self._admin("GET", "requests")
        return journal

    def bodies_from_the_bridge(self) -> list[tuple[str, Any]]:
        """What the bridge sent (not the tests' own requests): (``pushed METHOD url``, body)."""
        return [
            (f"pushed {sent['method']} {sent['url']}", sent["body"])
            for sent in self.requests()
            if sent["body"] is not None and sent["headers"].get("user-agent") != HARNESS_AGENT
        ]

    def seed(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a resource as given (its id too), without checks: what the server held before."""
        stored: dict[str, Any] = self._admin("POST", "resources", resource)
        return stored

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(
            method,
            f"{self.admin_url}/{path}",
            content=orjson.dumps(body) if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        response.raise_for_status()
        return response.json()

    # --- FHIR, for tests to look at what the server holds ------------------------------------

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"{self.base_url}/{resource_type}/{resource_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        resource: dict[str, Any] = response.json()
        return resource

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.base_url}/{resource_type}", params=params)
        response.raise_for_status()
        return [entry["resource"] for entry in response.json().get("entry", [])]

    def all_resources(self, *resource_types: str) -> list[dict[str, Any]]:
        return [r for t in resource_types for r in self.search(t, _count="1000")]

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def start(timeout: float = START_TIMEOUT) -> FhirTestServer:
    """Install if needed, start the server on a free loopback port and wait until it listens."""
    node = shutil.which("node")
    if node is None:
        raise FhirServerUnavailable("node is not installed (Node.js 20.19+ is needed)")
    install()
    began = time.monotonic()
    process = subprocess.Popen(  # noqa: S603 (node from PATH, our script)
        [node, str(SERVER_DIR / "server.mjs"), "--port", "0"],
        cwd=SERVER_DIR,
        stdin=subprocess.PIPE,  # the server exits when this closes: it cannot outlive the tests
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr: list[str] = []
    assert process.stdout is not None and process.stderr is not None
    errors = process.stderr

    def drain() -> None:
        for line in errors:
            stderr.append(line.decode(errors="replace"))

    threading.Thread(target=drain, daemon=True).start()
    first_line: list[bytes] = []
    reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not first_line or not first_line[0]:
        process.kill()
        process.wait(timeout=10)
        raise FhirServerUnavailable(
            f"the test FHIR server did not start within {timeout:.0f} s: {''.join(stderr)[-2000:]}"
        )
    started = orjson.loads(first_line[0])
    return FhirTestServer(
        process=process,
        port=int(started["port"]),
        startup_seconds=time.monotonic() - began,
        node_startup_ms=int(started["startupMs"]),
        stderr=stderr,
    )
