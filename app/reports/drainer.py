"""The background half of the reporting read model: takes the cases writes queued
(app.cases.after_write.queue_for_reports) into the counters every second, a batch at a time, so
the queue a report drains before it reads stays short. A process whose counting is older than the
model's (app.reports.version: a rolling upgrade) leaves the queue to the newer ones."""

from __future__ import annotations

import logging

from sqlalchemy import select

from app.cases.models import ReportPendingCase
from app.db import Database, transaction
from app.loops import Loop
from app.reports import projection, version

log = logging.getLogger("spbridge.reports")


class ReportDrainer:
    def __init__(self, database: Database, *, interval: float = 1.0, batch: int = 500) -> None:
        self.database = database
        self.interval = interval
        self.batch = batch
        self._loop = Loop(
            "report-drainer",
            self._round,
            interval=interval,
            log=log,
            failure="draining the report queue failed",
        )

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _round(self) -> bool:
        # A full batch means more may be waiting: go on without pausing.
        return await self.run_once() >= self.batch

    async def run_once(self) -> int:
        """Drain one batch in its own transaction; returns how many cases it took."""
        # Look first, in a read transaction: on SQLite a write transaction takes the database's
        # one write lock, which intake would otherwise wait for every second for nothing.
        async with transaction(self.database.read_sessions) as session:
            if await session.scalar(select(ReportPendingCase.case_id).limit(1)) is None:
                return 0
            if (await version.state(session)).newer:
                return 0
        async with transaction(self.database.write_sessions) as session:
            return await session.run_sync(projection.drain, self.batch)
