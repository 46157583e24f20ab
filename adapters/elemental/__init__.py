"""The ``elemental`` platform adapter: cases on the Elemental social prescribing platform.

Elemental publishes no API, so we implement the contract we assume, written down in
``adapters/elemental/CONTRACT.md`` (and ``openapi/elemental-platform.json``). Field mapping lives
in ``adapters/elemental/mapping.py`` alone, where a site adjusts it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from pydantic import AnyHttpUrl, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from adapters.base import (
    AdapterConfig,
    CaseReference,
    InboundMessage,
    InboundRefused,
    Outbound,
    Outcome,
    PermanentError,
    PlatformAdapter,
    PlatformReferral,
    PollResult,
    ReferralAmendment,
    check_response,
    excerpt,
    send,
)
from adapters.elemental import mapping

# Standard Webhooks: a message older or newer than this is refused (replay protection).
WEBHOOK_TOLERANCE = dt.timedelta(minutes=5)
POLL_LIMIT = 100
_WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


class ElementalConfig(AdapterConfig):
    # Validation errors must not echo the API key or the webhook secret back.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    base_url: str
    api_key: str = Field(min_length=1, max_length=4096, pattern=r"^[!-~]+$", repr=False)
    webhook_secret: str = Field(repr=False)
    timeout: float = Field(default=10, gt=0, le=60)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        try:
            url = _HTTP_URL.validate_python(value)
        except ValidationError:
            raise ValueError("base_url must be an http:// or https:// URL") from None
        if url.username or url.password:
            # Credentials in a URL end up in logs; the API key goes in a header instead.
            raise ValueError("base_url must not carry credentials")
        if url.query or url.fragment:
            raise ValueError("base_url must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: str) -> str:
        prefix = "whsec_"
        if not value.startswith(prefix):
            raise ValueError("webhook_secret must start with 'whsec_'")
        encoded = value[len(prefix) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook_secret must be base64 after 'whsec_'") from None
        if not key:
            raise ValueError("webhook_secret is empty after 'whsec_'")
        return value


class ElementalAdapter(PlatformAdapter):
    name = "elemental"
    config_model = ElementalConfig
    polls = True

    config: ElementalConfig

    def __init__(self, config: AdapterConfig) -> None:
        if not isinstance(config, ElementalConfig):
            raise TypeError("ElementalAdapter needs an ElementalConfig")
        super().__init__(config)
        self._webhook = Webhook(config.webhook_secret)

    def outbound_urls(self) -> list[str]:
        return [self.config.base_url]

    # --- outbound ---------------------------------------------------------------------------

    def _headers(self, outbound: Outbound | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.config.api_key}",
            "Accept": "application/json",
        }
        if outbound is not None:
            # The delivery id is stable across retries, so Elemental can de-duplicate them.
            headers["Idempotency-Key"] = outbound.request_id
            headers.update(outbound.headers())
        return headers

    async def create_case(
        self, http: httpx.AsyncClient, referral: PlatformReferral, outbound: Outbound
    ) -> Outcome:
        what = "Elemental create referral"
        try:
            body = mapping.referral_body(referral)
        except mapping.MappingError as exc:
            raise PermanentError(f"{what}: the referral cannot be mapped: {exc}") from None
        response = await send(
            http,
            "POST",
            f"{self.config.base_url}/api/v1/referrals",
            timeout=self.config.timeout,
            what=what,
            json=body,
            headers=self._headers(outbound),
        )
        payload = _json(response)
        if response.status_code == 409:
            # Elemental already holds a referral with our external_id: an earlier attempt won.
            existing = mapping.existing_referral_id(payload)
            if existing is not None:
                return Outcome(409, excerpt(response), existing)
        outcome = check_response(response, what)
        reference = mapping.referral_id_from(payload)
        if reference is None:
            raise PermanentError(
                f"{what}: HTTP {response.status_code} without a referral id",
                status_code=response.status_code,
                response_excerpt=outcome.response_excerpt,
            )
        echoed = payload.get("external_id") if isinstance(payload, Mapping) else None
        if echoed is not None and echoed != referral.referral_id:
            raise PermanentError(
                f"{what}: the response is for another referral (external_id differs)",
                status_code=response.status_code,
                response_excerpt=outcome.response_excerpt,
            )
        return Outcome(outcome.status_code, outcome.response_excerpt, reference)

    async def update_case(
        self, http: httpx.AsyncClient, amendment: ReferralAmendment, outbound: Outbound
    ) -> Outcome:
        what = "Elemental update referral"
        reference = amendment.external_reference
        if not reference:
            raise PermanentError(f"{what}: the case was never created on Elemental")
        try:
            body = mapping.update_body(amendment.referral)
        except mapping.MappingError as exc:
            raise PermanentError(f"{what}: the referral cannot be mapped: {exc}") from None
        response = await send(
            http,
            "PATCH",
            f"{self.config.base_url}/api/v1/referrals/{quote(reference, safe='')}",
            timeout=self.config.timeout,
            what=what,
            json=body,
            headers=self._headers(outbound),
        )
        if response.status_code == 409 and mapping.error_code(_json(response)) == "referral_closed":
            # Closed there already (the advisor closed it): there is nothing open to amend.
            return Outcome(409, excerpt(response), reference)
        outcome = check_response(response, what)
        return Outcome(outcome.status_code, outcome.response_excerpt, reference)

    async def cancel_case(
        self, http: httpx.AsyncClient, case: CaseReference, outbound: Outbound
    ) -> Outcome:
        what = "Elemental cancel referral"
        reference = case.external_reference
        if not reference:
            raise PermanentError(f"{what}: the case was never created on Elemental")
        response = await send(
            http,
            "POST",
            f"{self.config.base_url}/api/v1/referrals/{quote(reference, safe='')}/cancel",
            timeout=self.config.timeout,
            what=what,
            json=mapping.cancel_body(case),
            headers=self._headers(outbound),
        )
        if response.status_code == 409 and mapping.error_code(_json(response)) == "referral_closed":
            # Already closed there (our earlier cancel, or the advisor closed it): nothing is open.
            return Outcome(409, excerpt(response), reference)
        outcome = check_response(response, what)
        return Outcome(outcome.status_code, outcome.response_excerpt, reference)

    # --- inbound ----------------------------------------------------------------------------

    def parse_inbound(
        self, body: bytes, headers: Mapping[str, str], now: dt.datetime
    ) -> InboundMessage:
        lowered = {k.lower(): v for k, v in headers.items()}
        if not all(lowered.get(name) for name in _WEBHOOK_HEADERS):
            raise InboundRefused("Missing Standard Webhooks headers", status=401)
        if not _timestamp_fresh(lowered["webhook-timestamp"], now):
            raise InboundRefused(
                "Webhook timestamp invalid or outside the 5-minute tolerance", status=401
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InboundRefused("Webhook body is not UTF-8", status=401) from None
        try:
            # Parsing is ours (json_parse=False): bad JSON under a good signature is a 422.
            self._webhook.verify(text, lowered, json_parse=False)
        except (WebhookVerificationError, ValueError, IndexError, TypeError):
            raise InboundRefused("Webhook signature verification failed", status=401) from None
        try:
            payload = orjson.loads(body)
        except (orjson.JSONDecodeError, RecursionError):
            raise InboundRefused("Webhook body is not valid JSON", status=422) from None
        try:
            event = mapping.translate_event(payload)
        except mapping.MappingError as exc:
            raise InboundRefused(f"Elemental event: {exc}", status=422) from None
        # The event id, not webhook-id: the same event read from the feed then de-duplicates too.
        return InboundMessage(message_id=event.event_id, events=event.events)

    async def poll(self, http: httpx.AsyncClient, cursor: str | None) -> PollResult:
        what = "Elemental event feed"
        params = {"limit": str(POLL_LIMIT)}
        if cursor:
            params["after"] = cursor
        response = await send(
            http,
            "GET",
            f"{self.config.base_url}/api/v1/events",
            timeout=self.config.timeout,
            what=what,
            params=params,
            headers=self._headers(),
        )
        outcome = check_response(response, what)
        page = _json(response)
        items = page.get("data") if isinstance(page, Mapping) else None
        if not isinstance(items, list):
            raise PermanentError(
                f"{what}: the response has no 'data' array",
                status_code=response.status_code,
                response_excerpt=outcome.response_excerpt,
            )
        messages: list[InboundMessage] = []
        for index, item in enumerate(items):
            try:
                event = mapping.translate_event(item)
            except mapping.MappingError as exc:
                # Stop here rather than skip: the cursor must not move past an event we lost.
                raise PermanentError(f"{what}: event {index} of the page: {exc}") from None
            messages.append(InboundMessage(message_id=event.event_id, events=event.events))
        next_cursor = page.get("next_cursor")
        if not isinstance(next_cursor, str) or not next_cursor:
            next_cursor = messages[-1].message_id if messages else cursor
        return PollResult(messages=messages, cursor=next_cursor)


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except (orjson.JSONDecodeError, RecursionError):
        return None


def _timestamp_fresh(header: str, now: dt.datetime) -> bool:
    """The Standard Webhooks timestamp (Unix seconds) within the tolerance of our clock."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    header = header.strip()
    if not header.isascii() or not header.isdigit() or len(header) > 12:
        return False
    return abs(now.timestamp() - int(header)) <= WEBHOOK_TOLERANCE.total_seconds()


__all__ = ["ElementalAdapter", "ElementalConfig"]
