from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class SigningKey(Base):
    """A key the bridge signs its own short-lived links with, made by the migration so every
    process of one installation shares it (the journey link)."""

    __tablename__ = "signing_keys"

    purpose: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
