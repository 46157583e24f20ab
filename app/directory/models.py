from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app import caches
from app.db import Base, JSONDoc, UTCDateTime, utcnow


class SocialPrescribingService(Base):
    """A service that receives referrals (e.g. The Life Rooms), and the adapter that serves it."""

    __tablename__ = "services"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    organisation: Mapped[str] = mapped_column(String(16), index=True)
    # The platform adapter; its configuration is on the service's platform destination
    # (app.outbox.models.Destination), which a service whose adapter does not deliver lacks.
    adapter: Mapped[str] = mapped_column(String(64))
    # Retired (migration 0010 copied it to the platform destination): never read, written empty.
    # The column stays one release, so processes of the previous release keep working during a
    # rolling upgrade (docs/DEPLOYMENT.md: add before taking away); the next release drops it.
    _retired_adapter_config: Mapped[dict[str, Any]] = mapped_column(
        "adapter_config", JSONDoc, default=dict
    )
    # Whether the adapter holds the service's cases on its platform (set when the service is
    # registered): changes are then made there and come back, never through the case API.
    delivers: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Worklist flags: days within which a new referral should be contacted, and how long support
    # usually lasts from first contact (the pilot's six weeks).
    first_contact_target_days: Mapped[int] = mapped_column(Integer, default=7)
    support_window_days: Mapped[int] = mapped_column(Integer, default=42)
    # Reconciliation poll of the platform: where the event feed was read to, and when the next
    # poll is due (also a lease, so one process polls a service at a time).
    poll_cursor: Mapped[str | None] = mapped_column(Text, nullable=True)
    poll_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


# Services are remembered (app.directory.service.service_by_id): a change in this process counts
# at once. The reconciliation's poll columns, rewritten at every poll, are not what is read.
caches.watch(
    SocialPrescribingService,
    (
        "name",
        "organisation",
        "adapter",
        "_retired_adapter_config",
        "delivers",
        "first_contact_target_days",
        "support_window_days",
    ),
    caches.SERVICES,
)
