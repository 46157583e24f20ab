"""The intake benchmark's floor: the least a FHIR intake endpoint could do.

One POST endpoint that reads the body, validates it with fhir.resources (R4B ServiceRequest),
inserts it as one JSONB row and answers 201. Same stack as the bridge (FastAPI, uvicorn with its
access log, SQLAlchemy async, asyncpg, pre-ping, one process), none of its rules. Its pool holds
the bridge's most connections (10 + 10 overflow) as 20 kept open, so that the floor does not
reconnect under load: it is the best this stack does.

    FLOOR_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/floor \
        python bench/floor_app.py --port 8001

It creates its table at start-up: it is a bench, not the app.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/spbridge_bench_floor"
POOL_SIZE = 20  # the bridge's default pool (10) plus its overflow (10), all kept open

_CREATE = text(
    "CREATE TABLE IF NOT EXISTS service_requests ("
    " id bigserial PRIMARY KEY,"
    " resource jsonb NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)
_INSERT = text(
    "INSERT INTO service_requests (resource) VALUES (CAST(:resource AS jsonb)) RETURNING id"
)


def create_app(database_url: str) -> FastAPI:
    engine: AsyncEngine = create_async_engine(
        database_url, pool_size=POOL_SIZE, max_overflow=0, pool_pre_ping=True
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.execute(_CREATE)
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
            row_id = (await connection.execute(_INSERT, {"resource": body.decode()})).scalar_one()
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
