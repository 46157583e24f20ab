from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class PurgeRun(Base):
    """One run of ``spbridge purge`` that changed the database (dry runs change nothing and
    leave no row): when, under which cutoff, how many referrals, and who ran it. Append-only."""

    __tablename__ = "purge_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Cases closed before this instant had their patient data removed.
    cutoff: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    retention_days: Mapped[int] = mapped_column(Integer)
    referrals_purged: Mapped[int] = mapped_column(Integer)
    run_by: Mapped[str] = mapped_column(String(128))
