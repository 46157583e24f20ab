from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc, UTCDateTime, utcnow


class Destination(Base):
    """Somewhere a service's case changes are sent: its platform, a clinical system, a webhook."""

    __tablename__ = "destinations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # platform | clinical | webhook
    adapter: Mapped[str] = mapped_column(String(64))
    service_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("services.id"), nullable=True, index=True
    )
    organisation: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    # Event types sent there; empty means all.
    event_types: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Delivery(Base):
    """One outbox row: a case event to send to one destination. Its id is sent on every retry."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "state", "next_attempt_at"),
        Index("ix_deliveries_referral_destination", "referral_id", "destination_id", "event_seq"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    destination_id: Mapped[str] = mapped_column(String(36), ForeignKey("destinations.id"))
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id"))
    case_event_id: Mapped[str] = mapped_column(String(36), ForeignKey("case_events.id"))
    event_type: Mapped[str] = mapped_column(String(64))
    event_seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
