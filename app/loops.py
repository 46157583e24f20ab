"""A background loop, written once: the dispatcher, the platform reconciler and the report drainer
each run one step again and again in a task of their own.

A step returns whether more work is waiting: then the next step starts at once, otherwise after
``interval`` seconds, or sooner when someone calls ``wake()``. Given ``idle_cap``, the pause
doubles with each step in a row that found nothing, up to ``idle_cap`` seconds, and is
``interval`` again after work or a wake-up: an idle process polls the database less. A step that
raises is logged once (app.db.FailedRounds: a warning without a stack when the database is
unavailable) and the loop goes on after ``after_error`` seconds, doubling while steps keep
failing, up to ``cap``: one broken round must not stop the work for good, and a database that is
down is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from app.db import FailedRounds

Step = Callable[[], Awaitable[bool]]


class Loop:
    def __init__(
        self,
        name: str,
        step: Step,
        *,
        interval: float,
        after_error: float | None = None,
        cap: float = 10.0,
        idle_cap: float | None = None,
        log: logging.Logger,
        failure: str,
    ) -> None:
        self.name = name
        self.interval = interval
        self.idle_cap = max(interval, idle_cap or interval)
        self.after_error = interval if after_error is None else after_error
        self._step = step
        self._failures = FailedRounds(log, failure, self.after_error, max(cap, self.after_error))
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=self.name)

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        """Started, not stopped, and not ended by an error (readiness checks ask this)."""
        return self._task is not None and not self._task.done()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        idle = self.interval
        while not self._stopping.is_set():
            # Cleared before the step, not after it: a wake-up that lands mid-step is not lost,
            # the pause after it returns at once.
            self._wake.clear()
            try:
                more = await self._step()
            except Exception as exc:
                await self._pause(self._failures.failed(exc, worker=self.name))
                continue
            self._failures.succeeded()
            if more:
                idle = self.interval
                continue
            woken = await self._pause(idle)
            idle = self.interval if woken else min(idle * 2, self.idle_cap)

    async def _pause(self, seconds: float) -> bool:
        """Whether a wake-up ended the pause (not its time)."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float = 0.0) -> None:
        """Let the step in progress finish (up to ``grace`` seconds), else cancel it."""
        self._stopping.set()
        self._wake.set()
        if self._task is None:
            return
        if grace > 0:
            await asyncio.wait({self._task}, timeout=grace)
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
