"""Intake benchmark: POST ServiceRequest to `spbridge serve` on PostgreSQL, against a floor.

The floor (bench/floor_app.py) is a bare FastAPI endpoint that only parses the body with
fhir.resources and inserts it as one row. Both run as one uvicorn process on this host, each on
a fresh PostgreSQL database made for the run and dropped after it. This process is the load
generator (its own event loop, a minimal keep-alive HTTP/1.1 client so that it takes as little
of the machine's CPU as it can). For each server, after a warm-up:

- closed loop: ``--concurrency`` connections each sending the next request as soon as the
  last is answered, for ``--duration`` seconds: throughput, p50, p99;
- open loop: ``--rate`` requests a second on a fixed timetable for ``--duration`` seconds,
  latency measured from each request's scheduled send time (no coordinated omission).

Targets (the issue): bridge p99 under 50 ms at 100 requests/s, and bridge closed-loop
throughput at least half the floor's. ``--record`` appends the run to bench/RESULTS.md.

    .venv/bin/python bench/intake.py [--duration 20] [--concurrency 16] [--rate 100] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
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
import tempfile
import time
from collections import Counter
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
FLOOR_APP = ROOT / "bench" / "floor_app.py"
SERVICE_ID = "life-rooms"
PATH = "/fhir/ServiceRequest"
ID_MARK = "@@IDENTIFIER@@"
P99_TARGET_MS = 50.0
RATIO_TARGET = 0.5
WARM_UP = "warm-up"
# uvicorn closes a keep-alive connection idle for 5 s: reuse none idle for longer than this.
MAX_IDLE_S = 3.0


# --- the load generator --------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for these POSTs."""

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

    async def post(self, head: bytes, body: bytes) -> int:
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
        if chunked:
            while True:
                size = int((await self._line()).split(b";", 1)[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        self.last_used = time.perf_counter()
        return status

    def fresh(self) -> bool:
        """Whether the server can be expected to have kept this idle connection open."""
        idle = time.perf_counter() - self.last_used
        return self.reusable and idle < MAX_IDLE_S and not self.reader.at_eof()


@dataclass
class Target:
    """A server under test and how to make each (unique) request to it."""

    name: str
    host: str
    port: int
    api_key: str
    pid: int | None = None  # the server's, to read the CPU time it spends
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        resource = orjson.loads(EXAMPLE.read_bytes())
        resource["performer"] = [{"reference": f"HealthcareService/{SERVICE_ID}"}]
        resource["identifier"][0]["value"] = ID_MARK
        self._before, self._after = orjson.dumps(resource).split(ID_MARK.encode())

    def request(self) -> tuple[bytes, bytes]:
        """Head and body of the next request, with an identifier no other request has."""
        identifier = f"BENCH-{self.name}-{self.nonce}-{next(self._serial):09d}".encode()
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


@dataclass
class Phase:
    target: str
    name: str
    elapsed: float = 0.0
    server_cpu: float = math.nan  # seconds of CPU the server process used during the phase
    latencies: list[float] = field(default_factory=list)  # seconds, 2xx answers only
    outcomes: Counter[str] = field(default_factory=Counter)  # status code or error kind

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def server_cpu_ms(self) -> float:
        """Server CPU time per request sent."""
        return self.server_cpu / self.sent * 1000 if self.sent else math.nan

    def percentile_ms(self, p: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000

    def record(self, outcome: int | str, latency: float) -> None:
        self.outcomes[str(outcome)] += 1
        if isinstance(outcome, int) and 200 <= outcome < 300:
            self.latencies.append(latency)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    if pid is None:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _send(
    target: Target, connection: Connection | None, request_timeout: float
) -> tuple[int | str, Connection | None]:
    """One request; the connection to reuse after it (None when it must not be)."""
    head, body = target.request()
    try:
        if connection is None:
            connection = await asyncio.wait_for(
                Connection.open(target.host, target.port), request_timeout
            )
        status = await asyncio.wait_for(connection.post(head, body), request_timeout)
    except TimeoutError:
        outcome: int | str = "timeout"
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
        outcome = type(exc).__name__
    else:
        if connection.reusable:
            return status, connection
        outcome = status
    if connection is not None:
        connection.close()
    return outcome, None


async def closed_loop(
    target: Target,
    phase_name: str,
    concurrency: int,
    duration: float,
    cap: int,
    request_timeout: float,
) -> Phase:
    """``concurrency`` clients, each sending its next request when the last is answered."""
    phase = Phase(target.name, phase_name)
    budget = itertools.count()
    cpu_before = cpu_seconds(target.pid)
    start = time.perf_counter()
    deadline = start + duration

    async def client() -> None:
        connection: Connection | None = None
        try:
            while time.perf_counter() < deadline and next(budget) < cap:
                sent = time.perf_counter()
                outcome, connection = await _send(target, connection, request_timeout)
                phase.record(outcome, time.perf_counter() - sent)
        finally:
            if connection is not None:
                connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    phase.elapsed = time.perf_counter() - start
    phase.server_cpu = cpu_seconds(target.pid) - cpu_before
    return phase


async def open_loop(
    target: Target, phase_name: str, rate: float, duration: float, cap: int, request_timeout: float
) -> Phase:
    """``rate`` requests a second on a fixed timetable, whatever the answers take."""
    phase = Phase(target.name, phase_name)
    idle: list[Connection] = []
    count = min(cap, int(rate * duration))

    def idle_connection() -> Connection | None:
        while idle:
            connection = idle.pop()
            if connection.fresh():
                return connection
            connection.close()
        return None

    async def one(scheduled: float) -> None:
        outcome, connection = await _send(target, idle_connection(), request_timeout)
        phase.record(outcome, time.perf_counter() - scheduled)
        if connection is not None:
            idle.append(connection)

    tasks: set[asyncio.Task[None]] = set()
    cpu_before = cpu_seconds(target.pid)
    start = time.perf_counter() + 0.01
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        # Each request times out on its own (connect, then answer); this is a backstop.
        _done, pending = await asyncio.wait(set(tasks), timeout=2 * request_timeout + 1)
        for task in pending:
            task.cancel()
            phase.outcomes["unanswered"] += 1
    phase.elapsed = time.perf_counter() - start
    phase.server_cpu = cpu_seconds(target.pid) - cpu_before
    for connection in idle:
        connection.close()
    return phase


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


async def run_load(targets: list[Target], args: argparse.Namespace) -> list[Phase]:
    phases = []
    for target in targets:
        print(f"[{target.name}] warm-up {args.warmup:g} s", flush=True)
        phases.append(
            await closed_loop(
                target, WARM_UP, args.concurrency, args.warmup, args.max_requests, args.timeout
            )
        )
        await asyncio.sleep(1)
        print(
            f"[{target.name}] closed loop, concurrency {args.concurrency}, {args.duration:g} s",
            flush=True,
        )
        phases.append(
            await closed_loop(
                target,
                f"closed loop, concurrency {args.concurrency}",
                args.concurrency,
                args.duration,
                args.max_requests,
                args.timeout,
            )
        )
        await asyncio.sleep(1)
        print(f"[{target.name}] open loop, {args.rate:g} req/s, {args.duration:g} s", flush=True)
        phases.append(
            await open_loop(
                target,
                f"open loop, {args.rate:g} req/s",
                args.rate,
                args.duration,
                args.max_requests,
                args.timeout,
            )
        )
    return phases


# --- servers and databases -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def asyncpg_dsn(pg: str, database: str) -> str:
    return f"postgresql://{pg}/{database}"


def sqlalchemy_url(pg: str, database: str) -> str:
    return f"postgresql+asyncpg://{pg}/{database}"


async def _admin(pg: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(pg, "postgres"))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def recreate_database(pg: str, name: str) -> None:
    asyncio.run(
        _admin(pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    )


def drop_database(pg: str, name: str) -> None:
    asyncio.run(_admin(pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _fetch_value(pg: str, database: str, query: str) -> Any:
    connection = await asyncpg.connect(asyncpg_dsn(pg, database))
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


def fetch_value(pg: str, database: str, query: str) -> Any:
    return asyncio.run(_fetch_value(pg, database, query))


@dataclass
class Stored:
    rows: int  # rows in the server's table after the run
    created: int  # 201 answers: the first check request's, the warm-up's and the phases'
    sessions: int  # PostgreSQL sessions (connections) the server opened


ROW_COUNTS = {
    "bridge": "SELECT count(*) FROM referrals",
    "floor": "SELECT count(*) FROM service_requests",
}


def stored_rows(pg: str, database: str, name: str, phases: list[Phase]) -> Stored:
    return Stored(
        rows=fetch_value(pg, database, ROW_COUNTS[name]),
        created=1 + sum(p.outcomes.get("201", 0) for p in phases if p.target == name),
        sessions=fetch_value(
            pg,
            database,
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
        ),
    )


class Server:
    """A server process this script started, with its output in a log file."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], port: int, log_dir: Path
    ):
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self._log: TextIO = self.log_path.open("w")
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} at start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {timeout:g} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_bridge(pg: str, database: str, admin_key: str, log_dir: Path) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPBRIDGE_")}
    env["SPBRIDGE_DATABASE_URL"] = sqlalchemy_url(pg, database)
    env["SPBRIDGE_ADMIN_API_KEY"] = admin_key
    # The load comes from one key and one address, far past the per-client limits.
    env["SPBRIDGE_RATE_LIMIT_PER_MINUTE"] = "0"
    env["SPBRIDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE"] = "0"
    port = free_port()
    env["SPBRIDGE_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"  # required outside sandbox
    spbridge = str(Path(sys.executable).parent / "spbridge")
    command = [spbridge, "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Server("bridge", command, env, port, log_dir)


def start_floor(pg: str, database: str, log_dir: Path) -> Server:
    env = dict(os.environ, FLOOR_DATABASE_URL=sqlalchemy_url(pg, database))
    port = free_port()
    command = [sys.executable, str(FLOOR_APP), "--host", "127.0.0.1", "--port", str(port)]
    return Server("floor", command, env, port, log_dir)


def set_up_bridge(bridge: Server, admin_key: str) -> str:
    """The target service and a clinical-system client; the client's API key."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=bridge.base_url, headers=admin, timeout=10) as client:
        service = {
            "id": SERVICE_ID,
            "name": "Life Rooms",
            "organisation": "LR001",
            "adapter": "local",
        }
        response = client.post("/api/v1/services", json=service)
        if response.status_code != 201:
            raise RuntimeError(f"creating the service: {response.status_code} {response.text}")
        rio = {
            "name": "rio",
            "role": "clinical-system",
            "organisation": "RW4",
            "default_service": SERVICE_ID,
        }
        response = client.post("/api/v1/clients", json=rio)
        if response.status_code != 201:
            raise RuntimeError(f"creating the client: {response.status_code} {response.text}")
        return str(response.json()["api_key"])


def check_one(target: Target) -> None:
    """One request before the load, so that a misconfiguration fails fast and clearly."""
    head, body = target.request()

    async def post() -> int:
        connection = await Connection.open(target.host, target.port)
        try:
            return await asyncio.wait_for(connection.post(head, body), 10)
        finally:
            connection.close()

    status = asyncio.run(post())
    if status != 201:
        raise RuntimeError(f"{target.name}: a first referral was answered {status}, not 201")


# --- reporting -----------------------------------------------------------------------------


def machine() -> dict[str, str]:
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
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(len(os.sched_getaffinity(0)))
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "nproc": nproc,
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)",
        "commit": commit,
    }


def command_line() -> str:
    executable = Path(sys.executable)
    with contextlib.suppress(ValueError):
        executable = executable.relative_to(Path.cwd())
    return shlex.join([str(executable), *sys.argv])


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _outcomes(phase: Phase) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(phase.outcomes.items()))


def table(phases: list[Phase]) -> list[str]:
    rows = [
        "| server | phase | requests | 2xx | non-2xx / errors | throughput (2xx/s) "
        "| p50 (ms) | p99 (ms) | max (ms) | server CPU (ms/request) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        if p.name == WARM_UP:
            continue
        rows.append(
            f"| {p.target} | {p.name} | {p.sent} | {p.ok} | {p.errors} | {p.throughput:.1f} | "
            + " | ".join(_fmt(p.percentile_ms(q)) for q in (50, 99, 100))
            + f" | {_fmt(p.server_cpu_ms, 2)} |"
        )
    return rows


@dataclass
class Verdict:
    ratio: float
    p99_ms: float
    p99_met: bool
    ratio_met: bool
    lines: list[str]


def verdict(phases: list[Phase], rate: float) -> Verdict:
    by = {(p.target, p.name.split(",")[0]): p for p in phases}
    bridge_closed, floor_closed = by["bridge", "closed loop"], by["floor", "closed loop"]
    bridge_open = by["bridge", "open loop"]
    ratio = (
        bridge_closed.throughput / floor_closed.throughput if floor_closed.throughput else math.nan
    )
    p99 = bridge_open.percentile_ms(99)
    p99_met = p99 < P99_TARGET_MS and bridge_open.errors == 0
    ratio_met = ratio >= RATIO_TARGET and bridge_closed.errors == 0
    lines = [
        f"- Throughput ratio bridge/floor (closed loop): **{ratio:.2f}** "
        f"({bridge_closed.throughput:.1f} / {floor_closed.throughput:.1f} req/s)",
        f"- Target p99 < {P99_TARGET_MS:g} ms at {rate:g} req/s (bridge): "
        f"**{'met' if p99_met else 'NOT met'}** (p99 {_fmt(p99)} ms, "
        f"{bridge_open.errors} non-2xx/errors)",
        f"- Target bridge throughput >= {RATIO_TARGET:g} x floor: "
        f"**{'met' if ratio_met else 'NOT met'}** (ratio {ratio:.2f}, "
        f"{bridge_closed.errors} non-2xx/errors)",
    ]
    for p in phases:
        if p.errors:
            lines.append(f"- {p.target}, {p.name}: outcomes {_outcomes(p)}")
    return Verdict(ratio, p99, p99_met, ratio_met, lines)


def record(text: str) -> None:
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Intake benchmark results\n\n"
            "Appended by `bench/intake.py --record`; newest last. See the script's docstring for "
            "what each phase measures.\n"
        )
    with RESULTS.open("a") as out:
        out.write("\n" + text)


def report(
    phases: list[Phase],
    args: argparse.Namespace,
    info: dict[str, str],
    started: dt.datetime,
    stored: dict[str, Stored],
) -> str:
    result = verdict(phases, args.rate)
    stored_line = "; ".join(
        f"{name}: {st.rows} rows for {st.created} answers 201, over {st.sessions} PostgreSQL "
        "sessions opened"
        for name, st in stored.items()
    )
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{command_line()}`",
        f"- Machine: {info['nproc']} CPUs (nproc), {info['cpu']}, {info['memory']} RAM, "
        f"{info['os']}; Python {info['python']}; PostgreSQL {info['postgresql']}; "
        f"load average before the run {info['load']}",
        "- Layout: bridge (`spbridge serve`) and floor (`bench/floor_app.py`) one uvicorn process "
        "each, PostgreSQL and this load generator all on the same host; nothing pinned",
        f"- Commit: {info['commit']}",
        f"- Load: warm-up {args.warmup:g} s, then {args.duration:g} s per phase; "
        f"request timeout {args.timeout:g} s; latency of 2xx answers only, open loop measured "
        "from the scheduled send time",
        f"- Stored (warm-up and a first check request included): {stored_line}",
        "",
        *table(phases),
        "",
        *result.lines,
        "",
    ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="POST ServiceRequest at the bridge and at a bare floor endpoint; compare.",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (16)")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s (100)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per server (3)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="cap per phase (100000)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout s (10)")
    parser.add_argument(
        "--pg", default="postgres@127.0.0.1:5432", help="PostgreSQL user@host:port (trust auth)"
    )
    parser.add_argument("--database", default="spbridge_bench", help="bridge database (made anew)")
    parser.add_argument(
        "--record", action="store_true", help="append the results to bench/RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.rate <= 0 or args.max_requests < 1:
        parser.error("duration, concurrency, rate and max-requests must be positive")
    return args


def _use_uvloop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = dt.datetime.now(dt.UTC)
    bridge_db, floor_db = args.database, f"{args.database}_floor"
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    info = machine()
    info["postgresql"] = fetch_value(args.pg, "postgres", "SHOW server_version")
    loop_factory = _use_uvloop()

    servers: list[Server] = []
    try:
        with tempfile.TemporaryDirectory(prefix="spbridge-bench-") as log_dir:
            try:
                recreate_database(args.pg, bridge_db)
                recreate_database(args.pg, floor_db)
                bridge = start_bridge(args.pg, bridge_db, admin_key, Path(log_dir))
                servers.append(bridge)
                floor = start_floor(args.pg, floor_db, Path(log_dir))
                servers.append(floor)
                bridge.wait_ready()
                floor.wait_ready()
                api_key = set_up_bridge(bridge, admin_key)
                targets = [
                    Target("bridge", "127.0.0.1", bridge.port, api_key, bridge.process.pid),
                    Target("floor", "127.0.0.1", floor.port, api_key, floor.process.pid),
                ]
                for target in targets:
                    check_one(target)
                with asyncio.Runner(loop_factory=loop_factory) as runner, no_gc_pauses():
                    phases = runner.run(run_load(targets, args))
            except BaseException:
                for server in servers:
                    print(f"--- end of the {server.name} log ---\n{server.tail()}", file=sys.stderr)
                raise
            finally:
                for server in servers:
                    server.stop()
        # Read once the servers are gone, so that every session has been counted.
        stored = {
            "bridge": stored_rows(args.pg, bridge_db, "bridge", phases),
            "floor": stored_rows(args.pg, floor_db, "floor", phases),
        }
    finally:
        drop_database(args.pg, bridge_db)
        drop_database(args.pg, floor_db)

    text = report(phases, args, info, started, stored)
    print()
    print(text)
    if args.record:
        record(text)
        print(f"recorded in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
