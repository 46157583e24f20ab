from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clients.schemas import ClientCreate
from app.directory.models import SocialPrescribingService
from app.errors import BusinessRuleViolation, Conflict, NotFound
from app.security import oauth
from app.security.auth import hash_key, new_api_key
from app.security.models import ApiClient


async def create_client(session: AsyncSession, request: ClientCreate) -> tuple[ApiClient, str]:
    """A new client and its API key; the key is returned here once and only its hash is kept."""
    if (
        request.default_service is not None
        and await session.get(SocialPrescribingService, request.default_service) is None
    ):
        raise BusinessRuleViolation(
            "default_service names no registered service", expression="default_service"
        )
    key = new_api_key()
    client = ApiClient(
        id=str(uuid.uuid4()),
        name=request.name,
        role=request.role.value,
        organisation=request.organisation,
        default_service_id=request.default_service,
        key_hash=hash_key(key),
    )
    session.add(client)
    await session.flush()
    return client, key


async def list_clients(session: AsyncSession) -> list[ApiClient]:
    return list(await session.scalars(select(ApiClient).order_by(ApiClient.created_at)))


async def _held(session: AsyncSession, client_id: str) -> ApiClient:
    client = await session.get(ApiClient, client_id, with_for_update=True)
    if client is None:
        raise NotFound("No such client")
    if client.revoked_at is not None:
        raise Conflict("The client is revoked: make a new one")
    return client


async def rotate_secret(
    session: AsyncSession, client_id: str, overlap_seconds: int, now: dt.datetime
) -> tuple[ApiClient, str]:
    """A new client secret, returned once (only its hash is kept); the one it replaces keeps
    working for ``overlap_seconds``."""
    client = await _held(session, client_id)
    secret = oauth.new_client_secret()
    if client.secret_hash is not None and overlap_seconds > 0:
        client.previous_secret_hash = client.secret_hash
        client.previous_secret_expires_at = now + dt.timedelta(seconds=overlap_seconds)
    else:
        client.previous_secret_hash = None
        client.previous_secret_expires_at = None
    client.secret_hash = oauth.hash_secret(secret)
    await session.flush()
    return client, secret


async def register_public_key(
    session: AsyncSession,
    client_id: str,
    jwk: dict[str, Any],
    overlap_seconds: int,
    now: dt.datetime,
) -> ApiClient:
    """Register (or rotate) the client's public key; the one it replaces is still accepted for
    ``overlap_seconds``."""
    try:
        public = oauth.public_jwk(jwk)
    except oauth.JwkRefused as refused:
        raise BusinessRuleViolation(f"jwk: {refused}", expression="jwk") from None
    client = await _held(session, client_id)
    if client.public_key_jwk is not None and overlap_seconds > 0:
        client.previous_public_key_jwk = client.public_key_jwk
        client.previous_public_key_expires_at = now + dt.timedelta(seconds=overlap_seconds)
    else:
        client.previous_public_key_jwk = None
        client.previous_public_key_expires_at = None
    client.public_key_jwk = public
    await session.flush()
    return client


async def revoke(session: AsyncSession, client_id: str, now: dt.datetime) -> ApiClient:
    """Revoke a client: its API key, secrets, keys and access tokens stop working at once
    (every request loads the client again). Revoking twice keeps the first time."""
    client = await session.get(ApiClient, client_id, with_for_update=True)
    if client is None:
        raise NotFound("No such client")
    if client.revoked_at is None:
        client.revoked_at = now
        await session.flush()
    return client
