"""The background work of a process: the dispatcher, the platform reconciler and the report
read model's queue.

`spbridge serve` runs it in-process (unless told not to); `spbridge worker` runs only this, so
on PostgreSQL any number of workers share the queue.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import httpx

from app.config import Settings
from app.db import Database
from app.delivery.dispatcher import Dispatcher
from app.delivery.senders import standard_senders
from app.outbound import outbound_client
from app.platform.reconcile import Reconciler
from app.reports.drainer import ReportDrainer
from app.reports.version import check_at_startup as check_report_model

log = logging.getLogger("spbridge.worker")


class Background:
    def __init__(self, database: Database, settings: Settings, http: httpx.AsyncClient) -> None:
        # The senders by destination kind, made here (not registered by imports).
        self.dispatcher = Dispatcher(database, settings, http, senders=standard_senders(settings))
        self.reconciler = Reconciler(database, settings, http)
        self.report_drainer = ReportDrainer(database)

    def start(self) -> None:
        self.dispatcher.start()
        self.reconciler.start()
        self.report_drainer.start()

    async def stop(self) -> None:
        await self.report_drainer.stop()
        await self.reconciler.stop()
        await self.dispatcher.stop()


async def run_worker(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then finish or release the deliveries in flight."""
    database = Database.from_settings(settings)
    await database.follow_changes()  # caches forget other processes' changes (PostgreSQL)
    http = outbound_client(settings)
    await check_report_model(database)
    background = Background(database, settings, http)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    background.start()
    log.info("worker %s running", background.dispatcher.name)
    try:
        await stopping.wait()
    finally:
        await background.stop()
        await http.aclose()
        await database.dispose()
