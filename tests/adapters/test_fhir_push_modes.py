"""fhir_push's write modes against recorded answers: what the CapabilityStatement decides, the
conditional update's version conflict, a transaction's conflict, and references to what the
server already holds. The same journeys against a real FHIR server are in
test_fhir_push_strict_server.py."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import respx

from adapters.base import ClinicalUpdate, FHIRResourceUpdate, Outbound, RetryableError
from adapters.fhir_push import FhirPushAdapter, FhirPushConfig
from adapters.fhir_push.capabilities import NotACapabilityStatement, supported_modes
from app.fhir.codes import RESOURCE_ID_SYSTEM
from tests.adapters.test_fhir_push import BASE, fhir

OUTBOUND = Outbound(request_id="delivery-1", correlation_id=None)
WRITTEN = ("Task", "Appointment", "ServiceRequest", "QuestionnaireResponse", "Observation")


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def statement(*, transaction: bool, conditional: bool, update_create: bool) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "rest": [
            {
                "mode": "server",
                "interaction": [{"code": "transaction"}] if transaction else [],
                "resource": [
                    {
                        "type": t,
                        "interaction": [{"code": "update"}],
                        "conditionalUpdate": conditional,
                        "updateCreate": update_create,
                    }
                    for t in WRITTEN
                ],
            }
        ],
    }


def ours(resource_type: str, ident: str, **rest: Any) -> dict[str, Any]:
    return {
        "resourceType": resource_type,
        "id": ident,
        "meta": {"versionId": "3"},
        "identifier": [{"system": RESOURCE_ID_SYSTEM, "value": ident}],
        **rest,
    }


def task(**changed: Any) -> dict[str, Any]:
    rest: dict[str, Any] = {
        "status": "in-progress",
        "lastModified": "2026-11-20T10:00:00Z",
        **changed,
    }
    return ours(
        "Task",
        "task-1",
        focus={
            "reference": "ServiceRequest/our-referral",
            "type": "ServiceRequest",
            "identifier": {"system": "https://rio.example/Id/referral", "value": "R-1"},
        },
        output=[
            {
                "valueReference": {
                    "reference": "Appointment/appt-1",
                    "type": "Appointment",
                    "identifier": {"system": RESOURCE_ID_SYSTEM, "value": "appt-1"},
                }
            }
        ],
        **rest,
    )


def update(*resources: dict[str, Any]) -> ClinicalUpdate:
    return ClinicalUpdate(
        "ref-1",
        "case.accepted",
        [FHIRResourceUpdate(r["resourceType"], r["id"], r) for r in resources],
    )


def adapter(mode: str) -> FhirPushAdapter:
    return FhirPushAdapter(FhirPushConfig.model_validate({"base_url": BASE, "write_mode": mode}))


def by_identifier(resource_type: str, ident: str) -> str:
    query = urllib.parse.urlencode({"identifier": f"{RESOURCE_ID_SYSTEM}|{ident}"})
    return f"{BASE}/{resource_type}?{query}"


def test_the_modes_a_capability_statement_offers() -> None:
    assert supported_modes(statement(transaction=True, conditional=True, update_create=False)) == [
        "transaction",
        "conditional",
    ]
    assert supported_modes(statement(transaction=True, conditional=False, update_create=True)) == [
        "update"
    ]
    assert (
        supported_modes(statement(transaction=False, conditional=False, update_create=False)) == []
    )
    lacking = statement(transaction=True, conditional=True, update_create=True)
    lacking["rest"][0]["resource"].pop()  # no Observation
    assert supported_modes(lacking) == []
    for wrong in ({"ok": True}, {"resourceType": "CapabilityStatement", "rest": []}, []):
        with pytest.raises(NotACapabilityStatement):
            supported_modes(wrong)


@pytest.mark.parametrize(
    ("answer", "mode"),
    [
        (
            fhir(200, statement(transaction=True, conditional=True, update_create=True)),
            "transaction",
        ),
        (
            fhir(200, statement(transaction=False, conditional=True, update_create=False)),
            "conditional",
        ),
        (fhir(200, statement(transaction=False, conditional=False, update_create=True)), "update"),
        (
            fhir(200, statement(transaction=False, conditional=False, update_create=False)),
            "conditional",
        ),
        (fhir(404), "update"),
        (fhir(200, {"ok": True}), "update"),
    ],
)
async def test_auto_takes_the_best_mode_offered(
    mock: respx.MockRouter, http: httpx.AsyncClient, answer: httpx.Response, mode: str
) -> None:
    metadata = mock.get(f"{BASE}/metadata").mock(return_value=answer)
    chosen = adapter("auto")
    assert await chosen.write_mode(http) == mode
    assert await chosen.write_mode(http) == mode
    assert metadata.call_count == 1  # read once


async def test_metadata_outage_is_retryable(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    mock.get(f"{BASE}/metadata").mock(return_value=fhir(503))
    with pytest.raises(RetryableError):
        await adapter("auto").write_mode(http)


async def test_conditional_writes_in_order_and_points_at_the_servers_ids(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    appointment = ours("Appointment", "appt-1", status="booked")
    put_appt = mock.put(by_identifier("Appointment", "appt-1")).mock(
        return_value=fhir(201, {"resourceType": "Appointment", "id": "their-appt"})
    )
    put_task = mock.put(by_identifier("Task", "task-1")).mock(
        return_value=fhir(200, {"resourceType": "Task", "id": "their-task"})
    )

    outcome = await adapter("conditional").send_update(http, update(task(), appointment), OUTBOUND)

    assert outcome.status_code == 200
    assert [str(c.request.url) for c in mock.calls] == [
        by_identifier("Appointment", "appt-1"),
        by_identifier("Task", "task-1"),
    ]  # what the Task points at first
    sent_task = orjson.loads(put_task.calls[0].request.content)
    assert "id" not in sent_task and "meta" not in sent_task
    assert sent_task["output"][0]["valueReference"]["reference"] == "Appointment/their-appt"
    assert "reference" not in sent_task["focus"]  # the referral: by its identifier only
    assert sent_task["focus"]["identifier"]["value"] == "R-1"
    assert put_appt.calls[0].request.headers["X-Request-ID"] == "delivery-1"


async def test_conditional_finds_what_an_earlier_update_wrote(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    found = {
        "resourceType": "Bundle",
        "entry": [{"resource": ours("Appointment", "appt-1") | {"id": "their-appt"}}],
    }
    search = mock.get(url__startswith=f"{BASE}/Appointment?").mock(return_value=fhir(200, found))
    put_task = mock.put(by_identifier("Task", "task-1")).mock(
        return_value=fhir(200, {"resourceType": "Task", "id": "their-task"})
    )

    await adapter("conditional").send_update(http, update(task()), OUTBOUND)

    assert search.call_count == 1
    sent = orjson.loads(put_task.calls[0].request.content)
    assert sent["output"][0]["valueReference"]["reference"] == "Appointment/their-appt"


async def test_a_conditional_conflict_re_reads_and_puts_with_if_match(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    older = task(status="requested", lastModified="2026-11-20T09:00:00Z") | {
        "id": "their-task",
        "meta": {"versionId": "7"},
    }
    mock.put(by_identifier("Task", "task-1")).mock(return_value=fhir(412))
    mock.get(by_identifier("Task", "task-1")).mock(
        return_value=fhir(200, {"resourceType": "Bundle", "entry": [{"resource": older}]})
    )
    mock.get(url__startswith=f"{BASE}/Appointment?").mock(
        return_value=fhir(200, {"resourceType": "Bundle"})
    )
    again = mock.put(f"{BASE}/Task/their-task").mock(
        return_value=fhir(200, {"resourceType": "Task", "id": "their-task"})
    )

    outcome = await adapter("conditional").send_update(http, update(task()), OUTBOUND)

    assert outcome.status_code == 200
    request = again.calls[0].request
    assert request.headers["If-Match"] == 'W/"7"'
    assert orjson.loads(request.content)["id"] == "their-task"


async def test_a_conditional_conflict_with_our_content_there_is_done(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    newer = task(lastModified="2026-11-20T11:00:00Z") | {"id": "their-task"}
    mock.put(by_identifier("Task", "task-1")).mock(return_value=fhir(409))
    mock.get(by_identifier("Task", "task-1")).mock(
        return_value=fhir(200, {"resourceType": "Bundle", "entry": [{"resource": newer}]})
    )
    mock.get(url__startswith=f"{BASE}/Appointment?").mock(
        return_value=fhir(200, {"resourceType": "Bundle"})
    )
    outcome = await adapter("conditional").send_update(http, update(task()), OUTBOUND)
    assert outcome.status_code == 200
    assert [c.request.method for c in mock.calls].count("PUT") == 1  # nothing more sent


async def test_a_transaction_holds_every_resource_by_urn_and_a_conflict_is_retryable(
    mock: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    appointment = ours("Appointment", "appt-1", status="booked")
    post = mock.post(BASE).mock(side_effect=[fhir(200, {"resourceType": "Bundle"}), fhir(409)])

    await adapter("transaction").send_update(http, update(appointment, task()), OUTBOUND)

    bundle = orjson.loads(post.calls[0].request.content)
    assert bundle["type"] == "transaction"
    appt_entry, task_entry = bundle["entry"]
    assert appt_entry["request"] == {
        "method": "PUT",
        "url": by_identifier("Appointment", "appt-1").removeprefix(BASE + "/"),
    }
    assert (
        task_entry["resource"]["output"][0]["valueReference"]["reference"] == appt_entry["fullUrl"]
    )
    assert appt_entry["fullUrl"].startswith("urn:uuid:")
    with pytest.raises(RetryableError):
        await adapter("transaction").send_update(http, update(appointment, task()), OUTBOUND)
