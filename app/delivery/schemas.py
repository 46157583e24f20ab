from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DeliveryState = Literal["pending", "in_flight", "delivered", "dead", "cancelled"]


class AttemptOut(BaseModel):
    number: int
    started_at: dt.datetime
    duration_ms: int
    outcome: str = Field(description="delivered, retry, dead or released")
    status_code: int | None
    response_excerpt: str | None = Field(description="First 2 KB of the receiver's answer")
    error: str | None
    worker: str | None


class DeliveryOut(BaseModel):
    id: str = Field(description="Sent on every attempt as webhook-id / X-Request-ID")
    destination_id: str
    destination_kind: str
    adapter: str
    referral_id: str | None
    event_type: str
    event_seq: int
    state: DeliveryState
    attempts: int
    next_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None
    correlation_id: str | None


class DeliveryDetail(DeliveryOut):
    history: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class ReplayFilter(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"destination": "4c1f0a52-…", "event_type": None}]},
    )

    destination: str | None = None
    referral: str | None = None
    event_type: str | None = None
    dead_since: dt.datetime | None = Field(default=None, description="Only dead letters newer")


class ReplayResult(BaseModel):
    replayed: int
    ids: list[str] = Field(description="The deliveries put back in the queue (at most 1000)")


class DestinationQueue(BaseModel):
    destination_id: str
    kind: str
    adapter: str
    service_id: str | None
    organisation: str | None
    active: bool
    circuit: Literal["closed", "open"]
    failing_since: dt.datetime | None
    consecutive_failures: int
    by_state: dict[str, int]
    oldest_pending_age_seconds: float | None
    attempts: int


class QueueStats(BaseModel):
    by_state: dict[str, int]
    oldest_pending_age_seconds: float | None
    attempts: int
    destinations: list[DestinationQueue]
