"""The contracts adapters implement and the errors they raise.

The delivery engine builds on these. Adapters depend only on this module and ``app.fhir``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class AdapterKind(StrEnum):
    PLATFORM = "platform"  # a social prescribing platform that holds cases
    CLINICAL = "clinical"  # a clinical record system that gets updates back


class AdapterConfig(BaseModel):
    """Per-adapter settings, validated when the route that uses them is saved."""

    model_config = ConfigDict(extra="forbid")


class Adapter:
    name: ClassVar[str]
    kind: ClassVar[AdapterKind]
    config_model: ClassVar[type[AdapterConfig]] = AdapterConfig
    # Whether the bridge sends this adapter's destination anything (an outbox row per change).
    delivers: ClassVar[bool] = True

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config


class AdapterError(Exception):
    """Something went wrong talking to the other system."""


class RetryableError(AdapterError):
    """Worth trying again later (connection failure, timeout, 408, 429, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(AdapterError):
    """Trying again will not help; the delivery goes to the dead letters."""
