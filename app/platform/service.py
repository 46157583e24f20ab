"""Platform events coming back: verified and translated by the adapter, applied here through the
one domain function (DESIGN §3), each platform message once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import registry
from adapters.base import InboundEvent, InboundMessage, PlatformAdapter
from app.audit import trail
from app.cases import service as cases
from app.cases.models import Case, Referral
from app.directory.models import SocialPrescribingService
from app.errors import BusinessRuleViolation, NotFound
from app.outbox.models import Destination, DestinationKind
from app.platform.models import PlatformMessage

log = logging.getLogger("spbridge.platform")


@dataclass(frozen=True)
class Applied:
    duplicate: bool
    events: int


async def platform_adapter(
    session: AsyncSession, service: SocialPrescribingService
) -> PlatformAdapter:
    """The service's platform adapter, configured from the service's platform destination, the
    configuration's one home (a service whose adapter holds no cases has neither)."""
    config = await session.scalar(
        select(Destination.config).where(
            Destination.kind == DestinationKind.PLATFORM, Destination.service_id == service.id
        )
    )
    try:
        cls = registry.adapter_class(service.adapter)
        adapter = cls(cls.config_model.model_validate(config or {}))
    except (registry.UnknownAdapter, ValueError):
        raise NotFound("No such platform endpoint") from None
    if not isinstance(adapter, PlatformAdapter):
        raise NotFound("No such platform endpoint")
    return adapter


async def _case_for(
    session: AsyncSession, service: SocialPrescribingService, event: InboundEvent, index: int
) -> Case:
    query = select(Case).where(Case.service_id == service.id)
    if event.referral_id:
        query = query.where(Case.referral_id == event.referral_id)
    elif event.external_reference:
        query = query.where(Case.external_reference == event.external_reference)
    else:
        raise BusinessRuleViolation(
            f"events[{index}]: names no case", expression=f"events[{index}]"
        )
    # A platform reaches only the cases of the service it serves.
    case = await session.scalar(query.with_for_update())
    if case is None:
        raise BusinessRuleViolation(
            f"events[{index}]: no such case at this service", expression=f"events[{index}]"
        )
    return case


async def apply_message(
    session: AsyncSession,
    service: SocialPrescribingService,
    message: InboundMessage,
    *,
    channel: str,
    request_id: str | None = None,
) -> Applied:
    """Apply every event of ``message`` or none (the caller's transaction); a repeat is a no-op."""
    seen = await session.scalar(
        select(PlatformMessage.id).where(
            PlatformMessage.service_id == service.id,
            PlatformMessage.message_id == message.message_id,
        )
    )
    if seen is not None:
        return Applied(duplicate=True, events=0)
    try:
        async with session.begin_nested():
            session.add(
                PlatformMessage(
                    service_id=service.id,
                    message_id=message.message_id,
                    channel=channel,
                    event_count=len(message.events),
                )
            )
    except IntegrityError:
        return Applied(duplicate=True, events=0)  # the same message, concurrently
    for index, event in enumerate(message.events):
        case = await _case_for(session, service, event, index)
        referral = await session.get(Referral, case.referral_id)
        assert referral is not None  # a case always has its referral (foreign key)
        trail.note([referral])
        if event.external_reference and case.external_reference is None:
            case.external_reference = event.external_reference
        await cases.apply_event(
            session,
            case,
            referral,
            service,
            cases.NewEvent(
                type=event.type,
                source="platform",
                occurred_at=event.occurred_at,
                data=dict(event.data),
                idempotency_key=event.idempotency_key,
            ),
            cases.EventContext(
                client_id=None, request_id=request_id, correlation_id=referral.correlation_id
            ),
        )
    return Applied(duplicate=False, events=len(message.events))
