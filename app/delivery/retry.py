"""When to try a delivery again (DESIGN §3): pure functions, so the schedule can be tested alone."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence

# Jitter spreads retries of many deliveries that failed together (one outage) over time.
JITTER = 0.2


def delay_after(
    failures: int,
    schedule: Sequence[float],
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``failures``-th failure: the schedule's step (the last one
    repeats) with ±20 % jitter, and never less than the receiver's ``Retry-After``."""
    step = schedule[min(max(failures, 1), len(schedule)) - 1]
    delay = step * (1 + (rng or random).uniform(-JITTER, JITTER))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(delay, 0.0)


def next_attempt_at(
    failures: int,
    created_at: dt.datetime,
    now: dt.datetime,
    schedule: Sequence[float],
    max_age: float,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> dt.datetime | None:
    """When to try again, or None when the delivery has been retried for ``max_age`` seconds
    (it then goes to the dead letters)."""
    if (now - created_at).total_seconds() >= max_age:
        return None
    delay = delay_after(failures, schedule, retry_after=retry_after, rng=rng)
    # A Retry-After beyond the retry window still gets one last try at the window's end.
    deadline = created_at + dt.timedelta(seconds=max_age)
    return min(now + dt.timedelta(seconds=delay), max(deadline, now))
