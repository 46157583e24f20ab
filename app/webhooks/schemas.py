from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from app.directory.schemas import SERVICE_ID

_EXAMPLE: JsonDict = {
    "url": "https://worklist.example.org/hooks/spbridge",
    "events": ["referral.received", "referral.cancelled"],
    "service": "life-rooms-halton",
    "description": "Halton pathway advisors' worklist",
}


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    url: str = Field(max_length=2000, description="Where notifications are POSTed (https)")
    events: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Event types to receive; empty for every case event",
    )
    service: str | None = Field(
        default=None, pattern=SERVICE_ID, description="Only this service's cases"
    )
    description: str | None = Field(default=None, max_length=500)


class SubscriptionUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"events": ["referral.received"], "active": True}]},
    )

    url: str | None = Field(default=None, max_length=2000)
    events: list[str] | None = Field(default=None, max_length=50)
    service: str | None = Field(default=None, pattern=SERVICE_ID)
    description: str | None = Field(default=None, max_length=500)
    active: bool | None = Field(
        default=None, description="Re-enable a disabled subscription, or pause one"
    )


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"overlap": 86400}]})

    overlap: int = Field(
        default=86400,
        ge=0,
        le=7 * 86400,
        description="Seconds the old secret keeps signing alongside the new one",
    )


class SubscriptionOut(BaseModel):
    id: str
    url: str
    events: list[str]
    service: str | None
    description: str | None
    organisation: str | None
    active: bool
    disabled_reason: str | None
    failing_since: dt.datetime | None
    created_at: dt.datetime


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="The signing secret (whsec_…); shown only now")


class SecretRotated(BaseModel):
    id: str
    secret: str = Field(description="The new signing secret; shown only now")
    previous_secret_expires_at: dt.datetime


class PingResult(BaseModel):
    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: int
