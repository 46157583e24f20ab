from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clients.auth import hash_key, new_api_key
from app.clients.models import ApiClient
from app.clients.schemas import ClientCreate
from app.directory.models import SocialPrescribingService
from app.errors import BusinessRuleViolation


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
