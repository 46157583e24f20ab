from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc, UTCDateTime, utcnow


class Referral(Base):
    """One per (requesting organisation, ServiceRequest.identifier) (DESIGN §5)."""

    __tablename__ = "referrals"
    __table_args__ = (
        # The idempotency guarantee: concurrent repeats collide here (DESIGN §10).
        UniqueConstraint("organisation", "identifier_system", "identifier_value"),
        Index("ix_referrals_created_at_id", "created_at", "id"),
        # Reports: a service's referrals received in a period (app/reports).
        Index("ix_referrals_service_id_created_at", "service_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    organisation: Mapped[str] = mapped_column(String(16))
    identifier_system: Mapped[str] = mapped_column(String(255))
    identifier_value: Mapped[str] = mapped_column(String(255))
    service_id: Mapped[str] = mapped_column(String(64), ForeignKey("services.id"), index=True)
    client_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    intent: Mapped[str] = mapped_column(String(32))
    priority: Mapped[str | None] = mapped_column(String(16), nullable=True)
    authored_on: Mapped[str] = mapped_column(String(40))
    # Patient: no more than the referral carries.
    nhs_number: Mapped[str] = mapped_column(String(10), index=True)
    patient_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    birth_date: Mapped[str | None] = mapped_column(String(10), nullable=True)
    gender: Mapped[str | None] = mapped_column(String(16), nullable=True)
    postcode: Mapped[str | None] = mapped_column(Text, nullable=True)
    phone: Mapped[str | None] = mapped_column(Text, nullable=True)
    requester_reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    requester_display: Mapped[str | None] = mapped_column(Text, nullable=True)
    requester_ods: Mapped[str | None] = mapped_column(Text, nullable=True)
    referring_team: Mapped[str | None] = mapped_column(Text, nullable=True)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, default=list)
    consent_reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The ServiceRequest as accepted (bundled resources contained), without id and meta.
    resource: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_updated: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # What reports count, taken at intake and kept by the retention purge: the age band on the
    # day of referral, who referred (CodeSystem referral-source), the person's staff group
    # (CodeSystem staff-group) and whether one person or a team is referred.
    age_band: Mapped[str | None] = mapped_column(String(16), nullable=True)
    referral_source: Mapped[str | None] = mapped_column(String(32), nullable=True)
    staff_group: Mapped[str | None] = mapped_column(String(32), nullable=True)
    referral_unit: Mapped[str] = mapped_column(String(16), default="individual")
    # When `spbridge purge` removed the patient data (retention); reads then answer 410 Gone.
    purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
