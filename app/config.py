"""Settings, all from ``SPBRIDGE_*`` environment variables (DESIGN §7)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = f"sqlite+aiosqlite:///{Path('var') / 'spbridge.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPBRIDGE_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    database_pool_size: int = Field(default=10, ge=1)
    admin_api_key: SecretStr | None = None
    require_consent: bool = True
    # Delays in seconds between delivery attempts; the last repeats until retry_max_age.
    retry_schedule: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [5, 30, 120, 600, 1800, 3600]
    )
    retry_max_age: int = Field(default=8 * 24 * 3600, ge=0)
    allowed_outbound_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # authoredOn may be this far ahead of our clock (the referrer's clock may drift).
    clock_skew_seconds: int = Field(default=300, ge=0)
    public_base_url: str | None = None
    sandbox: bool = False

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_outbound_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
