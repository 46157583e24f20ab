"""The ``bars`` clinical adapter: BaRS ``servicerequest-response`` messages back to the sender.

A referral that came as a BaRS message (``app.bars``) is answered, as its case moves, with a
response message POSTed to the sender's ``$process-message`` endpoint (this route's
``endpoint``): when it is accepted, rejected, completed, discharged or cancelled (and when the
person withdraws consent, which closes it). The message Bundle:

- ``id``: the delivery's id, the same on every retry (as is ``X-Request-ID``), so the sender can
  de-duplicate;
- first entry the ``MessageHeader``: event ``servicerequest-response``
  (https://fhir.nhs.uk/CodeSystem/message-events-bars), ``response.identifier`` = the original
  message's Bundle id and ``response.code`` ``ok`` (the message was processed; what became of
  the referral is the Task's), ``destination.endpoint`` = the original message's
  ``source.endpoint``, ``source.endpoint`` = this route's ``source_endpoint``, ``focus`` the
  ServiceRequest;
- then the referral's ServiceRequest as held (the sender's identifier on it), the Task (status,
  businessStatus, statusReason: the outcome), and the resources the change made (its outputs).

Headers: ``X-Request-ID``, ``X-Correlation-ID`` (the original message's: BaRS keeps one across
the exchange), ``NHSD-Target-Identifier``
(base64 of ``{"value", "system"}`` taken from the original ``source.endpoint``, ``system|value``),
``NHSD-End-User-Organisation-ODS`` (this route's ``organisation_ods``, when set).

A referral that did not come by BaRS has no message to answer: nothing is sent (the delivery is
recorded as done, saying so). Errors follow ``adapters.base.check_response`` (connection failures,
timeouts, 408, 429, 5xx retryable; 410 gone; other 4xx permanent), except 409: a BaRS receiver
answers a message it has already processed with 409 REC_CONFLICT, which for a retried delivery
means it arrived.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from typing import Any, ClassVar

import httpx
import orjson
from pydantic import Field, field_validator

from adapters.base import (
    AdapterConfig,
    ClinicalAdapter,
    ClinicalUpdate,
    Outbound,
    Outcome,
    check_response,
    excerpt,
    send,
)

FHIR_JSON = "application/fhir+json"
EVENTS_SYSTEM = "https://fhir.nhs.uk/CodeSystem/message-events-bars"
RESPONSE_EVENT = "servicerequest-response"
# The case events a sender is told of: the referral accepted, rejected, completed, discharged,
# cancelled, or closed by the person's withdrawal of consent.
ANSWERED = frozenset(
    {
        "case.accepted",
        "case.rejected",
        "case.completed",
        "case.discharged",
        "referral.cancelled",
        "consent.withdrawn",
    }
)
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
# A fixed namespace: the same delivery makes the same full URLs on every retry.
_NAMESPACE = uuid.UUID("6f1c2b0e-5a4d-4e8f-9b7a-3c2d1e0f9a8b")


class BarsConfig(AdapterConfig):
    # The sender's BaRS receiver: its $process-message URL.
    endpoint: str
    # Who we are on the Endpoint Catalogue: MessageHeader.source.endpoint of our responses.
    source_endpoint: str = Field(min_length=1, max_length=255)
    organisation_ods: str | None = Field(default=None, min_length=1, max_length=16)
    bearer_token: str | None = Field(default=None, min_length=1, repr=False)
    timeout: float = Field(default=10.0, gt=0, le=60, allow_inf_nan=False, strict=True)

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str) -> str:
        value = value.strip()
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise ValueError("endpoint must be an http or https URL") from None
        if (
            _SPACE_OR_CONTROL.search(value)
            or url.scheme not in ("http", "https")
            or not url.host
            or url.userinfo
            or url.fragment
        ):
            raise ValueError("endpoint must be an http or https URL without credentials")
        return str(url)

    @field_validator("bearer_token", "organisation_ods")
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_VALUE.fullmatch(value):
            raise ValueError("must be visible ASCII characters without spaces")
        return value


def _target_identifier(endpoint: str | None) -> str | None:
    """NHSD-Target-Identifier for an endpoint written ``system|value`` (or a bare value)."""
    if not endpoint:
        return None
    system, _, value = endpoint.rpartition("|")
    body: dict[str, str] = {"value": value}
    if system:
        body["system"] = system
    return base64.b64encode(orjson.dumps(body)).decode("ascii")


def _full_url(message_id: str, kind: str, ident: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{message_id}/{kind}/{ident}')}"


def response_message(
    update: ClinicalUpdate, config: BarsConfig, message_id: str, now: dt.datetime
) -> dict[str, Any]:
    """The servicerequest-response message answering ``update``'s referral (see the module)."""
    origin = update.origin or {}
    service_request = dict(update.service_request or {})
    sr_url = _full_url(message_id, "ServiceRequest", str(service_request.get("id")))
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": str(uuid.uuid5(_NAMESPACE, f"{message_id}/MessageHeader")),
        "eventCoding": {"system": EVENTS_SYSTEM, "code": RESPONSE_EVENT},
        "source": {"endpoint": config.source_endpoint},
        "response": {"identifier": str(origin.get("bundle_id")), "code": "ok"},
        "focus": [{"reference": sr_url}],
    }
    if origin.get("source_endpoint"):
        header["destination"] = [{"endpoint": str(origin["source_endpoint"])}]
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"urn:uuid:{header['id']}", "resource": header},
        {"fullUrl": sr_url, "resource": service_request},
    ]
    for item in update.resources:
        entries.append(
            {
                "fullUrl": _full_url(message_id, item.resource_type, item.id),
                "resource": dict(item.resource),
            }
        )
    return {
        "resourceType": "Bundle",
        "id": message_id,
        "type": "message",
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "entry": entries,
    }


class BarsAdapter(ClinicalAdapter):
    name = "bars"
    config_model: ClassVar[type[AdapterConfig]] = BarsConfig
    config: BarsConfig
    event_types = ANSWERED

    def __init__(self, config: AdapterConfig) -> None:
        if not isinstance(config, BarsConfig):
            raise TypeError("BarsAdapter needs a BarsConfig")
        super().__init__(config)
        self.config = config

    def outbound_urls(self) -> list[str]:
        return [self.config.endpoint]

    async def send_update(
        self, http: httpx.AsyncClient, update: ClinicalUpdate, outbound: Outbound
    ) -> Outcome:
        origin = update.origin or {}
        if origin.get("channel") != "bars" or not origin.get("bundle_id"):
            return Outcome(response_excerpt="not sent: the referral did not come by BaRS")
        if update.event_type not in ANSWERED:
            return Outcome(response_excerpt=f"not sent: BaRS is not told of {update.event_type}")
        message = response_message(
            update, self.config, outbound.request_id, dt.datetime.now(dt.UTC)
        )
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **outbound.headers()}
        if origin.get("correlation_id"):
            headers["X-Correlation-ID"] = str(origin["correlation_id"])
        target = _target_identifier(str(origin.get("source_endpoint") or "") or None)
        if target:
            headers["NHSD-Target-Identifier"] = target
        if self.config.organisation_ods:
            headers["NHSD-End-User-Organisation-ODS"] = self.config.organisation_ods
        if self.config.bearer_token:
            headers["Authorization"] = f"Bearer {self.config.bearer_token}"
        what = "POST $process-message (servicerequest-response)"
        response = await send(
            http,
            "POST",
            self.config.endpoint,
            timeout=self.config.timeout,
            what=what,
            headers=headers,
            content=orjson.dumps(message),
        )
        if response.status_code == 409:
            # Already processed (REC_CONFLICT): a retry of a message that arrived.
            return Outcome(status_code=409, response_excerpt=excerpt(response))
        return check_response(response, what)
