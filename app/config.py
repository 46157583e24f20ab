"""Settings, all from ``SPBRIDGE_*`` environment variables (DESIGN §7)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = f"sqlite+aiosqlite:///{Path('var') / 'spbridge.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPBRIDGE_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # Connections per process (app.db.PoolLimits): kept once opened, opened beyond that under load
    # and closed again when handed back, and the seconds a request waits for one (or for SQLite's
    # write lock) before it is answered 503. A request holds one connection at a time, for a few
    # milliseconds, and one process is one event loop: 10 outlast its CPU, and more only lengthen
    # every transaction under overload (docs/DEPLOYMENT.md, bench/RESULTS.md). No overflow: under
    # a load that keeps more than the pool busy, each overflow connection is closed as it comes
    # back and opened again for the next request (a new PostgreSQL backend each time).
    database_pool_size: int = Field(default=10, ge=1)
    database_pool_max_overflow: int = Field(default=0, ge=0)
    database_pool_timeout: float = Field(default=3.0, gt=0, le=60)
    # A pooled PostgreSQL connection older than this is replaced when next taken from the pool:
    # it bounds how long a connection silently dropped by a firewall or proxy can linger.
    database_pool_recycle: float = Field(default=1800, gt=0)
    admin_api_key: SecretStr | None = None
    # How long a process remembers who an API key or a token's client is (0: it asks the
    # database every request). A client revoked or changed by this process counts at once;
    # changed by another (the CLI, another server), within this many seconds.
    principal_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # How long a process remembers services and which destinations a referral goes to (0:
    # read every time). A change made by this process counts at once; by another, at once on
    # PostgreSQL while this process listens for changes (app.db.Database.follow_changes), else
    # within this.
    directory_cache_seconds: float = Field(default=5.0, ge=0, le=300)
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
    # An import file uploaded to POST /api/v1/imports (streamed to disk; default 2 GiB).
    import_max_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1024)
    # authoredOn may be this far ahead of our clock (the referrer's clock may drift).
    clock_skew_seconds: int = Field(default=300, ge=0)
    # Referrals an import loads at once on PostgreSQL, each in its own transaction (SQLite has
    # one writer: always 1). More overlaps the database's round trips with our work.
    import_concurrency: int = Field(default=4, ge=1, le=32)
    # Processes sharing a large import on PostgreSQL (0: one per CPU core, at most 4).
    import_processes: int = Field(default=0, ge=0, le=32)
    # The address clients reach the bridge at (https://bridge.example.nhs.uk): the token
    # endpoint's audience, journey links, FHIR fullUrls and links in webhooks are built on it,
    # never on a request's Host header. Required outside sandbox mode (require_public_base_url).
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

    @field_validator("public_base_url")
    @classmethod
    def _plain_base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL, such as https://bridge.example.org")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must carry no credentials, query or fragment")
        return value.strip().rstrip("/")

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


# What the sandbox hands out when told no address: `spbridge serve --sandbox` sets the host and
# port it binds instead (app.cli.serve); this is its default.
SANDBOX_BASE_URL = "http://127.0.0.1:8000"


class ConfigurationError(RuntimeError):
    """The settings cannot run the service; the message says which and what to do."""


MISSING_PUBLIC_BASE_URL = (
    "SPBRIDGE_PUBLIC_BASE_URL is not set: set it to the address clients reach this service at "
    "(e.g. https://bridge.example.nhs.uk); only sandbox mode runs without it"
)


def require_public_base_url(settings: Settings) -> None:
    """Refuse to run outside sandbox mode without a public base URL (docs/DEPLOYMENT.md)."""
    if not settings.sandbox and not settings.public_base_url:
        raise ConfigurationError(MISSING_PUBLIC_BASE_URL)


def public_base(settings: Settings) -> str:
    """The bridge's own address, without a trailing slash, for every URL it hands out (token
    audience, journey links, FHIR fullUrls and Locations, links in webhooks). It comes from the
    settings only, never from a request's Host header, which the client chooses (DESIGN §10)."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    if settings.sandbox:
        return SANDBOX_BASE_URL
    raise ConfigurationError(MISSING_PUBLIC_BASE_URL)


@lru_cache
def get_settings() -> Settings:
    return Settings()
