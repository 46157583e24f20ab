"""Delivery benchmark: referral → signed webhook, on PostgreSQL, through the outbox.

Two parts, each on a fresh PostgreSQL database made for it and dropped after it. The webhook
receiver is a minimal keep-alive HTTP/1.1 server (asyncio streams) in this process, on
127.0.0.1; it answers every POST 200 at once and records, for each one, when it arrived, its
``webhook-id`` and the ``data.referral_id`` of its body. This process is also the load
generator (the same minimal client as bench/intake.py).

(a) latency: ``spbridge serve`` with its in-process dispatcher (the default), a service, a
    clinical-system client and one admin webhook subscription to the receiver. Referrals are
    POSTed open-loop at ``--rate`` a second for ``--duration`` seconds after a warm-up, each with
    an identifier of its own. Latency = webhook arrival - the request's scheduled send time (no
    coordinated omission). Lost = answered 201 but no webhook within ``--wait`` seconds of the
    last send.
(b) drain: the same set-up with ``SPBRIDGE_RUN_DISPATCHER=false`` and the receiver down (its port
    chosen, nothing listening), ``--backlog`` referrals made through the API, so as many webhook
    deliveries are pending and none has been attempted. The server is stopped and the database
    ANALYZEd, as autovacuum would have done during such an outage (``--no-analyze`` leaves the
    planner without statistics). Then the receiver is started, then N ``spbridge worker``
    processes (N from ``--workers``, a fresh backlog for each N). Drain rate = unique
    deliveries received / (last arrival - first arrival). Every delivery must arrive exactly
    once: duplicates (repeated ``webhook-id``) and misses are counted against the
    ``deliveries`` table.

Targets (the issue): p99 under 500 ms at 50 referrals/s; drain at least 300 deliveries/s with
2 workers. ``--record`` appends the run to bench/RESULTS.md.

    .venv/bin/python bench/delivery.py [--part all|latency|drain] [--rate 50] [--duration 20]
        [--backlog 10000] [--workers 1,2] [--no-analyze] [--set SPBRIDGE_NAME=value ...]
        [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import math
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    SPBRIDGE,
    Connection,
    Process,
    Referrals,
    asyncpg_dsn,
    bridge_env,
    command_line,
    cpu_seconds,
    drop_databases,
    free_port,
    kill_live,
    loop_factory,
    machine,
    no_gc_pauses,
    percentile,
    pg_admin,
    publish,
    query,
    recreate_database,
    set_up_bridge,
    sqlalchemy_url,
    start_serve,
    stop_on_sigterm,
)
from bench.common import fmt as _fmt

HOOK_PATH = "/hooks/spbridge"
P99_TARGET_MS = 500.0
TARGET_RATE = 50.0  # referrals/s at which the p99 target holds
DRAIN_TARGET = 300.0  # deliveries/s
DRAIN_TARGET_WORKERS = 2


# --- the load generator ---------------------------------------------------------------------


@dataclass
class Answer:
    outcome: str  # status code or error kind
    referral_id: str | None  # the ServiceRequest id of a 201
    connection: Connection | None  # to reuse, when it may be


async def refer(referrer: Referrals, connection: Connection | None, limit: float) -> Answer:
    """POST one referral."""
    head, body = referrer.request()
    try:
        if connection is None:
            connection = await asyncio.wait_for(
                Connection.open(referrer.host, referrer.port), limit
            )
        status, content = await asyncio.wait_for(connection.post(head, body), limit)
    except TimeoutError:
        outcome = "timeout"
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
        outcome = type(exc).__name__
    else:
        referral_id = None
        if status == 201:
            with contextlib.suppress(ValueError, TypeError):
                referral_id = str(orjson.loads(content)["id"])
        keep = connection if connection.reusable else None
        if keep is None:
            connection.close()
        return Answer(str(status), referral_id, keep)
    if connection is not None:
        connection.close()
    return Answer(outcome, None, None)


# --- the webhook receiver --------------------------------------------------------------------


@dataclass
class Hit:
    at: float  # perf_counter() when the whole request had arrived
    webhook_id: str
    referral_id: str | None


class Receiver:
    """A minimal HTTP/1.1 server that answers every request 200 and records webhooks."""

    OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, port: int) -> None:
        self.port = port
        self.hits: list[Hit] = []
        self.first_arrival: dict[str, float] = {}  # referral id → first webhook's arrival
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, backlog=1024, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    def reset(self) -> None:
        self.hits.clear()
        self.first_arrival.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await reader.readline():  # the request line; b"" when the client has gone
                length = 0
                webhook_id = ""
                close = False
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"webhook-id":
                        webhook_id = value.strip().decode()
                    elif name == b"connection" and b"close" in value.lower():
                        close = True
                body = await reader.readexactly(length) if length else b""
                at = time.perf_counter()
                referral_id = None
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    referral_id = orjson.loads(body)["data"]["referral_id"]
                self.hits.append(Hit(at, webhook_id, referral_id))
                if referral_id is not None and referral_id not in self.first_arrival:
                    self.first_arrival[referral_id] = at
                self.arrived.set()
                writer.write(self.OK)
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


# --- processes and databases -----------------------------------------------------------------


def delivery_env(pg: str, database: str, admin_key: str, extra: dict[str, str]) -> dict[str, str]:
    return bridge_env(
        sqlalchemy_url(pg, database),
        admin_key,
        {"SPBRIDGE_ALLOWED_OUTBOUND_HOSTS": "127.0.0.1", **extra},
    )


# --- CPU accounting (Linux /proc) --------------------------------------------------------------


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every postgres process on this host, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "postgres":
                found[int(entry.name)] = cpu_seconds(int(entry.name))
    return {pid: cpu for pid, cpu in found.items() if not math.isnan(cpu)}


def host_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole host since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # leave out guest time, already in user
    return total - idle, total


@dataclass
class CpuSample:
    at: float
    own: float
    processes: dict[int, float]
    postgres: dict[int, float]
    host: tuple[int, int]

    @classmethod
    def take(cls, pids: list[int]) -> CpuSample:
        times = os.times()
        return cls(
            at=time.perf_counter(),
            own=times.user + times.system,
            processes={pid: cpu_seconds(pid) for pid in pids},
            postgres=postgres_cpu(),
            host=host_jiffies(),
        )


@dataclass
class CpuUse:
    """CPU seconds used between two samples."""

    wall: float
    own: float  # this process: load generator and receiver
    processes: dict[int, float]
    postgres: float  # postgres processes (those that exited in between are missed)
    host_cores: float  # average busy cores of the whole host

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample) -> CpuUse:
        busy = after.host[0] - before.host[0]
        total = after.host[1] - before.host[1]
        cores = os.cpu_count() or 1
        return cls(
            wall=after.at - before.at,
            own=after.own - before.own,
            processes={
                pid: after.processes[pid] - before.processes.get(pid, 0.0)
                for pid in after.processes
            },
            postgres=sum(
                cpu - before.postgres.get(pid, 0.0) for pid, cpu in after.postgres.items()
            ),
            host_cores=busy / total * cores if total else math.nan,
        )

    def cores(self, seconds: float) -> float:
        """CPU seconds over the interval as average busy cores."""
        return seconds / self.wall if self.wall > 0 else math.nan

    @property
    def other_cores(self) -> float:
        """Busy cores of the host not accounted for by the processes measured here."""
        ours = self.own + self.postgres + sum(self.processes.values())
        return self.host_cores - self.cores(ours)


# --- (a) latency -------------------------------------------------------------------------------


@dataclass
class Sent:
    scheduled: float
    answered: float  # perf_counter() when the answer (or error) came
    outcome: str
    referral_id: str | None


async def open_loop(referrer: Referrals, rate: float, duration: float, limit: float) -> list[Sent]:
    """``rate`` referrals a second on a fixed timetable, whatever the answers take."""
    sent: list[Sent] = []
    idle: list[Connection] = []

    def idle_connection() -> Connection | None:
        while idle:
            connection = idle.pop()
            if connection.fresh():
                return connection
            connection.close()
        return None

    async def one(scheduled: float) -> None:
        answer = await refer(referrer, idle_connection(), limit)
        sent.append(Sent(scheduled, time.perf_counter(), answer.outcome, answer.referral_id))
        if answer.connection is not None:
            idle.append(answer.connection)

    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.01
    for i in range(int(rate * duration)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=2 * limit + 1)
        for task in pending:
            task.cancel()
    for connection in idle:
        connection.close()
    return sent


@dataclass
class LatencyResult:
    rate: float
    duration: float
    warmup: float
    sent: int
    created: int
    errors: Counter[str]
    received: int  # of the measured 201s, how many had a webhook
    lost: int
    duplicates: int  # webhooks beyond the first for one webhook-id (whole part)
    latency_ms: dict[str, float]  # webhook arrival - scheduled send
    answer_ms: dict[str, float]  # POST answer - scheduled send
    after_answer_ms: dict[str, float]  # webhook arrival - POST answer
    server_cpu_ms: float  # per referral sent in the measured phase
    own_cpu_ms: float
    postgres_cpu_ms: float
    host_cores: float
    other_cores: float
    states: dict[str, int]
    attempts: dict[str, int]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50) * 1000,
        "p95": percentile(values, 95) * 1000,
        "p99": percentile(values, 99) * 1000,
        "max": percentile(values, 100) * 1000,
    }


async def wait_for_webhooks(receiver: Receiver, ids: set[str], wait: float) -> None:
    deadline = time.perf_counter() + wait
    while not ids <= receiver.first_arrival.keys():
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        receiver.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.arrived.wait(), min(remaining, 0.5))


async def delivery_states(pg: str, database: str) -> tuple[dict[str, int], dict[str, int]]:
    states = await query(pg, database, "SELECT state, count(*) FROM deliveries GROUP BY state")
    attempts = await query(
        pg, database, "SELECT outcome, count(*) FROM delivery_attempts GROUP BY outcome"
    )
    return {r[0]: r[1] for r in states}, {r[0]: r[1] for r in attempts}


async def run_latency(args: argparse.Namespace, ctx: Context) -> LatencyResult:
    database = f"{args.database}_latency"
    ctx.databases.append(database)
    await recreate_database(args.pg, database)
    receiver = Receiver(free_port())
    await receiver.start()
    env = delivery_env(args.pg, database, ctx.admin_key, ctx.extra_env)
    bridge = start_serve(env, ctx.log_dir, "latency-serve")
    try:
        await bridge.wait_ready()
        api_key = await set_up_bridge(bridge.base_url, ctx.admin_key, receiver.url)
        referrer = Referrals("127.0.0.1", bridge.port, api_key, "BENCH-DLV")
        # One referral first, so that a misconfiguration fails fast and clearly.
        answer = await refer(referrer, None, args.timeout)
        if answer.connection is not None:
            answer.connection.close()
        if answer.referral_id is None:
            raise RuntimeError(f"a first referral was answered {answer.outcome}, not 201")
        await wait_for_webhooks(receiver, {answer.referral_id}, args.wait)
        if answer.referral_id not in receiver.first_arrival:
            raise RuntimeError(f"no webhook within {args.wait:g} s of a first referral")

        print(f"[latency] warm-up {args.warmup:g} s at {args.rate:g}/s", flush=True)
        warm = await open_loop(referrer, args.rate, args.warmup, args.timeout)
        await wait_for_webhooks(receiver, {s.referral_id for s in warm if s.referral_id}, 5)
        await asyncio.sleep(1)
        print(f"[latency] open loop, {args.rate:g} referrals/s, {args.duration:g} s", flush=True)
        before = CpuSample.take([bridge.pid])
        sent = await open_loop(referrer, args.rate, args.duration, args.timeout)
        ids = {s.referral_id for s in sent if s.referral_id}
        await wait_for_webhooks(receiver, ids, args.wait)
        after = CpuSample.take([bridge.pid])
        states, attempts = await delivery_states(args.pg, database)
    except BaseException:
        print(f"--- end of the {bridge.name} log ---\n{bridge.tail()}", file=sys.stderr)
        raise
    finally:
        await bridge.stop(signal.SIGINT)
        await receiver.stop()

    use = CpuUse.between(before, after)
    created = [s for s in sent if s.referral_id]
    arrivals = receiver.first_arrival
    latencies = [
        arrivals[s.referral_id] - s.scheduled for s in created if s.referral_id in arrivals
    ]
    after_answer = [
        arrivals[s.referral_id] - s.answered for s in created if s.referral_id in arrivals
    ]
    ids_seen = Counter(hit.webhook_id for hit in receiver.hits)
    n = len(sent) or 1
    return LatencyResult(
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        sent=len(sent),
        created=len(created),
        errors=Counter(s.outcome for s in sent if s.referral_id is None),
        received=len(latencies),
        lost=len(created) - len(latencies),
        duplicates=sum(ids_seen.values()) - len(ids_seen),
        latency_ms=_summary(latencies),
        answer_ms=_summary([s.answered - s.scheduled for s in created]),
        after_answer_ms=_summary(after_answer),
        server_cpu_ms=use.processes[bridge.pid] / n * 1000,
        own_cpu_ms=use.own / n * 1000,
        postgres_cpu_ms=use.postgres / n * 1000,
        host_cores=use.host_cores,
        other_cores=use.other_cores,
        states=states,
        attempts=attempts,
    )


# --- (b) drain ---------------------------------------------------------------------------------


@dataclass
class DrainResult:
    workers: int
    backlog: int  # pending deliveries before the workers started
    made_in: float  # seconds to make the backlog through the API
    make_errors: Counter[str]
    delivered: int  # deliveries in state delivered at the end (database)
    received: int  # webhooks received, duplicates included
    unique: int  # distinct webhook-ids received
    missing: int  # delivered in the database but never received
    unexpected: int  # received but not a delivered delivery of the database
    first_after: float  # seconds from starting the workers to the first webhook
    drain_s: float  # first to last webhook
    rate: float  # unique webhooks / drain_s
    overall_rate: float  # unique webhooks / (workers started → last webhook)
    states: dict[str, int]
    attempts: dict[str, int]
    by_worker: list[tuple[str, int]]
    worker_cpu: list[float]  # seconds each, over the worker's whole life (start-up included)
    during: CpuUse  # from the first webhook to the end of the drain
    worker_pids: list[int]
    exit_codes: list[int]
    finished: bool
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (s since start, delivered)

    def per_delivery_ms(self, seconds: float) -> float:
        return seconds / self.unique * 1000 if self.unique else math.nan


async def make_backlog(
    referrer: Referrals, count: int, concurrency: int, limit: float
) -> tuple[int, Counter[str]]:
    """``count`` referrals from ``concurrency`` clients; how many were answered 201."""
    budget = itertools.count()
    outcomes: Counter[str] = Counter()
    step = max(1, count // 5)

    async def client() -> None:
        connection: Connection | None = None
        try:
            while next(budget) < count:
                answer = await refer(referrer, connection, limit)
                connection = answer.connection
                outcomes[answer.outcome] += 1
                done = sum(outcomes.values())
                if done % step == 0:
                    print(f"[drain] {done} referrals made", flush=True)
        finally:
            if connection is not None:
                connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    created = outcomes.pop("201", 0)
    return created, outcomes


async def run_drain(args: argparse.Namespace, ctx: Context, workers: int) -> DrainResult:
    tag = f"[drain, {workers} worker{'s' if workers > 1 else ''}]"
    database = f"{args.database}_drain{workers}"
    ctx.databases.append(database)
    await recreate_database(args.pg, database)
    receiver = Receiver(free_port())  # chosen now, listening only once the backlog is made
    env = delivery_env(args.pg, database, ctx.admin_key, ctx.extra_env)
    serve_env = dict(env, SPBRIDGE_RUN_DISPATCHER="false")
    bridge = start_serve(serve_env, ctx.log_dir, f"drain{workers}-serve")
    try:
        await bridge.wait_ready()
        api_key = await set_up_bridge(bridge.base_url, ctx.admin_key, receiver.url)
        referrer = Referrals("127.0.0.1", bridge.port, api_key, "BENCH-DLV")
        print(f"{tag} making {args.backlog} referrals, receiver down", flush=True)
        began = time.perf_counter()
        created, make_errors = await make_backlog(
            referrer, args.backlog, args.backlog_concurrency, args.timeout
        )
        made_in = time.perf_counter() - began
    except BaseException:
        print(f"--- end of the {bridge.name} log ---\n{bridge.tail()}", file=sys.stderr)
        raise
    finally:
        await bridge.stop(signal.SIGINT)
    if args.analyze:
        # What autovacuum's autoanalyze does within a minute of the rows arriving (an outage
        # that builds such a backlog lasts longer than that); this server may have it off.
        await query(args.pg, database, "ANALYZE")
    states, attempts = await delivery_states(args.pg, database)
    backlog = states.get("pending", 0)
    if attempts or backlog != created or len(states) != 1:
        raise RuntimeError(
            f"the backlog is not what was made: {created} referrals answered 201, deliveries "
            f"{states}, attempts {attempts}"
        )
    print(f"{tag} {backlog} pending deliveries made in {made_in:.1f} s", flush=True)

    await receiver.start()
    procs: list[Process] = []
    timeline: list[tuple[float, int]] = []
    finished = False
    try:
        started = time.perf_counter()
        for n in range(workers):
            procs.append(
                Process(f"drain{workers}-worker{n + 1}", [SPBRIDGE, "worker"], env, ctx.log_dir)
            )
        pids = [p.pid for p in procs]
        receiver.arrived.clear()

        async def at_first_webhook() -> CpuSample:
            await receiver.arrived.wait()
            return CpuSample.take(pids)

        first = asyncio.create_task(at_first_webhook())
        connection = await asyncpg.connect(asyncpg_dsn(args.pg, database))
        try:
            last_progress = (started, 0)
            while True:
                await asyncio.sleep(args.poll)
                delivered = int(
                    await connection.fetchval(
                        "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
                    )
                )
                now = time.perf_counter()
                timeline.append((now - started, delivered))
                if delivered >= backlog:
                    finished = True
                    break
                if delivered > last_progress[1]:
                    last_progress = (now, delivered)
                dead = [p.name for p in procs if p.process.poll() is not None]
                if dead:
                    raise RuntimeError(f"worker(s) exited during the drain: {', '.join(dead)}")
                if now - last_progress[0] > args.stall or now - started > args.drain_timeout:
                    print(f"{tag} gave up at {delivered}/{backlog} delivered", flush=True)
                    break
        finally:
            await connection.close()
        after = CpuSample.take(pids)
        if not first.done():
            first.cancel()
            raise RuntimeError("no webhook arrived at all")
        before = first.result()
        # The workers' CPU over their whole life (start-up included).
        worker_cpu = [after.processes[pid] for pid in pids]
        await asyncio.sleep(1.0)  # let any late duplicate arrive before counting
        exit_codes = [await p.stop(signal.SIGTERM) for p in procs]
    except BaseException:
        for p in procs:
            print(f"--- end of the {p.name} log ---\n{p.tail()}", file=sys.stderr)
        raise
    finally:
        for p in procs:
            await p.stop(signal.SIGTERM)
        await receiver.stop()

    states, attempts = await delivery_states(args.pg, database)
    rows = await query(
        args.pg,
        database,
        "SELECT worker, count(*) FROM delivery_attempts GROUP BY worker ORDER BY worker",
    )
    by_worker = [(str(r[0]), int(r[1])) for r in rows]
    delivered_ids = {
        r[0]
        for r in await query(
            args.pg, database, "SELECT id FROM deliveries WHERE state = 'delivered'"
        )
    }
    hits = receiver.hits
    ids_seen = Counter(hit.webhook_id for hit in hits)
    times = sorted(hit.at for hit in hits)
    drain_s = times[-1] - times[0] if len(times) > 1 else math.nan
    unique = len(ids_seen)
    return DrainResult(
        workers=workers,
        backlog=backlog,
        made_in=made_in,
        make_errors=make_errors,
        delivered=states.get("delivered", 0),
        received=len(hits),
        unique=unique,
        missing=len(delivered_ids - ids_seen.keys()),
        unexpected=len(ids_seen.keys() - delivered_ids),
        first_after=times[0] - started if times else math.nan,
        drain_s=drain_s,
        rate=unique / drain_s if drain_s and not math.isnan(drain_s) else math.nan,
        overall_rate=unique / (times[-1] - started) if times else math.nan,
        states=states,
        attempts=attempts,
        by_worker=by_worker,
        worker_cpu=worker_cpu,
        during=CpuUse.between(before, after),
        worker_pids=pids,
        exit_codes=exit_codes,
        finished=finished,
        timeline=timeline,
    )


# --- reporting -------------------------------------------------------------------------------


def _counts(counts: dict[str, int] | Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def latency_lines(r: LatencyResult) -> list[str]:
    met = r.latency_ms["p99"] < P99_TARGET_MS and r.lost == 0 and not r.errors
    return [
        f"### (a) Latency, referral POST → webhook received, {r.rate:g} referrals/s",
        "",
        f"- Load: warm-up {r.warmup:g} s, then {r.duration:g} s open loop; one admin subscription "
        "(all events), service adapter `local` (no platform delivery), in-process dispatcher",
        f"- Referrals: {r.sent} sent, {r.created} answered 201"
        + (f", others: {_counts(r.errors)}" if r.errors else "")
        + f"; webhooks received for {r.received}, lost {r.lost}, duplicate webhook-ids "
        f"{r.duplicates}",
        f"- Deliveries at the end (whole part): {_counts(r.states)}; attempts: "
        f"{_counts(r.attempts)}",
        f"- CPU per referral: server {_fmt(r.server_cpu_ms, 2)} ms, PostgreSQL "
        f"{_fmt(r.postgres_cpu_ms, 2)} ms, this process (load + receiver) "
        f"{_fmt(r.own_cpu_ms, 2)} ms; host busy {_fmt(r.host_cores, 2)} cores on average, of which "
        f"{_fmt(r.other_cores, 2)} other work on the machine",
        "",
        "| measured from → to | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
        "| scheduled send → webhook received | "
        + " | ".join(_fmt(r.latency_ms[k]) for k in ("p50", "p95", "p99", "max"))
        + " |",
        "| scheduled send → 201 answer | "
        + " | ".join(_fmt(r.answer_ms[k]) for k in ("p50", "p95", "p99", "max"))
        + " |",
        "| 201 answer → webhook received | "
        + " | ".join(_fmt(r.after_answer_ms[k]) for k in ("p50", "p95", "p99", "max"))
        + " |",
        "",
        f"- Target p99 < {P99_TARGET_MS:g} ms at {TARGET_RATE:g} referrals/s, nothing lost: "
        + (
            f"**{'met' if met else 'NOT met'}** (p99 {_fmt(r.latency_ms['p99'])} ms at "
            f"{r.rate:g}/s, lost {r.lost})"
            if r.rate == TARGET_RATE
            else f"not assessed (run at {r.rate:g}/s)"
        ),
        "",
    ]


def drain_lines(results: list[DrainResult], backlog_concurrency: int, analyze: bool) -> list[str]:
    lines = [
        "### (b) Drain of a webhook backlog after the receiver comes back",
        "",
        "- Backlog: referrals POSTed through the API to `spbridge serve` with "
        f"`SPBRIDGE_RUN_DISPATCHER=false` ({backlog_concurrency} clients) while the receiver was "
        "not listening, so every delivery was pending and none attempted; the server stopped, the "
        "receiver started, then N `spbridge worker` processes (app's default dispatch settings "
        "unless `--set` says otherwise)"
        + (
            "; the database ANALYZEd once the backlog was made (as autovacuum would)"
            if analyze
            else "; **no ANALYZE** after the backlog was made (`--no-analyze`): the planner had "
            "no statistics on it"
        ),
        "- Rate: distinct webhooks received / (last - first arrival). CPU over the drain (first "
        "webhook to the last delivery seen in the database) as average busy cores, and per "
        "delivery; other = host busy minus the workers, PostgreSQL and this process (other work "
        "on the machine)",
        "",
        "| workers | backlog | made in (s) | first webhook after (s) | drain (s) "
        "| rate (deliveries/s) | received | duplicates | missing |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.workers} | {r.backlog} | {r.made_in:.1f} | {_fmt(r.first_after, 2)} | "
            f"{_fmt(r.drain_s)} | {_fmt(r.rate)} | {r.received} | {r.received - r.unique} | "
            f"{r.missing + (r.backlog - r.delivered)} |"
        )
    lines += [
        "",
        "| workers | worker cores (each) | worker CPU (ms/delivery) | PostgreSQL cores "
        "| PostgreSQL CPU (ms/delivery) | receiver cores | host busy cores | other cores |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        use = r.during
        workers_cpu = [use.processes.get(pid, math.nan) for pid in r.worker_pids]
        lines.append(
            f"| {r.workers} | "
            + " + ".join(_fmt(use.cores(c), 2) for c in workers_cpu)
            + f" | {_fmt(r.per_delivery_ms(sum(workers_cpu)), 2)} | "
            f"{_fmt(use.cores(use.postgres), 2)} | {_fmt(r.per_delivery_ms(use.postgres), 2)} | "
            f"{_fmt(use.cores(use.own), 2)} | {_fmt(use.host_cores, 2)} | "
            f"{_fmt(use.other_cores, 2)} |"
        )
    lines.append("")
    for r in results:
        lines.append(
            f"- {r.workers} worker(s): deliveries at the end {_counts(r.states)}; attempts "
            f"{_counts(r.attempts)}; attempts by worker "
            + ", ".join(str(count) for _, count in r.by_worker)
            + f"; worker exit codes {r.exit_codes}; worker CPU over their whole life "
            + " + ".join(f"{c:.1f}" for c in r.worker_cpu)
            + " s; from the workers' start to the last webhook "
            f"{_fmt(r.overall_rate)} deliveries/s"
            + ("" if r.finished else "; **the drain did not finish**")
            + (f"; backlog requests not 201: {_counts(r.make_errors)}" if r.make_errors else "")
            + (f"; {r.unexpected} webhooks not matching a delivered row" if r.unexpected else "")
        )
    target = [r for r in results if r.workers == DRAIN_TARGET_WORKERS]
    if target:
        r = target[0]
        clean = r.finished and r.received == r.unique == r.backlog and r.missing == 0
        met = clean and r.rate >= DRAIN_TARGET
        lines.append(
            f"- Target drain >= {DRAIN_TARGET:g} deliveries/s with {DRAIN_TARGET_WORKERS} "
            f"workers, each exactly once: **{'met' if met else 'NOT met'}** "
            f"({_fmt(r.rate)} deliveries/s, {r.received - r.unique} duplicates, "
            f"{r.missing + (r.backlog - r.delivered)} missing)"
        )
    else:
        lines.append(f"- Target with {DRAIN_TARGET_WORKERS} workers: not assessed (not run)")
    lines.append("")
    return lines


def report(
    args: argparse.Namespace,
    info: dict[str, str],
    started: dt.datetime,
    latency: LatencyResult | None,
    drains: list[DrainResult],
) -> str:
    lines = [
        f"## Delivery (`bench/delivery.py`), {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{command_line()}`",
        f"- Machine: {info['nproc']} CPUs (nproc), {info['cpu']}, {info['memory']} RAM, "
        f"{info['os']}; Python {info['python']}; PostgreSQL {info['postgresql']} "
        f"(autovacuum {info['autovacuum']}); "
        f"load average before the run {info['load']}",
        "- Layout: `spbridge serve` / `spbridge worker` processes, PostgreSQL, and this process "
        "(load generator and webhook receiver) all on the same host; nothing pinned",
        f"- Commit: {info['commit']}"
        + (f"; settings: {' '.join(args.set)}" if args.set else "; app's default settings"),
        "",
    ]
    if latency is not None:
        lines += latency_lines(latency)
    if drains:
        lines += drain_lines(drains, args.backlog_concurrency, args.analyze)
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


@dataclass
class Context:
    admin_key: str
    log_dir: Path
    extra_env: dict[str, str]
    databases: list[str] = field(default_factory=list)  # made for the run, to drop at the end


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Referral → webhook latency, and the drain rate of a webhook backlog.",
    )
    parser.add_argument("--part", choices=("all", "latency", "drain"), default="all")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="referrals/s (50)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds (3)")
    parser.add_argument(
        "--wait", type=float, default=10.0, help="s to wait for webhooks after the last send (10)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout s (10)")
    parser.add_argument("--backlog", type=int, default=10_000, help="deliveries to drain (10000)")
    parser.add_argument(
        "--backlog-concurrency", type=int, default=16, help="clients making the backlog (16)"
    )
    parser.add_argument("--workers", default="1,2", help="worker counts to drain with (1,2)")
    parser.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ANALYZE the database once the backlog is made, as autovacuum would (yes)",
    )
    parser.add_argument("--poll", type=float, default=0.25, help="s between drain polls (0.25)")
    parser.add_argument(
        "--stall", type=float, default=60.0, help="give up after this long without progress (60)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=600.0, help="give up a drain after this long (600)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SPBRIDGE_NAME=value",
        help="a setting for every bridge process (repeatable), "
        "e.g. SPBRIDGE_DISPATCH_BATCH_SIZE=200",
    )
    parser.add_argument(
        "--pg", default="postgres@127.0.0.1:5432", help="PostgreSQL user@host:port (trust auth)"
    )
    parser.add_argument(
        "--database", default="spbridge_bench_delivery", help="database name prefix (made anew)"
    )
    parser.add_argument(
        "--record", action="store_true", help="append the results to bench/RESULTS.md"
    )
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        parser.error("--workers: a comma-separated list of numbers, e.g. 1,2")
    if any(n < 1 for n in args.worker_counts):
        parser.error("--workers: each count must be at least 1")
    if args.rate <= 0 or args.duration <= 0 or args.backlog < 1 or args.backlog_concurrency < 1:
        parser.error("rate, duration, backlog and backlog-concurrency must be positive")
    for setting in args.set:
        name, sep, _ = setting.partition("=")
        if not sep or not name.startswith("SPBRIDGE_"):
            parser.error(f"--set {setting!r}: expected SPBRIDGE_NAME=value")
    return args


async def run(
    args: argparse.Namespace, ctx: Context
) -> tuple[LatencyResult | None, list[DrainResult]]:
    latency = None
    drains = []
    if args.part in ("all", "latency"):
        latency = await run_latency(args, ctx)
    if args.part in ("all", "drain"):
        for workers in args.worker_counts:
            drains.append(await run_drain(args, ctx, workers))
            await pg_admin(args.pg, f'DROP DATABASE IF EXISTS "{ctx.databases[-1]}" WITH (FORCE)')
    return latency, drains


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    started = dt.datetime.now(dt.UTC)
    info = machine()
    info["postgresql"] = str(asyncio.run(query(args.pg, "postgres", "SHOW server_version"))[0][0])
    info["autovacuum"] = str(asyncio.run(query(args.pg, "postgres", "SHOW autovacuum"))[0][0])
    extra_env = dict(setting.split("=", 1) for setting in args.set)
    ctx = Context("bench-admin-" + secrets.token_urlsafe(16), Path(), extra_env)
    try:
        with tempfile.TemporaryDirectory(prefix="spbridge-bench-delivery-") as log_dir:
            ctx.log_dir = Path(log_dir)
            try:
                with asyncio.Runner(loop_factory=loop_factory()) as runner, no_gc_pauses():
                    latency, drains = runner.run(run(args, ctx))
            finally:
                kill_live()  # only after an error or a signal
    finally:
        drop_databases(args.pg, ctx.databases)

    text = report(args, info, started, latency, drains)
    return publish(text, args.record)


if __name__ == "__main__":
    sys.exit(main())
