"""The BaRS receiver (issue 17 part 1): POST /fhir/$process-message takes a BaRS referral message
through the one referral path: a new referral, an amendment, a cancellation; a repeated
X-Request-ID is 409 REC_CONFLICT; errors carry BaRS's codes."""

from __future__ import annotations

import base64
import copy
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from app.cases.models import Case, CaseEvent, Referral
from app.db import Database
from tests.conftest import FHIR_JSON, Bridge, row_counts

ROOT = Path(__file__).resolve().parents[2]
BARS = ROOT / "tests" / "fixtures" / "fhir-examples" / "bars"
# The published BaRS example (MIT, Crown Copyright; tests/fixtures/fhir-examples/SOURCES.md).
VALIDATION_REQUEST = BARS / "process_message" / "request" / "ValidationRequest (POST) .json"
BOOKING = BARS / "process_message" / "request" / "Booking (POST).json"
VALID_NHS_NUMBER = "9000000009"
NHS_CODES = "https://fhir.nhs.uk/CodeSystem/http-error-codes"


def bars_message(*, nhs_number: str = VALID_NHS_NUMBER, reason: str = "new") -> dict[str, Any]:
    """The BaRS example, with a valid test NHS number substituted (its own fails the check)."""
    bundle: dict[str, Any] = orjson.loads(VALIDATION_REQUEST.read_bytes())
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource["identifier"][0]["value"] = nhs_number
        if resource["resourceType"] == "MessageHeader":
            resource["reason"]["coding"][0]["code"] = reason
    return bundle


def target(service_id: str) -> str:
    return base64.b64encode(orjson.dumps({"value": service_id, "system": "x"})).decode()


def headers(
    key: dict[str, str],
    *,
    request_id: str | None = None,
    ods: str = "RW4",
    service: str = "life-rooms",
) -> dict[str, str]:
    return {
        **key,
        **FHIR_JSON,
        "X-Request-ID": request_id or str(uuid.uuid4()),
        "X-Correlation-ID": "corr-bars-1",
        "NHSD-Target-Identifier": target(service),
        "NHSD-End-User-Organisation-ODS": ods,
    }


async def send(bridge: Bridge, bundle: dict[str, Any], sent: dict[str, str]) -> Any:
    return await bridge.http.post(
        "/fhir/$process-message", content=orjson.dumps(bundle), headers=sent
    )


def bars_codes(outcome: dict[str, Any]) -> list[str]:
    return [
        coding["code"]
        for issue in outcome["issue"]
        for coding in (issue.get("details") or {}).get("coding", [])
        if coding["system"] == NHS_CODES
    ]


async def _referral(app: Any, referral_id: str) -> tuple[Referral, Case, list[str]]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        referral = await session.get(Referral, referral_id)
        case = await session.scalar(select(Case).where(Case.referral_id == referral_id))
        events = list(
            await session.scalars(
                select(CaseEvent.type).where(CaseEvent.case_id == case.id).order_by(CaseEvent.seq)
            )
        )
    assert referral is not None and case is not None
    return referral, case, events


async def test_a_bars_referral_becomes_a_case_through_the_one_intake(
    bridge: Bridge, app: Any
) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    response = await send(bridge, bars_message(), headers(key))
    assert response.status_code == 200, response.text
    assert response.json()["issue"][0]["severity"] == "information"
    referral_id = response.headers["content-location"].removeprefix("ServiceRequest/")
    assert response.headers["x-correlation-id"] == "corr-bars-1"

    read = await bridge.http.get(f"/fhir/ServiceRequest/{referral_id}", headers=key)
    assert read.status_code == 200
    held = read.json()
    # The message's resources came with the referral, the MessageHeader did not.
    kinds = sorted({r["resourceType"] for r in held["contained"]})
    assert "Patient" in kinds and "Consent" in kinds and "Encounter" in kinds
    assert "MessageHeader" not in kinds
    assert held["subject"]["reference"] == "#patient"
    # Identified by the message's full URL for the ServiceRequest (the example has none).
    assert held["identifier"] == [
        {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:236bb75d-90ef-461f-b71e-fde7f899802c"}
    ]
    referral, case, events = await _referral(app, referral_id)  # type: ignore[attr-defined]
    assert referral.service_id == "life-rooms"
    assert referral.nhs_number == VALID_NHS_NUMBER
    assert referral.requester_ods == "RW4"
    assert referral.correlation_id == "corr-bars-1"
    assert referral.origin == {
        "channel": "bars",
        "bundle_id": "86e3371d-1c15-4862-9552-d9560f8292ba",
        "source_endpoint": "http://fhir.nhs.uk/Id/dos-service-id|2222222222",
        "request_id": response.headers["x-request-id"],
        "correlation_id": "corr-bars-1",
    }
    assert case.state == "received"
    assert events == ["referral.received"]
    task = await bridge.http.get(f"/fhir/Task?focus=ServiceRequest/{referral_id}", headers=key)
    assert task.json()["total"] == 1


async def test_a_repeated_x_request_id_is_409_rec_conflict_and_changes_nothing(
    bridge: Bridge, database_url: str
) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    sent = headers(key)
    assert (await send(bridge, bars_message(), sent)).status_code == 200
    before = await row_counts(database_url)
    again = await send(bridge, bars_message(), sent)
    assert again.status_code == 409
    outcome = again.json()
    assert outcome["issue"][0]["code"] == "duplicate"
    assert bars_codes(outcome) == ["REC_CONFLICT"]
    assert await row_counts(database_url) == before
    # The same message under a new X-Request-ID is the same referral (idempotent intake).
    same = await send(bridge, bars_message(), headers(key))
    assert same.status_code == 200
    assert "Already held" in same.json()["issue"][0]["diagnostics"]
    assert await row_counts(database_url) == before


async def test_bars_headers_are_required_and_checked(bridge: Bridge, database_url: str) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    without_id = headers(key)
    del without_id["X-Request-ID"]
    refused = await send(bridge, bars_message(), without_id)
    assert refused.status_code == 400
    assert bars_codes(refused.json()) == ["REC_BAD_REQUEST"]
    assert "X-Request-ID" in refused.json()["issue"][0]["diagnostics"]

    other_org = await send(bridge, bars_message(), headers(key, ods="RXX"))
    assert other_org.status_code == 403
    assert bars_codes(other_org.json()) == ["REC_FORBIDDEN"]

    no_ods = headers(key)
    del no_ods["NHSD-End-User-Organisation-ODS"]
    assert (await send(bridge, bars_message(), no_ods)).status_code == 400

    bad_target = headers(key)
    bad_target["NHSD-Target-Identifier"] = "not base64 json!"
    assert (await send(bridge, bars_message(), bad_target)).status_code == 400

    unknown = await send(bridge, bars_message(), headers(key, service="no-such-service"))
    assert unknown.status_code == 422
    assert bars_codes(unknown.json()) == ["REC_UNPROCESSABLE_ENTITY"]
    assert (await row_counts(database_url))["referrals"] == 0


async def test_errors_name_the_message_entry_never_the_value(bridge: Bridge) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    # The example as published: its NHS number fails the modulus-11 check.
    refused = await send(bridge, bars_message(nhs_number="3478526985"), headers(key))
    assert refused.status_code == 422
    outcome = refused.json()
    assert bars_codes(outcome) == ["REC_UNPROCESSABLE_ENTITY"]
    issue = outcome["issue"][0]
    assert issue["expression"] == ["Bundle.entry[5].resource.identifier[0].value"]
    assert "3478526985" not in refused.text

    booking = orjson.loads(BOOKING.read_bytes())
    not_ours = await send(bridge, booking, headers(key))
    assert not_ours.status_code == 422
    assert not_ours.json()["issue"][0]["code"] == "not-supported"
    assert not_ours.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.eventCoding"]

    not_a_message = await send(
        bridge, {"resourceType": "Bundle", "type": "collection"}, headers(key)
    )
    assert not_a_message.status_code == 400
    assert bars_codes(not_a_message.json()) == ["REC_BAD_REQUEST"]


async def test_an_update_message_amends_and_a_cancel_message_cancels(
    bridge: Bridge, app: Any
) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    created = await send(bridge, bars_message(), headers(key))
    referral_id = created.headers["content-location"].removeprefix("ServiceRequest/")
    app = app

    update = bars_message(reason="update")
    service_request = next(
        e["resource"] for e in update["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )
    service_request["note"] = [{"text": "Prefers a call in the morning."}]
    update["timestamp"] = "2021-11-27T09:00:00+00:00"  # a later message; authoredOn stays
    amended = await send(bridge, update, headers(key))
    assert amended.status_code == 200, amended.text
    referral, _case, events = await _referral(app, referral_id)
    assert referral.version_id == 2
    assert referral.notes == "Prefers a call in the morning."
    assert events == ["referral.received", "referral.updated"]

    # An update may not change what a referral keeps once made: refused, naming the element.
    fixed = copy.deepcopy(update)
    next(
        e["resource"] for e in fixed["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )["occurrencePeriod"]["end"] = "2021-11-26T16:00:00+00:00"
    refused = await send(bridge, fixed, headers(key))
    assert refused.status_code == 422
    assert refused.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.occurrencePeriod"]

    cancel = bars_message(reason="cancel")
    cancelled = await send(bridge, cancel, headers(key))
    assert cancelled.status_code == 200, cancelled.text
    assert "cancelled" in cancelled.json()["issue"][0]["diagnostics"]
    _referral_row, case, events = await _referral(app, referral_id)
    assert case.state == "cancelled"
    assert events[-1] == "referral.cancelled"
    # A second cancellation (a new message) changes nothing; an update of a closed case is 409.
    again = await send(bridge, bars_message(reason="cancel"), headers(key))
    assert again.status_code == 200
    assert "nothing changed" in again.json()["issue"][0]["diagnostics"]
    late = await send(bridge, update, headers(key))
    assert late.status_code == 409
    assert bars_codes(late.json()) == ["REC_CONFLICT"]


async def test_an_update_of_an_unknown_referral_is_404_rec_not_found(bridge: Bridge) -> None:
    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    response = await send(bridge, bars_message(reason="update"), headers(key))
    assert response.status_code == 404
    assert bars_codes(response.json()) == ["REC_NOT_FOUND"]


@pytest.mark.parametrize("role", ["advisor", "reporting"])
async def test_only_clinical_systems_send_referral_messages(bridge: Bridge, role: str) -> None:
    await bridge.service()
    key = await bridge.key(role, "RW4")
    response = await send(bridge, bars_message(), headers(key))
    assert response.status_code == 403


async def test_concurrent_repeats_of_one_x_request_id_make_one_referral(
    bridge: Bridge, database_url: str
) -> None:
    import asyncio

    await bridge.service()
    key = await bridge.key("clinical-system", "RW4")
    sent = headers(key)
    answers = await asyncio.gather(*(send(bridge, bars_message(), sent) for _ in range(4)))
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409]
    assert (await row_counts(database_url))["referrals"] == 1
