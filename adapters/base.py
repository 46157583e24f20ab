"""The contracts adapters implement and the errors they raise.

The delivery engine (``app.delivery``) calls adapters; adapters only translate between the bridge's
canonical model and another system. They depend only on this module and ``app.fhir``: they never
touch the database or app services, and every outbound call goes through the shared
``httpx.AsyncClient`` they are given (created once per process, DESIGN §10).
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict

# What an attempt record keeps of a response body (DESIGN: first 2 KB).
EXCERPT_BYTES = 2048
RETRYABLE_STATUSES = frozenset({408, 429})


class AdapterKind(StrEnum):
    PLATFORM = "platform"  # a social prescribing platform that holds cases
    CLINICAL = "clinical"  # a clinical record system that gets updates back


class AdapterConfig(BaseModel):
    """Per-adapter settings, validated when the route that uses them is saved."""

    model_config = ConfigDict(extra="forbid")


# --- what the engine hands to adapters ----------------------------------------------------------


@dataclass(frozen=True)
class Outbound:
    """The context of one delivery attempt; the same ``request_id`` goes out on every retry."""

    request_id: str  # the delivery id
    correlation_id: str | None
    timeout: float = 10.0

    def headers(self) -> dict[str, str]:
        headers = {"X-Request-ID": self.request_id}
        if self.correlation_id:
            headers["X-Correlation-ID"] = self.correlation_id
        return headers


@dataclass(frozen=True)
class PlatformReferral:
    """A new referral for the platform: our ids and the ServiceRequest as accepted (FHIR JSON).

    The ServiceRequest carries the bundled Patient, Consent, Condition and QuestionnaireResponse as
    contained resources; ``reasons`` are already mapped to the bridge's 22 domain codes.
    """

    referral_id: str
    case_id: str
    service_id: str
    service_request: Mapping[str, Any]
    reasons: Sequence[str]
    referring_organisation: str
    referring_team: str | None
    received_at: dt.datetime


@dataclass(frozen=True)
class ReferralAmendment:
    """The referrer amended a referral the platform holds (a ``referral.updated`` event): the
    referral as it now stands (always the current version, so a late or repeated delivery never
    takes the platform back) and the platform's own id for it. A referrer may change the reasons,
    notes, priority, the patient's contact details and the consent."""

    referral: PlatformReferral
    external_reference: str | None  # the platform's own id, as returned by create_case


@dataclass(frozen=True)
class CaseReference:
    """A case the platform already holds."""

    referral_id: str
    case_id: str
    external_reference: str | None  # the platform's own id, as returned by create_case


@dataclass(frozen=True)
class Outcome:
    """A successful call: what the attempt record keeps, and what the platform told us."""

    status_code: int | None = None
    response_excerpt: str | None = None
    external_reference: str | None = None


@dataclass(frozen=True)
class InboundEvent:
    """A platform event translated into the bridge's canonical vocabulary (DESIGN §5).

    ``referral_id`` is the bridge's id when the platform echoes it; otherwise the engine finds the
    case by ``external_reference``. ``idempotency_key`` must be stable for the same platform event,
    so a repeat is applied once.
    """

    type: str
    occurred_at: dt.datetime | None
    idempotency_key: str
    referral_id: str | None = None
    external_reference: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InboundMessage:
    """One webhook message from the platform: its id (for de-duplication) and its events."""

    message_id: str
    events: Sequence[InboundEvent]


@dataclass(frozen=True)
class PollResult:
    messages: Sequence[InboundMessage]
    cursor: str | None


@dataclass(frozen=True)
class FHIRResourceUpdate:
    """A resource the clinical system should hold at its current version."""

    resource_type: str
    id: str
    resource: Mapping[str, Any]


@dataclass(frozen=True)
class ClinicalUpdate:
    """The resources of one referral that changed, to be written to the referrer's FHIR server."""

    referral_id: str
    event_type: str
    resources: Sequence[FHIRResourceUpdate]
    # How the referral came when not by FHIR REST (a BaRS message: its Bundle id, its source
    # endpoint), for adapters that answer it; and the referral's ServiceRequest as held now.
    origin: Mapping[str, Any] | None = None
    service_request: Mapping[str, Any] | None = None


# --- errors ---------------------------------------------------------------------------------------


class AdapterError(Exception):
    """Something went wrong talking to the other system."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        response_excerpt: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.response_excerpt = response_excerpt


class RetryableError(AdapterError):
    """Worth trying again later (connection failure, timeout, 408, 429, 5xx)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        response_excerpt: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, response_excerpt=response_excerpt)
        self.retry_after = retry_after


class PermanentError(AdapterError):
    """Trying again will not help; the delivery goes to the dead letters."""


class Gone(PermanentError):
    """The receiver says the endpoint is gone for good (410)."""


class InboundRefused(Exception):
    """An inbound message that is not authentic, too old, or not understood. Nothing is applied."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


# --- the contracts --------------------------------------------------------------------------------


class Adapter:
    name: ClassVar[str]
    kind: ClassVar[AdapterKind]
    config_model: ClassVar[type[AdapterConfig]] = AdapterConfig
    # Whether the bridge sends this adapter's destination anything (an outbox row per change).
    delivers: ClassVar[bool] = True
    # The case events the engine sends this adapter; empty means every event.
    event_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config

    def outbound_urls(self) -> list[str]:
        """Every URL this configuration makes the bridge call (checked against the URL policy)."""
        return []


class PlatformAdapter(Adapter):
    """A social prescribing platform that holds cases (DESIGN §2)."""

    kind = AdapterKind.PLATFORM
    # The platform is told of new referrals and of the referrer's amendments and cancellations,
    # nothing else: everything after that is the platform's own doing, coming back to us.
    event_types = frozenset({"referral.received", "referral.updated", "referral.cancelled"})
    # Whether ``poll`` is implemented (reconciliation of missed webhooks).
    polls: ClassVar[bool] = False

    async def create_case(
        self, http: httpx.AsyncClient, referral: PlatformReferral, outbound: Outbound
    ) -> Outcome:
        raise NotImplementedError

    async def update_case(
        self, http: httpx.AsyncClient, amendment: ReferralAmendment, outbound: Outbound
    ) -> Outcome:
        """Send the referrer's amendment of a referral the platform holds. A platform that
        cannot take amendments answers with an Outcome saying so, never an error: the referral
        stays as it was there, and the case goes on."""
        raise NotImplementedError

    async def cancel_case(
        self, http: httpx.AsyncClient, case: CaseReference, outbound: Outbound
    ) -> Outcome:
        raise NotImplementedError

    def parse_inbound(
        self, body: bytes, headers: Mapping[str, str], now: dt.datetime
    ) -> InboundMessage:
        """Verify an inbound webhook and translate it; InboundRefused when it is not acceptable."""
        raise InboundRefused("This adapter takes no inbound webhooks", status=404)

    async def poll(self, http: httpx.AsyncClient, cursor: str | None) -> PollResult:
        """Platform events after ``cursor`` (None: from the start), to reconcile missed webhooks."""
        raise NotImplementedError


class ClinicalAdapter(Adapter):
    """A clinical record system that gets the referral's status and resources back (DESIGN §2)."""

    kind = AdapterKind.CLINICAL

    async def send_update(
        self, http: httpx.AsyncClient, update: ClinicalUpdate, outbound: Outbound
    ) -> Outcome:
        raise NotImplementedError

    async def discover(self, http: httpx.AsyncClient) -> AdapterConfig | None:
        """What the adapter learns from the receiver when its route is saved or refreshed (e.g. a
        FHIR server's CapabilityStatement), as the configuration to store; None: nothing."""
        return None


# --- HTTP helpers every adapter shares --------------------------------------------------------


def excerpt(response: httpx.Response) -> str:
    return response.content[:EXCERPT_BYTES].decode("utf-8", errors="replace")


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def check_response(response: httpx.Response, what: str) -> Outcome:
    """2xx: an Outcome. 408, 429, 5xx: RetryableError. 410: Gone. Else: PermanentError."""
    status = response.status_code
    text = excerpt(response)
    if 200 <= status < 300:
        return Outcome(status_code=status, response_excerpt=text)
    message = f"{what}: HTTP {status}"
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableError(
            message,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
            status_code=status,
            response_excerpt=text,
        )
    if status == 410:
        raise Gone(message, status_code=status, response_excerpt=text)
    raise PermanentError(message, status_code=status, response_excerpt=text)


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    timeout: float,  # noqa: ASYNC109  (httpx's per-request timeout is the one we want)
    what: str,
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP call with connection failures and timeouts turned into RetryableError.

    Redirects are never followed: a receiver that moved must be reconfigured, not chased.
    """
    try:
        return await http.request(method, url, timeout=timeout, follow_redirects=False, **kwargs)
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{what}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise RetryableError(f"{what}: connection failed ({type(exc).__name__})") from None
