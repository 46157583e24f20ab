"""Chaos benchmark: referrals under steady load while the database goes away for a while.

`spbridge serve` (one uvicorn process, its dispatcher in-process) runs on PostgreSQL through a
TCP proxy on 127.0.0.1 (tests/support/dbproxy.py) that this script cuts: every connection is
reset and new ones are refused, as when the database's host goes down, for ``--outage`` seconds,
then restored. This process sends ``--rate`` referrals a second (open loop, httpx, each with an
identifier of its own) from ``--before`` seconds before the cut until ``--after`` seconds after
the restore, and samples ``pg_stat_activity`` for the bridge's database (directly, not through
the proxy) every half second.

It reports:

- answers by status in each phase (before, during, after the outage); the target is no 500 at
  all: a request the database could not serve is a 503 with Retry-After;
- that every answer carries X-Request-ID, and every 503 Retry-After;
- lost referrals: every referral answered 201 or 200 must be in the database afterwards (0 is
  the target); and the outbox: one webhook subscription to a receiver in this process on
  127.0.0.1, the deliveries' states once the queue is empty (or after ``--settle`` seconds), and
  the webhook-ids received (repeats are deliveries sent again after their lease lapsed);
- how soon after the restore referrals were accepted again;
- the server's log: lines by level, lines with a stack, its size;
- the bridge's PostgreSQL connections by state (max and mean of the samples) in each phase, and
  for those idle in transaction, how long they had been idle and after which statement.

``--outage 0`` leaves the database up: with a high ``--rate`` that measures overload (pool
waits, connections idle in transaction) instead.

    .venv/bin/python bench/outage.py [--rate 30] [--before 15] [--outage 20] [--after 25]
        [--pool-size 10] [--max-overflow 0] [--pool-timeout 3] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import faulthandler
import itertools
import math
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    EXAMPLE,
    SERVICE_ID,
    bridge_env,
    command_line,
    cpu_seconds,
    fmt,
    free_port,
    machine,
    percentile,
    pg_admin,
    publish,
    set_up_bridge,
    start_serve,
)
from tests.support.dbproxy import DatabaseProxy

IDENTIFIER_SYSTEM = "https://rio.example.nhs.uk/Id/referral"
PHASES = ("before", "during", "after")


@dataclass
class Answer:
    phase: str
    sent_at: float  # seconds since the load began
    identifier: str
    outcome: str  # the status code, or the kind of error
    latency: float
    request_id: bool = False
    retry_after: bool = False


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    server_cpu: float = math.nan  # seconds of CPU the server used during the load
    activity: dict[str, list[Counter[str]]] = field(default_factory=lambda: defaultdict(list))
    # Connections idle in transaction: the statement each had run last, and how long it had
    # been idle (ms), over every sample.
    idle_after: Counter[str] = field(default_factory=Counter)
    idle_ms: list[float] = field(default_factory=list)
    cut_at: float = math.nan
    restored_at: float = math.nan


class ProxyThread:
    """The proxy on an event loop of its own, so the load generator never starves it."""

    def __init__(self, host: str, port: int) -> None:
        self.proxy = DatabaseProxy(host, port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxy", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def up(self) -> bool:
        return self.proxy.up

    async def _call(self, name: str) -> None:
        coroutine = getattr(self.proxy, name)()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def start(self) -> None:
        await self._call("start")

    async def cut(self) -> None:
        await self._call("cut")

    async def restore(self) -> None:
        await self._call("restore")

    async def stop(self) -> None:
        await self._call("stop")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


# --- the load ------------------------------------------------------------------------------


class Referrals:
    def __init__(self) -> None:
        resource = orjson.loads(EXAMPLE.read_bytes())
        resource["performer"] = [{"reference": f"HealthcareService/{SERVICE_ID}"}]
        self.resource = resource
        self.nonce = secrets.token_hex(4)
        self.serial = itertools.count()

    def next(self) -> tuple[str, bytes]:
        identifier = f"OUTAGE-{self.nonce}-{next(self.serial):07d}"
        self.resource["identifier"] = [{"system": IDENTIFIER_SYSTEM, "value": identifier}]
        return identifier, orjson.dumps(self.resource)


def phase_at(run: Run, now: float) -> str:
    if now < run.cut_at:
        return "before"
    if now < run.restored_at:
        return "during"
    return "after"


async def one(
    client: httpx.AsyncClient,
    run: Run,
    referrals: Referrals,
    began: float,
    api_key: str,
    in_flight: asyncio.Semaphore,
    timeout: float,
) -> None:
    identifier, body = referrals.next()
    sent = time.perf_counter()  # latency counts from here, a wait for a free slot included
    answer = Answer(phase_at(run, sent - began), sent - began, identifier, "", 0.0)

    async def post() -> httpx.Response:
        # httpx's pool gets slow (quadratic) with thousands of queued requests: past
        # --max-in-flight they wait here instead.
        async with in_flight:
            return await client.post(
                "/fhir/ServiceRequest",
                content=body,
                headers={
                    "Content-Type": "application/fhir+json",
                    "Authorization": f"Bearer {api_key}",
                },
            )

    try:
        # The client gives up after --timeout seconds, however the time was spent.
        response = await asyncio.wait_for(post(), timeout)
    except (TimeoutError, httpx.TimeoutException):
        answer.outcome = "timeout"
    except httpx.HTTPError as exc:
        answer.outcome = type(exc).__name__
    else:
        answer.outcome = str(response.status_code)
        answer.request_id = bool(response.headers.get("x-request-id"))
        answer.retry_after = bool(response.headers.get("retry-after"))
    answer.latency = time.perf_counter() - sent
    run.answers.append(answer)


async def sample_activity(
    pg: str, database: str, run: Run, began: float, stop: asyncio.Event
) -> None:
    connection = await asyncpg.connect(f"postgresql://{pg}/postgres")
    try:
        while not stop.is_set():
            rows = await connection.fetch(
                "SELECT coalesce(state, 'none') AS state, query, "
                "extract(epoch FROM now() - state_change) * 1000 AS idle_ms "
                "FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            run.activity[phase_at(run, time.perf_counter() - began)].append(
                Counter(row["state"] for row in rows)
            )
            for row in rows:
                if row["state"].startswith("idle in transaction"):
                    statement = " ".join(str(row["query"]).split()[:4])
                    run.idle_after[statement] += 1
                    run.idle_ms.append(float(row["idle_ms"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await connection.close()


async def load(
    args: argparse.Namespace, base_url: str, api_key: str, proxy: ProxyThread, server_pid: int
) -> Run:
    run = Run()
    cpu_before = cpu_seconds(server_pid)
    referrals = Referrals()
    total = args.before + args.outage + args.after
    run.cut_at = args.before if args.outage > 0 else math.inf
    run.restored_at = args.before + args.outage if args.outage > 0 else math.inf
    limits = httpx.Limits(
        max_connections=args.max_in_flight, max_keepalive_connections=args.max_in_flight
    )
    in_flight = asyncio.Semaphore(args.max_in_flight)
    timeout = httpx.Timeout(args.timeout)
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        began = time.perf_counter()
        sampler = asyncio.create_task(sample_activity(args.pg, args.database, run, began, stop))
        count = int(args.rate * total)
        for i in range(count):
            scheduled = began + i / args.rate
            now = time.perf_counter()
            if now - began >= run.cut_at and proxy.up and now - began < run.restored_at:
                await proxy.cut()
                print(f"[{now - began:6.1f} s] database cut", flush=True)
            elif now - began >= run.restored_at and not proxy.up:
                await proxy.restore()
                print(f"[{now - began:6.1f} s] database restored", flush=True)
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            task = asyncio.create_task(
                one(client, run, referrals, began, api_key, in_flight, args.timeout)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if not proxy.up:
            await proxy.restore()
        if tasks:  # each ends within --timeout
            await asyncio.gather(*tasks)
        stop.set()
        await sampler
    run.server_cpu = cpu_seconds(server_pid) - cpu_before
    return run


class WebhookReceiver:
    """A minimal keep-alive HTTP/1.1 receiver on 127.0.0.1 that answers every POST 204 and
    notes each webhook-id, so the outbox's recovery after the outage shows."""

    def __init__(self) -> None:
        self.port = free_port()
        self.ids: Counter[str] = Counter()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"webhook-id":
                        self.ids[value.strip().decode()] += 1
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


# --- the server and its database ------------------------------------------------------------


@dataclass
class Stored:
    acknowledged: int
    lost: list[str]
    deliveries: Counter[str]
    settled_in: float  # seconds after the load until no delivery was open (or the wait ran out)


async def stored(pg: str, database: str, run: Run, wait: float) -> Stored:
    acknowledged = {a.identifier for a in run.answers if a.outcome in ("200", "201")}
    connection = await asyncpg.connect(f"postgresql://{pg}/{database}")
    try:
        held = {
            row["identifier_value"]
            for row in await connection.fetch(
                "SELECT identifier_value FROM referrals WHERE identifier_system = $1",
                IDENTIFIER_SYSTEM,
            )
        }
        # The outbox of the acknowledged referrals, once the dispatcher has had a while.
        began = time.monotonic()
        deadline = began + wait
        while True:
            rows = await connection.fetch(
                "SELECT state, count(*) AS n FROM deliveries GROUP BY state"
            )
            deliveries = Counter({row["state"]: int(row["n"]) for row in rows})
            open_ = deliveries.get("pending", 0) + deliveries.get("in_flight", 0)
            if open_ == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
    finally:
        await connection.close()
    return Stored(
        len(acknowledged), sorted(acknowledged - held), deliveries, time.monotonic() - began
    )


@dataclass
class Logs:
    lines: int
    size: int
    by_level: Counter[str]
    with_stack: int
    unavailable: int
    messages: Counter[str]


def read_logs(path: Path) -> Logs:
    lines = size = with_stack = unavailable = 0
    by_level: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for raw in path.read_bytes().splitlines():
        lines += 1
        size += len(raw) + 1
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            by_level["(not JSON)"] += 1
            continue
        level = str(line.get("level", "?"))
        by_level[level] += 1
        if "exception" in line:
            with_stack += 1
        if line.get("message") == "database unavailable":
            unavailable += 1
            messages[f"(reason {line.get('reason')}, {line.get('error')})"] += 1
        if level in ("WARNING", "ERROR", "CRITICAL"):
            messages[f"{level} {line.get('logger')}: {str(line.get('message')).strip()}"] += 1
    return Logs(lines, size, by_level, with_stack, unavailable, messages)


# --- reporting -----------------------------------------------------------------------------


def _fmt(value: float, digits: int = 0) -> str:
    return fmt(value, digits)


def answers_table(run: Run, phases: tuple[str, ...]) -> list[str]:
    statuses = sorted({a.outcome for a in run.answers})
    rows = [
        "| phase | requests | " + " | ".join(statuses) + " | p50 (ms) | p99 (ms) | max (ms) |",
        "| --- | ---: | " + " | ".join("---:" for _ in statuses) + " | ---: | ---: | ---: |",
    ]
    for phase in (*phases, "all"):
        mine = [a for a in run.answers if phase in ("all", a.phase)]
        count = Counter(a.outcome for a in mine)
        latencies = [a.latency * 1000 for a in mine]
        rows.append(
            f"| {phase} | {len(mine)} | "
            + " | ".join(str(count.get(s, 0)) for s in statuses)
            + " | "
            + " | ".join(_fmt(percentile(latencies, p)) for p in (50, 99, 100))
            + " |"
        )
    return rows


def activity_table(run: Run, phases: tuple[str, ...]) -> list[str]:
    states = sorted({s for samples in run.activity.values() for c in samples for s in c})
    rows = [
        "| phase | samples | " + " | ".join(f"{s} (max / mean)" for s in states) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in states) + " |",
    ]
    for phase in phases:
        samples = run.activity.get(phase, [])
        cells = []
        for state in states:
            values = [c.get(state, 0) for c in samples]
            cells.append(f"{max(values)} / {sum(values) / len(values):.1f}" if values else "n/a")
        rows.append(f"| {phase} | {len(samples)} | " + " | ".join(cells) + " |")
    return rows


def recovery(run: Run) -> str:
    if math.isinf(run.restored_at):
        return "no outage"
    accepted = [
        a.sent_at + a.latency
        for a in run.answers
        if a.phase != "before" and a.outcome in ("200", "201")
    ]
    later = [t for t in accepted if t >= run.restored_at]
    if not later:
        return "none accepted after the restore"
    return f"{min(later) - run.restored_at:.2f} s after the restore"


def report(
    args: argparse.Namespace,
    info: dict[str, str],
    started: dt.datetime,
    run: Run,
    kept: Stored,
    logs: Logs,
    webhooks: Counter[str],
) -> str:
    phases = PHASES if args.outage > 0 else ("before",)
    errors = sum(1 for a in run.answers if a.outcome.startswith("5") and a.outcome != "503")
    no_id = sum(1 for a in run.answers if a.outcome.isdigit() and not a.request_id)
    no_retry = sum(1 for a in run.answers if a.outcome == "503" and not a.retry_after)
    five_hundreds = sum(1 for a in run.answers if a.outcome == "500")
    command = command_line()
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC — database outage under load (`bench/outage.py`)",
        "",
        f"- Command: `{command}`",
        f"- Machine: {info['nproc']} CPUs, {info['cpu']}, {info['os']}; Python {info['python']}; "
        f"PostgreSQL {info['postgresql']}; load average before the run {info['load']}",
        f"- Commit: {info['commit']}",
        f"- Load: {args.rate:g} referrals/s open loop (httpx), {args.before:g} s before, "
        f"{args.outage:g} s database outage (every connection reset, new ones refused, by a TCP "
        f"proxy), {args.after:g} s after; request timeout {args.timeout:g} s; pool "
        f"{args.pool_size} + {args.max_overflow} overflow, timeout {args.pool_timeout:g} s",
        "",
        *answers_table(run, phases),
        "",
        f"- **500 answers: {five_hundreds}** (other 5xx: {errors - five_hundreds}); answers "
        f"without X-Request-ID: {no_id}; 503s without Retry-After: {no_retry}",
        f"- **Lost: {len(kept.lost)}** of {kept.acknowledged} referrals answered 201/200 "
        "missing from the database afterwards",
        "- Webhooks (one subscription, a receiver on 127.0.0.1), "
        f"{kept.settled_in:.0f} s after the load: deliveries "
        + (", ".join(f"{k} {v}" for k, v in sorted(kept.deliveries.items())) or "none")
        + f"; received {len(webhooks)} distinct webhook-ids, "
        f"{sum(n - 1 for n in webhooks.values())} repeats",
        f"- First referral accepted after the restore: {recovery(run)}",
        f"- Server CPU during the load: {run.server_cpu:.1f} s, "
        f"{1000 * run.server_cpu / max(1, len(run.answers)):.2f} ms per request sent",
        f"- Server log: {logs.lines} lines, {logs.size / 1024:.0f} KiB; by level "
        + ", ".join(f"{k} {v}" for k, v in sorted(logs.by_level.items()))
        + f"; {logs.with_stack} with a stack; {logs.unavailable} 'database unavailable'",
        *(f"  - {n} x {m}" for m, n in logs.messages.most_common(8)),
        "- The bridge's PostgreSQL connections by state (`pg_stat_activity`, every 0.5 s):",
        "",
        *activity_table(run, phases),
        "",
        f"- Idle in transaction, for how long when sampled: p50 "
        f"{_fmt(percentile(run.idle_ms, 50))} ms, p99 {_fmt(percentile(run.idle_ms, 99))} ms, "
        f"max {_fmt(percentile(run.idle_ms, 100))} ms; after which statement: "
        + (
            "; ".join(f"`{q}` {n}" for q, n in run.idle_after.most_common(6))
            if run.idle_after
            else "none"
        ),
        "",
    ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Referrals under load through a DB outage.")
    parser.add_argument("--rate", type=float, default=30.0, help="referrals/s (30)")
    parser.add_argument("--before", type=float, default=15.0, help="seconds before the cut (15)")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds cut; 0: none (20)")
    parser.add_argument("--after", type=float, default=25.0, help="seconds after (25)")
    parser.add_argument("--timeout", type=float, default=15.0, help="request timeout s (15)")
    parser.add_argument("--max-in-flight", type=int, default=200, help="requests at once (200)")
    parser.add_argument(
        "--settle", type=float, default=90.0, help="wait for the outbox to empty, s (90)"
    )
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--max-overflow", type=int, default=0)
    parser.add_argument("--pool-timeout", type=float, default=3.0)
    parser.add_argument("--pg", default="postgres@127.0.0.1:5432", help="user@host:port")
    parser.add_argument("--database", default="spbridge_bench_outage")
    parser.add_argument("--label", help="commit label for the report (default: git describe)")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.before <= 0 or args.outage < 0 or args.after <= 0:
        parser.error("rate, before and after must be positive, outage not negative")
    return args


async def main_async(
    args: argparse.Namespace, log_dir: Path
) -> tuple[Run, Stored, Logs, Counter[str], str]:
    host, _, port = args.pg.rpartition("@")[2].partition(":")
    proxy = ProxyThread(host, int(port or 5432))
    await proxy.start()
    receiver = WebhookReceiver()
    await receiver.start()
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    user = args.pg.rpartition("@")[0]
    env = bridge_env(
        f"postgresql+asyncpg://{user}@127.0.0.1:{proxy.port}/{args.database}",
        admin_key,
        {
            "SPBRIDGE_ALLOWED_OUTBOUND_HOSTS": "127.0.0.1",
            "SPBRIDGE_DATABASE_POOL_SIZE": str(args.pool_size),
            "SPBRIDGE_DATABASE_POOL_MAX_OVERFLOW": str(args.max_overflow),
            "SPBRIDGE_DATABASE_POOL_TIMEOUT": str(args.pool_timeout),
        },
    )
    server = start_serve(env, log_dir, "bridge")
    try:
        await server.wait_ready()
        api_key = await set_up_bridge(server.base_url, admin_key, receiver.url)
        run = await load(args, server.base_url, api_key, proxy, server.pid)
        kept = await stored(args.pg, args.database, run, args.settle)
    finally:
        await server.stop(signal.SIGINT)
        await proxy.stop()
        await receiver.stop()
    connection = await asyncpg.connect(f"postgresql://{args.pg}/postgres")
    try:
        postgresql = await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()
    return run, kept, read_logs(server.log_path), receiver.ids, str(postgresql)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where is it stuck?
    started = dt.datetime.now(dt.UTC)
    info = machine(args.label)
    asyncio.run(pg_admin(args.pg, f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'))
    asyncio.run(pg_admin(args.pg, f'CREATE DATABASE "{args.database}"'))
    try:
        with tempfile.TemporaryDirectory(prefix="spbridge-outage-") as log_dir:
            run, kept, logs, webhooks, info["postgresql"] = asyncio.run(
                main_async(args, Path(log_dir))
            )
    finally:
        asyncio.run(pg_admin(args.pg, f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'))
    text = report(args, info, started, run, kept, logs, webhooks)
    return publish(text, args.record)


if __name__ == "__main__":
    sys.exit(main())
