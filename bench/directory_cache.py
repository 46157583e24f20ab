"""What the directory caches save an intake: the same app in one process, blocks of referrals
with the caches on (SPBRIDGE_DIRECTORY_CACHE_SECONDS 5) and off (0), alternated so both see
the same machine. Prints statements per referral (counted with an engine listener; asyncpg's
BEGIN and COMMIT are not statements here), CPU (this process: client and server together) and
wall time per referral, medians over the blocks. The referrals go through an in-process ASGI
client, so the figures are for comparing the two, not against bench/intake.py's.

    .venv/bin/python bench/directory_cache.py [--backend postgresql|sqlite] [--per-block 150]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.caches import DESTINATIONS, SERVICES  # noqa: E402
from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from app.migrate import upgrade  # noqa: E402

EXAMPLE = ROOT / "fhir" / "examples" / "ServiceRequest-social-prescribing-referral.json"
ADMIN_KEY = "spb_bench_directory_cache_admin_key_0123456789"
DATABASE = "spbridge_bench_caches"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


async def _database(backend: str, pg: str, folder: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    connection = await asyncpg.connect(f"postgresql://{pg}/postgres")
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()
    return f"postgresql+asyncpg://{pg}/{DATABASE}"


async def _drop(backend: str, pg: str) -> None:
    if backend == "postgresql":
        connection = await asyncpg.connect(f"postgresql://{pg}/postgres")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        finally:
            await connection.close()


async def run(backend: str, pg: str, per_block: int, blocks: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = await _database(backend, pg, Path(folder))
        try:
            await asyncio.to_thread(upgrade, url)
            await _measure(url, backend, per_block, blocks)
        finally:
            await _drop(backend, pg)


async def _measure(url: str, backend: str, per_block: int, blocks: int) -> None:
    settings = Settings(
        database_url=url,
        admin_api_key=ADMIN_KEY,
        run_dispatcher=False,
        public_base_url="http://testserver",
        rate_limit_per_minute=0,
        rate_limit_anonymous_per_minute=0,
    )
    app = create_app(settings)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            service = {"id": "life-rooms", "name": "LR", "organisation": "LR001"}
            made = await http.post(
                "/api/v1/services", json={**service, "adapter": "local"}, headers=admin
            )
            assert made.status_code == 201, made.text
            client = {"name": "rio", "role": "clinical-system", "organisation": "RW4"}
            made = await http.post(
                "/api/v1/clients", json={**client, "default_service": "life-rooms"}, headers=admin
            )
            assert made.status_code == 201, made.text
            referrer = {"Authorization": f"Bearer {made.json()['api_key']}", **FHIR_JSON}
            for n in range(3):  # a few subscriptions: destinations for the query to find
                hook = {"url": f"https://93.184.216.{n + 1}/hooks"}
                made = await http.post("/api/v1/subscriptions", json=hook, headers=admin)
                assert made.status_code == 201, made.text
            example = orjson.loads(EXAMPLE.read_bytes())
            example["performer"] = [{"reference": "HealthcareService/life-rooms"}]
            numbers = itertools.count()

            async def refer() -> None:
                resource = copy.deepcopy(example)
                resource["identifier"][0]["value"] = f"bench-{next(numbers)}"
                answer = await http.post(
                    "/fhir/ServiceRequest", content=orjson.dumps(resource), headers=referrer
                )
                assert answer.status_code == 201, answer.text

            sent = [0]

            def count(*_args: Any) -> None:
                sent[0] += 1

            event.listen(app.state.database.engine.sync_engine, "before_cursor_execute", count)
            for _ in range(20):
                await refer()
            results: dict[float, list[tuple[float, float, float]]] = {5.0: [], 0.0: []}
            for block in range(blocks):
                for ttl in (5.0, 0.0) if block % 2 == 0 else (0.0, 5.0):
                    for name in (SERVICES, DESTINATIONS):
                        app.state.database.caches[name].ttl = ttl
                        app.state.database.caches[name].forget_all()
                    await refer()  # warms the cache when it is on
                    sent[0] = 0
                    cpu, wall = time.process_time(), time.perf_counter()
                    for _ in range(per_block):
                        await refer()
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                    results[ttl].append(
                        (cpu / per_block * 1000, wall / per_block * 1000, sent[0] / per_block)
                    )
    for ttl, rows in results.items():
        print(
            f"{backend}, directory cache {ttl:g} s: {rows[0][2]:.1f} statements per referral, "
            f"CPU {statistics.median(r[0] for r in rows):.2f} ms, "
            f"wall {statistics.median(r[1] for r in rows):.2f} ms "
            f"(medians of {len(rows)} blocks of {per_block})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--pg", default="postgres@127.0.0.1:5432")
    parser.add_argument("--per-block", type=int, default=150)
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    asyncio.run(run(args.backend, args.pg, args.per_block, args.blocks))


if __name__ == "__main__":
    main()
