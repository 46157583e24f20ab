from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class AuditRecord(Base):
    """One access to patient data: who (client, role, organisation), what (action, interaction,
    resource), when, with what outcome, under which request. Append-only: the database refuses
    UPDATE and DELETE (triggers made by migration 0007), and no API changes a row."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_client_recorded", "client_id", "recorded_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    # api: a request; cli: an operator command (purge).
    source: Mapped[str] = mapped_column(String(8))
    client_id: Mapped[str | None] = mapped_column(String(64))
    agent_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(32))
    organisation: Mapped[str | None] = mapped_column(String(32), index=True)
    # FHIR AuditEvent.action (C R U D E) and the RESTful interaction (AuditEvent.subtype).
    action: Mapped[str] = mapped_column(String(1))
    interaction: Mapped[str] = mapped_column(String(32))
    method: Mapped[str | None] = mapped_column(String(8))
    route: Mapped[str | None] = mapped_column(String(200))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    # FHIR AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure (ours).
    outcome: Mapped[str] = mapped_column(String(2))
    status: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))
    correlation_id: Mapped[str | None] = mapped_column(String(128))


class AuditedPatient(Base):
    """A patient an audit record touched, by keyed pseudonym (never the NHS number), with the
    referral through which they were reached."""

    __tablename__ = "audit_event_patients"

    audit_event_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("audit_events.id"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient: Mapped[str] = mapped_column(String(10), index=True)
    referral_id: Mapped[str | None] = mapped_column(String(36), index=True)
