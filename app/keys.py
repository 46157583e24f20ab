"""The installation's own keys: one store for every purpose (access tokens, journey links,
patient pseudonyms).

Each key is one row of ``signing_keys``, made by the migrations so every process of one
installation shares it. Should a row be gone, the first process to need it makes it in the
caller's transaction (``ON CONFLICT DO NOTHING``: another process may win the race, and its key
is then read), which is never committed or rolled back here. Reading or making a key never
flushes the caller's pending rows: a key needs none of them, and a writer that builds its rows
before writing them in one statement (intake, app.referrals.service) must not have them written
early, in the wrong order. A process reads each key once.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from enum import StrEnum
from typing import Any

from sqlalchemy import String, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

log = logging.getLogger("spbridge.keys")


class KeyPurpose(StrEnum):
    # signs OAuth2 access tokens (app.security.oauth); a key's name, not a key
    ACCESS_TOKEN = "access-token"  # noqa: S105
    JOURNEY_LINK = "journey-link"  # signs journey-page links (app.journey)
    PSEUDONYM = "pseudonym"  # keys patient pseudonyms (retention, audit trail)


class SigningKey(Base):
    """A secret of the installation, by purpose."""

    __tablename__ = "signing_keys"

    purpose: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


async def _read(session: AsyncSession, purpose: KeyPurpose) -> str | None:
    secret: str | None = await session.scalar(
        select(SigningKey.secret).where(SigningKey.purpose == purpose.value)
    )
    return secret


async def get_or_create_key(session: AsyncSession, purpose: KeyPurpose) -> bytes:
    """The installation's key for ``purpose``, made if its row is missing.

    A new pseudonym key means pseudonyms made before no longer match; a new token or link key
    means tokens and links issued before stop working: hence the warning."""
    with session.no_autoflush:
        held = await _read(session, purpose)
        if held is None:
            postgres = session.get_bind().dialect.name == "postgresql"
            insert: Any = pg_insert if postgres else sqlite_insert
            made = await session.scalar(
                insert(SigningKey.__table__)
                .values(
                    purpose=purpose.value, secret=secrets.token_urlsafe(48), created_at=utcnow()
                )
                .on_conflict_do_nothing()
                .returning(SigningKey.__table__.c.secret)
            )
            if made is not None:
                log.warning(
                    "an installation key was missing; a new one was made: %s", purpose.value
                )
            held = made or await _read(session, purpose)  # else another process made it first
            if held is None:
                raise RuntimeError(f"the installation key {purpose.value} could not be made")
    return held.encode()


class KeyStore:
    """The keys of one process (one app), each read from the database once."""

    def __init__(self) -> None:
        self._keys: dict[KeyPurpose, bytes] = {}

    async def get(self, session: AsyncSession, purpose: KeyPurpose) -> bytes:
        key = self._keys.get(purpose)
        if key is None:
            key = await get_or_create_key(session, purpose)
            self._keys[purpose] = key
        return key
