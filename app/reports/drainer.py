"""The background half of the reporting read model: takes the cases writes queued
(app.reports.projection.note_pending) into the counters every second, a batch at a time, so the
queue a report drains before it reads stays short."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import select

from app.cases.models import ReportPendingCase
from app.db import Database, FailedRounds, transaction
from app.reports import projection

log = logging.getLogger("spbridge.reports")


class ReportDrainer:
    def __init__(self, database: Database, *, interval: float = 1.0, batch: int = 500) -> None:
        self.database = database
        self.interval = interval
        self.batch = batch
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="report-drainer")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        failures = FailedRounds(log, "draining the report queue failed", first=self.interval)
        while not self._stopping.is_set():
            pause = self.interval
            try:
                # A full batch means more may be waiting: go on without pausing.
                while await self.run_once() >= self.batch and not self._stopping.is_set():
                    pass
                failures.succeeded()
            except Exception as exc:  # the queue stays as it was: the next round takes it
                pause = failures.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=pause)

    async def run_once(self) -> int:
        """Drain one batch in its own transaction; returns how many cases it took."""
        # Look first, in a read transaction: on SQLite a write transaction takes the database's
        # one write lock, which intake would otherwise wait for every second for nothing.
        async with transaction(self.database.read_sessions) as session:
            if await session.scalar(select(ReportPendingCase.case_id).limit(1)) is None:
                return 0
        async with transaction(self.database.write_sessions) as session:
            return await session.run_sync(projection.drain, self.batch)
