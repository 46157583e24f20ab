"""Intake benchmark: POST ServiceRequest to `spbridge serve` against a floor, on PostgreSQL and on
SQLite, in the same run.

The floor (bench/floor_app.py) is a bare FastAPI endpoint that only parses the body with
fhir.resources and inserts one referral row and one outbox row (issue 19's floor). For each
database in ``--databases`` (PostgreSQL and SQLite by default), the bridge and a floor on that
same database run as one uvicorn process each, on databases made for the run and dropped after
it. This process is the load generator (its own
event loop, a minimal keep-alive HTTP/1.1 client, so that it takes as little of the machine's CPU
as it can). After a warm-up of each, the two are measured in turn, variants alternated (closed
loop: bridge then floor; open loop: floor then bridge; each ``--rounds`` times):

- closed loop: ``--concurrency`` connections each sending the next request as soon as the
  last is answered, for ``--seconds`` seconds: throughput, p50, p99;
- open loop: ``--rate`` requests a second on a fixed timetable for ``--seconds`` seconds,
  latency measured from each request's scheduled send time (no coordinated omission).

For each phase also the server's CPU time per referral (user + system of its process, from
/proc/<pid>/stat before and after), on PostgreSQL also its processes' (every backend and
background process of the server on this host: the database shares the cores with the server and
the load; only one variant is loaded at a time), and after the load the server's resident memory
(VmRSS). Then, with
the timed servers stopped, a counting pass (``--count`` referrals one at a time, after a warm-up)
against a fresh process of each variant counts the database statements per referral
(bench/counting.py says how: on the wire for PostgreSQL, by SQLAlchemy listeners in the server's
process for SQLite), less what the same process does idle over as long.

Targets (issue 19): bridge throughput >= 0.5 x the floor's on each database; <= 6 round trips
per referral on PostgreSQL; <= 5 ms server CPU per referral; open loop at 100/s p99 < 50 ms on
PostgreSQL and < 100 ms on SQLite with no error; RSS < 250 MB. ``--record`` appends the run to
bench/RESULTS.md.

    .venv/bin/python bench/intake.py [--seconds 30] [--databases postgresql,sqlite] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import math
import os
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    ROOT,
    SPBRIDGE,
    Connection,
    Process,
    Referrals,
    bridge_env,
    command_line,
    cpu_seconds,
    drop_databases,
    fetch_value,
    fmt,
    free_port,
    kill_live,
    loop_factory,
    machine,
    no_gc_pauses,
    percentile,
    postgres_cpu_seconds,
    publish,
    recreate_database,
    rss_bytes,
    set_up_bridge,
    sqlalchemy_url,
    stop_on_sigterm,
)
from bench.counting import WireCounter, read_counts

FLOOR_APP = ROOT / "bench" / "floor_app.py"
COUNTING = ROOT / "bench" / "counting.py"
DATABASES = ("postgresql", "sqlite")
TITLES = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}
VARIANTS = ("bridge", "floor")
CLOSED, OPEN = "closed loop", "open loop"
WARM_UP = "warm-up"
RATIO_TARGET = 0.5
P99_TARGET_MS = {"postgresql": 50.0, "sqlite": 100.0}
ROUND_TRIPS_TARGET = 6.0
CPU_TARGET_MS = 5.0
RSS_TARGET_MB = 250.0
IDLE_S = 3.0  # the counting pass's idle window, to take background work out of the count


# --- the load ------------------------------------------------------------------------------


@dataclass
class Phase:
    database: str
    variant: str
    name: str  # WARM_UP, CLOSED or OPEN
    elapsed: float = 0.0
    server_cpu: float = math.nan  # seconds of CPU the server process used during the phase
    database_cpu: float = math.nan  # PostgreSQL's processes' during the phase (same host)
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

    @property
    def database_cpu_ms(self) -> float:
        """PostgreSQL's CPU time per request sent (NaN on SQLite: it is in the server's)."""
        return self.database_cpu / self.sent * 1000 if self.sent else math.nan

    def percentile_ms(self, p: float) -> float:
        return percentile(self.latencies, p) * 1000

    def record(self, outcome: int | str, latency: float) -> None:
        self.outcomes[str(outcome)] += 1
        if isinstance(outcome, int) and 200 <= outcome < 300:
            self.latencies.append(latency)

    @classmethod
    def merged(cls, phases: list[Phase]) -> Phase:
        """The phases of one variant and kind over every round, as one."""
        first = phases[0]
        whole = cls(first.database, first.variant, first.name, server_cpu=0.0, database_cpu=0.0)
        for p in phases:
            whole.elapsed += p.elapsed
            whole.server_cpu += p.server_cpu
            whole.database_cpu += p.database_cpu
            whole.latencies += p.latencies
            whole.outcomes += p.outcomes
        return whole


@dataclass
class Variant:
    """A server under test: the bridge or the floor, on one database."""

    database: str
    name: str
    server: Process
    referrals: Referrals
    rss_after: float = math.nan  # bytes, after the load


async def _send(
    referrals: Referrals, connection: Connection | None, request_timeout: float
) -> tuple[int | str, Connection | None]:
    """One request; the connection to reuse after it (None when it must not be)."""
    head, body = referrals.request()
    try:
        if connection is None:
            connection = await asyncio.wait_for(
                Connection.open(referrals.host, referrals.port), request_timeout
            )
        status, _ = await asyncio.wait_for(connection.post(head, body), request_timeout)
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
    variant: Variant, name: str, concurrency: int, duration: float, args: argparse.Namespace
) -> Phase:
    """``concurrency`` clients, each sending its next request when the last is answered."""
    phase = Phase(variant.database, variant.name, name)
    budget = itertools.count()
    cpu_before = cpu_seconds(variant.server.pid)
    database_before = _database_cpu(variant)
    start = time.perf_counter()
    deadline = start + duration

    async def client() -> None:
        connection: Connection | None = None
        try:
            while time.perf_counter() < deadline and next(budget) < args.max_requests:
                sent = time.perf_counter()
                outcome, connection = await _send(variant.referrals, connection, args.timeout)
                phase.record(outcome, time.perf_counter() - sent)
        finally:
            if connection is not None:
                connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    phase.elapsed = time.perf_counter() - start
    phase.server_cpu = cpu_seconds(variant.server.pid) - cpu_before
    phase.database_cpu = _database_cpu(variant) - database_before
    return phase


def _database_cpu(variant: Variant) -> float:
    # On SQLite the database's work is the server's own, counted with it.
    return postgres_cpu_seconds() if variant.database == "postgresql" else math.nan


async def open_loop(variant: Variant, args: argparse.Namespace) -> Phase:
    """``--rate`` requests a second on a fixed timetable, whatever the answers take."""
    phase = Phase(variant.database, variant.name, OPEN)
    idle: list[Connection] = []
    count = min(args.max_requests, int(args.rate * args.seconds))

    def idle_connection() -> Connection | None:
        while idle:
            connection = idle.pop()
            if connection.fresh():
                return connection
            connection.close()
        return None

    async def one(scheduled: float) -> None:
        outcome, connection = await _send(variant.referrals, idle_connection(), args.timeout)
        phase.record(outcome, time.perf_counter() - scheduled)
        if connection is not None:
            idle.append(connection)

    tasks: set[asyncio.Task[None]] = set()
    cpu_before = cpu_seconds(variant.server.pid)
    database_before = _database_cpu(variant)
    start = time.perf_counter() + 0.01
    for i in range(count):
        scheduled = start + i / args.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        # Each request times out on its own (connect, then answer); this is a backstop.
        _done, pending = await asyncio.wait(set(tasks), timeout=2 * args.timeout + 1)
        for task in pending:
            task.cancel()
            phase.outcomes["unanswered"] += 1
    phase.elapsed = time.perf_counter() - start
    phase.server_cpu = cpu_seconds(variant.server.pid) - cpu_before
    phase.database_cpu = _database_cpu(variant) - database_before
    for connection in idle:
        connection.close()
    return phase


async def run_load(variants: list[Variant], args: argparse.Namespace) -> list[Phase]:
    """Warm-ups, then the phases, the variants alternated (ABBA within a round)."""
    phases = []
    for v in variants:
        print(f"[{v.database} {v.name}] warm-up {args.warmup:g} s", flush=True)
        phases.append(await closed_loop(v, WARM_UP, args.concurrency, args.warmup, args))
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for v in order:
            await asyncio.sleep(1)
            print(
                f"[{v.database} {v.name}] closed loop, concurrency {args.concurrency}, "
                f"{args.seconds:g} s",
                flush=True,
            )
            phases.append(await closed_loop(v, CLOSED, args.concurrency, args.seconds, args))
        for v in order[::-1]:
            await asyncio.sleep(1)
            print(
                f"[{v.database} {v.name}] open loop, {args.rate:g}/s, {args.seconds:g} s",
                flush=True,
            )
            phases.append(await open_loop(v, args))
    return phases


async def one_at_a_time(referrals: Referrals, count: int, request_timeout: float) -> Counter[str]:
    """``count`` referrals, each sent when the last is answered; their outcomes."""
    outcomes: Counter[str] = Counter()
    connection: Connection | None = None
    for _ in range(count):
        outcome, connection = await _send(referrals, connection, request_timeout)
        outcomes[str(outcome)] += 1
    if connection is not None:
        connection.close()
    return outcomes


async def check_one(variant: Variant, request_timeout: float) -> None:
    """One request before the load, so that a misconfiguration fails fast and clearly."""
    outcomes = await one_at_a_time(variant.referrals, 1, request_timeout)
    if outcomes != Counter({"201": 1}):
        raise RuntimeError(f"{variant.name}: a first referral was answered {dict(outcomes)}")


# --- servers and databases -----------------------------------------------------------------


@dataclass
class Run:
    """What one database's part needs to start its servers."""

    database: str
    pg: str
    admin_key: str
    log_dir: Path
    names: dict[str, str]  # variant -> PostgreSQL database name or SQLite file
    pg_databases: list[str]  # made for the run, to drop at the end

    def url(self, variant: str, pg: str | None = None) -> str:
        if self.database == "sqlite":
            return f"sqlite+aiosqlite:///{self.names[variant]}"
        return sqlalchemy_url(pg or self.pg, self.names[variant])


def start(run: Run, variant: str, url: str, label: str, counts: Path | None = None) -> Process:
    """The bridge (`spbridge serve`) or the floor on ``url``; under bench/counting.py given
    ``counts``."""
    port = free_port()
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if variant == "bridge":
        env = bridge_env(
            url, run.admin_key, {"SPBRIDGE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
        )
        command = [SPBRIDGE, "serve", *where]
        counted = [sys.executable, str(COUNTING), str(counts), "spbridge", "serve", *where]
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPBRIDGE_")}
        env["FLOOR_DATABASE_URL"] = url
        command = [sys.executable, str(FLOOR_APP), *where]
        counted = [sys.executable, str(COUNTING), str(counts), str(FLOOR_APP), *where]
    name = f"{run.database}-{variant}-{label}"
    return Process(name, counted if counts else command, env, run.log_dir, port)


@dataclass
class Stored:
    rows: int  # rows in the server's table after the run
    created: int  # 201 answers: the first check request's, the warm-up's and the phases'
    sessions: int | None  # PostgreSQL sessions (connections) the server opened


ROW_COUNTS = {
    "bridge": "SELECT count(*) FROM referrals",
    "floor": "SELECT count(*) FROM service_requests",
}


async def stored_rows(run: Run, variant: str, phases: list[Phase]) -> Stored:
    created = 1 + sum(p.outcomes.get("201", 0) for p in phases if p.variant == variant)
    if run.database == "sqlite":
        with sqlite3.connect(run.names[variant]) as connection:
            rows = connection.execute(ROW_COUNTS[variant]).fetchone()[0]
        return Stored(int(rows), created, None)
    name = run.names[variant]
    sessions = await fetch_value(
        run.pg, name, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    )
    return Stored(int(await fetch_value(run.pg, name, ROW_COUNTS[variant])), created, sessions)


# --- counting statements -------------------------------------------------------------------


@dataclass
class Counted:
    referrals: int  # answered 201 in the counted window
    outcomes: Counter[str]
    seconds: float  # the counted window
    window: dict[str, float]  # each measure over the window
    idle_per_s: dict[str, float]  # each measure a second, the same process idle

    def per_referral(self, measure: str) -> float:
        net = self.window[measure] - self.idle_per_s[measure] * self.seconds
        return net / self.referrals if self.referrals else math.nan

    def raw_per_referral(self, measure: str) -> float:
        return self.window[measure] / self.referrals if self.referrals else math.nan


async def count_statements(
    run: Run, variant: str, api_key: str, args: argparse.Namespace
) -> Counted:
    """A fresh process of the variant, counted (see bench/counting.py): a warm-up, an idle
    window, then ``--count`` referrals one at a time."""
    counter: WireCounter | None = None
    counts_file = run.log_dir / f"{run.database}-{variant}-counts.json"
    if run.database == "postgresql":
        host, _, port = run.pg.rpartition("@")[2].partition(":")
        counter = WireCounter(host, int(port or 5432))
        await counter.start()
        user = run.pg.rpartition("@")[0]
        url = run.url(variant, f"{user}@127.0.0.1:{counter.port}") + "?ssl=disable"
        server = start(run, variant, url, "counted")
    else:
        server = start(run, variant, run.url(variant), "counted", counts_file)

    async def snapshot() -> dict[str, float]:
        if counter is not None:
            return counter.snapshot()
        counts = await read_counts(server.pid, counts_file)
        return {
            "statements": counts["statements"] + counts["commits"] + counts["rollbacks"],
            "commits": counts["commits"],
        }

    try:
        await server.wait_ready()
        referrals = Referrals("127.0.0.1", server.port, api_key, f"COUNT-{variant}")
        print(f"[{run.database} {variant}] counting statements over {args.count}", flush=True)
        await one_at_a_time(referrals, 20, args.timeout)  # prepared statements, caches
        await asyncio.sleep(1)
        before_idle = await snapshot()
        await asyncio.sleep(IDLE_S)
        before = await snapshot()
        began = time.perf_counter()
        outcomes = await one_at_a_time(referrals, args.count, args.timeout)
        seconds = time.perf_counter() - began
        after = await snapshot()
    except BaseException:
        print(f"--- end of the {server.name} log ---\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        await server.stop(signal.SIGINT, 15)
        if counter is not None:
            await counter.stop()
    if counter is not None and counter.unreadable:
        raise RuntimeError("a connection to PostgreSQL asked for TLS: its messages were not read")
    return Counted(
        referrals=outcomes.get("201", 0),
        outcomes=outcomes,
        seconds=seconds,
        window={k: after[k] - before[k] for k in after},
        idle_per_s={k: (before[k] - before_idle[k]) / IDLE_S for k in after},
    )


# --- one database --------------------------------------------------------------------------


@dataclass
class Part:
    database: str
    version: str
    phases: list[Phase]
    rss: dict[str, float]  # bytes
    stored: dict[str, Stored]
    counted: dict[str, Counted]


async def run_database(
    database: str, args: argparse.Namespace, admin_key: str, log_dir: Path, pg_databases: list[str]
) -> Part:
    if database == "postgresql":
        names = {v: f"{args.database}_{v}" for v in VARIANTS}
        for name in names.values():
            pg_databases.append(name)
            await recreate_database(args.pg, name)
        version = str(await fetch_value(args.pg, "postgres", "SHOW server_version"))
    else:
        names = {v: str(log_dir / f"{v}.db") for v in VARIANTS}
        version = sqlite3.sqlite_version
    run = Run(database, args.pg, admin_key, log_dir, names, pg_databases)
    servers = {v: start(run, v, run.url(v), "timed") for v in VARIANTS}
    try:
        for server in servers.values():
            await server.wait_ready()
        api_key = await set_up_bridge(servers["bridge"].base_url, admin_key)
        variants = [
            Variant(database, v, s, Referrals("127.0.0.1", s.port, api_key, f"BENCH-{v}"))
            for v, s in servers.items()
        ]
        for variant in variants:
            await check_one(variant, args.timeout)
        phases = await run_load(variants, args)
        rss = {v: rss_bytes(s.pid) for v, s in servers.items()}
    except BaseException:
        for server in servers.values():
            print(f"--- end of the {server.name} log ---\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        for server in servers.values():
            await server.stop(signal.SIGINT, 15)
    # Read once the servers are gone, so that every PostgreSQL session has been counted.
    stored = {v: await stored_rows(run, v, phases) for v in VARIANTS}
    counted = {}
    if args.count:
        for v in VARIANTS:
            counted[v] = await count_statements(run, v, api_key, args)
    return Part(database, version, phases, rss, stored, counted)


# --- reporting -----------------------------------------------------------------------------


def _merged(part: Part, variant: str, kind: str) -> Phase:
    return Phase.merged([p for p in part.phases if p.variant == variant and p.name == kind])


def _ratio(a: float, b: float, digits: int = 2) -> str:
    return fmt(a / b, digits) if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def part_lines(part: Part, args: argparse.Namespace) -> list[str]:
    title = TITLES[part.database]
    lines = [
        f"### {title} {part.version}",
        "",
        "| variant | phase | requests | 2xx | non-2xx / errors | throughput (2xx/s) "
        "| p50 (ms) | p99 (ms) | max (ms) | server CPU (ms/referral) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in part.phases:
        if p.name == WARM_UP:
            continue
        name = CLOSED + f", concurrency {args.concurrency}" if p.name == CLOSED else p.name
        if p.name == OPEN:
            name += f", {args.rate:g}/s"
        lines.append(
            f"| {p.variant} | {name} | {p.sent} | {p.ok} | {p.errors} | {p.throughput:.1f} | "
            + " | ".join(fmt(p.percentile_ms(q)) for q in (50, 99, 100))
            + f" | {fmt(p.server_cpu_ms, 2)} |"
        )
    closed = {v: _merged(part, v, CLOSED) for v in VARIANTS}
    open_ = {v: _merged(part, v, OPEN) for v in VARIANTS}
    pg = part.database == "postgresql"
    counted = part.counted
    measures = ["round trips", "statements", "prepared"] if pg else ["statements", "commits"]

    def per(v: str, m: str) -> float:
        return counted[v].per_referral(m) if v in counted else math.nan

    rows = [
        ("closed-loop throughput (2xx/s)", {v: closed[v].throughput for v in VARIANTS}, 1),
        ("closed-loop server CPU (ms/referral)", {v: closed[v].server_cpu_ms for v in VARIANTS}, 2),
        *(
            [
                (
                    "closed-loop PostgreSQL CPU (ms/referral)",
                    {v: closed[v].database_cpu_ms for v in VARIANTS},
                    2,
                )
            ]
            if pg
            else []
        ),
        ("open-loop server CPU (ms/referral)", {v: open_[v].server_cpu_ms for v in VARIANTS}, 2),
        ("open-loop p50 (ms)", {v: open_[v].percentile_ms(50) for v in VARIANTS}, 1),
        ("open-loop p99 (ms)", {v: open_[v].percentile_ms(99) for v in VARIANTS}, 1),
        ("open-loop non-2xx / errors", {v: float(open_[v].errors) for v in VARIANTS}, 0),
        *((f"{m} per referral", {v: per(v, m) for v in VARIANTS}, 2) for m in measures),
        ("RSS after the load (MB)", {v: part.rss[v] / 2**20 for v in VARIANTS}, 0),
    ]
    lines += [
        "",
        "| per variant | bridge | floor | bridge / floor |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {label} | {fmt(values['bridge'], d)} | {fmt(values['floor'], d)} | "
            f"{_ratio(values['bridge'], values['floor'])} |"
            for label, values, d in rows
        ),
        "",
    ]
    stored = "; ".join(
        f"{v}: {s.rows} rows for {s.created} answers 201"
        + (f", over {s.sessions} PostgreSQL sessions opened" if s.sessions is not None else "")
        for v, s in part.stored.items()
    )
    lines.append(f"- Stored (warm-up and a first check request included): {stored}")
    how = (
        "on the wire (a counting proxy in front of PostgreSQL: round trips = Sync + Flush + Query "
        "messages, statements = Execute + Query, prepared = Parse)"
        if pg
        else "by SQLAlchemy listeners in the server's process (statements sent through a cursor, "
        "BEGIN IMMEDIATE included, plus COMMITs and ROLLBACKs)"
    )
    for v, c in counted.items():
        lines.append(
            f"- Counted ({v}): {how}; {c.referrals} referrals answered 201 one at a time in "
            f"{c.seconds:.1f} s"
            + (
                ""
                if c.outcomes == Counter({"201": c.referrals})
                else f" (outcomes {dict(c.outcomes)})"
            )
            + "; over that window before taking out idle work: "
            + ", ".join(f"{m} {fmt(c.raw_per_referral(m), 2)}" for m in measures)
            + f" per referral; idle ({IDLE_S:g} s before): "
            + ", ".join(f"{m} {fmt(c.idle_per_s[m], 1)}/s" for m in measures)
        )
    ratio = (
        closed["bridge"].throughput / closed["floor"].throughput
        if closed["floor"].throughput
        else math.nan
    )
    p99 = open_["bridge"].percentile_ms(99)
    cpu = closed["bridge"].server_cpu_ms
    rss = part.rss["bridge"] / 2**20
    lines += [
        f"- Target bridge throughput >= {RATIO_TARGET:g} x floor ({title}): "
        f"{_met(ratio >= RATIO_TARGET and closed['bridge'].errors == 0)} "
        f"(ratio {fmt(ratio, 2)}, {closed['bridge'].errors} non-2xx/errors)",
        f"- Target open loop p99 < {P99_TARGET_MS[part.database]:g} ms at {args.rate:g}/s, "
        f"0 errors ({title}): "
        + (
            f"{_met(p99 < P99_TARGET_MS[part.database] and open_['bridge'].errors == 0)} "
            f"(p99 {fmt(p99)} ms, {open_['bridge'].errors} non-2xx/errors)"
            if args.rate == 100
            else f"not assessed (run at {args.rate:g}/s)"
        ),
        f"- Target server CPU <= {CPU_TARGET_MS:g} ms per referral (closed loop): "
        f"{_met(cpu <= CPU_TARGET_MS)} ({fmt(cpu, 2)} ms)",
        f"- Target RSS < {RSS_TARGET_MB:g} MB: {_met(rss < RSS_TARGET_MB)} ({fmt(rss, 0)} MB)",
    ]
    if pg and "bridge" in counted:
        trips = counted["bridge"].per_referral("round trips")
        lines.append(
            f"- Target <= {ROUND_TRIPS_TARGET:g} round trips per referral: "
            f"{_met(trips <= ROUND_TRIPS_TARGET)} ({fmt(trips, 2)})"
        )
    for p in part.phases:
        if p.errors:
            lines.append(
                f"- {p.variant}, {p.name}: outcomes "
                + ", ".join(f"{k}: {n}" for k, n in sorted(p.outcomes.items()))
            )
    lines.append("")
    return lines


def report(
    parts: list[Part], args: argparse.Namespace, info: dict[str, str], started: dt.datetime
) -> str:
    lines = [
        f"## Intake (`bench/intake.py`), {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{command_line()}`",
        f"- Machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']} RAM, {info['os']}; "
        f"Python {info['python']}; load average before the run {info['load']}",
        f"- Commit: {info['commit']}",
        "- Layout: bridge (`spbridge serve`, default settings but no rate limits) and floor "
        "(`bench/floor_app.py`) one uvicorn process each on the same database, the database "
        "and this load generator all on the same host; nothing pinned; one database at a time",
        f"- Load: per variant a warm-up of {args.warmup:g} s, then {args.rounds} round(s) of "
        f"closed loop ({args.concurrency} clients) and open loop ({args.rate:g} referrals/s), "
        f"{args.seconds:g} s each, the variants alternated (closed: bridge, floor; open: floor, "
        f"bridge; reversed each round); request timeout {args.timeout:g} s; latency of 2xx "
        "answers only, open loop from the scheduled send time; server CPU from /proc/<pid>/stat "
        "per referral sent; RSS (VmRSS) after the load; statements counted afterwards over "
        f"{args.count} referrals one at a time against a fresh process of each variant, less "
        "that process's idle rate",
        "",
    ]
    for part in parts:
        lines += part_lines(part, args)
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="POST ServiceRequest at the bridge and at a bare floor, on PostgreSQL and "
        "SQLite; compare."
    )
    parser.add_argument(
        "--seconds", "--duration", type=float, default=30.0, help="seconds per phase (30)"
    )
    parser.add_argument(
        "--databases",
        default=",".join(DATABASES),
        help="comma-separated, of postgresql and sqlite (both)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the phases (1)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (16)")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop referrals/s (100)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up s per variant (3)")
    parser.add_argument("--count", type=int, default=200, help="referrals counted; 0: none (200)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="cap per phase (100000)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout s (10)")
    parser.add_argument(
        "--pg", default="postgres@127.0.0.1:5432", help="PostgreSQL user@host:port (trust auth)"
    )
    parser.add_argument(
        "--database", default="spbridge_bench", help="PostgreSQL database name prefix (made anew)"
    )
    parser.add_argument(
        "--logs", help="keep the servers' logs (and SQLite's files) in this folder (not kept)"
    )
    parser.add_argument("--label", help="commit label for the report (default: git describe)")
    parser.add_argument(
        "--record", action="store_true", help="append the results to bench/RESULTS.md"
    )
    args = parser.parse_args(argv)
    args.database_list = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not args.database_list or any(d not in DATABASES for d in args.database_list):
        parser.error("--databases: postgresql, sqlite or both, comma-separated")
    if min(args.seconds, args.concurrency, args.rate, args.max_requests, args.rounds) <= 0:
        parser.error("seconds, concurrency, rate, rounds and max-requests must be positive")
    if args.count < 0:
        parser.error("--count must not be negative")
    return args


async def run_all(
    args: argparse.Namespace, admin_key: str, log_dir: Path, pg_databases: list[str]
) -> list[Part]:
    parts = []
    for database in args.database_list:
        parts.append(await run_database(database, args, admin_key, log_dir, pg_databases))
    return parts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    started = dt.datetime.now(dt.UTC)
    info = machine(args.label)
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    pg_databases: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="spbridge-bench-intake-") as temporary:
            log_dir = args.logs or temporary  # SQLite's databases too
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            try:
                with asyncio.Runner(loop_factory=loop_factory()) as runner, no_gc_pauses():
                    parts = runner.run(run_all(args, admin_key, Path(log_dir), pg_databases))
            finally:
                kill_live()  # only after an error or a signal
    finally:
        drop_databases(args.pg, pg_databases)

    text = report(parts, args, info, started)
    return publish(text, args.record)


if __name__ == "__main__":
    sys.exit(main())
