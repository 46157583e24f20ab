"""GET /api/v1/worklist: the pathway advisors' worklist.

The app's clock (``app.state.clock``) is controlled; a referral's received time comes from the
wall clock at intake, so tests either move the app's clock relative to the moment the test
started, or set a case's received time exactly (``Desk.received``) where boundaries matter.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from app.cases.models import Case, Referral
from app.db import Database
from tests.conftest import ADMIN_KEY, Bridge, referral_resource

DAY = dt.timedelta(days=1)
ITEM_KEYS = {
    "case_id",
    "referral_id",
    "service",
    "state",
    "business_status",
    "team",
    "advisor",
    "priority",
    "received_at",
    "closed_at",
    "waiting_days",
    "first_contact_at",
    "days_to_first_contact",
    "next_appointment",
    "flags",
    "reasons",
    "referring_team",
    "referring_organisation",
    "patient",
    "links",
}
OPEN = ["received", "accepted", "in_progress", "on_hold"]


def z(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def instant(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class Desk:
    """A service side with two services of organisation LR001 (one with its own targets), one
    service of another organisation, a referrer (RW4) and keys for the callers."""

    def __init__(self, app: Any, bridge: Bridge) -> None:
        self.app = app
        self.bridge = bridge
        self.http = bridge.http
        # Whole seconds: instants written out in the tests compare exactly.
        self.start = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.at(self.start)

    async def setup(self) -> Desk:
        await self.bridge.service("life-rooms", "LR001")
        response = await self.http.post(
            "/api/v1/services",
            json={
                "id": "quick-rooms",
                "name": "Quick Rooms",
                "organisation": "LR001",
                "adapter": "local",
                "first_contact_target_days": 3,
                "support_window_days": 10,
            },
            headers=self.bridge.admin,
        )
        assert response.status_code == 201, response.text
        await self.bridge.service("elsewhere", "ZZ001")
        self.referrer = await self.bridge.key("clinical-system", "RW4")
        self.advisor = await self.bridge.key("advisor", "LR001")
        self.other_advisor = await self.bridge.key("advisor", "ZZ001")
        return self

    def at(self, when: dt.datetime) -> dt.datetime:
        self.app.state.clock = lambda: when
        return when

    async def refer(self, service: str = "life-rooms", **overrides: Any) -> tuple[str, str]:
        """A new referral: (case id, referral id)."""
        response = await self.bridge.refer(self.referrer, referral_resource(service, **overrides))
        assert response.status_code == 201, response.text
        referral_id = response.json()["id"]
        tasks = await self.http.get(
            "/fhir/Task", params={"focus": f"ServiceRequest/{referral_id}"}, headers=self.referrer
        )
        assert tasks.status_code == 200, tasks.text
        return tasks.json()["entry"][0]["resource"]["id"], referral_id

    async def case(self, service: str = "life-rooms", **overrides: Any) -> str:
        return (await self.refer(service, **overrides))[0]

    async def received(self, case_id: str, when: dt.datetime) -> None:
        """Make the case's referral one received at ``when`` (as if it had arrived then)."""
        database: Database = self.app.state.database
        async with database.write_sessions() as session, session.begin():
            referral_id = await session.scalar(select(Case.referral_id).where(Case.id == case_id))
            await session.execute(
                update(Case).where(Case.id == case_id).values(created_at=when, updated_at=when)
            )
            await session.execute(
                update(Referral)
                .where(Referral.id == referral_id)
                .values(created_at=when, last_updated=when)
            )

    async def record(
        self, case_id: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        response = await self.http.post(
            f"/api/v1/cases/{case_id}/events", json=body, headers=headers or self.advisor
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def accept(
        self, case_id: str, team: str = "Halton hub", advisor: str = "A. Advisor"
    ) -> None:
        await self.record(case_id, {"type": "case.accepted", "team": team, "advisor": advisor})

    async def reach(self, case_id: str, when: dt.datetime) -> None:
        await self.record(
            case_id, {"type": "contact.attempted", "outcome": "reached", "occurred_at": z(when)}
        )

    async def book(
        self, case_id: str, appointment_id: str, start: dt.datetime, **extra: Any
    ) -> str:
        """Books an appointment; returns its FHIR reference."""
        recorded = await self.record(
            case_id,
            {
                "type": "appointment.booked",
                "appointment_id": appointment_id,
                "start": z(start),
                "appointment_type": extra.get("appointment_type", "telephone"),
                "duration_minutes": extra.get("duration_minutes", 30),
            },
        )
        [reference] = recorded["event"]["resources"]
        assert reference.startswith("Appointment/")
        return str(reference)

    async def get(
        self, headers: dict[str, str] | None = None, **params: Any
    ) -> tuple[int, dict[str, Any]]:
        response = await self.http.get(
            "/api/v1/worklist", params=params, headers=self.advisor if headers is None else headers
        )
        return response.status_code, response.json()

    async def items(
        self, headers: dict[str, str] | None = None, **params: Any
    ) -> list[dict[str, Any]]:
        status, body = await self.get(headers, **params)
        assert status == 200, body
        items: list[dict[str, Any]] = body["items"]
        return items

    async def ids(self, headers: dict[str, str] | None = None, **params: Any) -> list[str]:
        return [item["case_id"] for item in await self.items(headers, **params)]

    async def item(self, case_id: str, **params: Any) -> dict[str, Any]:
        [found] = [
            i
            for i in await self.items(state=[*OPEN, "completed"], **params)
            if i["case_id"] == case_id
        ]
        return found

    async def paged(self, limit: int, **params: Any) -> list[str]:
        """Every page, following next_cursor; checks each page's size."""
        collected: list[str] = []
        cursor: str | None = None
        for _ in range(50):
            query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
            status, body = await self.get(**query)
            assert status == 200, body
            ids = [item["case_id"] for item in body["items"]]
            cursor = body["next_cursor"]
            collected += ids
            if cursor is None:
                assert len(ids) <= limit
                return collected
            assert len(ids) == limit
        raise AssertionError("paging did not end")


@pytest.fixture
async def desk(app: Any, bridge: Bridge) -> Desk:
    return await Desk(app, bridge).setup()


def assert_problem(status: int, body: dict[str, Any], expected: int, pointer: str) -> None:
    assert status == expected, body
    assert [e["pointer"] for e in body["errors"]] == [pointer], body


# --- what an item carries -----------------------------------------------------------------------


async def test_an_item_carries_what_the_advisor_needs_and_no_more(desk: Desk) -> None:
    case_id, referral_id = await desk.refer()
    desk.at(desk.start + dt.timedelta(days=2, hours=1))
    response = await desk.http.get("/api/v1/worklist", headers=desk.advisor)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items", "next_cursor"}
    assert body["next_cursor"] is None
    [item] = body["items"]
    assert set(item) == ITEM_KEYS
    assert set(item["patient"]) == {"name", "nhs_number", "phone"}
    assert item["patient"] == {
        "name": "Sam Example",
        "nhs_number": "9000000009",
        "phone": "07700 900000",
    }
    received = instant(item["received_at"])
    assert desk.start <= received <= desk.start + dt.timedelta(minutes=1)
    assert {k: v for k, v in item.items() if k != "received_at"} == {
        "case_id": case_id,
        "referral_id": referral_id,
        "service": "life-rooms",
        "state": "received",
        "business_status": "received",
        "team": None,
        "advisor": None,
        "priority": "routine",
        "closed_at": None,
        "waiting_days": 2,
        "first_contact_at": None,
        "days_to_first_contact": None,
        "next_appointment": None,
        "flags": {"first_contact_overdue": False, "support_window_exceeded": False},
        "reasons": [
            {"code": "finance-benefits-debt", "display": "Finance, Benefits and Debt Advice"},
            {"code": "social-isolation", "display": "Social Isolation"},
        ],
        "referring_team": "Halton Crisis Resolution Team",
        "referring_organisation": "RW4",
        "patient": {"name": "Sam Example", "nhs_number": "9000000009", "phone": "07700 900000"},
        "links": {
            "case": f"/api/v1/cases/{case_id}",
            "task": f"/fhir/Task/{case_id}",
            "referral": f"/fhir/ServiceRequest/{referral_id}",
        },
    }
    # The referral's birth date, gender and postcode are held, but never shown here.
    for held in ("1990-01-01", "WA7 1AA", "birth", "postcode", "address", "gender"):
        assert held not in response.text
    # The links lead somewhere.
    for link in item["links"].values():
        assert (await desk.http.get(link, headers=desk.advisor)).status_code == 200, link


async def test_reasons_are_the_referrals_domains_once_each(desk: Desk) -> None:
    finance = {
        "coding": [
            {
                "system": "https://fhir.spbridge.org/CodeSystem/reason-for-referral",
                "code": "finance-benefits-debt",
            }
        ]
    }
    await desk.case(reasonCode=[{"text": "Loneliness"}, finance, {"text": "loneliness"}])
    [item] = await desk.items()
    assert item["reasons"] == [
        {"code": "social-isolation", "display": "Social Isolation"},
        {"code": "finance-benefits-debt", "display": "Finance, Benefits and Debt Advice"},
    ]


# --- whose cases --------------------------------------------------------------------------------


async def test_only_the_callers_services_cases_appear(desk: Desk, bridge: Bridge) -> None:
    ours = await desk.case("life-rooms")
    quick = await desk.case("quick-rooms")
    theirs = await desk.case("elsewhere")

    assert await desk.ids() == [ours, quick]
    assert await desk.ids(desk.other_advisor) == [theirs]
    assert await desk.ids(await bridge.key("platform", "LR001")) == [ours, quick]
    assert await desk.ids(await bridge.key("admin", "LR001")) == [ours, quick]
    # An admin of no organisation sees every service.
    assert await desk.ids({"Authorization": f"Bearer {ADMIN_KEY}"}) == [ours, quick, theirs]
    # The referrer's organisation runs no service: its advisor's worklist is empty, although
    # it may follow these cases elsewhere.
    assert await desk.ids(await bridge.key("advisor", "RW4")) == []

    assert await desk.ids(service="quick-rooms") == [quick]
    assert await desk.ids(desk.other_advisor, service="elsewhere") == [theirs]
    # Another organisation's service is answered exactly as one that does not exist.
    other_status, other = await desk.get(service="elsewhere")
    none_status, none = await desk.get(service="no-such-service")
    assert_problem(other_status, other, 404, "service")
    assert other == none and none_status == 404
    assert theirs not in str(other)


async def test_roles(desk: Desk, bridge: Bridge) -> None:
    await desk.case()
    status, body = await desk.get({})
    assert status == 401, body
    status, _ = await desk.get({"Authorization": "Bearer spb_not_a_key"})
    assert status == 401
    for role in ("clinical-system", "reporting"):
        status, body = await desk.get(await bridge.key(role, "LR001"))
        assert status == 403, (role, body)
        assert body["detail"] == f"The role '{role}' may not do 'worklist.read'"


# --- states and filters -------------------------------------------------------------------------


async def test_open_cases_by_default_and_any_state_on_request(desk: Desk, bridge: Bridge) -> None:
    received = await desk.case()
    accepted = await desk.case()
    await desk.accept(accepted)
    in_progress = await desk.case()
    await desk.accept(in_progress)
    await desk.reach(in_progress, desk.start + dt.timedelta(minutes=1))
    on_hold = await desk.case()
    await desk.accept(on_hold)
    await desk.record(on_hold, {"type": "case.on_hold"})
    completed = await desk.case()
    await desk.accept(completed)
    await desk.record(completed, {"type": "case.completed", "reason": "needs-met"})
    discharged = await desk.case()
    await desk.record(discharged, {"type": "case.discharged", "reason": "unable-to-contact"})
    rejected = await desk.case()
    await desk.record(rejected, {"type": "case.rejected", "reason": "not-eligible"})
    cancelled, cancelled_referral = await desk.refer()
    await bridge.cancel(cancelled_referral)

    assert await desk.ids() == [received, accepted, in_progress, on_hold]
    states = {item["case_id"]: item["state"] for item in await desk.items()}
    assert states == {
        received: "received",
        accepted: "accepted",
        in_progress: "in_progress",
        on_hold: "on_hold",
    }
    assert await desk.ids(state="completed") == [completed]
    assert await desk.ids(state="received") == [received]
    assert await desk.ids(state="completed,cancelled") == [completed, cancelled]
    assert await desk.ids(state=["discharged", "rejected"]) == [discharged, rejected]
    assert await desk.ids(state=["on_hold", "completed,rejected"]) == [on_hold, completed, rejected]
    every = "received,accepted,in_progress,on_hold,completed,discharged,rejected,cancelled"
    assert len(await desk.ids(state=every)) == 8

    for bad in ("closed", "received,open", ",", "RECEIVED"):
        status, body = await desk.get(state=bad)
        assert_problem(status, body, 422, "state")


async def test_team_and_advisor_filters(desk: Desk) -> None:
    hub_a = await desk.case()
    await desk.accept(hub_a, team="Halton hub", advisor="A. Advisor")
    hub_b = await desk.case()
    await desk.accept(hub_b, team="Halton hub", advisor="B. Advisor")
    widnes_a = await desk.case()
    await desk.accept(widnes_a, team="Widnes hub", advisor="A. Advisor")
    unassigned = await desk.case()

    assert await desk.ids(team="Halton hub") == [hub_a, hub_b]
    assert await desk.ids(advisor="A. Advisor") == [hub_a, widnes_a]
    assert await desk.ids(team="Halton hub", advisor="B. Advisor") == [hub_b]
    assert await desk.ids(team="Nowhere") == []
    assert await desk.ids() == [hub_a, hub_b, widnes_a, unassigned]
    [item] = await desk.items(team="Widnes hub")
    assert (item["team"], item["advisor"], item["state"]) == (
        "Widnes hub",
        "A. Advisor",
        "accepted",
    )


async def test_waiting_longer_than_days(desk: Desk) -> None:
    now = desk.at(desk.start)
    one_day = await desk.case()
    await desk.received(one_day, now - DAY)
    three_days = await desk.case()
    await desk.received(three_days, now - 3 * DAY)
    just_over_three = await desk.case()
    await desk.received(just_over_three, now - 3 * DAY - dt.timedelta(seconds=1))
    ten_days = await desk.case()
    await desk.received(ten_days, now - 10 * DAY)

    assert await desk.ids(waiting_longer_than_days=0) == [
        ten_days,
        just_over_three,
        three_days,
        one_day,
    ]
    # More than three days: exactly three days is not more.
    assert await desk.ids(waiting_longer_than_days=3) == [ten_days, just_over_three]
    assert await desk.ids(waiting_longer_than_days=9) == [ten_days]
    assert await desk.ids(waiting_longer_than_days=10) == []
    waiting = {item["case_id"]: item["waiting_days"] for item in await desk.items()}
    assert waiting == {one_day: 1, three_days: 3, just_over_three: 3, ten_days: 10}
    for bad in ("-1", "two", "1.5", "36501"):
        status, body = await desk.get(waiting_longer_than_days=bad)
        assert_problem(status, body, 422, "waiting_longer_than_days")


# --- waiting time, first contact and the flags --------------------------------------------------


async def test_waiting_time_and_time_to_first_contact(desk: Desk) -> None:
    start = desk.start
    contacted = await desk.case()
    await desk.received(contacted, start)
    waiting = await desk.case()
    await desk.received(waiting, start)
    closed = await desk.case()
    await desk.received(closed, start)
    early = await desk.case()
    await desk.received(early, start)

    desk.at(start + dt.timedelta(days=5, hours=1))
    # The contact's clock ran a little behind ours (within the 5 minutes allowed).
    await desk.accept(early)
    await desk.reach(early, start - dt.timedelta(minutes=3))
    item = await desk.item(early)
    assert (item["days_to_first_contact"], item["waiting_days"]) == (0, 5)
    await desk.accept(contacted)
    await desk.reach(contacted, start + dt.timedelta(days=2, hours=3))
    await desk.accept(closed)
    await desk.reach(closed, start + dt.timedelta(hours=20))
    await desk.record(
        closed,
        {
            "type": "case.completed",
            "reason": "needs-met",
            "occurred_at": z(start + dt.timedelta(days=3, hours=2)),
        },
    )

    item = await desk.item(contacted)
    assert item["waiting_days"] == 5
    assert instant(item["first_contact_at"]) == start + dt.timedelta(days=2, hours=3)
    assert item["days_to_first_contact"] == 2
    assert item["state"] == "in_progress"
    item = await desk.item(waiting)
    assert (item["waiting_days"], item["first_contact_at"], item["days_to_first_contact"]) == (
        5,
        None,
        None,
    )

    # A closed case stopped waiting when it closed.
    desk.at(start + dt.timedelta(days=30))
    item = await desk.item(closed)
    assert item["state"] == "completed"
    assert instant(item["closed_at"]) == start + dt.timedelta(days=3, hours=2)
    assert item["waiting_days"] == 3
    assert item["days_to_first_contact"] == 0
    assert item["flags"] == {"first_contact_overdue": False, "support_window_exceeded": False}
    assert (await desk.item(waiting))["waiting_days"] == 30


def flags(item: dict[str, Any]) -> tuple[bool, bool]:
    return item["flags"]["first_contact_overdue"], item["flags"]["support_window_exceeded"]


async def test_flags_against_the_default_targets_flip_as_time_passes(desk: Desk) -> None:
    # Received now (the wall clock at intake); the app's clock then moves on.
    start = desk.start
    silent = await desk.case()
    reached = await desk.case()
    await desk.accept(reached)
    await desk.reach(reached, start + dt.timedelta(minutes=2))

    desk.at(start + dt.timedelta(days=6))
    assert flags(await desk.item(silent)) == (False, False)
    assert await desk.ids(first_contact_overdue="true") == []
    assert await desk.ids(first_contact_overdue="false") == [silent, reached]

    desk.at(start + dt.timedelta(days=7, hours=12))
    item = await desk.item(silent)
    assert (item["waiting_days"], flags(item)) == (7, (True, False))
    assert flags(await desk.item(reached)) == (False, False)  # contacted: never overdue
    assert await desk.ids(first_contact_overdue="true") == [silent]
    assert await desk.ids(first_contact_overdue="false") == [reached]

    # Six weeks of support from first contact.
    desk.at(start + dt.timedelta(days=42))
    assert flags(await desk.item(reached)) == (False, False)
    assert await desk.ids(support_window_exceeded="true") == []
    desk.at(start + dt.timedelta(days=42, minutes=3))
    assert flags(await desk.item(reached)) == (False, True)
    assert flags(await desk.item(silent)) == (True, False)  # not contacted: no window yet
    assert await desk.ids(support_window_exceeded="true") == [reached]
    assert await desk.ids(support_window_exceeded="false") == [silent]
    assert await desk.ids(support_window_exceeded="true", first_contact_overdue="true") == []

    # Closed cases carry no flags.
    await desk.record(reached, {"type": "case.completed", "reason": "needs-met"})
    await desk.record(silent, {"type": "case.discharged", "reason": "unable-to-contact"})
    closed = await desk.items(state="completed,discharged")
    assert [flags(item) for item in closed] == [(False, False), (False, False)]
    assert await desk.ids(state="completed,discharged", support_window_exceeded="true") == []
    assert await desk.ids(state="completed,discharged", first_contact_overdue="true") == []
    assert await desk.ids(state="completed,discharged", first_contact_overdue="false") == [
        silent,
        reached,
    ]

    for name in ("first_contact_overdue", "support_window_exceeded"):
        status, body = await desk.get(**{name: "perhaps"})
        assert_problem(status, body, 422, name)


async def test_flags_against_a_services_own_targets(desk: Desk) -> None:
    service = await desk.http.get("/api/v1/services/quick-rooms", headers=desk.advisor)
    assert service.status_code == 200
    assert (service.json()["first_contact_target_days"], service.json()["support_window_days"]) == (
        3,
        10,
    )
    default = await desk.http.get("/api/v1/services/life-rooms", headers=desk.advisor)
    assert (default.json()["first_contact_target_days"], default.json()["support_window_days"]) == (
        7,
        42,
    )

    now = desk.at(desk.start)
    quick_edge = await desk.case("quick-rooms")
    await desk.received(quick_edge, now - 3 * DAY)
    quick_late = await desk.case("quick-rooms")
    await desk.received(quick_late, now - 3 * DAY - dt.timedelta(seconds=1))
    usual = await desk.case("life-rooms")
    await desk.received(usual, now - 3 * DAY - dt.timedelta(seconds=2))

    # Exactly the target is not overdue; a second more is, but only against quick-rooms' 3 days.
    assert flags(await desk.item(quick_edge)) == (False, False)
    assert flags(await desk.item(quick_late)) == (True, False)
    assert flags(await desk.item(usual)) == (False, False)
    assert await desk.ids(first_contact_overdue="true") == [quick_late]
    assert await desk.ids(first_contact_overdue="false") == [usual, quick_edge]

    # Support windows: 10 days at quick-rooms, 42 at life-rooms.
    for case_id in (quick_edge, usual):
        await desk.accept(case_id)
        await desk.reach(case_id, now - 2 * DAY)
    desk.at(now + 8 * DAY)
    assert flags(await desk.item(quick_edge)) == (False, False)
    desk.at(now + 8 * DAY + dt.timedelta(seconds=1))
    assert flags(await desk.item(quick_edge)) == (False, True)
    assert flags(await desk.item(usual)) == (False, False)
    assert await desk.ids(support_window_exceeded="true") == [quick_edge]
    assert await desk.ids(support_window_exceeded="false") == [usual, quick_late]
    assert await desk.ids(support_window_exceeded="true", service="life-rooms") == []
    desk.at(now + 40 * DAY + dt.timedelta(seconds=1))
    assert await desk.ids(support_window_exceeded="true") == [usual, quick_edge]


async def test_service_targets_are_validated(desk: Desk) -> None:
    for name, value in [
        ("first_contact_target_days", 0),
        ("first_contact_target_days", 366),
        ("support_window_days", 0),
        ("support_window_days", 731),
        ("support_window_days", "six weeks"),
    ]:
        response = await desk.http.post(
            "/api/v1/services",
            json={
                "id": "bad",
                "name": "Bad",
                "organisation": "LR001",
                "adapter": "local",
                name: value,
            },
            headers=desk.bridge.admin,
        )
        assert response.status_code == 422, (name, value, response.text)
        assert [e["pointer"] for e in response.json()["errors"]] == [name]


# --- next appointment ---------------------------------------------------------------------------


async def test_next_appointment_is_the_earliest_future_booked_one(desk: Desk) -> None:
    now = desk.at(desk.start)
    first = await desk.case()
    second = await desk.case()
    nothing = await desk.case()
    for case_id in (first, second, nothing):
        await desk.received(case_id, now - 10 * DAY)
        await desk.accept(case_id)

    past = await desk.book(first, "PAST", now - DAY)  # booked, but already started
    attended = await desk.book(first, "SEEN", now + dt.timedelta(hours=2))
    await desk.record(first, {"type": "appointment.attended", "appointment_id": "SEEN"})
    cancelled = await desk.book(first, "OFF", now + dt.timedelta(hours=3))
    await desk.record(first, {"type": "appointment.cancelled", "appointment_id": "OFF"})
    missed = await desk.book(first, "DNA", now + dt.timedelta(hours=4))
    await desk.record(first, {"type": "appointment.did_not_attend", "appointment_id": "DNA"})
    later = await desk.book(
        first, "LATER", now + 5 * DAY, appointment_type="group", duration_minutes=90
    )
    soon = await desk.book(
        first,
        "SOON",
        now + dt.timedelta(days=1, hours=2),
        appointment_type="face-to-face",
        duration_minutes=60,
    )
    other = await desk.book(second, "B1", now + dt.timedelta(hours=5))
    assert len({past, attended, cancelled, missed, later, soon, other}) == 7

    items = {item["case_id"]: item for item in await desk.items()}
    assert items[first]["next_appointment"] == {
        "appointment_id": "SOON",
        "fhir_id": soon,
        "start": z(now + dt.timedelta(days=1, hours=2)),
        "appointment_type": "face-to-face",
        "duration_minutes": 60,
    }
    # Each case its own: the second case's earlier appointment is not the first's.
    assert items[second]["next_appointment"] == {
        "appointment_id": "B1",
        "fhir_id": other,
        "start": z(now + dt.timedelta(hours=5)),
        "appointment_type": "telephone",
        "duration_minutes": 30,
    }
    assert items[nothing]["next_appointment"] is None

    # Once SOON has started, LATER is next; one that starts right now still counts.
    desk.at(now + dt.timedelta(days=1, hours=2, seconds=1))
    item = await desk.item(first)
    assert (item["next_appointment"]["appointment_id"], item["next_appointment"]["fhir_id"]) == (
        "LATER",
        later,
    )
    desk.at(now + 5 * DAY)
    assert (await desk.item(first))["next_appointment"]["appointment_id"] == "LATER"
    desk.at(now + 5 * DAY + dt.timedelta(seconds=1))
    assert (await desk.item(first))["next_appointment"] is None


async def test_rescheduled_appointment_moves(desk: Desk) -> None:
    now = desk.at(desk.start)
    case_id = await desk.case()
    await desk.received(case_id, now - DAY)
    await desk.accept(case_id)
    await desk.book(case_id, "A", now + 2 * DAY)
    await desk.book(case_id, "B", now + 3 * DAY)
    await desk.record(
        case_id,
        {
            "type": "appointment.rescheduled",
            "appointment_id": "A",
            "start": z(now + 4 * DAY),
            "appointment_type": "telephone",
            "duration_minutes": 30,
        },
    )
    assert (await desk.item(case_id))["next_appointment"]["appointment_id"] == "B"


# --- sorts and paging ---------------------------------------------------------------------------


async def seven_cases(desk: Desk) -> dict[str, str]:
    """Seven cases with received times out of creation order and a three-way tie; c2, c4 and c5
    are accepted, the rest are new."""
    now = desk.at(desk.start)
    received = {
        "c1": now - 3 * DAY,
        "c2": now - 5 * DAY,
        "c3": now - 1 * DAY,
        "c4": now - 5 * DAY,
        "c5": now - 2 * DAY,
        "c6": now - 4 * DAY,
        "c7": now - 5 * DAY,
    }
    cases = {}
    for name, when in received.items():
        cases[name] = await desk.case()
        await desk.received(cases[name], when)
    for name in ("c2", "c4", "c5"):
        await desk.accept(cases[name])
    return cases


async def test_sorts(desk: Desk) -> None:
    c = await seven_cases(desk)
    tie = sorted([c["c2"], c["c4"], c["c7"]])  # the same received time: by case id
    oldest = [*tie, c["c6"], c["c1"], c["c5"], c["c3"]]
    assert await desk.ids() == oldest
    assert await desk.ids(sort="oldest") == oldest
    assert await desk.ids(sort="newest") == list(reversed(oldest))
    # New referrals first (c1, c3, c6, c7), oldest first; then the accepted ones, oldest first.
    new_first = [c["c7"], c["c6"], c["c1"], c["c3"], *sorted([c["c2"], c["c4"]]), c["c5"]]
    assert await desk.ids(sort="new-first") == new_first
    assert [i["state"] for i in await desk.items(sort="new-first")] == ["received"] * 4 + [
        "accepted"
    ] * 3
    status, body = await desk.get(sort="urgent")
    assert_problem(status, body, 422, "sort")


@pytest.mark.parametrize("sort", ["oldest", "newest", "new-first"])
async def test_paging_gives_the_unpaged_order(desk: Desk, sort: str) -> None:
    await seven_cases(desk)
    unpaged = await desk.ids(sort=sort, limit=200)
    assert len(unpaged) == len(set(unpaged)) == 7
    for limit in (1, 2, 3, 6, 7):
        paged = await desk.paged(limit, sort=sort)
        assert paged == unpaged, limit
    status, body = await desk.get(sort=sort, limit=7)
    assert status == 200
    assert body["next_cursor"] is None
    # A filter keeps working across pages.
    accepted = await desk.ids(sort=sort, state="accepted")
    assert len(accepted) == 3
    assert await desk.paged(2, sort=sort, state="accepted") == accepted


async def test_limit_and_cursor_are_checked(desk: Desk) -> None:
    await seven_cases(desk)
    status, body = await desk.get(limit=2)
    assert status == 200 and len(body["items"]) == 2
    cursor = body["next_cursor"]
    assert isinstance(cursor, str)
    # A cursor belongs to its sort.
    status, body = await desk.get(limit=2, sort="newest", cursor=cursor)
    assert_problem(status, body, 422, "cursor")
    status, body = await desk.get(limit=2, sort="new-first", cursor=cursor)
    assert_problem(status, body, 422, "cursor")
    forged = base64.urlsafe_b64encode(
        orjson.dumps(["oldest", 0, "2026-01-01T00:00:00", "x"])
    ).decode()
    for bad in ("not-a-cursor", "%%%", "e30", "W10", forged, cursor[:-3], "x" * 501):
        status, body = await desk.get(limit=2, cursor=bad)
        assert_problem(status, body, 422, "cursor")
    for limit in ("0", "201", "many"):
        status, body = await desk.get(limit=limit)
        assert_problem(status, body, 422, "limit")
    assert len(await desk.ids(limit=200)) == 7
    status, body = await desk.get()
    assert len(body["items"]) == 7 and body["next_cursor"] is None


async def test_default_limit_is_fifty(desk: Desk) -> None:
    now = desk.at(desk.start)
    database: Database = desk.app.state.database
    first = await desk.case()
    # 51 cases of one service: copy the first case's referral and case rows.
    async with database.write_sessions() as session, session.begin():
        case_row = await session.get(Case, first)
        assert case_row is not None
        referral = await session.get(Referral, case_row.referral_id)
        assert referral is not None
        for n in range(50):
            copy_referral = Referral(
                **{
                    column.key: getattr(referral, column.key)
                    for column in Referral.__table__.columns
                    if column.key not in ("id", "identifier_value")
                },
                id=f"r-{n:03d}",
                identifier_value=f"copy-{n}",
            )
            session.add(copy_referral)
            await session.flush()
            session.add(
                Case(
                    **{
                        column.key: getattr(case_row, column.key)
                        for column in Case.__table__.columns
                        if column.key not in ("id", "referral_id", "created_at")
                    },
                    id=f"c-{n:03d}",
                    referral_id=f"r-{n:03d}",
                    created_at=now - dt.timedelta(minutes=n + 1),
                )
            )
    status, body = await desk.get()
    assert status == 200
    assert len(body["items"]) == 50
    assert body["items"][0]["case_id"] == "c-049"
    status, rest = await desk.get(cursor=body["next_cursor"])
    assert [i["case_id"] for i in rest["items"]] == [first] and rest["next_cursor"] is None
