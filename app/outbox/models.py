from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app import caches
from app.db import Base, JSONDoc, UTCDateTime, utcnow


class DestinationKind(StrEnum):
    PLATFORM = "platform"  # a service's platform adapter
    CLINICAL = "clinical"  # a referring organisation's clinical adapter
    WEBHOOK = "webhook"  # a subscription
    REST_HOOK = "rest-hook"  # a FHIR Subscription (R5 Backport IG), app.fhirsubscriptions


class Destination(Base):
    """Somewhere case changes are sent: a service's platform, a referrer's clinical system, or a
    webhook subscription (a worklist). Its circuit columns let one probe test a failing receiver.
    """

    __tablename__ = "destinations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # platform | clinical | webhook
    adapter: Mapped[str] = mapped_column(String(64))  # "webhook" for subscriptions
    service_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("services.id"), nullable=True, index=True
    )
    organisation: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    # Event types sent there; empty means all.
    event_types: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Webhook subscriptions: the receiver, who owns it, and its signing secrets. A signing secret
    # must be usable, so it is stored as issued (API keys, by contrast, are stored hashed).
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    owner_client_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_secret_expires_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime(), nullable=True
    )
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The circuit: consecutive rounds (and, once open, probes) in which every attempt to it failed
    # retryably, counted once per round whatever its size; once open, probe_at says when the next
    # single probe may go (NULL: closed, deliveries flow normally).
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    probe_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def signing_secrets(self, now: dt.datetime) -> list[str]:
        """The secrets that sign now: the current one, and the previous during a rotation."""
        secrets = [self.secret] if self.secret else []
        if (
            self.previous_secret
            and self.previous_secret_expires_at
            and self.previous_secret_expires_at > now
        ):
            secrets.append(self.previous_secret)
        return secrets


# The sets of destinations a referral goes to are remembered (app.outbox.service.destinations_for):
# what decides them, changed in this process, counts at once (its circuit and secrets do not).
caches.watch(
    Destination,
    ("active", "kind", "service_id", "organisation", "event_types"),
    caches.DESTINATIONS,
)


class Delivery(Base):
    """One outbox row: a case event (or an operational event) to send to one destination.

    Its id is sent on every retry (``webhook-id`` / ``X-Request-ID``), so receivers can
    de-duplicate. States: pending → in_flight (claimed, under a lease) → delivered | dead;
    cancelled when its destination goes away.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "state", "next_attempt_at"),
        Index("ix_deliveries_referral_destination", "referral_id", "destination_id", "event_seq"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    destination_id: Mapped[str] = mapped_column(String(36), ForeignKey("destinations.id"))
    # NULL for operational events (delivery.dead_lettered, subscription.disabled).
    referral_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("referrals.id"), nullable=True
    )
    case_event_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("case_events.id"), nullable=True
    )
    event_type: Mapped[str] = mapped_column(String(64))
    event_seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The claim: which process holds it and until when (a dead process's claim lapses).
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The thin webhook body, fixed when the event happened (webhooks and operational events).
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class DeliveryAttempt(Base):
    """Every attempt, kept for the admins: when, how it went, the first 2 KB of the answer."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(36), ForeignKey("deliveries.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | retry | dead | released
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_excerpt: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TopicSubscription(Base):
    """A FHIR Subscription (R5 Backport IG on R4) to a topic: its channel is its destination
    (kind rest-hook: url, organisation, owner, headers in config). Kept here, below the cases,
    because every case change counts its events (app.outbox.topics)."""

    __tablename__ = "topic_subscriptions"

    id: Mapped[str] = mapped_column(String(36), ForeignKey("destinations.id"), primary_key=True)
    topic: Mapped[str] = mapped_column(Text)
    # The topic's filters as asked (name -> value): requester, patient, service, status.
    filters: Mapped[dict[str, str]] = mapped_column(JSONDoc, default=dict)
    content: Mapped[str] = mapped_column(String(16))  # empty | id-only
    status: Mapped[str] = mapped_column(String(16))  # requested | active | error | off
    events_since_start: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_period: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The Subscription as the client sent it (without id and meta): it is read back as sent.
    resource: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
