"""Bearer API keys: who is calling, and whether their role allows the operation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clients.models import ApiClient
from app.clients.roles import PERMISSIONS, Operation, Role
from app.dependencies import read_session, write_session
from app.errors import Forbidden, Unauthorized

KEY_PREFIX = "spb_"
# The attribute on a require() dependency naming the operation it checks: app.clients.policy
# reads it from every route's dependencies, so the rule of a route is declared once, at the route.
_OPERATION_ATTRIBUTE = "required_operation"


@dataclass(frozen=True)
class Principal:
    client_id: str | None  # None for the bootstrap admin key
    name: str
    role: Role
    organisation: str | None  # None: an admin who sees every organisation
    default_service_id: str | None = None

    @property
    def sees_everything(self) -> bool:
        return self.role is Role.ADMIN and self.organisation is None


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


async def authenticate(request: Request, session: AsyncSession) -> Principal:
    token = _bearer(request)
    digest = hash_key(token)
    admin_hash: str | None = request.app.state.admin_key_hash
    if admin_hash is not None and hmac.compare_digest(digest, admin_hash):
        return Principal(client_id=None, name="bootstrap admin", role=Role.ADMIN, organisation=None)
    # The lookup is by the hash itself (an indexed equality): nothing secret-dependent to time.
    client = await session.scalar(select(ApiClient).where(ApiClient.key_hash == digest))
    if client is None or client.revoked_at is not None:
        raise Unauthorized(
            "The API key is not valid", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    return Principal(
        client_id=client.id,
        name=client.name,
        role=Role(client.role),
        organisation=client.organisation,
        default_service_id=client.default_service_id,
    )


def require(operation: Operation, *, writes: bool) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks the role table for ``operation``.

    It shares the request's session (``writes`` picks which), so a request costs one connection.
    """
    session_dependency = Depends(write_session if writes else read_session, scope="function")

    async def dependency(request: Request, session: AsyncSession = session_dependency) -> Principal:
        principal = await authenticate(request, session)
        if principal.role not in PERMISSIONS[operation]:
            raise Forbidden(f"The role '{principal.role}' may not do '{operation}'")
        request.state.principal = principal
        return principal

    setattr(dependency, _OPERATION_ATTRIBUTE, operation)
    return dependency


def required_operation(call: object) -> Operation | None:
    """The operation a dependency made by :func:`require` checks; None for any other callable."""
    operation = getattr(call, _OPERATION_ATTRIBUTE, None)
    return operation if isinstance(operation, Operation) else None
