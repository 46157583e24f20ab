"""The intake benchmark's floor: the least a FHIR intake endpoint could do.

One POST endpoint that reads the body, validates it with fhir.resources (R4B ServiceRequest),
writes one referral row and one outbox row in one transaction (BEGIN, two INSERTs, COMMIT: the
floor issue 19 defines) and answers 201. Same stack as the bridge (FastAPI, uvicorn with its
access log, SQLAlchemy async, one process), none of its rules. On PostgreSQL (asyncpg, no
pre-ping, as the bridge) the row is JSONB, and its pool keeps 20 connections open (the bridge's
default: 10, no overflow), so that the floor does not reconnect under load: it is the best this
stack does. On SQLite
(aiosqlite) the row is JSON text, with the bridge's settings (WAL, ``synchronous=NORMAL``, a busy
timeout, the write lock taken by ``BEGIN IMMEDIATE``), so that each is measured against a floor
on the same database.

    FLOOR_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/floor \
        python bench/floor_app.py --port 8001
    FLOOR_DATABASE_URL=sqlite+aiosqlite:///var/floor.db python bench/floor_app.py --port 8001

It creates its table at start-up: it is a bench, not the app.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/spbridge_bench_floor"
POOL_SIZE = 20  # more than the bridge's default pool (10, no overflow), all kept open

SQLITE_BUSY_MS = 3000  # the bridge's: its default pool timeout (SPBRIDGE_DATABASE_POOL_TIMEOUT)

_CREATE = {
    "postgresql": (
        text(
            "CREATE TABLE IF NOT EXISTS service_requests ("
            " id bigserial PRIMARY KEY,"
            " resource jsonb NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        ),
        text(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " id bigserial PRIMARY KEY,"
            " service_request_id bigint NOT NULL REFERENCES service_requests (id),"
            " created_at timestamptz NOT NULL DEFAULT now())"
        ),
    ),
    "sqlite": (
        text(
            "CREATE TABLE IF NOT EXISTS service_requests ("
            " id INTEGER PRIMARY KEY,"
            " resource TEXT NOT NULL,"
            " created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        ),
        text(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " id INTEGER PRIMARY KEY,"
            " service_request_id INTEGER NOT NULL REFERENCES service_requests (id),"
            " created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        ),
    ),
}
_INSERT = {
    "postgresql": text(
        "INSERT INTO service_requests (resource) VALUES (CAST(:resource AS jsonb)) RETURNING id"
    ),
    "sqlite": text("INSERT INTO service_requests (resource) VALUES (:resource) RETURNING id"),
}
_OUTBOX = text("INSERT INTO outbox (service_request_id) VALUES (:service_request_id)")


def _sqlite_as_the_bridge(engine: AsyncEngine) -> None:
    """The connection settings and write transactions of the bridge on SQLite (app/db.py)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is ours, not the driver's
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_app(database_url: str) -> FastAPI:
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        engine: AsyncEngine = create_async_engine(database_url, pool_size=POOL_SIZE, max_overflow=0)
        _sqlite_as_the_bridge(engine)
    else:
        engine = create_async_engine(database_url, pool_size=POOL_SIZE, max_overflow=0)
    create, insert = _CREATE[backend], _INSERT[backend]

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            for statement in create:
                await connection.execute(statement)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(title="intake floor", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/fhir/ServiceRequest", status_code=201)
    async def create_service_request(request: Request) -> Response:
        body = await request.body()
        try:
            ServiceRequest.model_validate_json(body)
        except (ValidationError, ValueError):
            return Response(b'{"resourceType":"OperationOutcome"}', status_code=400)
        async with engine.begin() as connection:
            row_id = (await connection.execute(insert, {"resource": body.decode()})).scalar_one()
            await connection.execute(_OUTBOX, {"service_request_id": row_id})
        return Response(
            orjson.dumps({"resourceType": "ServiceRequest", "id": str(row_id)}),
            status_code=201,
            media_type="application/fhir+json",
            headers={"Location": f"/fhir/ServiceRequest/{row_id}"},
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    database_url = os.environ.get("FLOOR_DATABASE_URL", DEFAULT_DATABASE_URL)
    # The same server settings `spbridge serve` uses (access log on, log level info).
    uvicorn.run(create_app(database_url), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
