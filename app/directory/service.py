from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import Any

import httpx
from pydantic import ValidationError
from sqlalchemy import func, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.util import identity_key

from adapters import registry
from adapters.base import Adapter, AdapterConfig, AdapterError, AdapterKind, ClinicalAdapter
from app import caches
from app.config import Settings
from app.db import join_as_rows, new_row, utcnow
from app.directory.models import SocialPrescribingService
from app.directory.schemas import ClinicalRouteIn, ServiceCreate
from app.errors import (
    BusinessRuleViolation,
    Conflict,
    Issue,
    NotFound,
    validation_location,
    validation_message,
)
from app.outbound import check_outbound_url
from app.outbox.models import Destination, DestinationKind
from app.security import scope
from app.security.auth import Principal
from app.security.models import ApiClient

# An organisation known only as the caller's own has no date of its own in the bridge.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


async def _adapter_config(
    kind: AdapterKind, name: str, raw: dict[str, Any], settings: Settings
) -> tuple[type[Adapter], AdapterConfig]:
    """The adapter and its validated config; every URL it would call meets the URL policy."""
    allowed = registry.names(kind)
    if name not in allowed:
        raise BusinessRuleViolation(
            f"adapter must be one of: {', '.join(allowed)}", expression="adapter"
        )
    adapter = registry.adapter_class(name)
    try:
        config = adapter.config_model.model_validate(raw)
    except ValidationError as exc:
        # Pydantic's msg names the rule broken, not the value (the config may hold secrets).
        issues = [
            Issue(
                "value",
                f"{'.'.join(map(str, ('adapter_config', *validation_location(e))))}: "
                f"{validation_message(e)}",
                "adapter_config",
            )
            for e in exc.errors(include_url=False)
        ]
        raise BusinessRuleViolation("adapter_config is not valid", issues=issues) from None
    for url in adapter(config).outbound_urls():
        await check_outbound_url(url, settings, field="adapter_config")
    return adapter, config


async def register_service(
    session: AsyncSession, principal: Principal, request: ServiceCreate, settings: Settings
) -> SocialPrescribingService:
    """A new service of the caller's organisation (403 for another's)."""
    scope.require_own(principal, request.organisation, expression="organisation")
    adapter, config = await _adapter_config(
        AdapterKind.PLATFORM, request.adapter, request.adapter_config, settings
    )
    if await session.get(SocialPrescribingService, request.id) is not None:
        raise Conflict("A service with this id already exists", expression="id")
    service = SocialPrescribingService(
        id=request.id,
        name=request.name,
        organisation=request.organisation,
        adapter=request.adapter,
        delivers=adapter.delivers,
        first_contact_target_days=request.first_contact_target_days,
        support_window_days=request.support_window_days,
    )
    session.add(service)
    # No ORM relationship orders these inserts: the service row must exist before its route.
    await session.flush()
    if adapter.delivers:
        # The adapter's configuration lives here only: the dispatcher, inbound webhooks and
        # reconciliation all read it from the service's platform destination.
        now = utcnow()
        session.add(
            Destination(
                id=str(uuid.uuid4()),
                kind=DestinationKind.PLATFORM,
                adapter=request.adapter,
                service_id=request.id,
                config=config.model_dump(mode="json"),
                event_types=sorted(adapter.event_types),
                consecutive_failures=0,
                created_at=now,
                updated_at=now,
            )
        )
    await session.flush()
    return service


# Services are directory data, read by every client whatever its organisation (a clinical system
# names the service it refers to); only their owner's admin registers them. What they hold that
# is not for everyone (the adapter's settings, which may be credentials) is never shown.
async def list_services(session: AsyncSession) -> list[SocialPrescribingService]:
    return list(
        await session.scalars(
            select(SocialPrescribingService).order_by(SocialPrescribingService.id)
        )
    )


# The columns a remembered service holds: all of them. Its poll columns may be as old as the
# cache (the reconciliation, their one reader, reads the row itself).
_SERVICE_COLUMNS = tuple(a.key for a in inspect(SocialPrescribingService).column_attrs)


def _copy(value: Any) -> Any:
    """A JSON column's value is mutable: each holder gets its own."""
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


async def service_by_id(session: AsyncSession, service_id: str) -> SocialPrescribingService | None:
    """The service, as ``session.get`` gives it, but with no query while the process remembers
    it (app.caches, ``SERVICES``; a change to a service empties it when it commits).

    What is remembered is a tuple of the columns' values; each session gets its own instance,
    attached to it as if loaded, so nothing is shared between sessions but immutable values."""
    present = session.identity_map.get(identity_key(SocialPrescribingService, service_id))
    if isinstance(present, SocialPrescribingService):
        return present
    cache = caches.cache_of(session, caches.SERVICES)
    if cache is None:
        return await session.get(SocialPrescribingService, service_id)
    values: tuple[Any, ...] | None = cache.get(service_id)
    if values is None:
        generation = cache.generation
        service = await session.get(SocialPrescribingService, service_id)
        if service is not None:
            cache.put(
                service_id,
                tuple(_copy(getattr(service, key)) for key in _SERVICE_COLUMNS),
                generation,
            )
        return service
    # Made as the loader makes an instance (its state filled in, no attribute events: a
    # quarter of the cost of the constructor's), then attached as if loaded: nothing to flush.
    service = new_row(
        SocialPrescribingService,
        **{key: _copy(value) for key, value in zip(_SERVICE_COLUMNS, values, strict=True)},
    )
    join_as_rows(session, [service])
    return service


async def get_service(session: AsyncSession, service_id: str) -> SocialPrescribingService:
    service = await session.get(SocialPrescribingService, service_id)
    if service is None:
        raise NotFound("No such service")
    return service


# --- clinical routes: where a referring organisation's updates go back ------------------------


async def _route(session: AsyncSession, organisation: str) -> Destination | None:
    return await session.scalar(
        select(Destination)
        .where(
            Destination.kind == DestinationKind.CLINICAL, Destination.organisation == organisation
        )
        .with_for_update()
    )


async def _discovered(
    adapter: type[Adapter], config: AdapterConfig, http: httpx.AsyncClient
) -> AdapterConfig:
    """The config with what the receiver says it supports (a FHIR server's CapabilityStatement),
    read before any row is locked; an unreachable receiver is read again at the first send."""
    instance = adapter(config)
    if not isinstance(instance, ClinicalAdapter):
        return config
    try:
        learned = await instance.discover(http)
    except AdapterError:
        return config
    return learned if learned is not None else config


async def refresh_clinical_route(
    session: AsyncSession, principal: Principal, organisation: str, http: httpx.AsyncClient
) -> Destination:
    """Read the receiver's capabilities again (the route's adapter and settings otherwise kept)."""
    route = await get_clinical_route(session, principal, organisation)
    adapter = registry.adapter_class(route.adapter)
    config = adapter.config_model.model_validate(route.config)
    instance = adapter(config)
    if isinstance(instance, ClinicalAdapter):
        try:
            learned = await instance.discover(http)
        except AdapterError:
            learned = None  # the adapter says nothing more than it did
        if learned is not None:
            route.config = learned.model_dump(mode="json")
            route.updated_at = utcnow()
            await session.flush()
    return route


async def put_clinical_route(
    session: AsyncSession,
    principal: Principal,
    organisation: str,
    request: ClinicalRouteIn,
    settings: Settings,
    http: httpx.AsyncClient,
) -> Destination:
    """Set the caller's organisation's route (403 for another's, whether it has one or not)."""
    scope.require_own(principal, organisation, expression="organisation")
    adapter, config = await _adapter_config(
        AdapterKind.CLINICAL, request.adapter, request.adapter_config, settings
    )
    config = await _discovered(adapter, config, http)
    now = utcnow()
    route = await _route(session, organisation)
    if route is None:
        route = Destination(
            id=str(uuid.uuid4()),
            kind=DestinationKind.CLINICAL,
            organisation=organisation,
            consecutive_failures=0,
            event_types=[],
            created_at=now,
        )
        session.add(route)
    route.adapter = request.adapter
    # The events its adapter is sent (empty: every event), as a service's platform's are.
    route.event_types = sorted(adapter.event_types)
    route.config = config.model_dump(mode="json")
    route.active = request.active
    route.updated_at = now
    await session.flush()
    return route


async def list_clinical_routes(session: AsyncSession, principal: Principal) -> list[Destination]:
    """The caller's organisation's route (the installation's admin: every route)."""
    query = select(Destination).where(Destination.kind == DestinationKind.CLINICAL)
    query = scope.restrict(query, scope.owned_by(principal, Destination.organisation))
    return list(await session.scalars(query.order_by(Destination.organisation)))


_NO_ROUTE = "No clinical route for this organisation"


async def get_clinical_route(
    session: AsyncSession, principal: Principal, organisation: str
) -> Destination:
    scope.require_found(principal, organisation, _NO_ROUTE)
    route = await session.scalar(
        select(Destination).where(
            Destination.kind == DestinationKind.CLINICAL, Destination.organisation == organisation
        )
    )
    if route is None:
        raise NotFound(_NO_ROUTE)
    return route


# --- the directory as FHIR: what references to a service and its organisation resolve to ---------


async def read_organisation(
    session: AsyncSession, principal: Principal, ods_code: str
) -> tuple[str, dt.datetime]:
    """An organisation the bridge knows (one that runs a registered service or has an API
    client: ODS codes are public directory data) and since when: (its ODS code, the time).
    Any other is unknown (404)."""
    first = await session.scalar(
        select(func.min(SocialPrescribingService.created_at)).where(
            SocialPrescribingService.organisation == ods_code
        )
    )
    if first is None:
        first = await session.scalar(
            select(func.min(ApiClient.created_at)).where(ApiClient.organisation == ods_code)
        )
    if first is not None:
        return ods_code, first
    if scope.owns(principal, ods_code) and not principal.sees_everything:
        return ods_code, EPOCH
    raise NotFound("No such Organization is known here")
