"""Bearer API keys and OAuth2 access tokens: who is calling, and whether their role (and the
token's scopes) allow the operation."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import caches
from app.caches import Remembered
from app.dependencies import get_now, installation_keys, read_session, write_session
from app.errors import Forbidden, Unauthorized
from app.keys import KeyPurpose
from app.security import oauth
from app.security.models import ApiClient
from app.security.roles import PERMISSIONS, SCOPE_OF, Operation, Role

KEY_PREFIX = "spb_"
# The attribute on a require() dependency naming the operation it checks: app.security.policy
# reads it from every route's dependencies, so the rule of a route is declared once, at the route.
_OPERATION_ATTRIBUTE = "required_operation"


@dataclass(frozen=True)
class Principal:
    client_id: str | None  # None for the bootstrap admin key
    name: str
    role: Role
    organisation: str | None  # None: an admin who sees every organisation
    default_service_id: str | None = None
    # The scopes of an OAuth2 access token; None for an API key (the role's full rights).
    scopes: frozenset[str] | None = None
    # Organisations (ODS codes) it may refer for besides its own (app.security.scope.may_refer_for).
    acts_for: frozenset[str] = frozenset()

    @property
    def sees_everything(self) -> bool:
        return self.role is Role.ADMIN and self.organisation is None


class PrincipalCache(Remembered[str, Principal]):
    """Who a key or a token's client is, remembered for ``ttl`` seconds: a request then needs no
    query to authenticate. A change to clients in this process (revoked, a new organisation to
    act for) takes effect at once: :func:`forget_on_commit` empties the cache when its
    transaction commits. A change by another process (a CLI command, another server) takes
    effect here as it commits on PostgreSQL (app.caches.CHANGES), else within ``ttl``. A key we do
    not know is never remembered."""


def forget_on_commit(session: AsyncSession) -> None:
    """Called by code that changes an API client: the cache of this process is emptied once the
    change commits (app.caches: the session carries the cache, whoever made it)."""
    caches.forget_on_commit(session, caches.PRINCIPALS)


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "Send an API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def _principal(client: ApiClient, scopes: frozenset[str] | None = None) -> Principal:
    """Who is calling: role and organisation always from the client's record."""
    return Principal(
        client_id=client.id,
        name=client.name,
        role=Role(client.role),
        organisation=client.organisation,
        default_service_id=client.default_service_id,
        scopes=scopes,
        acts_for=frozenset(client.acts_for or ()),
    )


async def _by_access_token(
    request: Request, session: AsyncSession, token: str, cache: PrincipalCache
) -> Principal:
    """An access token from POST /oauth2/token: its signature, audience and expiry checked, then
    its client loaded (role and organisation come from the database, never from the token) and
    refused if revoked, so a revocation takes effect at once."""
    key = await installation_keys(request).get(session, KeyPurpose.ACCESS_TOKEN)
    verified = oauth.verify_access_token(key, token, get_now(request)) if key else None
    if verified is None:
        raise Unauthorized("The access token is not valid", headers=_INVALID_TOKEN)
    cache_key = f"client:{verified.client_id}"
    principal = cache.get(cache_key)
    if principal is None:
        generation = cache.generation
        client = await session.get(ApiClient, verified.client_id)
        if client is None or client.revoked_at is not None:
            raise Unauthorized("The access token is not valid", headers=_INVALID_TOKEN)
        principal = _principal(client)
        cache.put(cache_key, principal, generation)
    return dataclasses.replace(principal, scopes=verified.scopes)


def _cache(request: Request) -> PrincipalCache:
    cache: PrincipalCache = request.app.state.principals
    return cache


async def authenticate(request: Request, session: AsyncSession) -> Principal:
    token = _bearer(request)
    digest = hash_key(token)
    cache = _cache(request)
    admin_hash: str | None = request.app.state.admin_key_hash
    if admin_hash is not None and hmac.compare_digest(digest, admin_hash):
        return Principal(client_id=None, name="bootstrap admin", role=Role.ADMIN, organisation=None)
    # Our API keys never hold a dot; a JWT has three dot-separated parts (an OAuth2 access token).
    if oauth.looks_like_jwt(token):
        return await _by_access_token(request, session, token, cache)
    # The lookup is by the hash itself (a dict, or an indexed equality): nothing secret-dependent
    # to time.
    principal = cache.get(digest)
    if principal is None:
        generation = cache.generation
        client = await session.scalar(select(ApiClient).where(ApiClient.key_hash == digest))
        if client is None or client.revoked_at is not None:
            raise Unauthorized("The API key is not valid", headers=_INVALID_TOKEN)
        principal = _principal(client)
        cache.put(digest, principal, generation)
    return principal


def require(operation: Operation, *, writes: bool) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks the role table for ``operation``.

    It shares the request's session (``writes`` picks which), so a request costs one connection.
    """
    session_dependency = Depends(write_session if writes else read_session, scope="function")

    async def dependency(request: Request, session: AsyncSession = session_dependency) -> Principal:
        principal = await authenticate(request, session)
        if principal.role not in PERMISSIONS[operation]:
            raise Forbidden(f"The role '{principal.role}' may not do '{operation}'")
        if principal.scopes is not None and SCOPE_OF[operation] not in principal.scopes:
            raise Forbidden(
                f"The access token's scope does not include '{SCOPE_OF[operation]}'",
                headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
            )
        request.state.principal = principal
        return principal

    setattr(dependency, _OPERATION_ATTRIBUTE, operation)
    return dependency


def required_operation(call: object) -> Operation | None:
    """The operation a dependency made by :func:`require` checks; None for any other callable."""
    operation = getattr(call, _OPERATION_ATTRIBUTE, None)
    return operation if isinstance(operation, Operation) else None
