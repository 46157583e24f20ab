"""The elemental platform adapter: mapping, outbound calls, webhook verification, polling.

No database: outbound calls are mocked with respx, or sent to the in-memory fake platform in
tests/support under uvicorn.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from adapters.base import (
    CaseReference,
    InboundRefused,
    Outbound,
    PermanentError,
    PlatformReferral,
    RetryableError,
)
from adapters.elemental import ElementalAdapter, ElementalConfig, mapping
from tests.support.elemental_platform import (
    FakePlatform,
    make_platform_app,
    serve,
    signed_webhook,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "fhir" / "examples" / "ServiceRequest-social-prescribing-referral.json"
BASE = "https://elemental.example.org"
API_KEY = "elm_live_" + "k" * 32
SECRET = "whsec_" + base64.b64encode(b"elemental-test-signing-key-0123").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody-else-signing-key-98765").decode()
RECEIVED = dt.datetime(2026, 11, 20, 10, 16, tzinfo=dt.UTC)
OUTBOUND = Outbound(request_id="dlv-0001", correlation_id="corr-42")


def config(**changes: Any) -> ElementalConfig:
    values: dict[str, Any] = {"base_url": BASE, "api_key": API_KEY, "webhook_secret": SECRET}
    return ElementalConfig(**(values | changes))


@pytest.fixture
def adapter() -> ElementalAdapter:
    return ElementalAdapter(config())


def service_request() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return loaded


def referral(sr: dict[str, Any] | None = None, **changes: Any) -> PlatformReferral:
    values: dict[str, Any] = {
        "referral_id": "ref-0001",
        "case_id": "case-0001",
        "service_id": "life-rooms-halton",
        "service_request": sr if sr is not None else service_request(),
        "reasons": ["finance-benefits-debt", "social-isolation"],
        "referring_organisation": "RW4",
        "referring_team": "Halton Crisis Resolution Team",
        "received_at": RECEIVED,
    }
    return PlatformReferral(**(values | changes))


# --- mapping out --------------------------------------------------------------------------------


def test_body_from_the_example_service_request() -> None:
    assert mapping.referral_body(referral()) == {
        "external_id": "ref-0001",
        "case_id": "case-0001",
        "service": "life-rooms-halton",
        "urgency": "standard",
        "referred_at": "2026-11-20T10:15:00Z",
        "client": {
            "nhs_number": "9000000009",
            "first_name": "Sam",
            "last_name": "Example",
            "date_of_birth": "1990-01-01",
            "gender": "not_known",
            "phone": "07700 900000",
            "postcode": "WA7 1AA",
        },
        "referrer": {
            "name": "Halton Crisis Resolution Team",
            "organisation_code": "RW4",
            "team": "Halton Crisis Resolution Team",
        },
        "categories": ["Money & Debt", "Loneliness & Social Connection"],
        "referral_reasons": ["finance-benefits-debt", "social-isolation"],
        "notes": "Prefers a telephone call in the afternoon.",
    }


def test_body_variants_nhs_number_on_patient_priority_phones_and_addresses() -> None:
    sr = service_request()
    del sr["subject"]["identifier"]
    patient = sr["contained"][0]
    patient["identifier"][0]["value"] = "900 000 0009"
    patient["gender"] = "female"
    patient["name"] = [
        {"use": "old", "family": "Former", "given": ["Sam"]},
        {"use": "official", "family": "Example", "given": ["Sam", "Alex"]},
    ]
    patient["telecom"] = [
        {"system": "email", "value": "sam@example.org"},
        {"system": "phone", "value": "01928 000000", "use": "home"},
        {"system": "phone", "value": "07700 900111", "use": "mobile"},
    ]
    patient["address"] = [
        {"use": "old", "postalCode": "L1 1AA"},
        {"use": "work", "postalCode": "WA8 2BB"},
    ]
    sr["priority"] = "asap"
    sr["authoredOn"] = "2026-11-20"  # a partial date: our receipt time is used
    sr["note"] = [{"text": "First."}, {"text": "  "}, {"text": "Second."}]
    body = mapping.referral_body(referral(sr, reasons=["housing", "housing", "wellbeing"]))
    assert body["client"] == {
        "nhs_number": "9000000009",
        "first_name": "Sam Alex",
        "last_name": "Example",
        "date_of_birth": "1990-01-01",
        "gender": "female",
        "phone": "07700 900111",
        "postcode": "WA8 2BB",
    }
    assert body["urgency"] == "urgent"
    assert body["referred_at"] == "2026-11-20T10:16:00Z"
    assert body["notes"] == "First.\n\nSecond."
    assert body["categories"] == ["Housing & Homelessness", "Mental Health & Wellbeing"]
    assert body["referral_reasons"] == ["housing", "wellbeing"]


def test_body_without_optional_details_omits_them() -> None:
    sr = service_request()
    patient = sr["contained"][0]
    for key in ("name", "gender", "birthDate", "telecom", "address"):
        del patient[key]
    del sr["note"], sr["priority"], sr["requester"]["identifier"]
    body = mapping.referral_body(referral(sr, referring_team=None))
    assert body["client"] == {"nhs_number": "9000000009"}
    assert "notes" not in body
    assert body["urgency"] == "standard"
    # No ODS code on the requester: the referring client's organisation stands in.
    assert body["referrer"] == {"name": "Halton Crisis Resolution Team", "organisation_code": "RW4"}


def test_referral_without_mapped_reasons_still_has_a_category() -> None:
    body = mapping.referral_body(referral(reasons=[]))
    assert body["categories"] == ["Other"]
    assert body["referral_reasons"] == []
    assert mapping.categories_for(["not-a-domain"]) == ["Other"]


def test_referral_without_nhs_number_is_permanent_and_names_no_patient_data() -> None:
    sr = service_request()
    del sr["subject"]["identifier"]
    sr["contained"][0]["identifier"] = []
    with pytest.raises(mapping.MappingError) as caught:
        mapping.referral_body(referral(sr))
    assert caught.value.field == "ServiceRequest.subject.identifier"
    assert "Sam" not in str(caught.value)
    assert "Example" not in str(caught.value)


def test_every_reason_domain_maps_to_a_platform_category() -> None:
    code_system = json.loads((ROOT / "fhir" / "CodeSystem-reason-for-referral.json").read_text())
    domains = {c["code"] for c in code_system["concept"]}
    assert len(domains) == 22
    assert set(mapping.REASON_CATEGORIES) == domains
    assert set(mapping.REASON_CATEGORIES.values()) <= set(mapping.PLATFORM_CATEGORIES)
    for domain in domains:
        assert mapping.categories_for([domain]) != [mapping.FALLBACK_CATEGORY]


def test_every_platform_category_maps_to_a_prescription_category() -> None:
    code_system = json.loads((ROOT / "fhir" / "CodeSystem-prescription-category.json").read_text())
    ours = {c["code"] for c in code_system["concept"]}
    assert set(mapping.PRESCRIPTION_CATEGORIES) == set(mapping.PLATFORM_CATEGORIES)
    assert set(mapping.PRESCRIPTION_CATEGORIES.values()) <= ours


def test_canonical_vocabularies_match_the_case_state_machine() -> None:
    discharge = json.loads((ROOT / "fhir" / "CodeSystem-discharge-reason.json").read_text())
    completion = json.loads((ROOT / "fhir" / "CodeSystem-completion-reason.json").read_text())
    reasons = {
        "case.discharged": {c["code"] for c in discharge["concept"]},
        "case.completed": {c["code"] for c in completion["concept"]},
    }
    produced: dict[str, set[str]] = {"case.discharged": set(), "case.completed": set()}
    for event, reason in mapping.CLOSURE_REASONS.values():
        produced[event].add(reason)
    assert produced == reasons
    assert set(mapping.CONTACT_RESULTS.values()) == {"reached", "no-answer", "message-left"}
    assert set(mapping.APPOINTMENT_FORMATS.values()) == {"face-to-face", "telephone", "group"}
    assert set(mapping.PRESCRIPTION_STATES.values()) == {
        "proposed",
        "active",
        "completed",
        "declined",
    }
    assert set(mapping.WELLBEING_TIMEPOINTS.values()) == {"start", "end", "review"}


# --- config ---------------------------------------------------------------------------------------


def test_config_accepts_good_values_and_normalises_the_url() -> None:
    cfg = config(base_url="https://elemental.example.org/tenant/ ", timeout=60)
    assert cfg.base_url == "https://elemental.example.org/tenant"
    assert ElementalAdapter(cfg).outbound_urls() == ["https://elemental.example.org/tenant"]
    unpadded = "whsec_" + base64.b64encode(b"abcd").decode().rstrip("=")
    assert config(webhook_secret=unpadded).webhook_secret == unpadded


@pytest.mark.parametrize(
    "secret",
    [
        base64.b64encode(b"no prefix").decode(),
        "whsec_",
        "whsec_not*base64!",
        "whsec_" + "a" * 5,  # impossible base64 length
        "WHSEC_" + base64.b64encode(b"case matters").decode(),
    ],
)
def test_config_refuses_a_bad_webhook_secret_without_echoing_it(secret: str) -> None:
    with pytest.raises(ValidationError) as caught:
        config(webhook_secret=secret)
    message = str(caught.value)
    assert "webhook_secret" in message
    assert "input_value" not in message
    assert secret == "whsec_" or secret not in message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://elemental.example.org",
        "elemental.example.org",
        "https://",
        "https://user:pass@elemental.example.org",
        "https://elemental.example.org/?tenant=1",
        "",
    ],
)
def test_config_refuses_a_bad_base_url(url: str) -> None:
    with pytest.raises(ValidationError, match="base_url"):
        config(base_url=url)


@pytest.mark.parametrize("timeout", [0, -1, 60.5])
def test_config_refuses_a_timeout_out_of_range(timeout: float) -> None:
    with pytest.raises(ValidationError, match="timeout"):
        config(timeout=timeout)


@pytest.mark.parametrize("key", ["", "has space", "line\nbreak"])
def test_config_refuses_an_unusable_api_key(key: str) -> None:
    with pytest.raises(ValidationError, match="api_key"):
        config(api_key=key)


def test_config_repr_hides_secrets() -> None:
    assert API_KEY not in repr(config())
    assert SECRET not in repr(config())


# --- create_case ----------------------------------------------------------------------------------

CREATE = f"{BASE}/api/v1/referrals"


@respx.mock
async def test_create_posts_the_mapped_body_with_headers(adapter: ElementalAdapter) -> None:
    route = respx.post(CREATE).mock(
        return_value=httpx.Response(
            201, json={"id": "ELM-00042", "external_id": "ref-0001", "status": "open"}
        )
    )
    async with httpx.AsyncClient() as http:
        outcome = await adapter.create_case(http, referral(), OUTBOUND)
    assert outcome.status_code == 201
    assert outcome.external_reference == "ELM-00042"
    assert outcome.response_excerpt is not None
    assert "ELM-00042" in outcome.response_excerpt
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Idempotency-Key"] == "dlv-0001"
    assert request.headers["X-Request-ID"] == "dlv-0001"
    assert request.headers["X-Correlation-ID"] == "corr-42"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == mapping.referral_body(referral())


@respx.mock
async def test_create_without_correlation_id_sends_none(adapter: ElementalAdapter) -> None:
    route = respx.post(CREATE).mock(return_value=httpx.Response(200, json={"id": "ELM-1"}))
    async with httpx.AsyncClient() as http:
        outcome = await adapter.create_case(http, referral(), Outbound("dlv-2", None))
    assert outcome.external_reference == "ELM-1"
    assert "X-Correlation-ID" not in route.calls.last.request.headers


@respx.mock
async def test_create_409_referral_exists_is_an_idempotent_success(
    adapter: ElementalAdapter,
) -> None:
    respx.post(CREATE).mock(
        return_value=httpx.Response(
            409, json={"error": {"code": "referral_exists", "referral_id": "ELM-00007"}}
        )
    )
    async with httpx.AsyncClient() as http:
        outcome = await adapter.create_case(http, referral(), OUTBOUND)
    assert outcome.status_code == 409
    assert outcome.external_reference == "ELM-00007"


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": "conflict", "referral_id": "ELM-1"}},
        {"error": {"code": "referral_exists"}},
        "not json at all",
    ],
)
@respx.mock
async def test_create_other_409s_are_permanent(adapter: ElementalAdapter, body: Any) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    respx.post(CREATE).mock(return_value=httpx.Response(409, content=content))
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentError) as caught:
            await adapter.create_case(http, referral(), OUTBOUND)
    assert caught.value.status_code == 409


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(503, "120", 120.0), (500, None, None), (429, "7", 7.0), (408, None, None)],
)
@respx.mock
async def test_create_server_trouble_is_retryable(
    adapter: ElementalAdapter, status: int, retry_after: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    respx.post(CREATE).mock(return_value=httpx.Response(status, headers=headers, text="busy"))
    async with httpx.AsyncClient() as http:
        with pytest.raises(RetryableError) as caught:
            await adapter.create_case(http, referral(), OUTBOUND)
    assert caught.value.status_code == status
    assert caught.value.retry_after == expected
    assert caught.value.response_excerpt == "busy"


@pytest.mark.parametrize("status", [400, 401, 403, 422])
@respx.mock
async def test_create_client_errors_are_permanent(adapter: ElementalAdapter, status: int) -> None:
    respx.post(CREATE).mock(
        return_value=httpx.Response(status, json={"error": {"code": "validation_failed"}})
    )
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentError) as caught:
            await adapter.create_case(http, referral(), OUTBOUND)
    assert not isinstance(caught.value, RetryableError)
    assert caught.value.status_code == status


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.ConnectTimeout("x")]
)
@respx.mock
async def test_create_timeouts_and_connection_failures_are_retryable(
    adapter: ElementalAdapter, error: Exception
) -> None:
    respx.post(CREATE).mock(side_effect=error)
    async with httpx.AsyncClient() as http:
        with pytest.raises(RetryableError):
            await adapter.create_case(http, referral(), OUTBOUND)


@pytest.mark.parametrize("body", [{"status": "open"}, {"id": ""}, {"id": 42}, [], "plain text"])
@respx.mock
async def test_create_2xx_without_an_id_is_permanent(adapter: ElementalAdapter, body: Any) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    respx.post(CREATE).mock(return_value=httpx.Response(201, content=content))
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentError, match="without a referral id"):
            await adapter.create_case(http, referral(), OUTBOUND)


@respx.mock
async def test_create_response_for_another_referral_is_permanent(
    adapter: ElementalAdapter,
) -> None:
    respx.post(CREATE).mock(
        return_value=httpx.Response(201, json={"id": "ELM-9", "external_id": "ref-other"})
    )
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentError, match="another referral"):
            await adapter.create_case(http, referral(), OUTBOUND)


@respx.mock
async def test_create_unmappable_referral_makes_no_call(adapter: ElementalAdapter) -> None:
    route = respx.post(CREATE).mock(return_value=httpx.Response(201, json={"id": "x"}))
    sr = service_request()
    del sr["subject"]["identifier"]
    del sr["contained"][0]["identifier"]
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentError, match="NHS number") as caught:
            await adapter.create_case(http, referral(sr), OUTBOUND)
    assert not route.called
    assert "9000000009" not in str(caught.value)


@respx.mock
async def test_create_uses_the_configured_timeout() -> None:
    seen: list[Any] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(201, json={"id": "ELM-1"})

    respx.post(CREATE).mock(side_effect=record)
    async with httpx.AsyncClient(timeout=99) as http:
        await ElementalAdapter(config(timeout=3)).create_case(http, referral(), OUTBOUND)
        await ElementalAdapter(config(timeout=30)).create_case(http, referral(), OUTBOUND)
    assert [t["read"] for t in seen] == [3, 30]


# --- cancel_case ----------------------------------------------------------------------------------

CASE = CaseReference(referral_id="ref-0001", case_id="case-0001", external_reference="ELM-00042")
CANCEL = f"{BASE}/api/v1/referrals/ELM-00042/cancel"


@respx.mock
async def test_cancel_posts_a_reason(adapter: ElementalAdapter) -> None:
    route = respx.post(CANCEL).mock(
        return_value=httpx.Response(200, json={"id": "ELM-00042", "status": "cancelled"})
    )
    async with httpx.AsyncClient() as http:
        outcome = await adapter.cancel_case(http, CASE, OUTBOUND)
    assert (outcome.status_code, outcome.external_reference) == (200, "ELM-00042")
    request = route.calls.last.request
    assert json.loads(request.content) == {
        "reason": "withdrawn_by_referrer",
        "external_id": "ref-0001",
    }
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Idempotency-Key"] == "dlv-0001"
    assert request.headers["X-Correlation-ID"] == "corr-42"


@respx.mock
async def test_cancel_of_a_closed_referral_is_success(adapter: ElementalAdapter) -> None:
    respx.post(CANCEL).mock(
        return_value=httpx.Response(
            409, json={"error": {"code": "referral_closed", "status": "cancelled"}}
        )
    )
    async with httpx.AsyncClient() as http:
        outcome = await adapter.cancel_case(http, CASE, OUTBOUND)
    assert outcome.status_code == 409
    assert outcome.external_reference == "ELM-00042"


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, {"error": {"code": "not_found"}}), (409, {"error": {"code": "locked"}})],
)
@respx.mock
async def test_cancel_unknown_referral_or_other_conflict_is_permanent(
    adapter: ElementalAdapter, status: int, body: dict[str, Any]
) -> None:
    respx.post(CANCEL).mock(return_value=httpx.Response(status, json=body))
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentError) as caught:
            await adapter.cancel_case(http, CASE, OUTBOUND)
    assert caught.value.status_code == status


@respx.mock
async def test_cancel_5xx_is_retryable(adapter: ElementalAdapter) -> None:
    respx.post(CANCEL).mock(return_value=httpx.Response(502))
    async with httpx.AsyncClient() as http:
        with pytest.raises(RetryableError):
            await adapter.cancel_case(http, CASE, OUTBOUND)


@pytest.mark.parametrize("reference", [None, ""])
@respx.mock
async def test_cancel_without_external_reference_is_permanent(
    adapter: ElementalAdapter, reference: str | None
) -> None:
    route = respx.post(url__regex=r".*").mock(return_value=httpx.Response(200))
    case = CaseReference("ref-0001", "case-0001", reference)
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentError, match="never created"):
            await adapter.cancel_case(http, case, OUTBOUND)
    assert not route.called


@respx.mock
async def test_cancel_quotes_the_reference_into_one_path_segment(
    adapter: ElementalAdapter,
) -> None:
    route = respx.post(url__regex=r".*").mock(return_value=httpx.Response(200, json={}))
    case = CaseReference("ref-0001", "case-0001", "../admin?x=1")
    async with httpx.AsyncClient() as http:
        await adapter.cancel_case(http, case, OUTBOUND)
    assert route.calls.last.request.url.raw_path == b"/api/v1/referrals/..%2Fadmin%3Fx%3D1/cancel"


# --- parse_inbound --------------------------------------------------------------------------------

NOW = dt.datetime.now(dt.UTC)
SLOT = {"starts_at": "2026-11-25T14:00:00Z", "ends_at": "2026-11-25T14:45:00Z"}
PRESCRIPTION = {
    "prescription_id": "RX-9",
    "category": "Money & Debt",
    "provider": {"id": "org-3", "name": "Citizens Advice Halton"},
    "offer": {"id": "offer-5", "title": "Benefits check"},
}
ANSWERS = [
    {"item": i, "score": s}
    for i, s in zip([3, 1, 2, 7, 4, 5, 6], [3, 2, 4, 5, 1, 3, 2], strict=True)
]

# Every Elemental event type: its data, and the canonical events it must become.
CASES: list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]] = [
    ("client.registered", {"client_id": "CL-1"}, [("case.accepted", {})]),
    (
        "referral.rejected",
        {"rejection_reason": "out_of_area"},
        [("case.rejected", {"reason": "out-of-area"})],
    ),
    (
        "contact.logged",
        {"contact_id": "c1", "method": "phone", "result": "voicemail_left"},
        [("contact.attempted", {"outcome": "message-left"})],
    ),
    (
        "appointment.booked",
        {"appointment_id": "AP-1", "format": "phone", **SLOT},
        [
            (
                "appointment.booked",
                {
                    "appointment_id": "AP-1",
                    "start": "2026-11-25T14:00:00+00:00",
                    "appointment_type": "telephone",
                    "duration_minutes": 45,
                },
            )
        ],
    ),
    (
        "appointment.rescheduled",
        {
            "appointment_id": "AP-1",
            "format": "group_session",
            "starts_at": "2026-11-26T10:00:00+01:00",
            "ends_at": "2026-11-26T11:30:00+01:00",
        },
        [
            (
                "appointment.rescheduled",
                {
                    "appointment_id": "AP-1",
                    "start": "2026-11-26T09:00:00+00:00",
                    "appointment_type": "group",
                    "duration_minutes": 90,
                },
            )
        ],
    ),
    (
        "appointment.outcome_recorded",
        {"appointment_id": "AP-1", "outcome": "attended", "minutes_spent": 50},
        [("appointment.attended", {"appointment_id": "AP-1", "duration_minutes": 50})],
    ),
    (
        "prescription.created",
        {**PRESCRIPTION, "state": "suggested"},
        [
            (
                "prescription.created",
                {
                    "prescription_id": "RX-9",
                    "category": "benefits-money",
                    "provider": "Citizens Advice Halton",
                    "activity": "Benefits check",
                    "status": "proposed",
                },
            )
        ],
    ),
    (
        "prescription.updated",
        {**PRESCRIPTION, "category": "Something New", "state": "client_declined"},
        [
            (
                "prescription.updated",
                {
                    "prescription_id": "RX-9",
                    "category": "other",
                    "provider": "Citizens Advice Halton",
                    "activity": "Benefits check",
                    "status": "declined",
                },
            )
        ],
    ),
    (
        "wellbeing.recorded",
        {"assessment_id": "WB-1", "tool": "SWEMWBS", "timepoint": "final", "answers": ANSWERS},
        [
            (
                "outcome.recorded",
                {"instrument": "SWEMWBS", "items": [2, 4, 3, 1, 3, 2, 5], "stage": "end"},
            )
        ],
    ),
    (
        "demographics.recorded",
        {
            "answers": {
                "ethnic_group": "White British",
                "religion_or_belief": "prefer_not_to_say",
                "sexual_orientation": None,
                "disability": "",
                "shoe_size": "9",
            }
        },
        [
            (
                "demographics.recorded",
                {"ethnicity": "White British", "religion": "prefer_not_to_say"},
            )
        ],
    ),
    ("referral.paused", {"reason": "hospital stay"}, [("case.on_hold", {})]),
    ("referral.resumed", {}, [("case.resumed", {})]),
    (
        "referral.closed",
        {"closure_reason": "no_contact"},
        [("case.discharged", {"reason": "unable-to-contact"})],
    ),
]


def event(event_type: str, data: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    return {
        "id": "evt_000123",
        "type": event_type,
        "timestamp": "2026-11-21T09:30:00+00:00",
        "data": {"referral_id": "ELM-00042", "external_id": "ref-0001", **data},
        **envelope,
    }


def test_every_platform_event_type_has_a_case_here() -> None:
    assert {c[0] for c in CASES} == mapping.PLATFORM_EVENT_TYPES


@pytest.mark.parametrize(("event_type", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_signed_events_are_accepted_and_mapped(
    adapter: ElementalAdapter,
    event_type: str,
    data: dict[str, Any],
    expected: list[tuple[str, dict[str, Any]]],
) -> None:
    # A delivery service may give webhook-id its own value: the event id is what identifies it.
    body, headers = signed_webhook(SECRET, event(event_type, data), msg_id="msg_77")
    message = adapter.parse_inbound(body, headers, NOW)
    assert message.message_id == "evt_000123"
    assert [(e.type, dict(e.data)) for e in message.events] == expected
    for e in message.events:
        assert e.idempotency_key == "elemental:evt_000123"
        assert e.referral_id == "ref-0001"
        assert e.external_reference == "ELM-00042"
        assert e.occurred_at == dt.datetime(2026, 11, 21, 9, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"outcome": "dna"}, ("appointment.did_not_attend", {"appointment_id": "AP-1"})),
        (
            {"outcome": "cancelled_by_service", "minutes_spent": 5},
            ("appointment.cancelled", {"appointment_id": "AP-1", "cancelled_by": "service"}),
        ),
        ({"outcome": "attended"}, ("appointment.attended", {"appointment_id": "AP-1"})),
    ],
)
def test_appointment_outcomes(
    adapter: ElementalAdapter, data: dict[str, Any], expected: tuple[str, dict[str, Any]]
) -> None:
    payload = event("appointment.outcome_recorded", {"appointment_id": "AP-1", **data})
    body, headers = signed_webhook(SECRET, payload)
    [only] = adapter.parse_inbound(body, headers, NOW).events
    assert (only.type, dict(only.data)) == expected


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("goals_achieved", ("case.completed", "needs-met")),
        ("referred_to_another_service", ("case.completed", "referred-on")),
        ("did_not_attend", ("case.discharged", "did-not-attend")),
        ("no_longer_required", ("case.discharged", "no-longer-required")),
        ("inappropriate_referral", ("case.discharged", "inappropriate-referral")),
        ("client_declined", ("case.discharged", "declined")),
    ],
)
def test_closure_reasons(adapter: ElementalAdapter, reason: str, expected: tuple[str, str]) -> None:
    body, headers = signed_webhook(SECRET, event("referral.closed", {"closure_reason": reason}))
    [only] = adapter.parse_inbound(body, headers, NOW).events
    assert (only.type, only.data) == (expected[0], {"reason": expected[1]})


def test_unknown_event_type_is_ignored(adapter: ElementalAdapter) -> None:
    body, headers = signed_webhook(SECRET, event("invoice.paid", {"amount": 3}))
    message = adapter.parse_inbound(body, headers, NOW)
    assert message.message_id == "evt_000123"
    assert list(message.events) == []


@pytest.mark.parametrize(
    "data",
    [
        {"tool": "ons4", "timepoint": "baseline", "answers": []},
        {"answers": {"shoe_size": "9", "ethnic_group": None}},
    ],
    ids=["other-wellbeing-tool", "no-demographics-given"],
)
def test_known_events_with_nothing_for_us_yield_no_events(
    adapter: ElementalAdapter, data: dict[str, Any]
) -> None:
    kind = "wellbeing.recorded" if "tool" in data else "demographics.recorded"
    body, headers = signed_webhook(SECRET, event(kind, data))
    assert list(adapter.parse_inbound(body, headers, NOW).events) == []


@pytest.mark.parametrize("external_id", [None, "", "absent"])
def test_event_without_external_id_leaves_referral_id_empty(
    adapter: ElementalAdapter, external_id: str | None
) -> None:
    payload = event("client.registered", {})
    if external_id == "absent":
        del payload["data"]["external_id"]
    else:
        payload["data"]["external_id"] = external_id
    body, headers = signed_webhook(SECRET, payload)
    [only] = adapter.parse_inbound(body, headers, NOW).events
    assert only.referral_id is None
    assert only.external_reference == "ELM-00042"


def test_headers_are_matched_case_insensitively(adapter: ElementalAdapter) -> None:
    body, headers = signed_webhook(SECRET, event("referral.resumed", {}))
    upper = {k.title(): v for k, v in headers.items()}
    assert adapter.parse_inbound(body, upper, NOW).events[0].type == "case.resumed"


def test_several_canonical_events_get_numbered_keys() -> None:
    assert mapping.idempotency_key("evt_1", 0, 1) == "elemental:evt_1"
    assert [mapping.idempotency_key("evt_1", i, 2) for i in range(2)] == [
        "elemental:evt_1:1",
        "elemental:evt_1:2",
    ]


# --- refusals -------------------------------------------------------------------------------------


def refused(adapter: ElementalAdapter, body: bytes, headers: dict[str, str]) -> InboundRefused:
    with pytest.raises(InboundRefused) as caught:
        adapter.parse_inbound(body, headers, NOW)
    return caught.value


def test_forged_signature_is_401(adapter: ElementalAdapter) -> None:
    body, headers = signed_webhook(OTHER_SECRET, event("client.registered", {}))
    assert refused(adapter, body, headers).status == 401


def test_tampered_body_is_401(adapter: ElementalAdapter) -> None:
    body, headers = signed_webhook(
        SECRET, event("referral.closed", {"closure_reason": "goals_achieved"})
    )
    tampered = body.replace(b"ELM-00042", b"ELM-00043")
    assert refused(adapter, tampered, headers).status == 401


@pytest.mark.parametrize("minutes", [-6, 6, -60 * 24])
def test_stale_or_future_timestamp_is_401(adapter: ElementalAdapter, minutes: int) -> None:
    when = NOW + dt.timedelta(minutes=minutes)
    body, headers = signed_webhook(SECRET, event("client.registered", {}), timestamp=when)
    assert refused(adapter, body, headers).status == 401


def test_timestamp_is_checked_against_the_given_clock(adapter: ElementalAdapter) -> None:
    body, headers = signed_webhook(SECRET, event("client.registered", {}))
    with pytest.raises(InboundRefused):
        adapter.parse_inbound(body, headers, NOW + dt.timedelta(minutes=10))
    # Within tolerance of the given clock it passes.
    adapter.parse_inbound(body, headers, NOW + dt.timedelta(minutes=4))


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_401(adapter: ElementalAdapter, missing: str) -> None:
    body, headers = signed_webhook(SECRET, event("client.registered", {}))
    del headers[missing]
    assert refused(adapter, body, headers).status == 401


@pytest.mark.parametrize(
    "signature",
    [
        "garbage",
        "v1,",
        "v1,!!!not-base64!!!",
        "v1,a,b",
        "v1,YWJj",  # valid base64, wrong length
        "v2," + base64.b64encode(b"x" * 32).decode(),
        "v1,\u00e9\u00e9",
        " ",
    ],
)
def test_garbage_signature_is_401(adapter: ElementalAdapter, signature: str) -> None:
    body, headers = signed_webhook(SECRET, event("client.registered", {}))
    headers["webhook-signature"] = signature
    assert refused(adapter, body, headers).status == 401


@pytest.mark.parametrize("timestamp", ["soon", "1e9", "-5", "9" * 400, ""])
def test_garbage_timestamp_is_401(adapter: ElementalAdapter, timestamp: str) -> None:
    body, headers = signed_webhook(SECRET, event("client.registered", {}))
    headers["webhook-timestamp"] = timestamp
    assert refused(adapter, body, headers).status == 401


def test_non_utf8_body_is_401(adapter: ElementalAdapter) -> None:
    _, headers = signed_webhook(SECRET, event("client.registered", {}))
    assert refused(adapter, b"\xff\xfe{}", headers).status == 401


def sign_raw(text: str) -> tuple[bytes, dict[str, str]]:
    """Sign arbitrary text (not necessarily JSON) as Elemental would."""
    from standardwebhooks.webhooks import Webhook

    headers = {
        "webhook-id": "msg_raw",
        "webhook-timestamp": str(int(NOW.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("msg_raw", NOW, text),
    }
    return text.encode(), headers


@pytest.mark.parametrize(
    "text",
    ["{not json", "", "[" * 100_000 + "]" * 100_000, '{"id": "a",}'],
    ids=["broken", "empty", "deeply-nested", "trailing-comma"],
)
def test_bad_json_under_a_good_signature_is_422(adapter: ElementalAdapter, text: str) -> None:
    failure = refused(adapter, *sign_raw(text))
    assert failure.status == 422
    assert "JSON" in str(failure)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.pop("id"), "'id'"),
        (lambda e: e.update(type=7), "'type'"),
        (lambda e: e.update(timestamp="yesterday"), "'timestamp'"),
        (lambda e: e.update(timestamp="2026-11-21T09:30:00"), "'timestamp'"),
        (lambda e: e.update(data=[]), "'data'"),
        (lambda e: e["data"].pop("referral_id"), "'data.referral_id'"),
        (lambda e: e["data"].update(external_id=12), "'data.external_id'"),
        (lambda e: e["data"].update(result="shouted"), "'data.result'"),
        # PostgreSQL cannot store NUL: refused here rather than failing later with a 500.
        (lambda e: e["data"].update(referral_id="ELM\x0042"), "'data.referral_id'"),
    ],
)
def test_unknown_shape_is_422_naming_the_field(
    adapter: ElementalAdapter, mutate: Any, field: str
) -> None:
    payload = event("contact.logged", {"result": "spoke_to_client"})
    mutate(payload)
    failure = refused(adapter, *signed_webhook(SECRET, payload, msg_id="m1"))
    assert failure.status == 422
    assert field in str(failure)
    assert "shouted" not in str(failure)
    assert "yesterday" not in str(failure)


@pytest.mark.parametrize(
    ("event_type", "data", "field"),
    [
        ("appointment.booked", {"appointment_id": "A", "format": "phone"}, "data.starts_at"),
        (
            "appointment.booked",
            {
                "appointment_id": "A",
                "format": "phone",
                "starts_at": SLOT["ends_at"],
                "ends_at": SLOT["starts_at"],
            },
            "data.ends_at",
        ),
        (
            "appointment.booked",
            {"appointment_id": "A", "format": "carrier pigeon", **SLOT},
            "format",
        ),
        ("appointment.outcome_recorded", {"appointment_id": "A", "outcome": "late"}, "outcome"),
        (
            "appointment.outcome_recorded",
            {"appointment_id": "A", "outcome": "attended", "minutes_spent": "50"},
            "minutes_spent",
        ),
        ("prescription.created", {**PRESCRIPTION, "state": "maybe"}, "data.state"),
        (
            "prescription.created",
            {**PRESCRIPTION, "provider": {}, "state": "agreed"},
            "provider.name",
        ),
        (
            "wellbeing.recorded",
            {"tool": "swemwbs", "timepoint": "baseline", "answers": ANSWERS[:6]},
            "data.answers",
        ),
        (
            "wellbeing.recorded",
            {
                "tool": "swemwbs",
                "timepoint": "baseline",
                "answers": [*ANSWERS[:6], {"item": 7, "score": 6}],
            },
            "data.answers[6]",
        ),
        (
            "wellbeing.recorded",
            {
                "tool": "swemwbs",
                "timepoint": "baseline",
                "answers": [*ANSWERS[:6], {"item": 1, "score": 2}],
            },
            "data.answers[6]",
        ),
        (
            "wellbeing.recorded",
            {"tool": "swemwbs", "timepoint": "later", "answers": ANSWERS},
            "timepoint",
        ),
        ("demographics.recorded", {"answers": {"ethnic_group": 4}}, "data.answers.ethnic_group"),
        ("referral.closed", {"closure_reason": "bored"}, "data.closure_reason"),
        ("referral.rejected", {}, "data.rejection_reason"),
    ],
)
def test_bad_event_data_is_422_naming_the_field(
    adapter: ElementalAdapter, event_type: str, data: dict[str, Any], field: str
) -> None:
    failure = refused(adapter, *signed_webhook(SECRET, event(event_type, data)))
    assert failure.status == 422
    assert field in str(failure)


def test_refusals_never_echo_patient_values(adapter: ElementalAdapter) -> None:
    payload = event("demographics.recorded", {"answers": {"ethnic_group": ["Sam Example"]}})
    failure = refused(adapter, *signed_webhook(SECRET, payload))
    assert "Sam" not in str(failure)


# --- poll -----------------------------------------------------------------------------------------

FEED = f"{BASE}/api/v1/events"


@respx.mock
async def test_poll_from_the_start_then_from_the_cursor(adapter: ElementalAdapter) -> None:
    first = event("client.registered", {}, id="evt_1")
    second = event("referral.closed", {"closure_reason": "goals_achieved"}, id="evt_2")
    unknown = event("note.added", {}, id="evt_3")
    route = respx.get(FEED).mock(
        side_effect=[
            httpx.Response(
                200,
                json={"data": [first, second, unknown], "next_cursor": "cur_3", "has_more": False},
            ),
            httpx.Response(200, json={"data": [], "next_cursor": None, "has_more": False}),
        ]
    )
    async with httpx.AsyncClient() as http:
        result = await adapter.poll(http, None)
        again = await adapter.poll(http, result.cursor)
    assert [m.message_id for m in result.messages] == ["evt_1", "evt_2", "evt_3"]
    assert [[e.type for e in m.events] for m in result.messages] == [
        ["case.accepted"],
        ["case.completed"],
        [],
    ]
    assert result.messages[1].events[0].idempotency_key == "elemental:evt_2"
    assert result.cursor == "cur_3"
    assert again.messages == []
    assert again.cursor == "cur_3"
    first_call, second_call = route.calls
    assert dict(first_call.request.url.params) == {"limit": "100"}
    assert dict(second_call.request.url.params) == {"limit": "100", "after": "cur_3"}
    assert first_call.request.headers["Authorization"] == f"Bearer {API_KEY}"


@respx.mock
async def test_poll_without_next_cursor_moves_to_the_last_event(
    adapter: ElementalAdapter,
) -> None:
    respx.get(FEED).mock(
        return_value=httpx.Response(200, json={"data": [event("referral.paused", {}, id="e9")]})
    )
    async with httpx.AsyncClient() as http:
        assert (await adapter.poll(http, "e8")).cursor == "e9"


@respx.mock
async def test_poll_errors(adapter: ElementalAdapter) -> None:
    respx.get(FEED).mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "30"}),
            httpx.Response(401),
            httpx.Response(200, json={"items": []}),
            httpx.Response(200, json={"data": [event("contact.logged", {"result": "?"})]}),
        ]
    )
    async with httpx.AsyncClient() as http:
        with pytest.raises(RetryableError) as retry:
            await adapter.poll(http, "c")
        assert retry.value.retry_after == 30
        with pytest.raises(PermanentError):
            await adapter.poll(http, "c")
        with pytest.raises(PermanentError, match="'data' array"):
            await adapter.poll(http, "c")
        with pytest.raises(PermanentError, match=r"data\.result"):
            await adapter.poll(http, "c")


# --- against the fake platform under uvicorn ----------------------------------------------------


async def test_end_to_end_against_the_fake_platform() -> None:
    platform = FakePlatform(API_KEY)
    async with serve(make_platform_app(API_KEY, platform)) as base_url:
        adapter = ElementalAdapter(config(base_url=base_url))
        async with httpx.AsyncClient() as http:
            created = await adapter.create_case(http, referral(), OUTBOUND)
            assert created.status_code == 201
            reference = created.external_reference
            assert reference is not None
            # The same delivery retried: the platform replays its answer.
            again = await adapter.create_case(http, referral(), OUTBOUND)
            assert (again.status_code, again.external_reference) == (200, reference)
            # A different delivery of the same referral: 409, still the same case.
            other = await adapter.create_case(http, referral(), Outbound("dlv-0002", None))
            assert (other.status_code, other.external_reference) == (409, reference)
            assert len(platform.created) == 1
            received = platform.created[0]
            assert received.body == mapping.referral_body(referral())
            assert received.headers["idempotency-key"] == "dlv-0001"
            assert received.headers["x-correlation-id"] == "corr-42"

            platform.fail_next(1, status=503, retry_after="3")
            with pytest.raises(RetryableError) as caught:
                await adapter.create_case(http, referral(referral_id="ref-2"), Outbound("d3", None))
            assert caught.value.retry_after == 3
            platform.down = True
            with pytest.raises(RetryableError):
                await adapter.poll(http, None)
            platform.down = False

            case = CaseReference("ref-0001", "case-0001", reference)
            assert (await adapter.cancel_case(http, case, OUTBOUND)).status_code == 200
            assert (await adapter.cancel_case(http, case, OUTBOUND)).status_code == 409
            assert len(platform.cancels) == 1
            assert platform.referrals[reference].status == "cancelled"
            with pytest.raises(PermanentError) as missing:
                await adapter.cancel_case(http, CaseReference("r", "c", "ELM-404"), OUTBOUND)
            assert missing.value.status_code == 404

            platform.add_event("client.registered", reference)
            platform.add_event("contact.logged", reference, {"result": "spoke_to_client"})
            page = await adapter.poll(http, None)
            assert [m.events[0].type for m in page.messages] == [
                "case.accepted",
                "contact.attempted",
            ]
            assert page.messages[0].events[0].referral_id == "ref-0001"
            platform.add_event("referral.paused", reference)
            later = await adapter.poll(http, page.cursor)
            assert [m.events[0].type for m in later.messages] == ["case.on_hold"]
            assert (await adapter.poll(http, later.cursor)).messages == []

        wrong_key = ElementalAdapter(config(base_url=base_url, api_key="wrong"))
        async with httpx.AsyncClient() as http:
            with pytest.raises(PermanentError) as refused_auth:
                await wrong_key.create_case(http, referral(), OUTBOUND)
        assert refused_auth.value.status_code == 401


def test_fake_platform_events_verify_through_the_adapter(adapter: ElementalAdapter) -> None:
    platform = FakePlatform(API_KEY)
    sent = platform.add_event("referral.closed", "ELM-1", {"closure_reason": "client_declined"})
    message = adapter.parse_inbound(*signed_webhook(SECRET, copy.deepcopy(sent)), NOW)
    assert message.message_id == sent["id"]
    assert message.events[0].type == "case.discharged"
    assert message.events[0].referral_id is None


# --- the OpenAPI fragment agrees with the mapping ----------------------------------------------


def test_openapi_fragment_matches_the_mapping() -> None:
    document = json.loads((ROOT / "openapi" / "elemental-platform.json").read_text())
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/api/v1/referrals",
        "/api/v1/referrals/{referral_id}",
        "/api/v1/referrals/{referral_id}/cancel",
        "/api/v1/events",
    }
    update = document["components"]["schemas"]["UpdateReferral"]["properties"]
    assert set(update) == {"external_id", *mapping.UPDATE_FIELDS, "client"}
    assert set(update["client"]["properties"]) == set(mapping.UPDATE_CLIENT_FIELDS)
    schemas = document["components"]["schemas"]
    assert schemas["Category"]["enum"] == list(mapping.PLATFORM_CATEGORIES)
    assert set(schemas["EventType"]["enum"]) == mapping.PLATFORM_EVENT_TYPES
    assert set(schemas["ContactLoggedData"]["properties"]["result"]["enum"]) == set(
        mapping.CONTACT_RESULTS
    )
    assert set(schemas["ReferralClosedData"]["properties"]["closure_reason"]["enum"]) == set(
        mapping.CLOSURE_REASONS
    )
    assert set(schemas["AppointmentFormat"]["enum"]) == set(mapping.APPOINTMENT_FORMATS)
    assert set(schemas["PrescriptionData"]["properties"]["state"]["enum"]) == set(
        mapping.PRESCRIPTION_STATES
    )
    assert "elementalEvent" in document["webhooks"]
