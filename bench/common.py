"""What the benchmarks share: databases made and dropped for a run, server processes started and
stopped, the CPU time and memory of a process, a minimal HTTP/1.1 client, the machine a run
was on, and appending a run to bench/RESULTS.md.

The scripts import it as ``bench.common`` with the repository's root on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
import os
import platform
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fhir" / "examples" / "ServiceRequest-social-prescribing-referral.json"
RESULTS = ROOT / "bench" / "RESULTS.md"
SPBRIDGE = str(Path(sys.executable).parent / "spbridge")
SERVICE_ID = "life-rooms"
PATH = "/fhir/ServiceRequest"
ID_MARK = "@@IDENTIFIER@@"
# uvicorn closes a keep-alive connection idle for 5 s: reuse none idle for longer than this.
MAX_IDLE_S = 3.0


# --- PostgreSQL ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def asyncpg_dsn(pg: str, database: str) -> str:
    return f"postgresql://{pg}/{database}"


def sqlalchemy_url(pg: str, database: str) -> str:
    return f"postgresql+asyncpg://{pg}/{database}"


async def pg_admin(pg: str, *statements: str) -> None:
    """Statements run one by one on the ``postgres`` database (CREATE/DROP DATABASE)."""
    connection = await asyncpg.connect(asyncpg_dsn(pg, "postgres"))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def recreate_database(pg: str, name: str) -> None:
    await pg_admin(
        pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )


def drop_databases(pg: str, names: list[str]) -> None:
    """Synchronous, so that it also runs after the event loop has gone (errors, signals)."""
    if names:
        asyncio.run(pg_admin(pg, *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names)))


async def query(pg: str, database: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(pg, database))
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def fetch_value(pg: str, database: str, sql: str) -> Any:
    rows = await query(pg, database, sql)
    return rows[0][0] if rows else None


# --- processes -----------------------------------------------------------------------------

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    if pid is None:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def postgres_cpu_seconds() -> float:
    """User + system CPU time every PostgreSQL process on this host has used so far (backends,
    WAL writer, checkpointer, autovacuum); NaN when none can be read (a server elsewhere). A
    phase's share is what it adds while only its variant is loaded."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            text = stat.read_text()
            if "(postgres)" not in text:
                continue
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICK
            found = True
    return total if found else math.nan


def rss_bytes(pid: int | None) -> float:
    """Resident memory of a process now (Linux /proc), in bytes."""
    if pid is None:
        return math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024.0
    return math.nan


class Process:
    """A process a benchmark started (a server or a worker), its output in a log file."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], log_dir: Path, port: int = 0
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self._log: TextIO = self.log_path.open("a")
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.process.pid
        LIVE.append(self)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, within: float = 60.0) -> None:
        """Until its /healthz answers 200."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base_url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {within:g} s")

    async def stop(self, signum: int = signal.SIGTERM, within: float = 30.0) -> int:
        """Ask it to stop (it finishes or releases what it holds) and wait; kill it if it won't.

        The wait runs in a thread: the event loop goes on serving (a webhook receiver, a proxy)
        meanwhile, which the process may still be talking to."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.process.wait, within)
        return self.kill()

    def kill(self) -> int:
        """Synchronous backstop: SIGTERM, then SIGKILL after a few seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if not self._log.closed:
            self._log.close()
        if self in LIVE:
            LIVE.remove(self)
        return self.process.returncode

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


LIVE: list[Process] = []  # every process started and not yet known to be stopped


def kill_live() -> None:
    """Stop whatever is still running (after an error or a signal), saying so."""
    for process in list(LIVE):
        print(f"stopping {process.name}", file=sys.stderr)
        process.kill()


def bridge_env(database_url: str, admin_key: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a bridge process: no SPBRIDGE_ setting from this shell, the database,
    an admin key, no rate limits, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPBRIDGE_")}
    env["SPBRIDGE_DATABASE_URL"] = database_url
    env["SPBRIDGE_ADMIN_API_KEY"] = admin_key
    # The load comes from one key and one address, far past the per-client limits.
    env["SPBRIDGE_RATE_LIMIT_PER_MINUTE"] = "0"
    env["SPBRIDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE"] = "0"
    env["SPBRIDGE_PUBLIC_BASE_URL"] = "https://bridge.bench.example"  # required outside sandbox
    env.update(extra)
    return env


def start_serve(env: dict[str, str], log_dir: Path, name: str) -> Process:
    """`spbridge serve` on a free port of 127.0.0.1."""
    port = free_port()
    command = [SPBRIDGE, "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Process(name, command, env, log_dir, port)


async def set_up_bridge(base_url: str, admin_key: str, hook_url: str | None = None) -> str:
    """A service (adapter ``local``: no platform delivery), a clinical-system client and, given
    ``hook_url``, an admin webhook subscription to it; the client's API key."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=admin, timeout=10) as client:

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = await client.post(path, json=body)
            if response.status_code != 201:
                raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:500]}")
            answer: dict[str, Any] = response.json()
            return answer

        await post(
            "/api/v1/services",
            {"id": SERVICE_ID, "name": "Life Rooms", "organisation": "LR001", "adapter": "local"},
        )
        rio = await post(
            "/api/v1/clients",
            {
                "name": "rio",
                "role": "clinical-system",
                "organisation": "RW4",
                "default_service": SERVICE_ID,
            },
        )
        if hook_url is not None:
            subscription = await post(
                "/api/v1/subscriptions", {"url": hook_url, "description": "bench worklist"}
            )
            if not str(subscription.get("secret", "")).startswith("whsec_"):
                raise RuntimeError("the subscription came back without a signing secret")
        return str(rio["api_key"])


# --- the load generator's client -----------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for these POSTs, so that the
    load generator takes as little of the machine's CPU as it can."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True
        self.last_used = time.perf_counter()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def close(self) -> None:
        self.reusable = False
        self.writer.close()

    async def _line(self) -> bytes:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        return line

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """The status and body of the answer."""
        self.writer.write(head + body)
        status = int((await self._line()).split(None, 2)[1])
        length = 0
        chunked = False
        while (line := await self._line()) not in (b"\r\n", b"\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection" and b"close" in value.lower():
                self.reusable = False
        content = b""
        if chunked:
            parts = []
            while True:
                size = int((await self._line()).split(b";", 1)[0], 16)
                parts.append((await self.reader.readexactly(size + 2))[:size])
                if size == 0:
                    break
            content = b"".join(parts)
        elif length:
            content = await self.reader.readexactly(length)
        self.last_used = time.perf_counter()
        return status, content

    def fresh(self) -> bool:
        """Whether the server can be expected to have kept this idle connection open."""
        idle = time.perf_counter() - self.last_used
        return self.reusable and idle < MAX_IDLE_S and not self.reader.at_eof()


@dataclass
class Referrals:
    """POST /fhir/ServiceRequest requests to one server, each with an identifier of its own."""

    host: str
    port: int
    api_key: str
    label: str = "BENCH"
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        resource = orjson.loads(EXAMPLE.read_bytes())
        resource["performer"] = [{"reference": f"HealthcareService/{SERVICE_ID}"}]
        resource["identifier"][0]["value"] = ID_MARK
        self._before, self._after = orjson.dumps(resource).split(ID_MARK.encode())

    def request(self) -> tuple[bytes, bytes]:
        """Head and body of the next request."""
        identifier = f"{self.label}-{self.nonce}-{next(self._serial):09d}".encode()
        body = self._before + identifier + self._after
        head = (
            f"POST {PATH} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Content-Type: application/fhir+json\r\n"
            "Accept: application/fhir+json\r\n"
            f"Authorization: Bearer {self.api_key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head, body


@contextlib.contextmanager
def no_gc_pauses() -> Iterator[None]:
    """Keep the load generator's own garbage collections out of the latencies it measures."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's, when it is installed (a cheaper load generator)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def stop_on_sigterm() -> None:
    """SIGTERM unwinds through the finally blocks that stop the processes and drop databases."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# --- reporting -----------------------------------------------------------------------------


def git_head() -> str:
    """The commit checked out (``git describe --always --dirty``)."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(label: str | None = None) -> dict[str, str]:
    """The machine as a run's report gives it; ``commit`` is ``label`` when given."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)",
        "commit": label if label is not None else git_head(),
    }


def command_line() -> str:
    executable = Path(sys.executable)
    with contextlib.suppress(ValueError):
        executable = executable.relative_to(Path.cwd())
    return shlex.join([str(executable), *sys.argv])


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile; NaN of nothing."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def record(text: str) -> None:
    """Append a run's report to bench/RESULTS.md."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n")
    with RESULTS.open("a") as out:
        out.write("\n" + text)


def publish(text: str, to_results: bool) -> int:
    """Print a run's report and, with ``--record``, append it to RESULTS.md; the exit status."""
    print()
    print(text)
    if to_results:
        record(text)
        print(f"recorded in {RESULTS.relative_to(ROOT)}")
    return 0
