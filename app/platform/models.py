from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class PlatformMessage(Base):
    """A platform message already applied: a repeat (webhook retry, poll overlap) is skipped."""

    __tablename__ = "platform_messages"
    __table_args__ = (UniqueConstraint("service_id", "message_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(String(64), ForeignKey("services.id"))
    message_id: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(16))  # webhook | poll
    event_count: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
