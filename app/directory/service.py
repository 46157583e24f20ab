from __future__ import annotations

import uuid

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import registry
from adapters.base import AdapterKind
from app.delivery.models import Destination
from app.directory.models import SocialPrescribingService
from app.directory.schemas import ServiceCreate
from app.errors import BusinessRuleViolation, Conflict, Issue, NotFound


async def register_service(
    session: AsyncSession, request: ServiceCreate
) -> SocialPrescribingService:
    platform_adapters = registry.names(AdapterKind.PLATFORM)
    if request.adapter not in platform_adapters:
        raise BusinessRuleViolation(
            f"adapter must be one of: {', '.join(platform_adapters)}", expression="adapter"
        )
    adapter = registry.adapter_class(request.adapter)
    try:
        config = adapter.config_model.model_validate(request.adapter_config)
    except ValidationError as exc:
        issues = [
            Issue("value", f"{'.'.join(map(str, e['loc']))}: {e['msg']}", "adapter_config")
            for e in exc.errors(include_url=False)
        ]
        raise BusinessRuleViolation("adapter_config is not valid", issues=issues) from None
    if await session.get(SocialPrescribingService, request.id) is not None:
        raise Conflict(f"A service with id '{request.id}' already exists", expression="id")
    service = SocialPrescribingService(
        id=request.id,
        name=request.name,
        organisation=request.organisation,
        adapter=request.adapter,
        adapter_config=config.model_dump(mode="json"),
    )
    session.add(service)
    if adapter.delivers:
        session.add(
            Destination(
                id=str(uuid.uuid4()),
                kind=AdapterKind.PLATFORM.value,
                adapter=request.adapter,
                service_id=request.id,
                config=service.adapter_config,
            )
        )
    await session.flush()
    return service


async def list_services(session: AsyncSession) -> list[SocialPrescribingService]:
    return list(
        await session.scalars(
            select(SocialPrescribingService).order_by(SocialPrescribingService.id)
        )
    )


async def get_service(session: AsyncSession, service_id: str) -> SocialPrescribingService:
    service = await session.get(SocialPrescribingService, service_id)
    if service is None:
        raise NotFound("No such service")
    return service
