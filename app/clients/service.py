from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clients.schemas import ClientCreate
from app.directory.models import SocialPrescribingService
from app.errors import BusinessRuleViolation, Conflict, Forbidden, NotFound
from app.security import oauth, scope
from app.security.auth import Principal, forget_on_commit, hash_key, new_api_key
from app.security.models import ApiClient

_NOT_FOUND = "No such client"


async def create_client(
    session: AsyncSession, principal: Principal, request: ClientCreate
) -> tuple[ApiClient, str]:
    """A new client of the caller's organisation (403 for another) and its API key; the key is
    returned here once and only its hash is kept. The default service may be any registered
    service: it only says where the client's referrals go when they name no performer, which a
    clinical system may name freely (services are directory data)."""
    scope.require_own(principal, request.organisation, expression="organisation")
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


async def list_clients(session: AsyncSession, principal: Principal) -> list[ApiClient]:
    """The clients of the caller's organisation (the installation's admin: every client)."""
    query = select(ApiClient).order_by(ApiClient.created_at)
    condition = scope.owned_by(principal, ApiClient.organisation)
    return list(await session.scalars(scope.restrict(query, condition)))


async def _own(session: AsyncSession, principal: Principal, client_id: str) -> ApiClient:
    """The client, locked for a change, if it is of the caller's organisation (404 otherwise)."""
    client = await session.get(ApiClient, client_id, with_for_update=True)
    if client is None:
        raise NotFound(_NOT_FOUND)
    scope.require_found(principal, client.organisation, _NOT_FOUND)
    return client


async def _held(session: AsyncSession, principal: Principal, client_id: str) -> ApiClient:
    client = await _own(session, principal, client_id)
    if client.revoked_at is not None:
        raise Conflict("The client is revoked: make a new one")
    return client


async def rotate_secret(
    session: AsyncSession,
    principal: Principal,
    client_id: str,
    overlap_seconds: int,
    now: dt.datetime,
) -> tuple[ApiClient, str]:
    """A new client secret, returned once (only its hash is kept); the one it replaces keeps
    working for ``overlap_seconds``."""
    client = await _held(session, principal, client_id)
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
    principal: Principal,
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
    client = await _held(session, principal, client_id)
    if client.public_key_jwk is not None and overlap_seconds > 0:
        client.previous_public_key_jwk = client.public_key_jwk
        client.previous_public_key_expires_at = now + dt.timedelta(seconds=overlap_seconds)
    else:
        client.previous_public_key_jwk = None
        client.previous_public_key_expires_at = None
    client.public_key_jwk = public
    await session.flush()
    return client


async def revoke(
    session: AsyncSession, principal: Principal, client_id: str, now: dt.datetime
) -> ApiClient:
    """Revoke a client: its API key, secrets, keys and access tokens stop working at once in
    this process (its cache of principals is emptied on commit), and in others within
    ``SPBRIDGE_PRINCIPAL_CACHE_SECONDS``. Revoking twice keeps the first time."""
    client = await _own(session, principal, client_id)
    if client.revoked_at is None:
        client.revoked_at = now
        await session.flush()
        forget_on_commit(session)
    return client


async def set_acts_for(
    session: AsyncSession, principal: Principal, client_id: str, organisations: list[str]
) -> ApiClient:
    """Name the organisations a client may refer for besides its own. The installation's admin
    only: an organisation's admin cannot let a client speak for another organisation."""
    client = await _held(session, principal, client_id)
    if not principal.sees_everything:
        raise Forbidden(
            "Only the installation's admin names the organisations a client refers for",
            expression="organisations",
        )
    client.acts_for = sorted(set(organisations) - {client.organisation})
    await session.flush()
    forget_on_commit(session)  # a principal remembers what it may refer for
    return client
