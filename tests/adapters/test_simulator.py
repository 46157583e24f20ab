"""The simulator platform adapter: seeded, reproducible journeys with the pilot's mix, every event
one the domain accepts, and a poll that hands each due event over once. No database."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from adapters import registry, simulator
from adapters.base import CaseReference, Outbound, PlatformReferral
from adapters.simulator import SimulatorAdapter, SimulatorConfig
from adapters.simulator.journeys import ACTIVE, COMPLETED, DISCHARGED, Journey, plan
from app.cases.events import next_status, parse_event
from app.cases.states import CaseState

OUTBOUND = Outbound(request_id="dlv-1", correlation_id=None)
IDS = [f"referral-{n:04d}" for n in range(1000)]


@pytest.fixture(autouse=True)
def empty_books() -> Iterator[None]:
    simulator.forget_all()
    yield
    simulator.forget_all()


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient() as client:  # never used to call out: the platform is here
        yield client


def adapter(days_per_second: float = 1.0, seed: int = 42, platform: str = "test") -> Any:
    return SimulatorAdapter(
        SimulatorConfig(seed=seed, days_per_second=days_per_second, platform=platform)
    )


def referral(referral_id: str, received_at: dt.datetime) -> PlatformReferral:
    return PlatformReferral(
        referral_id=referral_id,
        case_id=f"case-{referral_id}",
        service_id="sandbox-life-rooms",
        service_request={"resourceType": "ServiceRequest"},
        reasons=["finance-benefits-debt"],
        referring_organisation="SBXRIO",
        referring_team=None,
        received_at=received_at,
    )


def types(journey: Journey) -> list[str]:
    return [event.type for event in journey.events]


# --- journeys -----------------------------------------------------------------------------------


def test_the_same_seed_plans_the_same_journeys_and_another_seed_others() -> None:
    first = [plan(42, referral_id) for referral_id in IDS[:200]]
    again = [plan(42, referral_id) for referral_id in IDS[:200]]
    assert first == again
    other = [plan(43, referral_id) for referral_id in IDS[:200]]
    differing = sum(1 for a, b in zip(first, other, strict=True) if a != b)
    assert differing > 190  # a few short journeys may coincide by chance, not most
    # Each referral has its own journey under one seed.
    assert len({tuple(types(journey)) for journey in first}) > 50


def test_the_mix_over_1000_journeys_is_the_pilots() -> None:
    journeys = [plan(42, referral_id) for referral_id in IDS]
    outcomes = Counter(journey.outcome for journey in journeys)
    assert 550 <= outcomes[COMPLETED] <= 650
    assert 250 <= outcomes[DISCHARGED] <= 350
    assert 70 <= outcomes[ACTIVE] <= 130
    reasons = Counter(journey.reason for journey in journeys if journey.outcome == DISCHARGED)
    assert set(reasons) == {
        "did-not-attend",
        "unable-to-contact",
        "no-longer-required",
        "inappropriate-referral",
    }
    assert min(reasons.values()) >= 25

    booked = sum(journey.count("appointment.booked") for journey in journeys)
    missed = sum(journey.count("appointment.did_not_attend") for journey in journeys)
    moved = sum(journey.count("appointment.rescheduled") for journey in journeys)
    assert 0.17 <= missed / booked <= 0.24  # about one in five not attended
    assert 0.12 <= moved / booked <= 0.22  # the pilot: 32 of 190 rescheduled
    assert 1.2 <= booked / len(journeys) <= 2.0  # the pilot: 190 for 159 people

    prescribed = [journey.count("prescription.created") for journey in journeys]
    people = sum(1 for count in prescribed if count)
    assert 2.1 <= sum(prescribed) / people <= 2.5  # about 2.3 per person prescribed
    assert 1.3 <= sum(prescribed) / len(journeys) <= 1.9  # the pilot: 230 for 159 people

    # SWEMWBS at the start and the end of every completed journey.
    for journey in journeys:
        stages = [e.data["stage"] for e in journey.events if e.type == "outcome.recorded"]
        if journey.outcome == COMPLETED:
            assert stages == ["start", "end"]


def test_every_planned_event_is_one_the_domain_accepts_in_that_order() -> None:
    """Each journey replayed through the event models and the state machine: no refusal, and
    it ends where its outcome says."""
    for referral_id in IDS:
        journey = plan(7, referral_id)
        status = next_status(None, "referral.received", {})
        contacted = False
        day = 0.0
        booked: set[str] = set()
        for event in journey.events:
            assert event.day >= day
            day = event.day
            data = dict(event.data)
            if event.start_day is not None:
                assert event.start_day >= event.day
                data["start"] = "2030-01-01T10:00:00Z"
            parse_event(event.type, data)  # raises on anything the API would refuse
            if event.type == "appointment.booked":
                booked.add(data["appointment_id"])
            elif event.type.startswith("appointment."):
                assert data["appointment_id"] in booked
            status = next_status(status, event.type, data, contacted=contacted)
            contacted = (
                contacted
                or event.type == "appointment.attended"
                or (event.type == "contact.attempted" and data["outcome"] == "reached")
            )
        assert journey.events[0].type == "case.accepted"
        if journey.outcome == COMPLETED:
            assert status.state is CaseState.COMPLETED
            assert journey.events[-1].data["reason"] == journey.reason
        elif journey.outcome == DISCHARGED:
            assert status.state is CaseState.DISCHARGED
            assert status.business_status == journey.reason
        else:
            assert status.state in (CaseState.ACCEPTED, CaseState.IN_PROGRESS)


# --- the adapter --------------------------------------------------------------------------------


def test_it_is_registered_and_its_config_is_checked() -> None:
    assert registry.adapter_class("simulator") is SimulatorAdapter
    assert SimulatorAdapter.polls and SimulatorAdapter.delivers
    assert SimulatorConfig().model_dump() == {
        "seed": 42,
        "days_per_second": 2.0,
        "platform": "simulator",
    }
    for bad in ({"days_per_second": 0}, {"seed": -1}, {"platform": "a b"}, {"extra": 1}):
        with pytest.raises(ValidationError):
            SimulatorConfig.model_validate(bad)


async def test_poll_hands_over_the_events_due_by_now_once_each(http: Any) -> None:
    sim = adapter(days_per_second=1.0)  # one simulated day per second
    referral_id = IDS[3]
    received = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)  # ten simulated days ago
    outcome = await sim.create_case(http, referral(referral_id, received), OUTBOUND)
    assert outcome.external_reference == f"sim-{referral_id}"
    journey = plan(42, referral_id)

    first = await sim.poll(http, None)
    emitted = len(first.messages)
    due_now = sum(1 for event in journey.events if event.day <= 10)
    due_soon = sum(1 for event in journey.events if event.day <= 10.5)
    assert due_now <= emitted <= due_soon
    assert emitted >= 1  # case.accepted is always within the first simulated day
    now = dt.datetime.now(dt.UTC)
    for index, message in enumerate(first.messages):
        (event,) = message.events
        planned = journey.events[index]
        assert message.message_id == event.idempotency_key == f"sim-{referral_id}:{index}"
        assert event.type == planned.type
        assert event.referral_id == referral_id
        assert event.external_reference == f"sim-{referral_id}"
        assert event.occurred_at is not None
        assert received <= event.occurred_at <= now  # never in the future
        assert event.occurred_at == received + dt.timedelta(seconds=planned.day)
        if planned.start_day is not None:
            assert (
                event.data["start"]
                == (received + dt.timedelta(seconds=planned.start_day)).isoformat()
            )
    assert orjson.loads(first.cursor or "") == {referral_id: emitted}

    # From the saved cursor nothing is handed over again until more is due.
    again = await sim.poll(http, first.cursor)
    assert [m.message_id for m in again.messages] == [
        f"sim-{referral_id}:{i}" for i in range(emitted, emitted + len(again.messages))
    ]
    # A cursor that was never saved (the reconciler failed): the same events come again.
    retried = await sim.poll(http, None)
    assert [m.message_id for m in retried.messages][:emitted] == [
        m.message_id for m in first.messages
    ]


async def test_a_whole_journey_then_the_platform_forgets_it(http: Any) -> None:
    sim = adapter(days_per_second=1000.0)
    referral_id = next(i for i in IDS if plan(42, i).outcome == COMPLETED)
    received = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)  # 1000 simulated days ago
    await sim.create_case(http, referral(referral_id, received), OUTBOUND)
    result = await sim.poll(http, None)
    assert [m.events[0].type for m in result.messages] == types(plan(42, referral_id))
    assert simulator.held("test") == [referral_id]
    # Once the cursor that covers the whole journey is saved, the case leaves the book.
    done = await sim.poll(http, result.cursor)
    assert done.messages == []
    assert simulator.held("test") == []
    assert orjson.loads(done.cursor or "") == {}


async def test_journeys_carry_on_after_a_restart_without_gaps_or_repeats(http: Any) -> None:
    sim = adapter(days_per_second=1.0)
    received = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=20)
    referral_id = next(
        i
        for i in IDS
        if sum(1 for e in plan(42, i).events if e.day <= 20) < len(plan(42, i).events)
    )
    await sim.create_case(http, referral(referral_id, received), OUTBOUND)
    before = await sim.poll(http, None)
    assert before.messages

    simulator.forget_all()  # the process stops: the book is gone, the saved cursor stays
    assert (await sim.poll(http, before.cursor)).messages == []
    simulator.hold("test", referral_id, received)  # the sandbox puts open cases back
    later = adapter(days_per_second=1000.0)  # and time has moved on (a faster clock here)
    after = await later.poll(http, before.cursor)
    ids = [m.message_id for m in before.messages + list(after.messages)]
    assert ids == [f"sim-{referral_id}:{i}" for i in range(len(plan(42, referral_id).events))]


async def test_cancel_stops_the_journey_and_platforms_are_separate(http: Any) -> None:
    received = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    mine, theirs = adapter(1000.0, platform="mine"), adapter(1000.0, platform="theirs")
    await mine.create_case(http, referral(IDS[0], received), OUTBOUND)
    await theirs.create_case(http, referral(IDS[1], received), OUTBOUND)
    assert {m.events[0].referral_id for m in (await mine.poll(http, None)).messages} == {IDS[0]}
    outcome = await mine.cancel_case(
        http, CaseReference(IDS[0], f"case-{IDS[0]}", f"sim-{IDS[0]}"), OUTBOUND
    )
    assert outcome.external_reference == f"sim-{IDS[0]}"
    assert (await mine.poll(http, None)).messages == []
    assert simulator.held("theirs") == [IDS[1]]
    # A repeated create (a retry, an admin's replay) keeps the first arrival time.
    await theirs.create_case(http, referral(IDS[1], dt.datetime.now(dt.UTC)), OUTBOUND)
    first = (await theirs.poll(http, None)).messages[0].events[0]
    assert first.occurred_at is not None and first.occurred_at < received + dt.timedelta(days=1)


async def test_a_cursor_it_did_not_write_starts_from_nothing(http: Any) -> None:
    sim = adapter(1000.0)
    received = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await sim.create_case(http, referral(IDS[5], received), OUTBOUND)
    for cursor in ("", "not json", "[1, 2]", '{"x": -1}', "2026-01-01T00:00:00Z"):
        result = await sim.poll(http, cursor)
        assert result.messages[0].message_id == f"sim-{IDS[5]}:0", cursor
