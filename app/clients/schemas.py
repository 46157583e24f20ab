from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from app.clients.roles import Role

ODS_CODE = r"^[A-Z0-9]{3,10}$"
SERVICE_ID = r"^[A-Za-z0-9\-.]{1,64}$"


class ClientCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "RiO at Mersey Care",
                    "role": "clinical-system",
                    "organisation": "RW4",
                    "default_service": "life-rooms-halton",
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    role: Role
    organisation: str = Field(pattern=ODS_CODE, description="ODS code of the client's organisation")
    default_service: str | None = Field(
        default=None,
        pattern=SERVICE_ID,
        description="Service that receives this client's referrals when they name no performer",
    )


class ClientOut(BaseModel):
    id: str
    name: str
    role: Role
    organisation: str
    default_service: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


class ClientCreated(ClientOut):
    api_key: str = Field(description="Shown once: only its hash is kept")
