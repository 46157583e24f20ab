from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class BarsMessage(Base):
    """A BaRS message already processed, by its sender's X-Request-ID: a repeat is 409
    REC_CONFLICT (BaRS), also under concurrent repeats (the unique constraint decides)."""

    __tablename__ = "bars_messages"
    __table_args__ = (UniqueConstraint("organisation", "request_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organisation: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str] = mapped_column(String(128))
    bundle_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(String(16))  # new | update | cancel
    referral_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("referrals.id"), nullable=True, index=True
    )
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
