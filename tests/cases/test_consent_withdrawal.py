"""Consent withdrawal (issue 5, part 6): a `consent.withdrawn` event closes the case, cancels every
delivery of the person's data still queued, and nothing more is sent but the Task showing the
referrer that the case closed. Real receivers on 127.0.0.1, the real dispatcher, both databases.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, update

from app.cases.models import Case, CaseEvent, Referral
from app.cases.states import consent_withdrawn
from app.db import Database, utcnow
from app.delivery.dispatcher import Dispatcher
from app.fhir.resources import model_class
from app.outbox import service as outbox
from app.outbox.models import Delivery, DeliveryAttempt, Destination, DestinationKind
from tests.conftest import ADMIN_KEY, Bridge, referral_resource
from tests.support.cases import OpenCase, as_pushed_by_id, open_case
from tests.support.delivery import dispatcher_for
from tests.support.elemental_platform import FakePlatform, make_platform_app, serve
from tests.support.receiver import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WITHDRAWN = "cancelled: the person withdrew consent"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01, 60.0]}


def dispatcher(app: Any, later: dt.timedelta = dt.timedelta()) -> Dispatcher:
    return dispatcher_for(
        app,
        clock=lambda: utcnow() + later,
    )


async def rows(app: Any, referral_id: str) -> list[Delivery]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return list(
            await session.scalars(
                select(Delivery)
                .where(Delivery.referral_id == referral_id)
                .order_by(Delivery.event_seq, Delivery.created_at)
            )
        )


async def kinds(app: Any) -> dict[str, str]:
    database: Database = app.state.database
    async with database.read_sessions() as session:
        return {d.id: d.kind for d in await session.scalars(select(Destination))}


async def set_state(app: Any, delivery_id: str, **values: Any) -> None:
    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        await session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


async def worked_case(bridge: Bridge) -> OpenCase:
    """A case with an appointment, a social prescription and a SWEMWBS score."""
    case = await open_case(bridge, register=False)
    for body in (
        {"type": "case.accepted"},
        {"type": "contact.attempted", "outcome": "reached"},
        {"type": "appointment.booked", "appointment_id": "AP-1",
         "start": "2030-01-02T10:00:00Z", "appointment_type": "face-to-face",
         "duration_minutes": 60},
        {"type": "prescription.created", "prescription_id": "RX-1", "category": "housing",
         "provider": "Halton Housing", "activity": "Tenancy support"},
        {"type": "outcome.recorded", "stage": "start", "items": [3, 3, 3, 3, 3, 3, 3]},
    ):  # fmt: skip
        await case.record(body)
    return case


async def test_withdrawal_cancels_what_is_queued_and_only_the_closed_task_reaches_the_referrer(
    app: Any, bridge: Bridge
) -> None:
    worklist = Receiver()  # both down: connections refused, so everything stays queued
    clinical = Receiver()
    await bridge.service()
    route = await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        json={"adapter": "fhir_push", "adapter_config": {"base_url": clinical.url + "/fhir"}},
        headers=ADMIN,
    )
    assert route.status_code == 200, route.text
    subscription = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": worklist.url + "/hooks"}, headers=ADMIN
    )
    assert subscription.status_code == 201, subscription.text

    case = await worked_case(bridge)
    other = await open_case(bridge, register=False)  # another referral: not affected
    await other.record({"type": "case.accepted"})

    # Tried while the receivers are down: retries pending.
    await dispatcher(app).run_once()
    before = await rows(app, case.referral_id)
    assert len(before) == 2 * 6  # referral.received + 5 events, to the worklist and the referrer
    assert all(d.state == "pending" for d in before)
    assert any(d.attempts >= 1 for d in before)
    # One is being sent by some worker right now, one is already a dead letter.
    ghost, dead = before[-1], before[-2]
    await set_state(
        app,
        ghost.id,
        state="in_flight",
        claimed_by="ghost-worker",
        lease_expires_at=utcnow() + dt.timedelta(minutes=5),
    )
    await set_state(app, dead.id, state="dead", last_error="HTTP 400")

    response = await case.post({"type": "consent.withdrawn", "reason": "objection"})
    assert response.status_code == 201, response.text
    recorded = response.json()
    assert (recorded["state"], recorded["business_status"], recorded["task_status"]) == (
        "discharged",
        "consent-withdrawn",
        "cancelled",
    )
    assert recorded["event"]["data"] == {"reason": "objection"}

    # Everything queued before is cancelled, with the reason, and shows so to admins.
    after = await rows(app, case.referral_id)
    earlier = [d for d in after if d.id in {b.id for b in before}]
    assert len(earlier) == len(before)
    assert all(d.state == "cancelled" and d.last_error == WITHDRAWN for d in earlier)
    assert all(d.claimed_by is None for d in earlier)
    listed = await bridge.http.get(
        "/api/v1/deliveries",
        params={"state": "cancelled", "referral": case.referral_id, "limit": 100},
        headers=ADMIN,
    )
    assert listed.status_code == 200, listed.text
    assert {item["id"] for item in listed.json()["items"]} == {d.id for d in earlier}
    assert {item["last_error"] for item in listed.json()["items"]} == {WITHDRAWN}
    detail = await bridge.http.get(f"/api/v1/deliveries/{ghost.id}", headers=ADMIN)
    assert detail.json()["history"][-1]["outcome"] == "cancelled"
    assert detail.json()["history"][-1]["error"] == WITHDRAWN

    # An admin cannot send any of it again, one by one or in bulk.
    replay = await bridge.http.post(f"/api/v1/deliveries/{dead.id}/replay", headers=ADMIN)
    assert replay.status_code == 409, replay.text
    assert "withdrew consent" in replay.json()["detail"]
    bulk = await bridge.http.post(
        "/api/v1/deliveries/replay", json={"referral": case.referral_id}, headers=ADMIN
    )
    assert bulk.status_code == 200, bulk.text
    assert all(d.state == "cancelled" for d in await rows(app, case.referral_id) if d.id in
               {b.id for b in before})  # fmt: skip

    # The one new delivery: the withdrawal, to the referrer's clinical system.
    destination_kinds = await kinds(app)
    (new,) = [d for d in after if d.id not in {b.id for b in before}]
    assert new.event_type == "consent.withdrawn"
    assert destination_kinds[new.destination_id] == DestinationKind.CLINICAL
    assert new.state == "pending"
    # The other referral's deliveries are untouched.
    assert all(d.state == "pending" for d in await rows(app, other.referral_id))

    # What the referrer reads: the case closed, and no more than that.
    task = await case.task()
    model_class("Task").model_validate(task)
    assert task["status"] == "cancelled"
    assert task["businessStatus"]["coding"][0]["code"] == "consent-withdrawn"
    assert task["statusReason"]["coding"][0]["code"] == "consent-withdrawn"
    assert task["statusReason"]["coding"][0]["display"] == "Consent Withdrawn"
    assert task["note"][0]["text"] == "Closed: the person withdrew consent."
    assert "output" not in task
    service_request = await bridge.http.get(
        f"/fhir/ServiceRequest/{case.referral_id}", headers=case.referrer
    )
    # The referral's status is its requester's (SDOH Clinical Care IG): the Task says it ended.
    assert service_request.json()["status"] == "active"

    # The case is closed: further events are refused.
    for body in (
        {"type": "contact.attempted", "outcome": "reached"},
        {"type": "case.discharged", "reason": "declined"},
        {"type": "consent.withdrawn"},
    ):
        refused = await case.post(body)
        assert refused.status_code == 409, refused.text
        assert refused.json()["current_state"] == "discharged"
        assert refused.json()["allowed_events"] == []

    # The receivers come back; two hours later every backoff and the ghost's lease have passed.
    await worklist.start()
    await clinical.start()
    try:
        await dispatcher(app, dt.timedelta(hours=2)).drain()
    finally:
        await worklist.stop()
        await clinical.stop()

    hooks = [r.json()["data"] for r in worklist.requests]
    assert hooks, "the other referral's changes reach the worklist"
    assert {h["referral_id"] for h in hooks} == {other.referral_id}

    mine = [
        r
        for r in clinical.requests
        if case.case_id in r.path or case.referral_id in r.body.decode()
    ]
    (closing,) = mine
    assert (closing.method, closing.path) == ("PUT", f"/fhir/Task/{case.case_id}")
    pushed = closing.json()
    assert pushed == as_pushed_by_id(task)
    assert {r.path for r in clinical.requests} - {closing.path, "/fhir/metadata"} == {
        f"/fhir/Task/{other.case_id}"
    }
    states = {d.id: d.state for d in await rows(app, case.referral_id)}
    assert states.pop(new.id) == "delivered"
    assert set(states.values()) == {"cancelled"}
    assert all(d.state == "delivered" for d in await rows(app, other.referral_id))


async def test_nothing_more_is_ever_enqueued_after_a_withdrawal(app: Any, bridge: Bridge) -> None:
    clinical = Receiver()
    await bridge.service()
    await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        json={"adapter": "fhir_push", "adapter_config": {"base_url": clinical.url + "/fhir"}},
        headers=ADMIN,
    )
    await bridge.http.post(
        "/api/v1/subscriptions", json={"url": clinical.url + "/hooks"}, headers=ADMIN
    )
    case = await open_case(bridge, register=False)
    await case.record({"type": "consent.withdrawn"})  # straight from received; no reason given

    database: Database = app.state.database
    async with database.write_sessions() as session, session.begin():
        held = await session.scalar(select(Case).where(Case.id == case.case_id))
        referral = await session.get(Referral, case.referral_id)
        assert held is not None and referral is not None
        destinations = await outbox.destinations_for(
            session,
            service_id=referral.service_id,
            referrer=referral.organisation,
            provider="LR001",
        )
        assert {d.kind for d in destinations} == {"clinical", "webhook"}
        # Whatever event a caller might still try to send, the outbox takes none of it.
        for event_type in ("case.discharged", "referral.updated", "appointment.booked"):
            event = CaseEvent(
                id=f"late-{event_type}",
                case_id=held.id,
                seq=held.last_event_seq + 1,
                type=event_type,
                occurred_at=utcnow(),
                recorded_at=utcnow(),
                source="system",
                data={},
            )
            assert (
                outbox.enqueue(
                    session,
                    destinations,
                    held,
                    event,
                    withdrawn=consent_withdrawn(held.state, held.status_reason),
                )
                == []
            )
        await session.rollback()

    types = [(d.event_type, d.state) for d in await rows(app, case.referral_id)]
    assert types.count(("consent.withdrawn", "pending")) == 1
    assert [t for t in types if t[0] == "consent.withdrawn"] == [("consent.withdrawn", "pending")]
    assert all(state == "cancelled" for event, state in types if event == "referral.received")


async def test_only_the_service_side_records_a_withdrawal(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    body = {"type": "consent.withdrawn", "reason": "patient-request"}
    assert (await case.post(body, case.referrer)).status_code == 403
    bad = await case.post({"type": "consent.withdrawn", "reason": "changed their mind, said X"})
    assert bad.status_code == 422
    assert "said X" not in bad.text
    assert (await case.post({**body, "note": "free text"})).status_code == 422
    assert (await case.post(body)).status_code == 201


# --- a platform that holds the case --------------------------------------------------------

API_KEY = "elemental-test-key"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def register_elemental(bridge: Bridge, base_url: str) -> None:
    response = await bridge.http.post(
        "/api/v1/services",
        json={
            "id": "life-rooms",
            "name": "The Life Rooms",
            "organisation": "LR001",
            "adapter": "elemental",
            "adapter_config": {"base_url": base_url, "api_key": API_KEY, "webhook_secret": SECRET},
        },
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text


async def refer(bridge: Bridge) -> tuple[str, str]:
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    response = await bridge.refer(referrer, referral_resource())
    assert response.status_code == 201, response.text
    referral_id = response.json()["id"]
    tasks = await bridge.http.get(
        "/fhir/Task", params={"focus": f"ServiceRequest/{referral_id}"}, headers=referrer
    )
    return referral_id, tasks.json()["entry"][0]["resource"]["id"]


async def test_a_platform_holding_the_case_is_told_to_cancel_it(app: Any, bridge: Bridge) -> None:
    fake = FakePlatform(API_KEY)
    advisor = await bridge.key("advisor", "LR001")
    async with serve(make_platform_app(API_KEY, fake)) as base_url:
        await register_elemental(bridge, base_url)
        held_id, held_case = await refer(bridge)
        await dispatcher(app).drain()  # the platform now holds the first case
        (record,) = fake.referrals.values()

        fake.down = True
        queued_id, queued_case = await refer(bridge)  # its create is still queued
        await dispatcher(app).run_once()

        # Cases held on a platform take no events here, except a withdrawal.
        refused = await bridge.http.post(
            f"/api/v1/cases/{held_case}/events", json={"type": "case.accepted"}, headers=advisor
        )
        assert refused.status_code == 409
        for case_id in (held_case, queued_case):
            response = await bridge.http.post(
                f"/api/v1/cases/{case_id}/events",
                json={"type": "consent.withdrawn", "reason": "objection"},
                headers=advisor,
            )
            assert response.status_code == 201, response.text

        destination_kinds = await kinds(app)
        held_rows = await rows(app, held_id)
        platform_rows = [
            d for d in held_rows if destination_kinds[d.destination_id] == DestinationKind.PLATFORM
        ]
        assert [(d.event_type, d.state) for d in platform_rows] == [
            ("referral.received", "delivered"),
            ("referral.cancelled", "pending"),  # our ids only: the platform stops
        ]
        queued_rows = await rows(app, queued_id)
        # The platform never got the second case: its create is cancelled, and nothing follows.
        assert [(d.event_type, d.state, d.last_error) for d in queued_rows] == [
            ("referral.received", "cancelled", WITHDRAWN)
        ]

        fake.down = False
        await dispatcher(app, dt.timedelta(hours=2)).drain()
    (cancel,) = fake.cancels
    assert cancel.path == f"/api/v1/referrals/{record.id}/cancel"
    assert record.status == "cancelled"
    assert len(fake.created) == 1
    database: Database = app.state.database
    async with database.read_sessions() as session:
        attempts = list(
            await session.scalars(
                select(DeliveryAttempt.outcome).where(
                    DeliveryAttempt.delivery_id == queued_rows[0].id
                )
            )
        )
    assert attempts[-1] == "cancelled"


async def test_the_journey_page_says_consent_was_withdrawn(app: Any, bridge: Bridge) -> None:
    await bridge.service()
    case = await worked_case(bridge)
    await case.record({"type": "consent.withdrawn"})
    link = await bridge.http.get(
        f"/api/v1/referrals/{case.referral_id}/journey-link", headers=case.referrer
    )
    assert link.status_code == 200, link.text
    page = await bridge.http.get(link.json()["url"].removeprefix("http://testserver"))
    assert page.status_code == 200
    text = page.text
    assert "Discharged — the person withdrew consent" in text
    assert "The person withdrew consent: the case is closed and nothing more is shared" in text
    assert "consent.withdrawn" not in text and "consent-withdrawn" not in text
