"""A referral and its social prescribing case: one aggregate (DESIGN §5). The case is the
service's side of the referral, one each; the events and records (appointments, social
prescriptions, wellbeing scores) belong to the case."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, JSONDoc, UTCDateTime, utcnow


class Referral(Base):
    """One per (requesting organisation, ServiceRequest.identifier) (DESIGN §5)."""

    __tablename__ = "referrals"
    __table_args__ = (
        # The idempotency guarantee: concurrent repeats collide here (DESIGN §10).
        UniqueConstraint("organisation", "identifier_system", "identifier_value"),
        Index("ix_referrals_created_at_id", "created_at", "id"),
        # Reports: a service's referrals received in a period (app/reports); by service alone
        # too (its leading column: no index of its own to keep up on every insert).
        Index("ix_referrals_service_id_created_at", "service_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    organisation: Mapped[str] = mapped_column(String(16))
    identifier_system: Mapped[str] = mapped_column(String(255))
    identifier_value: Mapped[str] = mapped_column(String(255))
    service_id: Mapped[str] = mapped_column(String(64), ForeignKey("services.id"))
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
    # How the referral came when not by FHIR REST (app.bars: a BaRS message): the channel, the
    # message's Bundle id and its source endpoint, which responses go back to. Never patient data.
    origin: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)

    # Loaded only when a query asks for it (a join or selectinload): never by surprise.
    case: Mapped[Case] = relationship(back_populates="referral", lazy="raise")


class Patient(Base):
    """The patient as one referral described them (the bundled or contained Patient, else its
    subject's NHS number): a FHIR Patient of its own, one per referral, seen by whoever sees the
    referral. A referral's amendment of the contact details makes a new version."""

    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the FHIR id
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id"), unique=True)
    # The Patient as accepted, without id and meta.
    resource: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_updated: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ResourceVersion(Base):
    """Every version of every FHIR resource we serve, as it was served (vread, _history): kept
    when the version is made, in the same transaction. Read through the referral's visibility."""

    __tablename__ = "resource_versions"

    resource_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id"), index=True)
    last_updated: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    resource: Mapped[dict[str, Any]] = mapped_column(JSONDoc)


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (
        # The worklist: a service's cases, oldest first (and a service's cases at all).
        Index("ix_cases_service_id_created_at", "service_id", "created_at"),
        # Task searches: what changed since (a referrer polls _lastUpdated=gt…).
        Index("ix_cases_updated_at_id", "updated_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # also the FHIR Task id
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id"), unique=True)
    service_id: Mapped[str] = mapped_column(String(64), ForeignKey("services.id"))
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
    # What the Task lists in output: [{"type": code, "reference": "Appointment/…"}], in order.
    outputs: Mapped[list[dict[str, str]]] = mapped_column(JSONDoc, default=list)
    # The plain-language summary sent back when the case closes (Task.note).
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_event_seq: Mapped[int] = mapped_column(Integer, default=0)
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    referral: Mapped[Referral] = relationship(back_populates="case", lazy="raise")


class CaseEvent(Base):
    """Append-only: events are never updated or deleted (DESIGN §5)."""

    __tablename__ = "case_events"
    __table_args__ = (
        # (case_id, seq) also serves lookups by case alone: no index of its own.
        UniqueConstraint("case_id", "seq"),
        UniqueConstraint("case_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), ForeignKey("cases.id"))
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
    # The FHIR resources this event made or changed ("Appointment/<id>", …), sent with the Task.
    resources: Mapped[list[str]] = mapped_column(JSONDoc, default=list)


class Appointment(Base):
    """An appointment of a case, as the advisor or platform recorded it; a FHIR Appointment."""

    __tablename__ = "appointments"
    __table_args__ = (UniqueConstraint("case_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the FHIR id
    case_id: Mapped[str] = mapped_column(String(36), ForeignKey("cases.id"))
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id"), index=True)
    # The advisor's or platform's own id for it: later events name it.
    external_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # booked | fulfilled | noshow | cancelled
    appointment_type: Mapped[str] = mapped_column(String(16))  # face-to-face | telephone | group
    start: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    minutes: Mapped[int] = mapped_column(Integer)
    # Minutes actually spent, when an attended appointment says.
    attended_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reschedules: Mapped[int] = mapped_column(Integer, default=0)
    cancelled_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    booked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())  # occurred_at of the booking
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Never loaded: it tells the unit of work a case's row goes in before its records' (it
    # orders tables it knows no relationship between by class name, Appointment before Case).
    case: Mapped[Case] = relationship(lazy="raise", viewonly=False)


class Prescription(Base):
    """A social prescription co-produced with the person; a FHIR ServiceRequest basedOn the
    referral."""

    __tablename__ = "prescriptions"
    __table_args__ = (UniqueConstraint("case_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), ForeignKey("cases.id"))
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(255))
    category: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(Text)
    activity: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # proposed | active | completed | declined
    prescribed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Never loaded: it tells the unit of work a case's row goes in before its records' (it
    # orders tables it knows no relationship between by class name, Appointment before Case).
    case: Mapped[Case] = relationship(lazy="raise", viewonly=False)


class WellbeingScore(Base):
    """One SWEMWBS measurement: the seven answers (a QuestionnaireResponse) and the score (an
    Observation derived from it)."""

    __tablename__ = "wellbeing_scores"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the Observation id
    questionnaire_response_id: Mapped[str] = mapped_column(String(36), unique=True)
    case_id: Mapped[str] = mapped_column(String(36), ForeignKey("cases.id"), index=True)
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id"), index=True)
    instrument: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(16))  # start | review | end
    items: Mapped[list[int]] = mapped_column(JSONDoc)
    raw_score: Mapped[int] = mapped_column(Integer)
    metric_score: Mapped[float] = mapped_column(Float)
    measured_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Never loaded: it tells the unit of work a case's row goes in before its records' (it
    # orders tables it knows no relationship between by class name, Appointment before Case).
    case: Mapped[Case] = relationship(lazy="raise", viewonly=False)


# A record a case keeps besides its events, each the source of a FHIR resource.
Record = Appointment | Prescription | WellbeingScore


class ReportPendingCase(Base):
    """A case written since the reports' read model last took it in: every writer queues the
    cases it changed here (app.cases.after_write; one small insert, on no shared row), and
    app.reports drains the queue into the model in batches: before every report, and every
    second in the background."""

    __tablename__ = "report_pending_cases"

    case_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # When it was first noted (a later write to the same case keeps it): the queue's age.
    noted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
