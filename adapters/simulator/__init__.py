"""The ``simulator`` platform adapter: a simulated social prescribing platform for the sandbox.

It takes every new referral through a planned journey (``adapters.simulator.journeys``) on an
accelerated clock, and gives the events back the way a real platform's event feed would: through
``poll``, which the reconciler applies through the one domain path, de-duplicated like webhooks.

What it keeps, and where:
- the journey itself is never stored: it is a pure function of the seed and the referral id;
- the platform's case book (which referrals it holds, and when each arrived) lives in this
  process, filled by ``create_case`` and emptied by ``cancel_case`` and :func:`forget_all`;
  after a restart the sandbox fills it again from the open cases (:func:`hold`), and since the
  arrival time is the referral's own, each journey carries on where it was;
- how far each journey has been read is the reconciler's poll cursor, saved only once the events
  it covers are applied, so an event is never skipped and a repeat is dropped by the domain.

One process holds the book, so a simulator service belongs in a single-process deployment (the
sandbox). Services naming the same ``platform`` share one simulated platform, as two services on
one real platform would share its event feed; give each service its own name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import Field

from adapters.base import (
    AdapterConfig,
    CaseReference,
    InboundEvent,
    InboundMessage,
    Outbound,
    Outcome,
    PlatformAdapter,
    PlatformReferral,
    PollResult,
    ReferralAmendment,
)
from adapters.simulator.journeys import Journey, PlannedEvent, plan

# Events handed over in one poll at most: one poll is one transaction; the rest come next time.
POLL_LIMIT = 500
REFERENCE_PREFIX = "sim-"


class SimulatorConfig(AdapterConfig):
    seed: int = Field(
        default=42, ge=0, le=2**31 - 1, description="The same seed plans the same journeys"
    )
    days_per_second: float = Field(
        default=2.0,
        gt=0,
        le=1_000_000,
        description="Simulated days per real second (2: a six-week journey in about 20 s)",
    )
    platform: str = Field(
        default="simulator",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$",
        description="The simulated platform's name: services naming the same one share it",
    )


# A clock that runs at the speed of the real one: one simulated day a day.
REAL_TIME = 1 / 86_400


@dataclass(frozen=True)
class SimulatedClock:
    """The simulator's clock for one journey: day 0 is when the referral arrived, and
    ``days_per_second`` simulated days pass in each real second. Every time the journey
    carries (an event's occurred_at, an appointment's start) is read from it; at
    :data:`REAL_TIME` a journey's days are calendar days."""

    origin: dt.datetime
    days_per_second: float

    def at(self, day: float) -> dt.datetime:
        return self.origin + dt.timedelta(seconds=day / self.days_per_second)


@dataclass(frozen=True)
class HeldCase:
    referral_id: str
    received_at: dt.datetime


# platform name → referral id → the case it holds.
_BOOKS: dict[str, dict[str, HeldCase]] = {}


def hold(platform: str, referral_id: str, received_at: dt.datetime) -> None:
    """Put a case in the platform's book (again); a case already held keeps its arrival time."""
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=dt.UTC)
    _BOOKS.setdefault(platform, {}).setdefault(referral_id, HeldCase(referral_id, received_at))


def held(platform: str) -> list[str]:
    """The referral ids whose journeys still have events to come, oldest first."""
    book = _BOOKS.get(platform, {})
    return [case.referral_id for case in sorted(book.values(), key=lambda c: c.received_at)]


def forget_all() -> None:
    """Stop every journey (the sandbox reset): the platform holds nothing any more."""
    _BOOKS.clear()


def reference_of(referral_id: str) -> str:
    """The platform's own id for the case."""
    return f"{REFERENCE_PREFIX}{referral_id}"


class SimulatorAdapter(PlatformAdapter):
    name = "simulator"
    config_model = SimulatorConfig
    polls = True

    config: SimulatorConfig

    def __init__(self, config: AdapterConfig) -> None:
        if not isinstance(config, SimulatorConfig):
            raise TypeError("SimulatorAdapter needs a SimulatorConfig")
        super().__init__(config)

    def journey(self, referral_id: str) -> Journey:
        return plan(self.config.seed, referral_id)

    def clock(self, case: HeldCase) -> SimulatedClock:
        return SimulatedClock(case.received_at, self.config.days_per_second)

    def due_at(self, case: HeldCase, event: PlannedEvent | float) -> dt.datetime:
        """The real instant of a simulated moment of this case's journey."""
        return self.clock(case).at(event.day if isinstance(event, PlannedEvent) else event)

    async def create_case(
        self, http: httpx.AsyncClient, referral: PlatformReferral, outbound: Outbound
    ) -> Outcome:
        # The journey is timed from the referral's arrival, which the bridge keeps: the same
        # time is known again after a restart. A repeat (a retry, a replay) changes nothing.
        hold(self.config.platform, referral.referral_id, referral.received_at)
        reference = reference_of(referral.referral_id)
        return Outcome(
            status_code=201,
            response_excerpt=f"simulated platform {self.config.platform}: case {reference}",
            external_reference=reference,
        )

    async def update_case(
        self, http: httpx.AsyncClient, amendment: ReferralAmendment, outbound: Outbound
    ) -> Outcome:
        # The simulated platform takes the amendment; the journey, planned from the seed and
        # the referral id, goes on as planned (a real advisor would read the new details).
        referral_id = amendment.referral.referral_id
        return Outcome(
            status_code=200,
            response_excerpt=f"simulated platform {self.config.platform}: case updated",
            external_reference=amendment.external_reference or reference_of(referral_id),
        )

    async def cancel_case(
        self, http: httpx.AsyncClient, case: CaseReference, outbound: Outbound
    ) -> Outcome:
        # The referrer withdrew the referral: the platform stops working the case.
        _BOOKS.get(self.config.platform, {}).pop(case.referral_id, None)
        return Outcome(
            status_code=200,
            response_excerpt=f"simulated platform {self.config.platform}: case closed",
            external_reference=case.external_reference or reference_of(case.referral_id),
        )

    async def poll(self, http: httpx.AsyncClient, cursor: str | None) -> PollResult:
        """Every event of every held journey that is due by now and not yet read past ``cursor``.

        The cursor maps each held referral to how many of its journey's events have been read.
        """
        now = dt.datetime.now(dt.UTC)
        read = _read_cursor(cursor)
        book = _BOOKS.get(self.config.platform, {})
        messages: list[InboundMessage] = []
        progress: dict[str, int] = {}
        for case in sorted(book.values(), key=lambda c: c.received_at):
            events = self.journey(case.referral_id).events
            done = read.get(case.referral_id, 0)
            if done >= len(events):
                # Read to the end, and the reconciler has saved that: the journey is over.
                del book[case.referral_id]
                continue
            while (
                done < len(events)
                and len(messages) < POLL_LIMIT
                and self.due_at(case, events[done]) <= now
            ):
                messages.append(self._message(case, done, events[done]))
                done += 1
            progress[case.referral_id] = done
        return PollResult(messages=messages, cursor=orjson.dumps(progress).decode())

    def _message(self, case: HeldCase, index: int, event: PlannedEvent) -> InboundMessage:
        data: dict[str, Any] = dict(event.data)
        if event.start_day is not None:
            data["start"] = self.due_at(case, event.start_day).isoformat()
        # Stable for this event of this referral: a repeat is dropped, however it comes back.
        message_id = f"{REFERENCE_PREFIX}{case.referral_id}:{index}"
        return InboundMessage(
            message_id=message_id,
            events=[
                InboundEvent(
                    type=event.type,
                    # When it happened on the accelerated clock: never in the future.
                    occurred_at=self.due_at(case, event),
                    idempotency_key=message_id,
                    referral_id=case.referral_id,
                    external_reference=reference_of(case.referral_id),
                    data=data,
                )
            ],
        )


def _read_cursor(cursor: str | None) -> Mapping[str, int]:
    """The cursor as saved; anything else (another adapter's, or none) starts from nothing."""
    if not cursor:
        return {}
    try:
        loaded = orjson.loads(cursor)
    except (orjson.JSONDecodeError, RecursionError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {
        key: value
        for key, value in loaded.items()
        if isinstance(key, str) and isinstance(value, int) and value >= 0
    }


__all__ = [
    "REAL_TIME",
    "SimulatedClock",
    "SimulatorAdapter",
    "SimulatorConfig",
    "forget_all",
    "held",
    "hold",
    "reference_of",
]
