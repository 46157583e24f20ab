"""Per-request dependencies: one database session per request that commits or rolls back."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import httpx
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.config import Settings
from app.db import ENQUEUED, Database, session_scope, utcnow
from app.fhir import parsing
from app.keys import KeyStore


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def installation_keys(request: Request) -> KeyStore:
    """The process's store of installation keys (app.keys)."""
    keys: KeyStore = request.app.state.keys
    return keys


def app_settings(request: Request) -> Settings:
    """The process's settings, as create_app set them."""
    settings: Settings = request.app.state.settings
    return settings


async def get_settings_from_app(request: Request) -> Settings:
    return app_settings(request)


async def read_raw_body(request: Request) -> bytes:
    """The body as sent, read before the caller is authenticated (declared ahead of require()):
    authentication begins the request's transaction, which must not stay open while the client
    is still sending (on SQLite it holds the database's write lock). The size limit comes from
    the app's settings, not from a dependency of its own: one fewer for FastAPI to solve on
    every write."""
    return await parsing.read_body(request, app_settings(request).max_body_bytes)


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    async for session in session_scope(get_database(request).write_sessions):
        yield session
        # The request's audit record goes in with its change, or neither is committed.
        route_status = getattr(request.scope.get("route"), "status_code", None)
        await trail.stage(request.scope, session, route_status or 200)
    # Committed: wake the in-process dispatcher if this request queued deliveries.
    if session.info.get(ENQUEUED):
        dispatcher = getattr(request.app.state, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.wake()


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async for session in session_scope(get_database(request).read_sessions):
        yield session


# scope="function": the commit finishes before the response is sent, so an acknowledged
# request is a durable one (the default scope would commit after the response went out).
WriteSession = Annotated[AsyncSession, Depends(write_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(read_session, scope="function")]
# Dependencies are coroutines, even those that only read the app's state: FastAPI runs a plain
# function in a worker thread, and a request waiting for a thread while it holds a transaction
# keeps its connection idle in transaction (under load, for as long as the pool is busy).
AppSettings = Annotated[Settings, Depends(get_settings_from_app)]
RawBody = Annotated[bytes, Depends(read_raw_body)]


async def get_http(request: Request) -> httpx.AsyncClient:
    http: httpx.AsyncClient = request.app.state.http
    return http


# The process's one outbound HTTP client (DESIGN §10), created in the lifespan.
OutboundHTTP = Annotated[httpx.AsyncClient, Depends(get_http)]


def get_now(request: Request) -> dt.datetime:
    """The time now, from the app's clock (tests set ``app.state.clock`` to control it)."""
    clock: Callable[[], dt.datetime] = getattr(request.app.state, "clock", utcnow)
    return clock()


async def _now(request: Request) -> dt.datetime:
    return get_now(request)


Now = Annotated[dt.datetime, Depends(_now)]
