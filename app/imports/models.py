"""An import job: one NDJSON file taken in, a referral with its events at a time (app.imports)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc, UTCDateTime


class ImportJob(Base):
    """What an import has done so far: counts, the refused lines (line number, field, reason;
    never the value), and where it got to. A job stopped midway is taken up again by importing
    the same file again: what is held already is skipped, the rest loaded."""

    __tablename__ = "import_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The file's SHA-256: the same file imported again resumes its job.
    digest: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # queued, running, done, failed, stopped
    deliver: Mapped[bool] = mapped_column(Boolean)
    client_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    lines: Mapped[int] = mapped_column(Integer)
    referrals: Mapped[int] = mapped_column(Integer)  # referrals in the file
    done: Mapped[int] = mapped_column(Integer)  # referrals taken (loaded, held, or refused)
    created: Mapped[int] = mapped_column(Integer)  # referrals made
    unchanged: Mapped[int] = mapped_column(Integer)  # referrals held already, nothing new
    events: Mapped[int] = mapped_column(Integer)  # events applied
    refused: Mapped[int] = mapped_column(Integer)  # referrals refused (nothing of them loaded)
    refusals: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
