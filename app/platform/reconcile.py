"""Reconciliation: ask platforms that can be polled for the events we may have missed.

Webhooks get lost (the platform gave up, our endpoint was down). Each polled message goes through
the same de-duplication and domain path as a webhook, so overlap costs nothing.
"""

from __future__ import annotations

import datetime as dt
import logging

import httpx
from sqlalchemy import or_, select

from adapters import registry
from adapters.base import AdapterError, PlatformAdapter
from app.config import Settings
from app.db import Database, transaction, utcnow
from app.directory.models import SocialPrescribingService
from app.errors import AppError, NotFound
from app.loops import Loop
from app.platform.service import apply_message, platform_adapter

log = logging.getLogger("spbridge.platform")


def _polling_adapters() -> list[str]:
    return [
        name
        for name, cls in registry.ADAPTERS.items()
        if issubclass(cls, PlatformAdapter) and cls.polls
    ]


class Reconciler:
    def __init__(self, database: Database, settings: Settings, http: httpx.AsyncClient) -> None:
        self.database = database
        self.settings = settings
        self.http = http
        self._postgres = database.engine.dialect.name == "postgresql"
        self._loop = Loop(
            "reconciler",
            self._round,
            interval=min(settings.reconcile_interval, 30.0),
            # A failed poll waits as long as a quiet one: the services' cursors stay put.
            cap=min(settings.reconcile_interval, 30.0),
            log=log,
            failure="reconciliation round failed",
        )

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _round(self) -> bool:
        await self.run_once()
        return False

    async def run_once(self, now: dt.datetime | None = None) -> int:
        """Poll every service that is due; returns how many messages were applied."""
        now = now or utcnow()
        adapters = _polling_adapters()
        if not adapters:
            return 0
        due: list[tuple[str, str | None]] = []
        async with transaction(self.database.write_sessions) as session:
            query = select(SocialPrescribingService).where(
                SocialPrescribingService.adapter.in_(adapters),
                or_(
                    SocialPrescribingService.poll_due_at.is_(None),
                    SocialPrescribingService.poll_due_at <= now,
                ),
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            for service in await session.scalars(query):
                # Taking the due time forward is also the lease: one process polls a service.
                service.poll_due_at = now + dt.timedelta(seconds=self.settings.reconcile_interval)
                due.append((service.id, service.poll_cursor))
        applied = 0
        for service_id, cursor in due:
            applied += await self._reconcile(service_id, cursor)
        return applied

    async def _reconcile(self, service_id: str, cursor: str | None) -> int:
        async with transaction(self.database.read_sessions) as session:
            service = await session.get(SocialPrescribingService, service_id)
            if service is None:
                return 0
            try:
                adapter = await platform_adapter(session, service)
            except NotFound:
                log.warning("platform not configured for polling", extra={"service": service_id})
                return 0
        try:
            result = await adapter.poll(self.http, cursor)
        except AdapterError as exc:
            log.warning("platform poll failed", extra={"service": service_id, "error": str(exc)})
            return 0
        applied = 0
        async with transaction(self.database.write_sessions) as session:
            service = await session.get(SocialPrescribingService, service_id, with_for_update=True)
            if service is None:
                return 0
            for message in result.messages:
                try:
                    async with session.begin_nested():
                        outcome = await apply_message(session, service, message, channel="poll")
                except AppError as exc:
                    # One refused message must not hold the feed back; it stays in the log.
                    log.warning(
                        "platform message refused",
                        extra={
                            "service": service_id,
                            # "message" is a LogRecord attribute: logging refuses it in extra.
                            "message_id": message.message_id,
                            "error": exc.diagnostics,
                        },
                    )
                    continue
                if not outcome.duplicate:
                    applied += outcome.events
            service.poll_cursor = result.cursor
        return applied
