"""POST /fhir/ServiceRequest: acceptance, and every refusal with status, code and expression."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import FHIR_JSON, NOTHING, Bridge, referral_resource, row_counts


@pytest.fixture
async def referrer(bridge: Bridge) -> dict[str, str]:
    await bridge.service()
    return await bridge.key(default_service="life-rooms")


def outcome(response: httpx.Response) -> tuple[int, str, list[str] | None]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert response.headers["content-type"].startswith("application/fhir+json")
    issue = body["issue"][0]
    return response.status_code, issue["code"], issue.get("expression")


async def test_accepted_referral(
    bridge: Bridge, referrer: dict[str, str], database_url: str
) -> None:
    resource = referral_resource()
    response = await bridge.refer(
        {**referrer, "X-Request-ID": "req-1", "X-Correlation-ID": "corr-1"}, resource
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (
        response.headers["location"]
        == f"http://testserver/fhir/ServiceRequest/{body['id']}/_history/1"
    )
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["x-request-id"] == "req-1"
    assert response.headers["x-correlation-id"] == "corr-1"
    assert body["meta"]["versionId"] == "1"
    assert body["identifier"] == resource["identifier"]
    assert body["status"] == "active"
    from fhir.resources.R4B.servicerequest import ServiceRequest

    ServiceRequest.model_validate(body)
    assert await row_counts(database_url) == {
        "referrals": 1,
        "cases": 1,
        "case_events": 1,
        "deliveries": 0,
    }


async def test_default_service_used_without_performer(
    bridge: Bridge, referrer: dict[str, str]
) -> None:
    resource = referral_resource()
    del resource["performer"]
    response = await bridge.refer(referrer, resource)
    assert response.status_code == 201, response.text


async def test_application_json_is_accepted(bridge: Bridge, referrer: dict[str, str]) -> None:
    response = await bridge.http.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource()),
        headers={**referrer, "Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


async def test_generated_request_ids_are_echoed(bridge: Bridge, referrer: dict[str, str]) -> None:
    response = await bridge.refer(referrer, referral_resource())
    assert len(response.headers["x-request-id"]) == 36
    assert response.headers["x-correlation-id"] == response.headers["x-request-id"]


async def test_an_nhs_number_sent_as_a_request_id_is_replaced(
    bridge: Bridge, referrer: dict[str, str]
) -> None:
    """Ids are logged and passed on with every delivery: an NHS number must not travel there."""
    response = await bridge.refer(
        {**referrer, "X-Request-ID": "9434765919", "X-Correlation-ID": "943 476 5919"},
        referral_resource(),
    )
    assert response.status_code == 201
    assert "9434765919" not in response.headers["x-request-id"]
    assert len(response.headers["x-request-id"]) == 36
    assert response.headers["x-correlation-id"] == response.headers["x-request-id"]
    # Ten digits that fail the check digit are an ordinary id.
    other = await bridge.refer({**referrer, "X-Request-ID": "9434765918"}, referral_resource())
    assert other.headers["x-request-id"] == "9434765918"


def _without(key: str) -> dict[str, Any]:
    resource = referral_resource()
    del resource[key]
    return resource


def _nested(**changes: Any) -> dict[str, Any]:
    resource = referral_resource()
    for path, value in changes.items():
        node: Any = resource
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is None:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return resource


FUTURE = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()

REFUSALS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("status draft", referral_resource(status="draft"), 422, "value", "ServiceRequest.status"),
    ("intent plan", referral_resource(intent="plan"), 422, "value", "ServiceRequest.intent"),
    ("no identifier", _without("identifier"), 422, "required", "ServiceRequest.identifier"),
    (
        "identifier without system",
        referral_resource(identifier=[{"value": "abc"}]),
        422,
        "required",
        "ServiceRequest.identifier",
    ),
    ("no requester", _without("requester"), 422, "required", "ServiceRequest.requester"),
    ("no authoredOn", _without("authoredOn"), 422, "required", "ServiceRequest.authoredOn"),
    (
        "future authoredOn",
        referral_resource(authoredOn=FUTURE),
        422,
        "value",
        "ServiceRequest.authoredOn",
    ),
    (
        "no NHS number",
        _nested(subject={"reference": "Patient/123"}),
        422,
        "required",
        "ServiceRequest.subject",
    ),
    (
        "NHS number fails modulus 11",
        _nested(
            subject__identifier__value="3478526985", contained__0__identifier__0__value="3478526985"
        ),
        422,
        "value",
        "ServiceRequest.subject.identifier.value",
    ),
    (
        "NHS number wrong length",
        _nested(subject={"reference": "#patient"}, contained__0__identifier__0__value="12345"),
        422,
        "value",
        "ServiceRequest.contained[0].identifier[0].value",
    ),
    (
        "two different NHS numbers",
        _nested(subject__identifier__value="9434765919"),
        422,
        "business-rule",
        "ServiceRequest.contained[0].identifier[0].value",
    ),
    (
        "no consent",
        _nested(contained__1=None, supportingInfo=None),
        422,
        "required",
        "ServiceRequest.supportingInfo",
    ),
    (
        "consent rejected",
        _nested(contained__1__status="rejected"),
        422,
        "business-rule",
        "ServiceRequest.contained.where(resourceType='Consent')",
    ),
    (
        "unknown service",
        referral_resource(performer=[{"reference": "HealthcareService/nowhere"}]),
        422,
        "not-found",
        "ServiceRequest.performer",
    ),
    (
        "unknown element",
        referral_resource(colour="blue"),
        400,
        "structure",
        "ServiceRequest",
    ),
    (
        "unknown element deep inside",
        _nested(contained__0__name__0__nickname="x"),
        400,
        "structure",
        "ServiceRequest.contained[0].name[0]",
    ),
    ("wrong type", referral_resource(status=5), 400, "structure", "ServiceRequest.status"),
    (
        # Invalid R4 (a required binding), refused by the R4 schema before any business rule.
        "unknown priority",
        referral_resource(priority="whenever"),
        400,
        "code-invalid",
        "ServiceRequest.priority",
    ),
    (
        "unknown gender",
        _nested(contained__0__gender="robot"),
        400,
        "code-invalid",
        "ServiceRequest.contained[0].gender",
    ),
    ("missing subject", _without("subject"), 400, "required", "ServiceRequest.subject"),
    ("wrong resourceType", {"resourceType": "Patient"}, 400, "invalid", "resourceType"),
    ("no resourceType", {"status": "active"}, 400, "structure", "resourceType"),
    (
        "contained resource without type",
        referral_resource(contained=[{}]),
        400,
        "structure",
        "ServiceRequest.contained[0].resourceType",
    ),
    (
        "contained resource of unknown type",
        referral_resource(contained=[{"resourceType": "Nope"}]),
        400,
        "structure",
        "ServiceRequest.contained[0].resourceType",
    ),
    (
        "NUL character",
        _nested(note=[{"text": "a\u0000b"}]),
        422,
        "value",
        "ServiceRequest.note[0].text",
    ),
]


@pytest.mark.parametrize(
    ("resource", "status", "code", "expression"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
async def test_refusals(
    bridge: Bridge,
    referrer: dict[str, str],
    database_url: str,
    resource: dict[str, Any],
    status: int,
    code: str,
    expression: str | None,
) -> None:
    response = await bridge.refer(referrer, resource)
    assert outcome(response) == (status, code, [expression] if expression else None), response.text
    assert await row_counts(database_url) == NOTHING


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "structure"),
        (b"{not json", "structure"),
        (b"[1, 2]", "structure"),
        (b"[" * 5000 + b"]" * 5000, "structure"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "structure"),
        (b"\xff\xfe", "structure"),
    ],
    ids=["empty", "not json", "array", "deep array", "deep object", "not utf-8"],
)
async def test_unparseable_bodies(
    bridge: Bridge, referrer: dict[str, str], database_url: str, body: bytes, code: str
) -> None:
    response = await bridge.http.post(
        "/fhir/ServiceRequest", content=body, headers={**referrer, **FHIR_JSON}
    )
    assert outcome(response)[:2] == (400, code)
    assert await row_counts(database_url) == NOTHING


@pytest.mark.parametrize(
    "media_type", ["text/plain", "application/xml", "application/fhir+xml", None]
)
async def test_other_media_types_are_refused(
    bridge: Bridge, referrer: dict[str, str], database_url: str, media_type: str | None
) -> None:
    headers = dict(referrer)
    if media_type:
        headers["Content-Type"] = media_type
    response = await bridge.http.post(
        "/fhir/ServiceRequest", content=orjson.dumps(referral_resource()), headers=headers
    )
    assert outcome(response)[:2] == (415, "not-supported")
    assert await row_counts(database_url) == NOTHING


async def test_oversized_body_is_refused_before_it_is_read(
    bridge: Bridge, referrer: dict[str, str], database_url: str
) -> None:
    big = referral_resource(note=[{"text": "x" * (1024 * 1024)}])
    response = await bridge.refer(referrer, big)
    assert outcome(response)[:2] == (413, "too-long")

    chunks_read = 0

    async def stream() -> Any:
        nonlocal chunks_read
        for _ in range(64):  # 4 MiB in all, without a Content-Length
            chunks_read += 1
            yield b" " * 65536

    response = await bridge.http.post(
        "/fhir/ServiceRequest", content=stream(), headers={**referrer, **FHIR_JSON}
    )
    assert outcome(response)[:2] == (413, "too-long")
    assert chunks_read < 64  # stopped reading once past the limit
    assert await row_counts(database_url) == NOTHING


async def test_all_business_rule_failures_are_reported_together(
    bridge: Bridge, referrer: dict[str, str]
) -> None:
    resource = referral_resource(status="draft", intent="plan")
    del resource["requester"]
    response = await bridge.refer(referrer, resource)
    expressions = [issue["expression"][0] for issue in response.json()["issue"]]
    assert expressions == [
        "ServiceRequest.status",
        "ServiceRequest.intent",
        "ServiceRequest.requester",
    ]


async def test_diagnostics_never_echo_patient_data(
    bridge: Bridge, referrer: dict[str, str]
) -> None:
    secret = "Zebedee-Quasimodo"
    resources = [
        _nested(contained__0__name__0__family=123),
        _nested(contained__0__birthDate=secret),
        _nested(contained__0__gender=secret),
        _nested(
            subject__identifier__value="3478526985", contained__0__identifier__0__value="3478526985"
        ),
        _nested(contained__0__telecom__0__value=["07700"]),
    ]
    for resource in resources:
        response = await bridge.refer(referrer, resource)
        assert response.status_code in (400, 422)
        for value in (secret, "3478526985", "07700", "123"):
            assert value not in response.text


async def test_no_key_is_401_and_wrong_role_is_403(bridge: Bridge, database_url: str) -> None:
    await bridge.service()
    response = await bridge.refer({}, referral_resource())
    assert outcome(response)[:2] == (401, "login")
    assert response.headers["www-authenticate"].startswith("Bearer")
    response = await bridge.refer({"Authorization": "Bearer spb_not_a_key"}, referral_resource())
    assert outcome(response)[:2] == (401, "login")
    advisor = await bridge.key(role="advisor", organisation="LR001")
    response = await bridge.refer(advisor, referral_resource())
    assert outcome(response)[:2] == (403, "forbidden")
    assert await row_counts(database_url) == NOTHING


async def test_consent_not_required_when_switched_off(bridge: Bridge, database_url: str) -> None:
    # The fixture app requires consent; build one that does not.
    from app.main import create_app
    from tests.conftest import make_settings

    application = create_app(make_settings(database_url, require_consent=False))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            other = Bridge(http)
            await other.service()
            key = await other.key()
            response = await other.refer(key, _nested(contained__1=None, supportingInfo=None))
            assert response.status_code == 201, response.text


async def test_reasons_are_mapped_and_kept(
    bridge: Bridge, referrer: dict[str, str], database_url: str
) -> None:
    resource = referral_resource(
        reasonCode=[
            {"text": "Loneliness"},
            {
                "coding": [{"system": "https://rio.example/reasons", "code": "R99"}],
                "text": "Pet care",
            },
        ]
    )
    response = await bridge.refer(referrer, resource)
    assert response.status_code == 201
    from sqlalchemy import text

    from app.db import create_engine

    engine = create_engine(database_url)
    async with engine.connect() as connection:
        reasons = (await connection.execute(text("SELECT reasons FROM referrals"))).scalar_one()
    await engine.dispose()
    if isinstance(reasons, str):
        reasons = orjson.loads(reasons)
    assert [(r["domain"], r["mapped"]) for r in reasons] == [
        ("social-isolation", True),
        (None, False),
    ]
    assert reasons[1]["text"] == "Pet care"
