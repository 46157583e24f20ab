"""The background loop helper (app/loops.py) the dispatcher, reconciler and report drainer share.

No database. Every interval is an hour, so a step that runs again within the test's patience was
started by the loop's own rules (more work, a wake-up, an error pause), never by the clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from app.loops import Loop

HOUR = 3600.0
log = logging.getLogger("tests.loops")


class Steps:
    """A step that records each run and does what the test scripted for it."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)  # per run: "idle", "more", "raise", "wake", "slow"
        self.runs = 0
        self.times: list[float] = []  # when each run began (the event loop's clock)
        self.ran = asyncio.Event()
        self.loop: Loop | None = None

    async def __call__(self) -> bool:
        self.runs += 1
        self.times.append(asyncio.get_running_loop().time())
        self.ran.set()
        action = self.script.pop(0) if self.script else "idle"
        if action == "raise":
            raise RuntimeError("a broken round")
        if action == "wake":
            assert self.loop is not None
            self.loop.wake()  # as a commit that lands mid-round does
        if action == "slow":
            await asyncio.sleep(HOUR)
        return action == "more"

    async def until(self, runs: int) -> None:
        async def reached() -> None:
            while self.runs < runs:
                self.ran.clear()
                await self.ran.wait()

        await asyncio.wait_for(reached(), timeout=10)


def loop_of(steps: Steps, *, interval: float = HOUR, **options: float) -> Loop:
    loop = Loop("test", steps, interval=interval, log=log, failure="test round failed", **options)
    steps.loop = loop
    return loop


async def test_more_work_runs_the_next_step_at_once() -> None:
    steps = Steps("more", "more", "idle")
    loop = loop_of(steps)
    loop.start()
    try:
        await steps.until(3)
        await asyncio.sleep(0.05)
        assert steps.runs == 3  # then it pauses for the interval
    finally:
        await loop.stop()


async def test_a_wake_up_starts_the_next_step_before_the_interval() -> None:
    steps = Steps()
    loop = loop_of(steps)
    loop.start()
    try:
        await steps.until(1)
        loop.wake()
        await steps.until(2)
    finally:
        await loop.stop()


async def test_a_wake_up_during_a_step_is_not_lost() -> None:
    steps = Steps("wake")
    loop = loop_of(steps)
    loop.start()
    try:
        await steps.until(2)
    finally:
        await loop.stop()


async def test_a_failing_step_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps = Steps("raise", "raise", "idle")
    loop = loop_of(steps, after_error=0.01)
    with caplog.at_level(logging.ERROR, logger="tests.loops"):
        loop.start()
        try:
            await steps.until(3)
            assert loop.running
        finally:
            await loop.stop()
    failures = [r for r in caplog.records if r.getMessage() == "test round failed"]
    assert len(failures) == 2 and all(r.exc_info for r in failures)


async def test_stop_lets_a_step_finish_within_the_grace() -> None:
    finished = asyncio.Event()

    async def step() -> bool:
        await asyncio.sleep(0.05)
        finished.set()
        return False

    loop = Loop("test", step, interval=HOUR, log=log, failure="failed")
    loop.start()
    await asyncio.sleep(0.01)
    await loop.stop(grace=10)
    assert finished.is_set()
    assert not loop.running and loop.stopping


async def test_stop_cancels_a_step_that_outlasts_the_grace() -> None:
    steps = Steps("slow")
    loop = loop_of(steps)
    loop.start()
    await steps.until(1)
    await asyncio.wait_for(loop.stop(grace=0.05), timeout=10)
    assert not loop.running
    assert steps.runs == 1


async def test_stop_before_start_and_twice_is_harmless() -> None:
    loop = loop_of(Steps())
    await loop.stop()
    assert not loop.running
    loop = loop_of(Steps())
    loop.start()
    await loop.stop()
    await loop.stop()
    assert not loop.running


async def test_an_idle_loop_waits_longer_each_time_until_woken() -> None:
    """Steps that find nothing double the pause (0.1, 0.2, 0.4, 0.8 s …); a wake-up runs a step
    at once and the pauses start again from the interval. Only lower bounds are timed (a pause
    is never shorter than asked), and the reset is told apart by a 30-fold margin."""
    times: list[float] = []
    steps = Steps()
    loop = Loop("test", steps, interval=0.1, idle_cap=HOUR, log=log, failure="test round failed")
    steps.loop = loop

    async def noted() -> bool:
        times.append(asyncio.get_running_loop().time())
        return await Steps.__call__(steps)

    loop._step = noted
    loop.start()
    try:
        await steps.until(5)
        gaps = [later - earlier for earlier, later in itertools.pairwise(steps.times)]
        assert all(g >= want for g, want in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=True)), gaps
        loop.wake()  # mid-way through a 1.6 s pause
        await steps.until(6)
        # Without the reset the next pause would be 3.2 s, with it 0.1 s.
        await asyncio.wait_for(steps.until(7), timeout=2.0)
    finally:
        await loop.stop()


async def test_without_an_idle_cap_the_pause_stays_the_interval() -> None:
    steps = Steps()
    loop = loop_of(steps, interval=0.05)
    loop.start()
    try:
        # Six steps well within the time a doubling pause would take (0.05 … 1.6 s: 3.15 s).
        await asyncio.wait_for(steps.until(6), timeout=2.5)
    finally:
        await loop.stop()
