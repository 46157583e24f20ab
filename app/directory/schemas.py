from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.fhir.codes import ODS_CODE

# A service id: also its FHIR HealthcareService id.
SERVICE_ID = r"^[A-Za-z0-9\-.]{1,64}$"

FIRST_CONTACT_TARGET = (
    "Days within which a new referral should be contacted; the worklist flags a case "
    "`first_contact_overdue` after it (default 7)"
)
SUPPORT_WINDOW = (
    "Days support usually lasts from first contact; the worklist flags a case "
    "`support_window_exceeded` after it (default 42, six weeks)"
)


class ServiceCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "life-rooms-halton",
                    "name": "The Life Rooms, Halton",
                    "organisation": "RW4LR",
                    "adapter": "local",
                    "first_contact_target_days": 7,
                    "support_window_days": 42,
                }
            ]
        },
    )

    id: str = Field(pattern=SERVICE_ID, description="Also the FHIR HealthcareService id")
    name: str = Field(min_length=1, max_length=200)
    organisation: str = Field(
        pattern=ODS_CODE, description="ODS code of the providing organisation"
    )
    adapter: str = Field(description="Platform adapter that holds the cases (`local`: the bridge)")
    adapter_config: dict[str, Any] = Field(default_factory=dict)
    first_contact_target_days: int = Field(
        default=7, ge=1, le=365, description=FIRST_CONTACT_TARGET
    )
    support_window_days: int = Field(default=42, ge=1, le=730, description=SUPPORT_WINDOW)


class ServiceOut(BaseModel):
    id: str
    name: str
    organisation: str
    adapter: str
    first_contact_target_days: int = Field(description=FIRST_CONTACT_TARGET)
    support_window_days: int = Field(description=SUPPORT_WINDOW)
    created_at: dt.datetime


class ClinicalRouteIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "adapter": "fhir_push",
                    "adapter_config": {
                        "base_url": "https://rio.example-trust.nhs.uk/fhir",
                        "auth": {
                            "type": "oauth2",
                            "token_url": "https://rio.example-trust.nhs.uk/oauth2/token",
                            "client_id": "spbridge",
                            "client_secret": "…",
                        },
                    },
                }
            ]
        },
    )

    adapter: str = Field(
        description="Clinical adapter that sends updates back (`fhir_push`: FHIR writes; "
        "`bars`: BaRS servicerequest-response messages to the sender's $process-message)"
    )
    adapter_config: dict[str, Any] = Field(default_factory=dict)
    active: bool = True


class ClinicalRouteOut(BaseModel):
    organisation: str
    adapter: str
    active: bool
    destination_id: str
    updated_at: dt.datetime
    write_mode: str | None = Field(
        default=None,
        description="`fhir_push`: how updates are written (`auto`: the best mode the server's "
        "CapabilityStatement offers; or `transaction`, `conditional`, `update` pinned)",
    )
    capabilities: dict[str, Any] | None = Field(
        default=None,
        description="`fhir_push`: what the server's CapabilityStatement said when the route was "
        "saved or refreshed: the write modes it supports for every type the bridge writes, best "
        "first, when it was read, or why it could not be (`problem`); null: not read yet (it is "
        "read at the first send)",
    )
