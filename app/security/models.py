from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app import caches
from app.db import Base, JSONDoc, UTCDateTime, utcnow


class ApiClient(Base):
    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    organisation: Mapped[str] = mapped_column(String(16), index=True)
    # Other organisations (ODS codes) it may refer for, named by the installation's admin (a
    # trust's integration engine sending for several): ServiceRequest.requester must be one of
    # them or its own organisation.
    acts_for: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    default_service_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("services.id"), nullable=True
    )
    # SHA-256 of the key: keys are long random strings, so a fast hash is enough (DESIGN §10).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # OAuth2 client credentials (app/security/oauth.py). The client secret, like the key, is kept
    # as SHA-256 only; the one it replaced keeps working until previous_secret_expires_at.
    secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_secret_expires_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime(), nullable=True
    )
    # The public key (JWK) the client signs its private_key_jwt assertions with: public, so kept
    # as registered; the one it replaced is accepted until previous_public_key_expires_at.
    public_key_jwk: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    previous_public_key_jwk: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    previous_public_key_expires_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime(), nullable=True
    )


# Who a key is, is remembered (app.security.auth.PrincipalCache): what a principal is made of,
# changed in this process, counts at once, whatever code changed it.
caches.watch(
    ApiClient,
    ("name", "role", "organisation", "acts_for", "default_service_id", "key_hash", "revoked_at"),
    caches.PRINCIPALS,
)


class OAuthJti(Base):
    """The jti of every client assertion accepted, until it expires: a reuse is refused
    (the unique constraint decides, also under concurrent requests)."""

    __tablename__ = "oauth_jtis"
    __table_args__ = (UniqueConstraint("client_id", "jti"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(36), ForeignKey("api_clients.id"))
    jti: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
