"""Reads, search, Task, idempotency, isolation, cancellation and the transactional outbox."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from sqlalchemy import select

from app.cases import service as cases
from app.cases.models import Case, CaseEvent, Referral
from app.db import Database
from app.directory.models import SocialPrescribingService
from app.fhir.searchparams import SEARCHES
from app.outbox.models import Delivery, Destination
from tests.conftest import FHIR_JSON, Bridge, referral_resource, requester_of, row_counts


@pytest.fixture
async def referrer(bridge: Bridge) -> dict[str, str]:
    await bridge.service()
    return await bridge.key(default_service="life-rooms")


async def refer(bridge: Bridge, key: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = await bridge.refer(key, referral_resource(**overrides))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_read_back(bridge: Bridge, referrer: dict[str, str]) -> None:
    created = await refer(bridge, referrer)
    response = await bridge.http.get(f"/fhir/ServiceRequest/{created['id']}", headers=referrer)
    assert response.status_code == 200
    assert response.headers["etag"] == 'W/"1"'
    assert response.json() == created
    ServiceRequest.model_validate(response.json())


async def test_unknown_referral_is_404(bridge: Bridge, referrer: dict[str, str]) -> None:
    response = await bridge.http.get(f"/fhir/ServiceRequest/{uuid.uuid4()}", headers=referrer)
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-found"


async def test_task_for_a_new_referral(bridge: Bridge, referrer: dict[str, str]) -> None:
    created = await refer(bridge, referrer)
    response = await bridge.http.get(
        f"/fhir/Task?focus=ServiceRequest/{created['id']}", headers=referrer
    )
    assert response.status_code == 200
    bundle = response.json()
    Bundle.model_validate(bundle)
    assert bundle["total"] == 1
    task = bundle["entry"][0]["resource"]
    Task.model_validate(task)
    assert task["status"] == "requested"
    assert task["intent"] == "order"
    assert task["businessStatus"]["coding"][0]["code"] == "received"
    assert task["focus"]["reference"] == f"ServiceRequest/{created['id']}"
    assert task["for"]["identifier"]["value"] == "9000000009"
    assert task["requester"]["identifier"]["value"] == "RW4"
    assert task["owner"]["reference"] == "HealthcareService/life-rooms"
    assert task["authoredOn"]
    direct = await bridge.http.get(f"/fhir/Task/{task['id']}", headers=referrer)
    assert direct.json() == task
    # Search is lenient: an unknown parameter is ignored and said; strict with Prefer.
    lenient = await bridge.http.get("/fhir/Task?colour=red", headers=referrer)
    assert lenient.status_code == 200
    assert lenient.json()["entry"][-1]["search"]["mode"] == "outcome"
    strict = await bridge.http.get(
        "/fhir/Task?colour=red", headers={**referrer, "Prefer": "handling=strict"}
    )
    assert strict.status_code == 400
    none = await bridge.http.get("/fhir/Task?owner=x&focus=y", headers=referrer)
    assert none.status_code == 200
    assert none.json()["total"] == 0
    assert "entry" not in none.json()  # FHIR JSON has no empty arrays


async def test_the_201_says_which_task_and_case_it_made(
    bridge: Bridge, referrer: dict[str, str]
) -> None:
    resource = referral_resource()
    created = await bridge.refer(referrer, resource)
    assert created.status_code == 201, created.text
    match = re.fullmatch(
        r'<http://testserver/fhir/Task/([0-9a-f-]{36})>; rel="related"; type="Task"',
        created.headers["link"],
    )
    assert match is not None, created.headers["link"]
    task_id = match.group(1)
    assert created.headers["x-case-id"] == task_id
    # They name what was made: the Task of this referral, and its case.
    task = await bridge.http.get(f"/fhir/Task/{task_id}", headers=referrer)
    assert task.json()["focus"]["reference"] == f"ServiceRequest/{created.json()['id']}"
    case = await bridge.http.get(f"/api/v1/cases/{task_id}", headers=referrer)
    assert case.status_code == 200, case.text
    assert case.json()["referral_id"] == created.json()["id"]
    # A repeat names the same ones; so does an answer without a body.
    again = await bridge.refer(referrer, resource)
    assert again.status_code == 200
    assert (again.headers["link"], again.headers["x-case-id"]) == (
        created.headers["link"],
        task_id,
    )
    minimal = await bridge.http.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource()),
        headers={**referrer, **FHIR_JSON, "Prefer": "return=minimal"},
    )
    assert minimal.status_code == 201
    assert minimal.headers["x-case-id"] != task_id
    assert minimal.headers["link"].endswith(
        f'/Task/{minimal.headers["x-case-id"]}>; rel="related"; type="Task"'
    )


async def test_repeat_returns_the_held_referral(
    bridge: Bridge, referrer: dict[str, str], database_url: str
) -> None:
    resource = referral_resource()
    first = await bridge.refer(referrer, resource)
    again = await bridge.refer(referrer, resource)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert (await row_counts(database_url))["referrals"] == 1


async def test_same_identifier_from_another_organisation_is_another_referral(
    bridge: Bridge, referrer: dict[str, str], database_url: str
) -> None:
    other = await bridge.key(organisation="RXA", default_service="life-rooms")
    resource = referral_resource()
    assert (await bridge.refer(referrer, resource)).status_code == 201
    # The same identifier, sent by RXA for itself.
    resource = {**resource, "requester": requester_of("RXA")}
    assert (await bridge.refer(other, resource)).status_code == 201
    assert (await row_counts(database_url))["referrals"] == 2


async def test_if_none_exist(bridge: Bridge, referrer: dict[str, str], database_url: str) -> None:
    held = await refer(bridge, referrer)
    # A different identifier, but the condition matches the held referral's patient.
    response = await bridge.http.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource()),
        headers={**referrer, **FHIR_JSON, "If-None-Exist": "patient.identifier=9000000009"},
    )
    assert response.status_code == 200
    assert response.json()["id"] == held["id"]
    await refer(bridge, referrer)  # a second referral for the same patient
    response = await bridge.http.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource()),
        headers={**referrer, **FHIR_JSON, "If-None-Exist": "patient.identifier=9000000009"},
    )
    assert response.status_code == 412
    response = await bridge.http.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource()),
        headers={**referrer, **FHIR_JSON, "If-None-Exist": "identifier=https://x|nothing-like-it"},
    )
    assert response.status_code == 201
    assert (await row_counts(database_url))["referrals"] == 3


async def test_if_none_exist_matches_only_referrals_the_caller_sent(
    bridge: Bridge, database_url: str
) -> None:
    """An organisation that refers and also runs a service sees referrals sent to it, but they
    are not its own: If-None-Exist must not answer one of them as 'already held'."""
    await bridge.service("both-ways", "RBOTH")
    received = await bridge.key("clinical-system", "RW4")
    sent_to_us = await refer(
        bridge, received, performer=[{"reference": "HealthcareService/both-ways"}]
    )
    ours = await bridge.key("clinical-system", "RBOTH")
    visible = await bridge.http.get(f"/fhir/ServiceRequest/{sent_to_us['id']}", headers=ours)
    assert visible.status_code == 200  # it may read it: its service receives it
    response = await bridge.http.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource("both-ways", requester=requester_of("RBOTH"))),
        headers={**ours, **FHIR_JSON, "If-None-Exist": "patient.identifier=9000000009"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["id"] != sent_to_us["id"]
    assert (await row_counts(database_url))["referrals"] == 2


@pytest.mark.postgresql_only
async def test_twenty_concurrent_repeats_make_one_referral(
    bridge: Bridge, referrer: dict[str, str], database_url: str
) -> None:
    resource = referral_resource()
    responses = await asyncio.gather(*(bridge.refer(referrer, resource) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await row_counts(database_url) == {
        "referrals": 1,
        "cases": 1,
        "case_events": 1,
        "deliveries": 0,
    }


async def test_losing_a_race_answers_with_the_winner(
    app: Any, bridge: Bridge, referrer: dict[str, str], database_url: str
) -> None:
    """Two transactions insert the same identifier; the second sees the constraint, not a 500."""
    from app.fhir.terminology import reason_map
    from app.referrals import intake, service
    from app.security.auth import Principal
    from app.security.roles import Role

    resource = referral_resource()
    import datetime as dt

    draft = intake.assess(
        resource,
        now=dt.datetime.now(dt.UTC),
        clock_skew=dt.timedelta(0),
        require_consent=True,
        reason_map=reason_map(),
    )
    principal = Principal("c1", "rio", Role.CLINICAL_SYSTEM, "RW4", "life-rooms")
    context = cases.EventContext(None, None, None)
    database: Database = app.state.database

    async with database.write_sessions() as first:
        won = await service.create_referral(first, draft, resource, principal, context)
        assert won.created

        async def second_attempt() -> service.Intake:
            async with database.write_sessions() as second:
                result = await service.create_referral(second, draft, resource, principal, context)
                await second.commit()
                return result

        # The second transaction blocks (on the unique index on PostgreSQL, on the write lock on
        # SQLite) until the first commits, then must answer with the first's referral.
        racing = asyncio.create_task(second_attempt())
        await asyncio.sleep(0.3)
        assert not racing.done()
        await first.commit()
    lost = await asyncio.wait_for(racing, 10)
    assert not lost.created
    assert lost.referral.id == won.referral.id
    assert (await row_counts(database_url))["referrals"] == 1


async def test_organisation_isolation(bridge: Bridge, referrer: dict[str, str]) -> None:
    await bridge.service("other-service", organisation="OTH01")
    mine = await refer(bridge, referrer)
    outsider = await bridge.key(organisation="RXX", default_service="other-service")
    theirs = await refer(
        bridge,
        outsider,
        performer=[{"reference": "HealthcareService/other-service"}],
        requester=requester_of("RXX"),
    )
    service_advisor = await bridge.key(role="advisor", organisation="LR001")
    other_advisor = await bridge.key(role="advisor", organisation="OTH01")

    for key, visible, hidden in (
        (referrer, mine, theirs),
        (outsider, theirs, mine),
        (service_advisor, mine, theirs),
        (other_advisor, theirs, mine),
    ):
        assert (
            await bridge.http.get(f"/fhir/ServiceRequest/{visible['id']}", headers=key)
        ).status_code == 200
        assert (
            await bridge.http.get(f"/fhir/ServiceRequest/{hidden['id']}", headers=key)
        ).status_code == 404
        search = (
            await bridge.http.get("/fhir/ServiceRequest?patient.identifier=9000000009", headers=key)
        ).json()
        assert [e["resource"]["id"] for e in search["entry"]] == [visible["id"]]
        tasks = (
            await bridge.http.get(
                f"/fhir/Task?focus=ServiceRequest/{visible['id']},ServiceRequest/{hidden['id']}",
                headers=key,
            )
        ).json()
        assert [e["resource"]["focus"]["reference"] for e in tasks["entry"]] == [
            f"ServiceRequest/{visible['id']}"
        ]
    hidden_task = (
        await bridge.http.get(
            f"/fhir/Task?focus=ServiceRequest/{theirs['id']}", headers=bridge.admin
        )
    ).json()["entry"][0]["resource"]["id"]
    assert (await bridge.http.get(f"/fhir/Task/{hidden_task}", headers=referrer)).status_code == 404
    reporting = await bridge.key(role="reporting", organisation="LR001")
    assert (
        await bridge.http.get(f"/fhir/ServiceRequest/{mine['id']}", headers=reporting)
    ).status_code == 403


async def test_search_parameters_and_paging(bridge: Bridge, referrer: dict[str, str]) -> None:
    made = [await refer(bridge, referrer) for _ in range(5)]
    first = made[0]
    system = first["identifier"][0]["system"]
    value = first["identifier"][0]["value"]

    async def ids(query: str) -> list[str]:
        response = await bridge.http.get(f"/fhir/ServiceRequest?{query}", headers=referrer)
        assert response.status_code == 200, response.text
        Bundle.model_validate(response.json())
        return [e["resource"]["id"] for e in response.json().get("entry", [])]

    assert await ids(f"identifier={system}|{value}") == [first["id"]]
    assert await ids(f"identifier={value}") == [first["id"]]
    assert await ids("identifier=https://elsewhere|" + value) == []
    assert await ids("patient.identifier=https://fhir.nhs.uk/Id/nhs-number|9000000009") == [
        m["id"] for m in made
    ]
    assert await ids("patient.identifier=9434765919") == []
    assert await ids("status=active") == [m["id"] for m in made]
    assert await ids("status=revoked") == []
    assert await ids(f"_lastUpdated=ge{first['meta']['lastUpdated']}") == [m["id"] for m in made]
    assert await ids("_lastUpdated=lt2000-01-01") == []
    assert await ids("_lastUpdated=gt2000&_lastUpdated=lt2999-01") == [m["id"] for m in made]

    seen: list[str] = []
    url: str | None = "/fhir/ServiceRequest?_count=2"
    pages = 0
    while url:
        page = (await bridge.http.get(url, headers=referrer)).json()
        assert page["total"] == 5
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        pages += 1
    assert seen == [m["id"] for m in made]
    assert pages == 3

    for bad in (
        "_count=lots",
        "_lastUpdated=yesterday",
        "_cursor=!!!",
        "_lastUpdated=ne2020",
    ):
        response = await bridge.http.get(f"/fhir/ServiceRequest?{bad}", headers=referrer)
        assert response.status_code == 400, bad
        assert response.json()["resourceType"] == "OperationOutcome"


async def cancel(
    bridge: Bridge, key: dict[str, str], created: dict[str, Any], **headers: str
) -> Any:
    """A cancellation of ``created`` (If-Match: the version it was read at, unless given)."""
    body = {**created, "status": "revoked"}
    headers = {"If-Match": f'W/"{created["meta"]["versionId"]}"', **headers}
    return await bridge.http.put(
        f"/fhir/ServiceRequest/{created['id']}",
        content=orjson.dumps(body),
        headers={**key, **FHIR_JSON, **headers},
    )


async def test_cancellation(bridge: Bridge, referrer: dict[str, str]) -> None:
    created = await refer(bridge, referrer)
    response = await cancel(bridge, referrer, created, **{"If-Match": 'W/"1"'})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked"
    assert response.json()["meta"]["versionId"] == "2"
    assert response.headers["etag"] == 'W/"2"'
    task = (
        await bridge.http.get(f"/fhir/Task?focus=ServiceRequest/{created['id']}", headers=referrer)
    ).json()
    task = task["entry"][0]["resource"]
    assert (task["status"], task["businessStatus"]["coding"][0]["code"]) == (
        "cancelled",
        "cancelled-by-referrer",
    )
    assert task["meta"]["versionId"] == "2"
    # Repeating the same update changes nothing.
    again = await cancel(bridge, referrer, created)
    assert again.status_code == 200
    assert again.json()["meta"]["versionId"] == "2"
    search = (await bridge.http.get("/fhir/ServiceRequest?status=revoked", headers=referrer)).json()
    assert search["total"] == 1


async def test_cancel_refusals(bridge: Bridge, referrer: dict[str, str], app: Any) -> None:
    created = await refer(bridge, referrer)
    stale = await cancel(bridge, referrer, created, **{"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    current = {**referrer, **FHIR_JSON, "If-Match": 'W/"1"'}
    changed = {**created, "status": "revoked", "priority": "urgent"}
    response = await bridge.http.put(
        f"/fhir/ServiceRequest/{created['id']}", content=orjson.dumps(changed), headers=current
    )
    assert response.status_code == 422
    assert "A cancellation changes status alone" in response.json()["issue"][0]["diagnostics"]
    assert response.json()["issue"][0]["expression"] == ["ServiceRequest.status"]
    completed = {**created, "status": "completed"}
    response = await bridge.http.put(
        f"/fhir/ServiceRequest/{created['id']}", content=orjson.dumps(completed), headers=current
    )
    assert response.status_code == 422
    wrong_id = {**created, "id": "another", "status": "revoked"}
    response = await bridge.http.put(
        f"/fhir/ServiceRequest/{created['id']}", content=orjson.dumps(wrong_id), headers=current
    )
    assert response.status_code == 422
    unversioned = await bridge.http.put(
        f"/fhir/ServiceRequest/{created['id']}",
        content=orjson.dumps({**created, "status": "revoked"}),
        headers={**referrer, **FHIR_JSON},
    )
    assert unversioned.status_code == 428  # If-Match is required
    advisor = await bridge.key(role="advisor", organisation="LR001")
    assert (await cancel(bridge, advisor, created)).status_code == 403
    other = await bridge.key(organisation="RXA")
    assert (await cancel(bridge, other, created)).status_code == 404
    assert (
        await bridge.http.get(f"/fhir/ServiceRequest/{created['id']}", headers=referrer)
    ).json()["status"] == "active"

    # Close the case through the one domain path, then a cancellation is a conflict.
    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        referral = await session.get(Referral, created["id"])
        assert referral is not None
        case = await cases.lock_case(session, referral.id)
        assert case is not None
        service = await session.get(SocialPrescribingService, referral.service_id)
        assert service is not None
        context = cases.EventContext(None, None, None)
        for event, data in (
            ("case.accepted", {}),
            ("contact.attempted", {"outcome": "reached"}),
            ("case.completed", {"reason": "needs-met"}),
        ):
            await cases.apply_event(
                session,
                case,
                referral,
                service,
                cases.NewEvent(event, "advisor", data=data),
                context,
            )
    response = await cancel(bridge, referrer, created)
    assert response.status_code == 409
    assert "completed" in response.json()["issue"][0]["diagnostics"]
    read = (await bridge.http.get(f"/fhir/ServiceRequest/{created['id']}", headers=referrer)).json()
    # The Task carries fulfilment; the referral's status is its requester's to change (SDOH
    # Clinical Care IG), so the completed case leaves it active.
    assert read["status"] == "active"


async def test_outbox_rows_are_written_with_the_referral(
    bridge: Bridge, referrer: dict[str, str], app: Any
) -> None:
    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        session.add_all(
            [
                Destination(
                    id="to-rio", kind="clinical", adapter="fhir_push", organisation="RW4", config={}
                ),
                Destination(
                    id="to-worklist",
                    kind="webhook",
                    adapter="webhook",
                    service_id="life-rooms",
                    config={},
                ),
                Destination(
                    id="cancellations-only",
                    kind="webhook",
                    adapter="webhook",
                    config={},
                    event_types=["referral.cancelled"],
                ),
                Destination(
                    id="elsewhere",
                    kind="clinical",
                    adapter="fhir_push",
                    organisation="RXX",
                    config={},
                ),
                Destination(
                    id="switched-off", kind="webhook", adapter="webhook", config={}, active=False
                ),
            ]
        )
    created = await refer(bridge, referrer, **{})
    await cancel(bridge, referrer, created, **{"X-Request-ID": "cancel-req"})
    async with database.read_sessions() as session:
        rows = (
            await session.execute(
                select(
                    Delivery.destination_id,
                    Delivery.event_type,
                    Delivery.event_seq,
                    Delivery.state,
                    Delivery.request_id,
                    Delivery.referral_id,
                ).order_by(Delivery.event_seq, Delivery.destination_id)
            )
        ).all()
        events = list(await session.scalars(select(CaseEvent.type).order_by(CaseEvent.seq)))
        case = await session.scalar(select(Case))
    assert events == ["referral.received", "referral.cancelled"]
    assert case is not None
    assert case.state == "cancelled"
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("to-rio", "referral.received", 1, "pending"),
        ("to-worklist", "referral.received", 1, "pending"),
        ("cancellations-only", "referral.cancelled", 2, "pending"),
        ("to-rio", "referral.cancelled", 2, "pending"),
        ("to-worklist", "referral.cancelled", 2, "pending"),
    ]
    assert {r[5] for r in rows} == {created["id"]}
    assert rows[-1][4] == "cancel-req"


async def test_capability_statement(client: Any) -> None:
    response = await client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    statement = CapabilityStatement.model_validate(response.json())
    assert statement.fhirVersion == "4.0.1"
    resources = {r.type: r for r in statement.rest[0].resource}
    assert set(resources) == {
        "ServiceRequest",
        "Task",
        "Patient",
        "Appointment",
        "Observation",
        "QuestionnaireResponse",
        "AuditEvent",
        "HealthcareService",
        "Organization",
        "Subscription",  # FHIR Subscriptions (R5 Backport)
        "Basic",  # their topic
    }
    # Every search parameter of the search tables, each once.
    for name, table in SEARCHES.items():
        assert [p.name for p in resources[name].searchParam] == [p.name for p in table.parameters]
    assert {p.name for p in resources["Task"].searchParam} >= {
        "status",
        "business-status",
        "_lastUpdated",
        "patient",
        "owner",
        "requester",
        "focus",
        "_id",
    }
    assert resources["ServiceRequest"].searchRevInclude == ["Task:focus", "Task:based-on"]
    assert "Task:output" in resources["Task"].searchInclude
    for resource in resources.values():
        if resource.type not in (
            "AuditEvent",
            "HealthcareService",
            "Organization",
            "Subscription",
            "Basic",
        ):
            assert resource.readHistory and resource.versioning == "versioned"


async def test_capability_statement_matches_the_routes(client: Any, app: Any) -> None:
    """Every interaction the statement claims has a route, and every FHIR route is claimed."""
    routes = {
        (method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item
    }
    statement = (await client.get("/fhir/metadata")).json()
    rest = statement["rest"][0]
    claimed = {("GET", "/fhir/metadata"), ("GET", "/fhir/.well-known/smart-configuration")}
    if {"transaction", "batch"} & {i["code"] for i in rest.get("interaction", [])}:
        claimed.add(("POST", "/fhir"))
    routes_for = {
        "create": [("POST", "/fhir/{type}")],
        "read": [("GET", "/fhir/{type}/{id}")],
        "vread": [("GET", "/fhir/{type}/{id}/_history/{id}")],
        "history-instance": [("GET", "/fhir/{type}/{id}/_history")],
        "update": [("PUT", "/fhir/{type}/{id}")],
        "delete": [("DELETE", "/fhir/{type}/{id}")],
        "search-type": [("GET", "/fhir/{type}"), ("POST", "/fhir/{type}/_search")],
    }
    for resource in rest["resource"]:
        for interaction in resource["interaction"]:
            for method, path in routes_for[interaction["code"]]:
                if path.endswith("/_search") and resource["type"] not in SEARCHES:
                    continue  # POST _search: the types with a search table
                claimed.add((method, path.replace("{type}", resource["type"])))
        for operation in resource.get("operation", []):
            claimed.add(("GET", f"/fhir/{resource['type']}/{{id}}/${operation['name']}"))
    for operation in rest.get("operation", []):  # system level: $process-message
        claimed.add(("POST", f"/fhir/${operation['name']}"))
    # Path parameters are named for what they are ({referral_id}, {task_id}); compare shapes.
    routes = {(m, re.sub(r"\{[a-z_]+\}", "{id}", p)) for m, p in routes}
    fhir_routes = {(m, p) for m, p in routes if p == "/fhir" or p.startswith("/fhir/")}
    assert fhir_routes == claimed


async def test_unknown_fhir_route_is_an_operation_outcome(client: Any) -> None:
    response = await client.get("/fhir/Practitioner/1")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    response = await client.delete("/fhir/metadata")
    assert response.status_code == 405
    response = await client.get("/api/v1/nothing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
