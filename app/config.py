"""Settings, all from ``SPBRIDGE_*`` environment variables (DESIGN §7)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

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
    retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0], min_length=1
    )
    # Retries continue until a delivery is this old (default 8 days: the pilot's outage was 5).
    retry_max_age: float = Field(default=8 * 24 * 3600, ge=0)
    # The dispatcher that `spbridge serve` runs in-process (workers run the same one).
    run_dispatcher: bool = True
    dispatch_poll_interval: float = Field(default=0.2, gt=0)
    dispatch_batch_size: int = Field(default=100, ge=1, le=1000)
    dispatch_concurrency: int = Field(default=32, ge=1, le=512)
    # A claimed delivery whose process died is claimed again after this long.
    delivery_lease_seconds: float = Field(default=60, gt=0)
    # Consecutive failed rounds (every attempt in them failed retryably, however many) after
    # which a destination gets one probe at a time.
    circuit_threshold: int = Field(default=3, ge=1)
    webhook_timeout: float = Field(default=15, gt=0, le=60)
    # A subscription failing without a break for this long is disabled (default 7 days).
    subscription_disable_after: float = Field(default=7 * 24 * 3600, gt=0)
    # How often platforms that can be polled are asked for events we may have missed.
    reconcile_interval: float = Field(default=300, gt=0)
    shutdown_grace_seconds: float = Field(default=20, ge=0)
    allowed_outbound_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # authoredOn may be this far ahead of our clock (the referrer's clock may drift).
    clock_skew_seconds: int = Field(default=300, ge=0)
    public_base_url: str | None = None
    # Retention: `spbridge purge` removes the patient data of cases closed longer ago than this
    # (the counts reports need stay). Default 8 years (2922 days), the minimum the NHS Records
    # Management Code of Practice sets for adult social care and most adult health records.
    retention_days: int = Field(default=2922, ge=0)
    sandbox: bool = False
    # The sandbox's simulated platform (adapters/simulator): the seed of its journeys (the same
    # seed replays the same journeys) and its clock, in simulated days per real second.
    sandbox_seed: int = Field(default=42, ge=0, le=2**31 - 1)
    sandbox_clock_speed: float = Field(default=2.0, gt=0, le=1_000_000)

    # --- logs and limits (app/logs.py, app/limits.py; DESIGN §8) ---
    # Level of the JSON logs on stderr; libraries that could log values stay at WARNING.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Requests per minute per API client (or bootstrap admin), refilling a bucket of
    # ``rate_limit_burst``; 0 turns the limit off. Kept in process memory: with N API processes
    # a client may make N times as many.
    rate_limit_per_minute: int = Field(default=1200, ge=0)
    rate_limit_burst: int = Field(default=600, ge=1)
    # The same per client IP address for requests without a recognised API key.
    rate_limit_anonymous_per_minute: int = Field(default=300, ge=0)
    rate_limit_anonymous_burst: int = Field(default=300, ge=1)
    # The deepest nesting of arrays and objects a JSON body outside /fhir may have.
    max_json_depth: int = Field(default=64, ge=2, le=512)
    # Origins whose browsers may call the API (CORS); empty: no CORS headers at all.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(part) for part in value.split(",") if part.strip()]
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
