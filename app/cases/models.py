from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc, UTCDateTime, utcnow


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # also the FHIR Task id
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id"), unique=True)
    service_id: Mapped[str] = mapped_column(String(64), ForeignKey("services.id"), index=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    business_status: Mapped[str] = mapped_column(String(64))
    task_status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Last in-progress business status, restored when a case resumes from hold.
    progress_status: Mapped[str | None] = mapped_column(String(64), nullable=True)
    first_contact_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    team: Mapped[str | None] = mapped_column(String(255), nullable=True)
    advisor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    external_reference: Mapped[str | None] = mapped_column(String(255), nullable=True)
    last_event_seq: Mapped[int] = mapped_column(Integer, default=0)
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CaseEvent(Base):
    """Append-only: events are never updated or deleted (DESIGN §5)."""

    __tablename__ = "case_events"
    __table_args__ = (
        UniqueConstraint("case_id", "seq"),
        UniqueConstraint("case_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), ForeignKey("cases.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(64), index=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    source: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    client_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
