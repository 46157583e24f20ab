"""Per-request dependencies: one database session per request that commits or rolls back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import Database, session_scope


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_settings_from_app(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    async for session in session_scope(get_database(request).write_sessions):
        yield session


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async for session in session_scope(get_database(request).read_sessions):
        yield session


# scope="function": the commit finishes before the response is sent, so an acknowledged
# request is a durable one (the default scope would commit after the response went out).
WriteSession = Annotated[AsyncSession, Depends(write_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(read_session, scope="function")]
AppSettings = Annotated[Settings, Depends(get_settings_from_app)]
