"""The dispatcher: claims due outbox rows, sends them, records how it went (DESIGN §3).

Each round is three short steps, none holding a transaction open while the network is used:
1. claim a batch in one transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of
   processes share the work; SQLite's ``BEGIN IMMEDIATE`` serialises its one process), under a
   lease that lapses if this process dies;
2. send every claimed delivery concurrently, each through the sender of its destination's kind
   (app.delivery.senders: platform adapter, clinical adapter, signed webhook);
3. record every attempt and its consequence (delivered, retry later, dead letter, circuit) in one
   transaction.

Ordering: only the oldest undelivered delivery of a (referral, destination) pair can be claimed,
so a later update never overtakes an earlier one and a failing referral holds back only itself.
Circuit: after ``circuit_threshold`` consecutive rounds in which every attempt to a destination
failed retryably (however many deliveries a round held), it gets one probe at a time, each after
the next step of the retry schedule (or its Retry-After); the first answer from it makes its whole
backlog due at once.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import ColumnElement, and_, exists, or_, select, tuple_, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from adapters.base import AdapterError, Gone, Outcome, PermanentError, RetryableError
from app.cases.models import Case
from app.config import Settings
from app.db import Database, transaction, unavailability, utcnow
from app.delivery import retry
from app.delivery.senders import Claimed, Send, Sender, refuse
from app.loops import Loop
from app.outbox import payloads, topics
from app.outbox.models import Delivery, DeliveryAttempt, Destination, DestinationKind
from app.outbox.service import enqueue_operational

log = logging.getLogger("spbridge.delivery")

Clock = Callable[[], dt.datetime]
OPEN = ("pending", "in_flight")
ERROR_CHARS = 500


# The longest pause between rounds that find nothing (seconds; never below the poll interval).
IDLE_POLL_MAX = 1.0


def worker_name() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# What "the database cannot be reached now" looks like: a dropped or refused connection, a
# pool timeout, SQLite's lock timeout. Recording is tried again; anything else is a bug.
UNREACHABLE = (OperationalError, InterfaceError, SATimeoutError, OSError)


@dataclass
class Claims:
    """The claims of one round: delivery id → its attempt number (the claim's token)."""

    numbers: dict[str, int]
    # When the leases were last set (monotonic, taken before they were: the next renewal is due
    # a third of a lease after it, however long the claim or the renewal took).
    since: float
    probes: set[str] = field(default_factory=set)  # destinations this round probes
    lost: set[str] = field(default_factory=set)
    # Renewing and recording take turns; once recorded, nothing is renewed (a renewal must not
    # overwrite the probe time the record just set).
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    recorded: bool = False

    def held(self) -> dict[str, int]:
        return {ident: n for ident, n in self.numbers.items() if ident not in self.lost}


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
    sender: Send


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
        senders: Mapping[str, Sender],
        clock: Clock = utcnow,
        name: str | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.http = http
        # By destination kind, made by whoever makes the dispatcher (app.delivery.senders).
        self.senders = senders
        self.clock = clock
        self.name = name or worker_name()
        self._loop = Loop(
            f"dispatcher {self.name}",
            self._round,
            interval=settings.dispatch_poll_interval,
            after_error=settings.dispatch_poll_interval * 5,
            # Idle, a round every 0.2 s cost a serving process 25 ms of CPU a second; what this
            # process queues wakes it at once, another's waits at most this long.
            idle_cap=IDLE_POLL_MAX,
            log=log,
            failure="dispatch round failed",
        )
        self._held_probes: set[str] = set()
        self._postgres = database.engine.dialect.name == "postgresql"

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        log.info("dispatcher started", extra={"worker": self.name})
        self._loop.start()

    def wake(self) -> None:
        self._loop.wake()

    @property
    def running(self) -> bool:
        """Whether its loop is going: started, not stopped, not ended by an error (readiness)."""
        return self._loop.running

    async def _round(self) -> bool:
        return await self.run_once() > 0

    async def stop(self, grace: float | None = None) -> None:
        """Finish the round in flight (up to ``grace`` seconds), else release its claims."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self._loop.stop(grace)
        try:
            await self.release()
        except Exception as exc:
            found = unavailability(exc)
            if found is None:
                raise
            # Not released: another process claims them when their leases lapse.
            log.warning(
                "claims not released",
                extra={"worker": self.name, "reason": f"database {found.reason}"},
            )
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
        began = time.monotonic()
        async with transaction(self.database.write_sessions) as session:
            await topics.enqueue_heartbeats(session, self.clock())
            jobs = await self._claim(session, self.clock())
        if not jobs:
            return 0
        claims = Claims(
            {job.delivery_id: job.number for job in jobs},
            since=began,
            probes={job.destination_id for job in jobs if job.probe},
        )
        # The claims are renewed while the round lasts: a slow receiver, a slow record or a
        # database outage shorter than the lease must not let another process send them again.
        heartbeat = asyncio.create_task(self._heartbeat(claims), name=f"leases {self.name}")
        try:
            limit = asyncio.Semaphore(self.settings.dispatch_concurrency)

            async def attempt(job: Job) -> Result:
                async with limit:
                    return await self._attempt(job)

            results = await asyncio.gather(*(attempt(job) for job in jobs))
            await self._record_held(results, claims)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        for job in jobs:
            if job.probe:
                self._held_probes.discard(job.destination_id)
        return len(jobs)

    async def _record_held(self, results: Sequence[Result], claims: Claims) -> None:
        """Record the round's results for the claims still held; while the database cannot be
        reached, try again (the heartbeat keeps the claims meanwhile) rather than drop them."""
        pause = 0.1
        while True:
            try:
                async with claims.turn:
                    held = [r for r in results if r.job.delivery_id not in claims.lost]
                    async with transaction(self.database.write_sessions) as session:
                        await self._record(session, held, self.clock())
                    claims.recorded = True
                return
            except UNREACHABLE as exc:
                if self._loop.stopping:
                    raise
                log.warning(
                    "recording a round failed; trying again",
                    extra={"worker": self.name, "error": type(exc).__name__},
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, self._renew_every)

    @property
    def _renew_every(self) -> float:
        return self.settings.delivery_lease_seconds / 3

    async def _heartbeat(self, claims: Claims) -> None:
        """Renew this round's leases every third of a lease until the round ends; a claim found
        gone (taken over after a lapse, or cancelled) is not recorded by this process."""
        while True:
            await asyncio.sleep(max(0.0, claims.since + self._renew_every - time.monotonic()))
            try:
                async with claims.turn:
                    held = claims.held()
                    if claims.recorded or not held:
                        return
                    began = time.monotonic()
                    renewed = await self._renew(held, claims.probes)
                    claims.since = began
            except UNREACHABLE as exc:
                log.warning(
                    "renewing leases failed; trying again",
                    extra={"worker": self.name, "error": type(exc).__name__},
                )
                # Overdue now: try again soon, not at once.
                await asyncio.sleep(min(self._renew_every, 1.0))
                continue
            lost = set(held) - renewed
            if lost:
                claims.lost |= lost
                log.warning(
                    "claims lost while in flight; their results are not recorded",
                    extra={"worker": self.name, "deliveries": len(lost)},
                )

    async def _renew(self, held: dict[str, int], probes: set[str]) -> set[str]:
        now = self.clock()
        lease = now + dt.timedelta(seconds=self.settings.delivery_lease_seconds)
        async with transaction(self.database.write_sessions) as session:
            if probes:
                # The probe slot lasts as long as the probe's claim.
                await session.execute(
                    update(Destination)
                    .where(Destination.id.in_(probes), Destination.probe_at.is_not(None))
                    .values(probe_at=lease)
                )
            rows = await session.execute(
                update(Delivery)
                .where(
                    tuple_(Delivery.id, Delivery.attempts).in_(list(held.items())),
                    Delivery.claimed_by == self.name,
                    Delivery.state == "in_flight",
                )
                .values(lease_expires_at=lease)
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            )
            return set(rows.scalars())

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
        # From now, not from the start of the claim: a slow claim must not shorten the lease.
        lease = self.clock() + dt.timedelta(seconds=self.settings.delivery_lease_seconds)
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
        by_kind: dict[str, list[Claimed]] = {}
        for delivery in deliveries:
            destination = destinations[delivery.destination_id]
            by_kind.setdefault(destination.kind, []).append((delivery, destination))
        jobs = []
        for kind, claimed in by_kind.items():
            sender = self.senders.get(kind)
            if sender is None:
                error = PermanentError(f"no sender for destinations of kind '{kind}'")
                sends = [refuse(error)] * len(claimed)
            else:
                sends = await sender.prepare(session, claimed, now)
            for (delivery, destination), send in zip(claimed, sends, strict=True):
                jobs.append(
                    Job(
                        delivery_id=delivery.id,
                        number=delivery.attempts,
                        destination_id=destination.id,
                        destination_kind=destination.kind,
                        referral_id=delivery.referral_id,
                        event_type=delivery.event_type,
                        probe=delivery.id in probes,
                        sender=send,
                    )
                )
        return jobs

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
        # Parents first, as every writer takes tables (and a sandbox reset locks them): the
        # destinations before their deliveries. Locked after the deliveries, a destination could
        # be held by a reset waiting for those deliveries: a deadlock (seen in CI).
        await session.execute(
            select(Destination.id)
            .where(Destination.id.in_(sorted({r.job.destination_id for r in results})))
            .order_by(Destination.id)
            .with_for_update()
        )
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
                # The attempt number is the claim's token: each claim counts one more, so a
                # claim that lapsed and was taken again (by anyone, this process too) no longer
                # matches.
                Delivery.attempts == job.number,
                Delivery.state == "in_flight",
            )
            .with_for_update()
        )
        if delivery is None:
            # Our claim lapsed and was taken over, or the delivery was cancelled: not ours.
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
        if delivery.event_type == topics.HANDSHAKE and verdict != "retry":
            await topics.handshake_settled(
                session, delivery.destination_id, verdict == "delivered", now
            )
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
            payloads.DEAD_LETTERED,
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
        # Every attempt failed and may be retried: one more failed look at the destination, however
        # many deliveries the round held (a batch of 50 is one look, not 50): its position on the
        # retry schedule follows its own rounds and probes, never the size of its backlog.
        destination.consecutive_failures += 1
        destination.failing_since = destination.failing_since or now
        if destination.consecutive_failures >= self.settings.circuit_threshold:
            # Open: the first probe after the schedule's first step, each failed probe one step on.
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
            payloads.SUBSCRIPTION_DISABLED,
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


def _ms(began: float) -> int:
    return int((time.perf_counter() - began) * 1000)
