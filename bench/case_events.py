"""Case events against intake: is an advisor's or a platform's event as lean as a referral?

Issue 19 asks for the intake treatment on the other hot writes "where the measurements say it
matters". This runs `spbridge serve` (default settings, no rate limits) on a database made for the
run, makes ``--cases`` referrals (the intake phase), then records on every case, in turn, an
accepted, a booked and an attended event (``POST /api/v1/cases/{id}/events`` with an
idempotency key, as a platform or a retrying client sends), ``--concurrency`` keep-alive clients
at a time. Per phase: throughput, p50/p99 latency, and the server's CPU per request (user + system
of its process, /proc). PostgreSQL and SQLite, one after the other.

    .venv/bin/python bench/case_events.py [--cases 2000] [--databases postgresql,sqlite] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Connection,
    Referrals,
    bridge_env,
    command_line,
    cpu_seconds,
    fmt,
    kill_live,
    machine,
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

EVENTS: list[dict[str, Any]] = [
    {"type": "case.accepted"},
    {
        "type": "appointment.booked",
        "appointment_id": "A1",
        "start": "2030-01-01T10:00:00Z",
        "appointment_type": "face-to-face",
        "duration_minutes": 30,
    },
    {"type": "appointment.attended", "appointment_id": "A1"},
]


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failed: int = 0

    def row(self) -> str:
        done = len(self.latencies)
        sent = done + self.failed
        return (
            f"| {self.name} | {sent} | {self.failed} | {fmt(done / self.seconds)} | "
            f"{fmt(percentile(self.latencies, 50))} | {fmt(percentile(self.latencies, 99))} | "
            f"{fmt(self.cpu / sent * 1000, 2)} |"
        )


async def _run(
    phase: Phase, pid: int, port: int, requests: list[tuple[bytes, bytes]], concurrency: int
) -> None:
    queue = iter(requests)
    cpu_before, started = cpu_seconds(pid), time.perf_counter()

    async def client() -> None:
        connection = await Connection.open("127.0.0.1", port)
        try:
            for head, body in queue:
                sent = time.perf_counter()
                status, _ = await connection.post(head, body)
                if status in (200, 201):
                    phase.latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    phase.failed += 1
        finally:
            connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    phase.cpu = cpu_seconds(pid) - cpu_before


def _event_request(port: int, key: str, case_id: str, body: dict[str, Any]) -> tuple[bytes, bytes]:
    content = orjson.dumps({**body, "idempotency_key": f"{body['type']}-{case_id}"})
    head = (
        f"POST /api/v1/cases/{case_id}/events HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Length: {len(content)}\r\n\r\n"
    ).encode()
    return head, content


async def _advisor_key(base_url: str, admin_key: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        response = await client.post(
            "/api/v1/clients",
            json={"name": "advisor", "role": "advisor", "organisation": "LR001"},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        response.raise_for_status()
        return str(response.json()["api_key"])


async def _case_ids(url: str, pg: str, database: str) -> list[str]:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split("///", 1)[1]) as connection:
            return [row[0] for row in connection.execute("SELECT id FROM cases ORDER BY id")]
    return [row["id"] for row in await query(pg, database, "SELECT id FROM cases ORDER BY id")]


async def measure(backend: str, args: argparse.Namespace, folder: Path) -> list[Phase]:
    database = f"{args.database}_{backend}"
    if backend == "postgresql":
        await recreate_database(args.pg, database)
        url = sqlalchemy_url(args.pg, database)
    else:
        url = f"sqlite+aiosqlite:///{folder / 'events.db'}"
    admin_key = secrets.token_urlsafe(24)
    server = start_serve(bridge_env(url, admin_key, {}), folder, f"bridge-{backend}")
    try:
        await server.wait_ready()
        referrer = await set_up_bridge(server.base_url, admin_key)
        advisor = await _advisor_key(server.base_url, admin_key)
        referrals = Referrals("127.0.0.1", server.port, referrer, f"EVENTS-{backend}")
        # A warm-up: the process's caches filled, its statements prepared.
        await _run(Phase("warm-up"), server.pid, server.port, [referrals.request()], 1)
        intake = Phase("intake (POST /fhir/ServiceRequest)")
        requests = [referrals.request() for _ in range(args.cases)]
        await _run(intake, server.pid, server.port, requests, args.concurrency)
        cases = await _case_ids(url, args.pg, database)
        phases = [intake]
        for body in EVENTS:
            phase = Phase(f"case event {body['type']}")
            requests = [_event_request(server.port, advisor, case, body) for case in cases]
            await _run(phase, server.pid, server.port, requests, args.concurrency)
            phases.append(phase)
        return phases
    finally:
        await server.stop()
        if backend == "postgresql":
            await pg_admin(args.pg, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def report(results: dict[str, list[Phase]], args: argparse.Namespace) -> str:
    where = machine()
    lines = [
        f"## Case events against intake (`bench/case_events.py`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- Command: `{command_line()}`",
        f"- Machine: {where['nproc']} CPUs, {where['cpu']}, {where['memory']} RAM, {where['os']}; "
        f"Python {where['python']}; load average before the run {where['load']}",
        f"- Commit: {where['commit']}",
        f"- Load: `spbridge serve` (default settings, no rate limits), {args.cases} referrals, "
        f"then on every case an accepted, a booked and an attended event with an idempotency "
        f"key, {args.concurrency} keep-alive clients; the database, the server and this process "
        "on the same host; server CPU from /proc per request sent",
    ]
    for backend, phases in results.items():
        lines += [
            "",
            f"### {backend}",
            "",
            "| phase | requests | failed | throughput (/s) | p50 (ms) | p99 (ms) | "
            "server CPU (ms/request) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *(phase.row() for phase in phases),
        ]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    results: dict[str, list[Phase]] = {}
    with tempfile.TemporaryDirectory(prefix="spbridge-events-") as folder:
        try:
            for backend in args.databases.split(","):
                print(f"[{backend}] {args.cases} referrals and their events", file=sys.stderr)
                results[backend] = await measure(backend, args, Path(folder))
        finally:
            kill_live()
    return publish(report(results, args), args.record)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=2000, help="referrals, then events on each")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive clients (8)")
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--pg", default="postgres@127.0.0.1:5432", help="user@host:port")
    parser.add_argument("--database", default="spbridge_bench_events", help="name prefix")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    stop_on_sigterm()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
