from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.clients.schemas import ODS_CODE, SERVICE_ID


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


class ServiceOut(BaseModel):
    id: str
    name: str
    organisation: str
    adapter: str
    created_at: dt.datetime
