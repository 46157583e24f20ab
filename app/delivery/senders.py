"""Outbound senders, one per kind of destination (DESIGN §3): a platform adapter, a clinical
adapter, a webhook subscription.

The dispatcher is given a dict of them by destination kind (``standard_senders`` makes the one
every process uses) and hands each the deliveries it claimed for that kind. A sender loads what it
needs for the whole batch in the claim's transaction and returns, for each delivery, the call that
sends it; a delivery it cannot send (an event its kind is not sent, a destination whose
configuration is unusable, a purged referral) gets a call that raises the PermanentError saying
why, which makes it a dead letter.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import httpx
import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import registry
from adapters.base import (
    Adapter,
    AdapterError,
    CaseReference,
    ClinicalAdapter,
    ClinicalUpdate,
    FHIRResourceUpdate,
    Outbound,
    Outcome,
    PermanentError,
    PlatformAdapter,
    PlatformReferral,
    ReferralAmendment,
    check_response,
    send,
)
from app.cases import resources as case_resources
from app.cases.models import Case, Referral
from app.cases.resources import service_request_resource
from app.cases.service import cases_for_delivery
from app.config import Settings, public_base
from app.delivery import signing
from app.errors import FHIR_MEDIA_TYPE as FHIR_JSON
from app.fhir import notifications
from app.fhir.task import TaskView, task_resource
from app.outbox.models import Delivery, Destination, DestinationKind, TopicSubscription

Send = Callable[[httpx.AsyncClient], Awaitable[Outcome]]
Claimed = tuple[Delivery, Destination]
Cases = dict[str, tuple[Case, Referral, TaskView]]


class Sender(Protocol):
    async def prepare(
        self, session: AsyncSession, claimed: Sequence[Claimed], now: dt.datetime
    ) -> list[Send]:
        """The call that sends each claimed delivery, in the order given."""
        ...


def refuse(error: AdapterError) -> Send:
    """A call that fails with ``error``: the delivery is recorded as that failure."""

    async def fail(_http: httpx.AsyncClient) -> Outcome:
        raise error

    return fail


AdapterT = TypeVar("AdapterT", bound=Adapter)


class Adapters:
    """The adapters built from destinations' configurations, one per destination, built again
    when the destination changes (its ``updated_at``); at most ``size`` are kept, the least
    recently used going first, so destinations that come and go do not pile up."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._kept: OrderedDict[str, tuple[dt.datetime, Adapter]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def of(self, destination: Destination, kind: type[AdapterT]) -> AdapterT:
        kept = self._kept.get(destination.id)
        if kept is not None and kept[0] == destination.updated_at:
            self._kept.move_to_end(destination.id)
            adapter = kept[1]
        else:
            adapter = self._build(destination)
            self._kept[destination.id] = (destination.updated_at, adapter)
            self._kept.move_to_end(destination.id)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        if not isinstance(adapter, kind):
            raise PermanentError(
                f"adapter '{destination.adapter}' does not serve a {destination.kind}"
            )
        return adapter

    @staticmethod
    def _build(destination: Destination) -> Adapter:
        try:
            cls = registry.adapter_class(destination.adapter)
            return cls(cls.config_model.model_validate(destination.config))
        except (registry.UnknownAdapter, ValueError) as exc:
            raise PermanentError(
                f"destination configuration is not usable: {type(exc).__name__}"
            ) from None


def _outbound(delivery: Delivery) -> Outbound:
    # The delivery's id goes out on every retry, so the receiver can de-duplicate.
    return Outbound(request_id=delivery.id, correlation_id=delivery.correlation_id)


async def _cases(session: AsyncSession, claimed: Sequence[Claimed]) -> Cases:
    return await cases_for_delivery(session, [d.referral_id for d, _ in claimed if d.referral_id])


def _case_of(delivery: Delivery, cases: Cases) -> tuple[Case, Referral, TaskView]:
    found = cases.get(delivery.referral_id or "")
    if found is None:
        raise PermanentError("the referral of this delivery no longer exists")
    return found


# --- a service's platform: told of new referrals, amendments and cancellations ---------------


def _platform_referral(case: Case, referral: Referral) -> PlatformReferral:
    return PlatformReferral(
        referral_id=referral.id,
        case_id=case.id,
        service_id=case.service_id,
        service_request=service_request_resource(referral),
        reasons=[r["domain"] for r in referral.reasons if r.get("domain")],
        referring_organisation=referral.organisation,
        referring_team=referral.referring_team,
        received_at=referral.created_at,
    )


def _create_case(
    adapter: PlatformAdapter, case: Case, referral: Referral, outbound: Outbound
) -> Send:
    new_case = _platform_referral(case, referral)
    return lambda http: adapter.create_case(http, new_case, outbound)


def _update_case(
    adapter: PlatformAdapter, case: Case, referral: Referral, outbound: Outbound
) -> Send:
    # The referral as it is now: a late delivery never sends an older version.
    amendment = ReferralAmendment(_platform_referral(case, referral), case.external_reference)
    return lambda http: adapter.update_case(http, amendment, outbound)


def _cancel_case(
    adapter: PlatformAdapter, case: Case, referral: Referral, outbound: Outbound
) -> Send:
    reference = CaseReference(
        referral_id=referral.id, case_id=case.id, external_reference=case.external_reference
    )
    return lambda http: adapter.cancel_case(http, reference, outbound)


PlatformAction = Callable[[PlatformAdapter, Case, Referral, Outbound], Send]
PLATFORM_ACTIONS: Mapping[str, PlatformAction] = {
    "referral.received": _create_case,
    "referral.updated": _update_case,
    "referral.cancelled": _cancel_case,
}


class PlatformSender:
    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters

    async def prepare(
        self, session: AsyncSession, claimed: Sequence[Claimed], now: dt.datetime
    ) -> list[Send]:
        cases = await cases_for_delivery(
            session, [d.referral_id for d, _ in claimed if d.referral_id]
        )
        return [self._one(delivery, destination, cases) for delivery, destination in claimed]

    def _one(self, delivery: Delivery, destination: Destination, cases: Cases) -> Send:
        try:
            case, referral, _task = _case_of(delivery, cases)
            adapter = self.adapters.of(destination, PlatformAdapter)
            action = PLATFORM_ACTIONS.get(delivery.event_type)
            if action is None:
                raise PermanentError(f"a platform is not sent '{delivery.event_type}' events")
            return action(adapter, case, referral, _outbound(delivery))
        except PermanentError as exc:
            return refuse(exc)


# --- a referrer's clinical system: the Task and what the event changed ----------------------------


class ClinicalSender:
    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters

    async def prepare(
        self, session: AsyncSession, claimed: Sequence[Claimed], now: dt.datetime
    ) -> list[Send]:
        cases = await cases_for_delivery(
            session, [d.referral_id for d, _ in claimed if d.referral_id]
        )
        changed = await case_resources.for_events(
            session, [d.case_event_id for d, _ in claimed if d.case_event_id]
        )
        return [
            self._one(delivery, destination, cases, changed) for delivery, destination in claimed
        ]

    def _one(
        self,
        delivery: Delivery,
        destination: Destination,
        cases: Cases,
        changed: dict[str, list[tuple[str, str, dict[str, Any]]]],
    ) -> Send:
        try:
            case, referral, task = _case_of(delivery, cases)
            adapter = self.adapters.of(destination, ClinicalAdapter)
        except PermanentError as exc:
            return refuse(exc)
        # Current versions, not those at the event: a late or replayed delivery never takes the
        # clinician's view backwards. The resources the event made or changed go first, so the
        # Task's outputs point at resources the receiver already holds.
        made = changed.get(delivery.case_event_id or "", [])
        update = ClinicalUpdate(
            referral_id=referral.id,
            event_type=delivery.event_type,
            resources=[
                *(FHIRResourceUpdate(kind, ident, body) for kind, ident, body in made),
                FHIRResourceUpdate("Task", case.id, task_resource(task)),
            ],
            origin=referral.origin,
            service_request=service_request_resource(referral) if referral.origin else None,
        )
        outbound = _outbound(delivery)
        return lambda http: adapter.send_update(http, update, outbound)


# --- a webhook subscription: the thin payload fixed when the event happened, signed -------------


class WebhookSender:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def prepare(
        self, session: AsyncSession, claimed: Sequence[Claimed], now: dt.datetime
    ) -> list[Send]:
        return [self._one(delivery, destination, now) for delivery, destination in claimed]

    def _one(self, delivery: Delivery, destination: Destination, now: dt.datetime) -> Send:
        secrets = destination.signing_secrets(now)
        if not destination.url or not secrets or delivery.payload is None:
            return refuse(PermanentError("the subscription has no URL, secret or payload"))
        body = signing.body_of(signing.with_base_url(delivery.payload, public_base(self.settings)))
        url = destination.url
        timeout = self.settings.webhook_timeout
        message_id = delivery.id
        return lambda http: signing.post_signed(
            http, url, message_id, body, secrets, timeout=timeout, what="webhook"
        )


# --- a FHIR Subscription (rest-hook): the notification Bundle, made when it is sent -----------


class RestHookSender:
    """Notifications of the topic-based FHIR Subscriptions (app.outbox.topics): a history
    Bundle (the SubscriptionStatus, then the Task's id for id-only content) POSTed to the
    channel's endpoint with its headers. The Bundle's id is the delivery's, the same on every
    retry; ``eventsSinceSubscriptionStart`` is the count when it is sent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def prepare(
        self, session: AsyncSession, claimed: Sequence[Claimed], now: dt.datetime
    ) -> list[Send]:
        ids = {destination.id for _, destination in claimed}
        subscriptions = {
            s.id: s
            for s in await session.scalars(
                select(TopicSubscription).where(TopicSubscription.id.in_(ids))
            )
        }
        return [
            self._one(delivery, destination, subscriptions.get(destination.id), now)
            for delivery, destination in claimed
        ]

    def _one(
        self,
        delivery: Delivery,
        destination: Destination,
        subscription: TopicSubscription | None,
        now: dt.datetime,
    ) -> Send:
        if subscription is None or not destination.url or delivery.payload is None:
            return refuse(PermanentError("the FHIR Subscription has no endpoint or payload"))
        base = public_base(self.settings) + "/fhir"
        payload = delivery.payload
        kind = str(payload.get("type") or "event-notification")
        events = []
        if kind == "event-notification":
            events = [
                notifications.Event(
                    int(payload["eventNumber"]),
                    notifications.instant(dt.datetime.fromisoformat(str(payload["timestamp"]))),
                    str(payload["focus"]),
                )
            ]
        bundle = notifications.notification_bundle(
            bundle_id=delivery.id,
            subscription_url=f"{base}/Subscription/{subscription.id}",
            topic=subscription.topic,
            status="requested" if kind == "handshake" else subscription.status,
            kind=kind,
            events_since_start=subscription.events_since_start,
            events=events,
            content=subscription.content,
            base=base,
            now=now,
        )
        headers = {
            "Content-Type": FHIR_JSON,
            **dict(destination.config.get("headers", [])),
            "X-Request-ID": delivery.id,
        }
        body = orjson.dumps(bundle)
        url = destination.url
        timeout = self.settings.webhook_timeout

        async def post(http: httpx.AsyncClient) -> Outcome:
            what = f"FHIR Subscription {kind}"
            response = await send(
                http, "POST", url, timeout=timeout, what=what, headers=headers, content=body
            )
            return check_response(response, what)

        return post


def standard_senders(settings: Settings, adapters: Adapters | None = None) -> dict[str, Sender]:
    """The senders of every kind of destination this build knows, sharing one adapter cache."""
    adapters = adapters or Adapters()
    return {
        DestinationKind.PLATFORM: PlatformSender(adapters),
        DestinationKind.CLINICAL: ClinicalSender(adapters),
        DestinationKind.WEBHOOK: WebhookSender(settings),
        DestinationKind.REST_HOOK: RestHookSender(settings),
    }
