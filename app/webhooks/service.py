"""Webhook subscriptions: destinations of kind ``webhook`` owned by a client's organisation."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import httpx
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.base import AdapterError
from app.cases.events import EVENT_TYPES
from app.config import Settings
from app.db import utcnow
from app.delivery import signing
from app.directory.models import SocialPrescribingService
from app.errors import BusinessRuleViolation, NotFound
from app.outbound import check_outbound_url
from app.outbox import payloads
from app.outbox.models import Delivery, Destination, DestinationKind
from app.security import scope
from app.security.auth import Principal
from app.webhooks.schemas import PingResult, SubscriptionCreate, SubscriptionUpdate


def _check_events(events: list[str], principal: Principal) -> list[str]:
    known = EVENT_TYPES | (payloads.OPERATIONAL_EVENTS if principal.sees_everything else set())
    unknown = [index for index, event in enumerate(events) if event not in known]
    if unknown:
        # Located by position: the unknown names are the client's (docs/SECURITY.md T7).
        raise BusinessRuleViolation(
            f"events[{unknown[0]}] is not a known event type; known: {', '.join(sorted(known))}",
            expression=f"events[{unknown[0]}]",
        )
    return sorted(set(events))


async def _check_service(session: AsyncSession, service_id: str | None) -> None:
    if service_id is not None and await session.get(SocialPrescribingService, service_id) is None:
        raise BusinessRuleViolation("service: no such service", expression="service")


async def create_subscription(
    session: AsyncSession, principal: Principal, request: SubscriptionCreate, settings: Settings
) -> tuple[Destination, str]:
    await check_outbound_url(request.url, settings)
    events = _check_events(request.events, principal)
    await _check_service(session, request.service)
    secret = signing.new_secret()
    now = utcnow()
    subscription = Destination(
        id=str(uuid.uuid4()),
        kind=DestinationKind.WEBHOOK,
        adapter="webhook",
        service_id=request.service,
        # It sees what its owner may see: an admin without an organisation sees everything.
        organisation=scope.acting_for(principal),
        config={},
        event_types=events,
        active=True,
        url=request.url,
        description=request.description,
        owner_client_id=principal.client_id,
        secret=secret,
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(subscription)
    await session.flush()
    return subscription, secret


def _visible(principal: Principal) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [
        Destination.kind == DestinationKind.WEBHOOK,
        Destination.deleted_at.is_(None),
    ]
    owned = scope.owned_by(principal, Destination.organisation)
    if owned is not None:
        conditions.append(owned)
    return conditions


async def list_subscriptions(session: AsyncSession, principal: Principal) -> list[Destination]:
    rows = await session.scalars(
        select(Destination).where(*_visible(principal)).order_by(Destination.created_at)
    )
    return list(rows)


async def get_subscription(
    session: AsyncSession, principal: Principal, subscription_id: str, *, lock: bool = False
) -> Destination:
    query = select(Destination).where(Destination.id == subscription_id, *_visible(principal))
    if lock:
        query = query.with_for_update()
    subscription = await session.scalar(query)
    if subscription is None:
        raise NotFound("No such subscription")
    return subscription


async def update_subscription(
    session: AsyncSession,
    principal: Principal,
    subscription_id: str,
    request: SubscriptionUpdate,
    settings: Settings,
) -> Destination:
    subscription = await get_subscription(session, principal, subscription_id, lock=True)
    changes = request.model_dump(exclude_unset=True)
    if changes.get("url") is not None:
        await check_outbound_url(changes["url"], settings)
        subscription.url = changes["url"]
    if changes.get("events") is not None:
        subscription.event_types = _check_events(changes["events"], principal)
    if "service" in changes:
        await _check_service(session, changes["service"])
        subscription.service_id = changes["service"]
    if "description" in changes:
        subscription.description = changes["description"]
    if changes.get("active") is not None:
        subscription.active = changes["active"]
        if subscription.active:
            # Re-enabled: its failure history no longer counts against it.
            subscription.disabled_reason = None
            subscription.failing_since = None
            subscription.consecutive_failures = 0
            subscription.probe_at = None
        else:
            subscription.disabled_reason = "paused"
    subscription.updated_at = utcnow()
    return subscription


async def delete_subscription(
    session: AsyncSession, principal: Principal, subscription_id: str
) -> None:
    """Soft delete: its delivery history stays for the admins; nothing more is sent."""
    subscription = await get_subscription(session, principal, subscription_id, lock=True)
    now = utcnow()
    subscription.active = False
    subscription.deleted_at = now
    subscription.disabled_reason = "deleted"
    subscription.updated_at = now
    await session.execute(
        update(Delivery)
        .where(Delivery.destination_id == subscription.id, Delivery.state == "pending")
        .values(state="cancelled", last_error="subscription deleted", updated_at=now)
    )


async def rotate_secret(
    session: AsyncSession, principal: Principal, subscription_id: str, overlap: int
) -> tuple[Destination, str, dt.datetime]:
    subscription = await get_subscription(session, principal, subscription_id, lock=True)
    now = utcnow()
    secret = signing.new_secret()
    expires = now + dt.timedelta(seconds=overlap)
    subscription.previous_secret = subscription.secret
    subscription.previous_secret_expires_at = expires
    subscription.secret = secret
    subscription.updated_at = now
    return subscription, secret, expires


async def ping(
    subscription: Destination, http: httpx.AsyncClient, settings: Settings
) -> PingResult:
    """Send a signed ``ping`` now and report how the receiver answered."""
    now = utcnow()
    payload = payloads.operational_payload(signing.PING, now, {"subscription_id": subscription.id})
    began = time.perf_counter()
    try:
        outcome = await signing.post_signed(
            http,
            subscription.url or "",
            f"ping_{uuid.uuid4()}",
            signing.body_of(payload),
            subscription.signing_secrets(now),
            timeout=settings.webhook_timeout,
            what="ping",
        )
        return PingResult(
            delivered=True,
            status_code=outcome.status_code,
            error=None,
            duration_ms=int((time.perf_counter() - began) * 1000),
        )
    except AdapterError as exc:
        return PingResult(
            delivered=False,
            status_code=exc.status_code,
            error=str(exc),
            duration_ms=int((time.perf_counter() - began) * 1000),
        )
