from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.directory.schemas import SERVICE_ID
from app.fhir.codes import ODS_CODE
from app.security.roles import Role


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
    acts_for: list[str] = Field(
        default_factory=list,
        description="Other organisations (ODS codes) it may refer for: a referral's "
        "ServiceRequest.requester must be its own organisation or one of these",
    )
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


class ActsFor(BaseModel):
    """The organisations a client may refer for besides its own (replaces the list)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"organisations": ["RW4", "RXA", "RTV"]}]},
    )

    organisations: list[Annotated[str, Field(pattern=ODS_CODE)]] = Field(
        max_length=100,
        description="ODS codes; an empty list: its own organisation only",
    )


class ClientCreated(ClientOut):
    api_key: str = Field(description="Shown once: only its hash is kept")


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})

    overlap_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        le=30 * 24 * 3600,
        description="How long the secret being replaced keeps working (default 24 hours; 0 "
        "stops it at once)",
    )


class SecretIssued(BaseModel):
    client_id: str
    client_secret: str = Field(
        description="Shown once: only its hash is kept. Use it with HTTP Basic at "
        "POST /oauth2/token (client_secret_basic)"
    )
    previous_secret_expires_at: dt.datetime | None = Field(
        description="Until when the secret this one replaced still works (none if there was none)"
    )


class PublicKeyRegistration(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "jwk": {
                        "kty": "EC",
                        "crv": "P-256",
                        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                        "kid": "rio-2026-12",
                    }
                }
            ]
        },
    )

    jwk: dict[str, object] = Field(
        description="The client's public key as a JWK: RSA of at least 2048 bits (signs RS512) "
        "or EC on P-256 (signs ES256). Private members are refused"
    )
    overlap_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        le=30 * 24 * 3600,
        description="How long the key being replaced is still accepted (default 24 hours)",
    )


class PublicKeyRegistered(BaseModel):
    client_id: str
    jwk: dict[str, object] = Field(description="The public key as kept")
    previous_public_key_expires_at: dt.datetime | None = Field(
        description="Until when the key this one replaced is still accepted (none if none)"
    )
