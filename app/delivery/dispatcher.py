"""The dispatcher: claims due outbox rows, sends them, records how it went (DESIGN §3).

Each round is three short steps, none holding a transaction open while the network is used:
1. claim a batch in one transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of
   processes share the work; SQLite's ``BEGIN IMMEDIATE`` serialises its one process), under a
   lease that lapses if this process dies;
2. send every claimed delivery concurrently through its adapter or as a signed webhook;
3. record every attempt and its consequence (delivered, retry later, dead letter, circuit) in one
   transaction.

Ordering: only the oldest undelivered delivery of a (referral, destination) pair can be claimed,
so a later update never overtakes an earlier one and a failing referral holds back only itself.
Circuit: after ``circuit_threshold`` consecutive retryable failures a destination gets one probe
at a time; the first answer from it makes its whole backlog due at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import ColumnElement, and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from adapters import registry
from adapters.base import (
    AdapterError,
    CaseReference,
    ClinicalAdapter,
    ClinicalUpdate,
    FHIRResourceUpdate,
    Gone,
    Outbound,
    Outcome,
    PermanentError,
    PlatformAdapter,
    PlatformReferral,
    ReferralAmendment,
    RetryableError,
)
from app.cases import resources as case_resources
from app.cases.models import Case, Referral
from app.cases.resources import service_request_resource
from app.cases.service import cases_for_delivery
from app.config import Settings, public_base
from app.db import Database, transaction, utcnow
from app.delivery import retry, signing
from app.delivery.models import Delivery, DeliveryAttempt, Destination, DestinationKind
from app.delivery.service import enqueue_operational
from app.fhir.task import task_resource

log = logging.getLogger("spbridge.delivery")

Clock = Callable[[], dt.datetime]
OPEN = ("pending", "in_flight")
ERROR_CHARS = 500


def worker_name() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Job:
    """One claimed delivery, with everything needed to send it prepared inside the claim."""

    delivery_id: str
    number: int  # which attempt this is
    destination_id: str
    destination_kind: str
    referral_id: str | None
    event_type: str
    probe: bool
    sender: Callable[[httpx.AsyncClient], Awaitable[Outcome]]


@dataclass
class Result:
    job: Job
    started_at: dt.datetime
    duration_ms: int
    outcome: Outcome | None = None
    error: AdapterError | None = None

    @property
    def retryable(self) -> bool:
        return isinstance(self.error, RetryableError)


class Dispatcher:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        clock: Clock = utcnow,
        name: str | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.http = http
        self.clock = clock
        self.name = name or worker_name()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._adapters: dict[tuple[str, str], Any] = {}
        self._held_probes: set[str] = set()
        self._postgres = database.engine.dialect.name == "postgresql"

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"dispatcher {self.name}")

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        """Whether its loop is going: started, not stopped, not ended by an error (readiness)."""
        return self._task is not None and not self._task.done()

    async def run(self) -> None:
        log.info("dispatcher started", extra={"worker": self.name})
        while not self._stopping.is_set():
            # Cleared before the round, not after it: a commit that wakes us mid-round is not
            # lost, the next pause returns at once.
            self._wake.clear()
            try:
                handled = await self.run_once()
            except Exception:  # a broken round must not stop delivery for good
                log.exception("dispatch round failed", extra={"worker": self.name})
                handled = 0
                await self._pause(self.settings.dispatch_poll_interval * 5)
            if handled == 0:
                await self._pause(self.settings.dispatch_poll_interval)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def stop(self, grace: float | None = None) -> None:
        """Finish the round in flight (up to ``grace`` seconds), else release its claims."""
        self._stopping.set()
        self._wake.set()
        if self._task is None:
            return
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if not done:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.release()
        log.info("dispatcher stopped", extra={"worker": self.name})

    async def release(self) -> int:
        """Give back every claim this process holds, so another process takes them at once."""
        now = self.clock()
        async with transaction(self.database.write_sessions) as session:
            result = await session.execute(
                update(Delivery)
                .where(Delivery.claimed_by == self.name, Delivery.state == "in_flight")
                .values(
                    state="pending",
                    claimed_by=None,
                    lease_expires_at=None,
                    next_attempt_at=now,
                    attempts=Delivery.attempts - 1,
                    updated_at=now,
                )
            )
            if self._held_probes:
                await session.execute(
                    update(Destination)
                    .where(Destination.id.in_(self._held_probes))
                    .values(probe_at=now)
                )
                self._held_probes.clear()
        released: int = getattr(result, "rowcount", 0) or 0
        return released

    async def run_once(self) -> int:
        """One round: claim, send, record. Returns how many deliveries it handled."""
        async with transaction(self.database.write_sessions) as session:
            jobs = await self._claim(session, self.clock())
        if not jobs:
            return 0
        limit = asyncio.Semaphore(self.settings.dispatch_concurrency)

        async def attempt(job: Job) -> Result:
            async with limit:
                return await self._attempt(job)

        results = await asyncio.gather(*(attempt(job) for job in jobs))
        async with transaction(self.database.write_sessions) as session:
            await self._record(session, results, self.clock())
        for job in jobs:
            if job.probe:
                self._held_probes.discard(job.destination_id)
        return len(jobs)

    async def drain(self, max_rounds: int = 1000) -> int:
        """Run rounds until nothing is due (tests and the CLI)."""
        total = 0
        for _ in range(max_rounds):
            handled = await self.run_once()
            if handled == 0:
                break
            total += handled
        return total

    # --- 1. claiming ---------------------------------------------------------------------------

    @staticmethod
    def _claimable(now: dt.datetime) -> ColumnElement[bool]:
        earlier = aliased(Delivery)
        head_of_queue = ~exists().where(
            earlier.referral_id == Delivery.referral_id,
            earlier.destination_id == Delivery.destination_id,
            earlier.event_seq < Delivery.event_seq,
            earlier.state.in_(OPEN),
        )
        lapsed = and_(Delivery.state == "in_flight", Delivery.lease_expires_at < now)
        return and_(or_(Delivery.state == "pending", lapsed), head_of_queue)

    def _locking(self, query: Any) -> Any:
        # The one dialect switch of the claim (DESIGN §10): SQLite has no row locks, and its
        # BEGIN IMMEDIATE already makes the claim exclusive.
        if self._postgres:
            return query.with_for_update(skip_locked=True, of=Delivery)
        return query

    async def _claim(self, session: AsyncSession, now: dt.datetime) -> list[Job]:
        batch = self.settings.dispatch_batch_size
        due = (
            select(Delivery.id)
            .join(Destination, Destination.id == Delivery.destination_id)
            .where(
                Destination.active.is_(True),
                Destination.probe_at.is_(None),
                self._claimable(now),
                or_(Delivery.state == "in_flight", Delivery.next_attempt_at <= now),
            )
            .order_by(Delivery.next_attempt_at, Delivery.created_at)
            .limit(batch)
        )
        ids = list(await session.scalars(self._locking(due)))
        probes = await self._claim_probes(session, now)
        ids.extend(probes)
        if not ids:
            return []
        lease = now + dt.timedelta(seconds=self.settings.delivery_lease_seconds)
        await session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(
                state="in_flight",
                claimed_by=self.name,
                lease_expires_at=lease,
                attempts=Delivery.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        deliveries = list(
            await session.scalars(
                select(Delivery)
                .where(Delivery.id.in_(ids))
                .execution_options(populate_existing=True)
            )
        )
        return await self._prepare(session, deliveries, set(probes), now)

    async def _claim_probes(self, session: AsyncSession, now: dt.datetime) -> list[str]:
        """One delivery for each open-circuit destination whose probe is due."""
        query = (
            select(Destination)
            .where(Destination.active.is_(True), Destination.probe_at <= now)
            .limit(50)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        ids: list[str] = []
        for destination in await session.scalars(query):
            # The delivery least tried: a poisoned one must not be the probe every time.
            candidate = (
                select(Delivery.id)
                .where(Delivery.destination_id == destination.id, self._claimable(now))
                .order_by(Delivery.attempts, Delivery.created_at)
                .limit(1)
            )
            delivery_id = await session.scalar(self._locking(candidate))
            if delivery_id is None:
                continue
            # The probe slot is ours until the result is recorded (or the lease lapses).
            destination.probe_at = now + dt.timedelta(seconds=self.settings.delivery_lease_seconds)
            self._held_probes.add(destination.id)
            ids.append(delivery_id)
        return ids

    async def _prepare(
        self,
        session: AsyncSession,
        deliveries: Sequence[Delivery],
        probes: set[str],
        now: dt.datetime,
    ) -> list[Job]:
        destination_ids = {d.destination_id for d in deliveries}
        destinations = {
            d.id: d
            for d in await session.scalars(
                select(Destination).where(Destination.id.in_(destination_ids))
            )
        }
        needs_case = [
            d.referral_id
            for d in deliveries
            if d.referral_id and destinations[d.destination_id].kind != DestinationKind.WEBHOOK
        ]
        cases = await cases_for_delivery(session, needs_case)
        changed = await case_resources.for_events(
            session,
            [
                d.case_event_id
                for d in deliveries
                if d.case_event_id
                and destinations[d.destination_id].kind == DestinationKind.CLINICAL
            ],
        )
        jobs = []
        for delivery in deliveries:
            destination = destinations[delivery.destination_id]
            try:
                sender = self._sender(delivery, destination, cases, changed, now)
            except PermanentError as exc:
                sender = _failing(exc)
            jobs.append(
                Job(
                    delivery_id=delivery.id,
                    number=delivery.attempts,
                    destination_id=destination.id,
                    destination_kind=destination.kind,
                    referral_id=delivery.referral_id,
                    event_type=delivery.event_type,
                    probe=delivery.id in probes,
                    sender=sender,
                )
            )
        return jobs

    def _adapter(self, destination: Destination) -> Any:
        key = (destination.id, destination.updated_at.isoformat())
        adapter = self._adapters.get(key)
        if adapter is None:
            try:
                cls = registry.adapter_class(destination.adapter)
                adapter = cls(cls.config_model.model_validate(destination.config))
            except (registry.UnknownAdapter, ValueError) as exc:
                raise PermanentError(
                    f"destination configuration is not usable: {type(exc).__name__}"
                ) from None
            self._adapters[key] = adapter
        return adapter

    def _sender(
        self,
        delivery: Delivery,
        destination: Destination,
        cases: dict[str, tuple[Case, Referral, Any]],
        changed: dict[str, list[tuple[str, str, dict[str, Any]]]],
        now: dt.datetime,
    ) -> Callable[[httpx.AsyncClient], Awaitable[Outcome]]:
        outbound = Outbound(request_id=delivery.id, correlation_id=delivery.correlation_id)
        if destination.kind == DestinationKind.WEBHOOK:
            return self._webhook_sender(delivery, destination, now)
        if delivery.referral_id is None or delivery.referral_id not in cases:
            raise PermanentError("the referral of this delivery no longer exists")
        case, referral, task = cases[delivery.referral_id]
        adapter = self._adapter(destination)
        if destination.kind == DestinationKind.PLATFORM and isinstance(adapter, PlatformAdapter):
            if delivery.event_type in ("referral.received", "referral.updated"):
                new_case = PlatformReferral(
                    referral_id=referral.id,
                    case_id=case.id,
                    service_id=case.service_id,
                    service_request=service_request_resource(referral),
                    reasons=[r["domain"] for r in referral.reasons if r.get("domain")],
                    referring_organisation=referral.organisation,
                    referring_team=referral.referring_team,
                    received_at=referral.created_at,
                )
                if delivery.event_type == "referral.updated":
                    # The referral as it is now: a late delivery never sends an older version.
                    amendment = ReferralAmendment(new_case, case.external_reference)
                    return lambda http: adapter.update_case(http, amendment, outbound)
                return lambda http: adapter.create_case(http, new_case, outbound)
            if delivery.event_type == "referral.cancelled":
                reference = CaseReference(
                    referral_id=referral.id,
                    case_id=case.id,
                    external_reference=case.external_reference,
                )
                return lambda http: adapter.cancel_case(http, reference, outbound)
            raise PermanentError(f"a platform is not sent '{delivery.event_type}' events")
        if destination.kind == DestinationKind.CLINICAL and isinstance(adapter, ClinicalAdapter):
            # Current versions, not those at the event: a late or replayed delivery never takes
            # the clinician's view backwards. The resources the event made or changed go first,
            # so the Task's outputs point at resources the receiver already holds.
            made = changed.get(delivery.case_event_id or "", [])
            update_ = ClinicalUpdate(
                referral_id=referral.id,
                event_type=delivery.event_type,
                resources=[
                    *(FHIRResourceUpdate(kind, ident, body) for kind, ident, body in made),
                    FHIRResourceUpdate("Task", case.id, task_resource(task)),
                ],
            )
            return lambda http: adapter.send_update(http, update_, outbound)
        raise PermanentError(f"adapter '{destination.adapter}' does not serve a {destination.kind}")

    def _webhook_sender(
        self, delivery: Delivery, destination: Destination, now: dt.datetime
    ) -> Callable[[httpx.AsyncClient], Awaitable[Outcome]]:
        secrets = destination.signing_secrets(now)
        if not destination.url or not secrets or delivery.payload is None:
            raise PermanentError("the subscription has no URL, secret or payload")
        body = signing.body_of(signing.with_base_url(delivery.payload, public_base(self.settings)))
        url = destination.url
        timeout = self.settings.webhook_timeout
        message_id = delivery.id
        return lambda http: signing.post_signed(
            http, url, message_id, body, secrets, timeout=timeout, what="webhook"
        )

    # --- 2. sending ----------------------------------------------------------------------------

    async def _attempt(self, job: Job) -> Result:
        started = self.clock()
        began = time.perf_counter()
        try:
            outcome = await job.sender(self.http)
            return Result(job, started, _ms(began), outcome=outcome)
        except AdapterError as exc:
            return Result(job, started, _ms(began), error=exc)
        except Exception as exc:  # an adapter bug: kept as a retryable failure, never lost
            log.exception("adapter failed", extra={"delivery_id": job.delivery_id})
            error = RetryableError(f"adapter error: {type(exc).__name__}")
            return Result(job, started, _ms(began), error=error)

    # --- 3. recording --------------------------------------------------------------------------

    async def _record(
        self, session: AsyncSession, results: Sequence[Result], now: dt.datetime
    ) -> None:
        by_destination: dict[str, list[Result]] = {}
        for result in results:
            by_destination.setdefault(result.job.destination_id, []).append(result)
            await self._record_one(session, result, now)
        for destination_id, outcomes in by_destination.items():
            await self._update_circuit(session, destination_id, outcomes, now)

    async def _record_one(self, session: AsyncSession, result: Result, now: dt.datetime) -> None:
        job = result.job
        delivery = await session.scalar(
            select(Delivery)
            .where(
                Delivery.id == job.delivery_id,
                Delivery.claimed_by == self.name,
                Delivery.state == "in_flight",
            )
            .with_for_update()
        )
        if delivery is None:
            # Our lease lapsed and another process took it over: its record wins.
            return
        error = result.error
        outcome = result.outcome
        status_code = outcome.status_code if outcome else (error.status_code if error else None)
        excerpt = (
            outcome.response_excerpt if outcome else (error.response_excerpt if error else None)
        )
        delivery.claimed_by = None
        delivery.lease_expires_at = None
        delivery.updated_at = now
        delivery.last_status_code = status_code
        verdict: str
        if error is None:
            verdict = "delivered"
            delivery.state = "delivered"
            delivery.delivered_at = now
            delivery.last_error = None
            if outcome and outcome.external_reference and delivery.referral_id:
                await session.execute(
                    update(Case)
                    .where(Case.referral_id == delivery.referral_id)
                    .values(external_reference=outcome.external_reference)
                )
        else:
            delivery.last_error = str(error)[:ERROR_CHARS]
            retry_at = None
            if isinstance(error, RetryableError):
                retry_at = retry.next_attempt_at(
                    delivery.attempts,
                    delivery.created_at,
                    now,
                    self.settings.retry_schedule,
                    self.settings.retry_max_age,
                    retry_after=error.retry_after,
                )
            if retry_at is not None:
                verdict = "retry"
                delivery.state = "pending"
                delivery.next_attempt_at = retry_at
            else:
                verdict = "dead"
                await self._dead_letter(session, delivery, now)
        session.add(
            DeliveryAttempt(
                delivery_id=delivery.id,
                number=job.number,
                started_at=result.started_at,
                duration_ms=result.duration_ms,
                outcome=verdict,
                status_code=status_code,
                response_excerpt=excerpt,
                error=delivery.last_error if error else None,
                worker=self.name,
            )
        )

    async def _dead_letter(
        self, session: AsyncSession, delivery: Delivery, now: dt.datetime
    ) -> None:
        delivery.state = "dead"
        if delivery.referral_id is None:
            return  # an operational event itself: alerting on it could loop
        await enqueue_operational(
            session,
            signing.DEAD_LETTERED,
            {
                "delivery_id": delivery.id,
                "destination_id": delivery.destination_id,
                "event_type": delivery.event_type,
                "referral_id": delivery.referral_id,
                "attempts": delivery.attempts,
                "last_status_code": delivery.last_status_code,
                "links": {"delivery": f"/api/v1/deliveries/{delivery.id}"},
            },
            now,
        )

    async def _update_circuit(
        self, session: AsyncSession, destination_id: str, results: list[Result], now: dt.datetime
    ) -> None:
        destination = await session.get(Destination, destination_id, with_for_update=True)
        if destination is None:
            return
        probed = any(r.job.probe for r in results)
        if any(isinstance(r.error, Gone) for r in results) and (
            destination.kind == DestinationKind.WEBHOOK
        ):
            await self._disable(session, destination, "gone", now)
            return
        # Any answer that is not a retryable failure shows the receiver is up again.
        if any(not r.retryable for r in results):
            was_failing = destination.failing_since is not None or destination.probe_at is not None
            destination.consecutive_failures = 0
            destination.failing_since = None
            destination.probe_at = None
            if was_failing:
                # Recovery takes seconds: the whole backlog is due now, not at each backoff.
                await session.execute(
                    update(Delivery)
                    .where(Delivery.destination_id == destination.id, Delivery.state == "pending")
                    .values(next_attempt_at=now)
                )
            return
        destination.consecutive_failures += len(results)
        destination.failing_since = destination.failing_since or now
        if destination.consecutive_failures >= self.settings.circuit_threshold:
            beyond = destination.consecutive_failures - self.settings.circuit_threshold + 1
            retry_after = max(
                (
                    r.error.retry_after or 0.0
                    for r in results
                    if isinstance(r.error, RetryableError)
                ),
                default=0.0,
            )
            delay = retry.delay_after(
                beyond, self.settings.retry_schedule, retry_after=retry_after or None
            )
            destination.probe_at = now + dt.timedelta(seconds=delay)
            if probed:
                await self._expire(session, destination, now)
        elif probed:
            destination.probe_at = None
        if (
            destination.kind == DestinationKind.WEBHOOK
            and (now - destination.failing_since).total_seconds()
            >= self.settings.subscription_disable_after
        ):
            await self._disable(session, destination, "failing", now)

    async def _expire(
        self, session: AsyncSession, destination: Destination, now: dt.datetime
    ) -> None:
        """While a destination stays down, deliveries past the retry window become dead letters."""
        cutoff = now - dt.timedelta(seconds=self.settings.retry_max_age)
        expired = await session.scalars(
            select(Delivery).where(
                Delivery.destination_id == destination.id,
                Delivery.state == "pending",
                Delivery.created_at <= cutoff,
            )
        )
        for delivery in expired:
            delivery.last_error = "retry window passed while the destination was failing"
            delivery.updated_at = now
            await self._dead_letter(session, delivery, now)

    async def _disable(
        self, session: AsyncSession, destination: Destination, reason: str, now: dt.datetime
    ) -> None:
        """A subscription that is gone (410) or failing for too long stops receiving; what it
        had not received stays as dead letters an admin can replay once it is fixed."""
        destination.active = False
        destination.disabled_reason = reason
        destination.probe_at = None
        destination.updated_at = now
        await session.execute(
            update(Delivery)
            .where(Delivery.destination_id == destination.id, Delivery.state == "pending")
            .values(state="dead", last_error=f"subscription disabled ({reason})", updated_at=now)
        )
        await enqueue_operational(
            session,
            signing.SUBSCRIPTION_DISABLED,
            {
                "subscription_id": destination.id,
                "reason": reason,
                "failing_since": destination.failing_since.isoformat()
                if destination.failing_since
                else None,
                "links": {"subscription": f"/api/v1/subscriptions/{destination.id}"},
            },
            now,
        )


def _failing(error: AdapterError) -> Callable[[httpx.AsyncClient], Awaitable[Outcome]]:
    async def fail(_http: httpx.AsyncClient) -> Outcome:
        raise error

    return fail


def _ms(began: float) -> int:
    return int((time.perf_counter() - began) * 1000)
