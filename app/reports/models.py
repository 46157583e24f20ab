"""The reporting read model (app.reports.projection keeps it): one fact row per case and counters
by (service, referring team, month, measure, key), so a report reads thousands of rows, not the
millions of events they summarise."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc, UTCDateTime


class ReportCaseFact(Base):
    """What one case adds to the counters (``contributions``), kept so that the next change to
    the case adds only the difference; and the waits, for exact percentiles."""

    __tablename__ = "report_case_facts"
    __table_args__ = (
        Index("ix_report_case_facts_contact", "service_id", "contact_bucket", "received_at"),
        Index("ix_report_case_facts_attended", "service_id", "attended_bucket", "received_at"),
    )

    case_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(64))
    team: Mapped[str] = mapped_column(Text)  # the referring team, '' when none
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    first_contact_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    first_attended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The waits in hour buckets (app.reports.projection.wait_bucket): a percentile is read from
    # the counters down to its bucket, then from the few fact rows in that bucket.
    contact_bucket: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attended_bucket: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # {"month\x1fmeasure\x1fkey": n}
    contributions: Mapped[dict[str, Any]] = mapped_column(JSONDoc)


class ReportCount(Base):
    """The sum of every case's contributions: n things (or people) of ``measure`` / ``key`` in
    ``month`` ('YYYY-MM', UTC) for the service's referrals from ``team``."""

    __tablename__ = "report_counts"

    service_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    measure: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    team: Mapped[str] = mapped_column(Text, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class ReportModelState(Base):
    """One row: which counting (app.reports.projection.MODEL_VERSION) the read model holds, and
    the rebuild under way, if any (app.reports.version, app.reports.rebuild)."""

    __tablename__ = "report_model_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    # Every case's contributions are of this version (0: never built).
    version: Mapped[int] = mapped_column(Integer)
    # A rebuild to this version is under way (or was stopped), done up to this case id.
    rebuilding: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rebuilt_through: Mapped[str | None] = mapped_column(String(36), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
