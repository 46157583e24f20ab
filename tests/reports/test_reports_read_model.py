"""The reporting read model (app.reports.projection): writes only queue their cases, a drain (or
a report, which drains first) takes them in, and then it must equal a rebuild from the rows; the
reports it answers, for whole months and for any other period, must equal the live queries over
the operational tables (tests/reports/oracle.py), backdated events included.

Events go through app.cases.service (open_case, apply_event) with chosen clocks, one transaction
each, so that referrals can be received in 2025 and events recorded weeks after they happened.
The figures asserted by hand were worked out from the list of events below.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import delete, event, select

from app.cases import service as domain
from app.cases.after_write import queue_for_reports
from app.cases.models import Case, Referral, ReportPendingCase
from app.db import utcnow
from app.directory.models import SocialPrescribingService
from app.reports import projection, readmodel
from app.reports.models import ReportCaseFact, ReportCount
from app.reports.period import Period
from app.reports.rebuild import rebuild
from tests.conftest import Bridge
from tests.reports import oracle

CONTEXT = domain.EventContext(client_id=None, request_id=None, correlation_id=None)
QUARTER = {"from": "2025-01-01", "to": "2025-03-31"}


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


class Recorder:
    def __init__(self, app: Any, first: int = 0) -> None:
        self.sessions = app.state.database.write_sessions
        self.cases: dict[str, tuple[str, str]] = {}
        self.first = first

    async def referral(self, name: str, received: str, **attributes: Any) -> None:
        async with self.sessions() as session:
            service = await session.get(SocialPrescribingService, "life-rooms")
            assert service is not None
            referral = Referral(
                id=f"00000000-0000-0000-0000-{self.first + len(self.cases):012d}",
                organisation="RW4",
                identifier_system="https://rio.example.nhs.uk/Id/referral",
                identifier_value=name,
                service_id="life-rooms",
                status="active",
                intent="order",
                authored_on=received,
                nhs_number="9000000009",
                reasons=[{"domain": "housing", "mapped": True}],
                resource={"intent": "order"},
                created_at=at(received),
                last_updated=at(received),
                referral_unit="individual",
                **attributes,
            )
            session.add(referral)
            await session.flush()
            case = (await domain.open_case(session, referral, service, CONTEXT)).case
            await session.commit()
        self.cases[name] = (case.id, referral.id)

    async def event(
        self, name: str, kind: str, occurred: str, recorded: str | None = None, **data: Any
    ) -> None:
        """One event in its own transaction, recorded at ``recorded`` (default: when it
        happened)."""
        async with self.sessions() as session:
            case_id, referral_id = self.cases[name]
            case = await session.get(Case, case_id)
            referral = await session.get(Referral, referral_id)
            assert case is not None and referral is not None
            service = await session.get(SocialPrescribingService, "life-rooms")
            assert service is not None
            await domain.apply_event(
                session,
                case,
                referral,
                service,
                domain.NewEvent(kind, "advisor", occurred_at=at(occurred), data=data),
                CONTEXT,
                now=at(recorded or occurred),
            )
            await session.commit()


def items(raw: int) -> list[int]:
    return [raw // 7 + (1 if i < raw % 7 else 0) for i in range(7)]


@pytest.fixture
async def recorded(app: Any, bridge: Bridge) -> dict[str, str]:
    await bridge.service("life-rooms", "LR001")
    r = Recorder(app)
    # r3: received in December 2024, accepted in January.
    await r.referral("r3", "2024-12-15T10:00:00", gender="female")
    await r.event("r3", "case.accepted", "2025-01-02T09:00:00")

    await r.referral("r1", "2025-01-30T10:00:00", referring_team="Crisis Team", gender="female")
    await r.event("r1", "case.accepted", "2025-01-31T09:00:00")
    await r.event("r1", "contact.attempted", "2025-02-01T10:00:00", outcome="reached")
    await r.event(
        "r1",
        "appointment.booked",
        "2025-02-01T11:00:00",
        appointment_id="a1",
        start="2025-02-03T10:00:00Z",
        appointment_type="face-to-face",
        duration_minutes=60,
    )
    # Attended on 3 February, recorded on 15 March: February.
    await r.event(
        "r1",
        "appointment.attended",
        "2025-02-03T10:00:00",
        "2025-03-15T10:00:00",
        appointment_id="a1",
        duration_minutes=40,
    )
    await r.event(
        "r1",
        "prescription.created",
        "2025-02-04T10:00:00",
        prescription_id="p1",
        category="housing",
        provider="Citizens Advice",
        activity="Advice",
    )
    # Its category as it stands now, in the month it was made.
    await r.event(
        "r1",
        "prescription.updated",
        "2025-03-02T10:00:00",
        prescription_id="p1",
        category="benefits-money",
    )
    # Recorded first but measured last; the score recorded later was measured in February, so
    # it is the first of the pair (raw 14, metric 15.32; then raw 20, metric 18.59).
    await r.event("r1", "outcome.recorded", "2025-03-10T10:00:00", stage="review", items=items(20))
    await r.event(
        "r1",
        "outcome.recorded",
        "2025-02-05T10:00:00",
        "2025-03-20T10:00:00",
        stage="start",
        items=items(14),
    )
    # The answer given last (1 March) stands, though an older one was recorded after it.
    await r.event("r1", "demographics.recorded", "2025-03-01T10:00:00", ethnicity="Mixed")
    await r.event(
        "r1", "demographics.recorded", "2025-02-10T10:00:00", "2025-03-05T10:00:00",
        ethnicity="Asian", carer="Yes",
    )  # fmt: skip
    await r.event("r1", "case.completed", "2025-03-25T10:00:00", reason="needs-met")

    await r.referral("r2", "2025-02-28T23:59:00", gender="male")
    await r.event("r2", "case.accepted", "2025-03-01T00:30:00")
    # Contact at 08:00 on 1 March, recorded three weeks later.
    await r.event(
        "r2", "contact.attempted", "2025-03-01T08:00:00", "2025-03-20T08:00:00",
        outcome="reached",
    )  # fmt: skip
    return await bridge.key("reporting", "LR001")


async def report(
    bridge: Bridge, headers: dict[str, str], name: str = "activity", **params: Any
) -> dict[str, Any]:
    response = await bridge.http.get(
        f"/api/v1/reports/{name}", params={**QUARTER, **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def table(document: dict[str, Any], table_id: str) -> dict[str, list[Any]]:
    for section in document["sections"]:
        for found in section["tables"]:
            if found["id"] == table_id:
                return {row["key"]: row["values"] for row in found["rows"]}
    raise AssertionError(f"no table {table_id}")


async def test_backdated_events_by_hand(bridge: Bridge, recorded: dict[str, str]) -> None:
    doc = await report(bridge, recorded)
    assert table(doc, "activity") == {
        "referrals": [1, 1, 0, 2],
        "registrations": [2, 0, 1, 3],
        "attended": [0, 1, 0, 1],
        "prescriptions": [0, 1, 0, 1],
    }
    assert table(doc, "attended-by-duration")["31-45 minutes"] == [0, 1, 0, 1]
    categories = table(doc, "prescriptions-by-category")
    assert categories["benefits-money"] == [0, 1, 0, 1]
    assert categories["housing"] == [0, 0, 0, 0]
    assert table(doc, "swemwbs-pairs")["pairs"] == [0, 0, 1, 1]
    assert table(doc, "swemwbs-pairs")["improved"] == [0, 0, 1, 1]  # +3.27
    assert table(doc, "swemwbs-mean-change") == {"mean-change": [None, None, 3.27, 3.27]}
    assert table(doc, "edi-ethnicity") == {
        "Mixed": [1, 0, 0, 1],
        "not-recorded": [0, 1, 0, 1],
        "total": [1, 1, 0, 2],
    }
    assert table(doc, "edi-carer")["Yes"] == [1, 0, 0, 1]
    # r1: 2 days to contact, 4 to attending; r2: 8 hours 1 minute (0.33 days) to contact.
    assert table(doc, "waiting-days") == {
        "contact-median": [2.0, 0.3, None, 1.2],
        "contact-p90": [2.0, 0.3, None, 1.8],
        "attended-median": [4.0, None, None, 4.0],
        "attended-p90": [4.0, None, None, 4.0],
    }
    # March alone holds one of r1's scores: no pair.
    march = await report(bridge, recorded, **{"from": "2025-03-01", "to": "2025-03-31"})
    assert table(march, "swemwbs-pairs")["pairs"] == [0, 0]
    assert table(march, "activity")["registrations"] == [1, 1]


# Whole months, then periods cut inside a month: at r1's booking and attendance, in the second
# before r2 was received, between r3's receipt and its acceptance, and a single day.
PERIODS = [
    QUARTER,
    {"from": "2025-02-01", "to": "2025-03-31"},
    {"from": "2025-03-01", "to": "2025-03-31"},
    {"from": "2024-12-01", "to": "2025-02-28"},
    {"from": "2025-01-31", "to": "2025-03-09"},
    {"from": "2025-02-02", "to": "2025-02-27"},
    {"from": "2025-02-04", "to": "2025-03-31"},
    {"from": "2024-12-16", "to": "2025-03-01"},
    {"from": "2025-03-01", "to": "2025-03-01"},
]


async def test_reports_equal_the_live_queries(
    bridge: Bridge, recorded: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    periods = PERIODS
    asked = [
        (name, period, team)
        for name in ("activity", "staff-hub")
        for period in periods
        for team in (None, "Crisis Team")
    ]

    async def documents() -> list[dict[str, Any]]:
        found = []
        for name, period, team in asked:
            params = {**period, **({"team": team} if team else {})}
            doc = await report(bridge, recorded, name, **params)
            found.append(doc["sections"])
        return found

    from_model = await documents()
    monkeypatch.setattr(readmodel, "load", oracle.load)
    live = await documents()
    for (name, period, team), model_sections, live_sections in zip(
        asked, from_model, live, strict=True
    ):
        assert model_sections == live_sections, (name, period, team)


async def _drain(app: Any, limit: int | None = None) -> int:
    async with app.state.database.write_sessions() as session:
        taken: int = await session.run_sync(projection.drain, limit)
        await session.commit()
    return taken


async def _pending(app: Any) -> set[str]:
    async with app.state.database.read_sessions() as session:
        return set(await session.scalars(select(ReportPendingCase.case_id)))


async def _counts(
    app: Any, *, drain: bool = True
) -> tuple[dict[tuple[str, ...], int], dict[str, Any]]:
    if drain:
        await _drain(app)
    async with app.state.database.read_sessions() as session:
        counts: dict[tuple[str, ...], int] = {
            (s, t, m, measure, k): n
            for s, t, m, measure, k, n in await session.execute(
                select(
                    ReportCount.service_id,
                    ReportCount.team,
                    ReportCount.month,
                    ReportCount.measure,
                    ReportCount.key,
                    ReportCount.n,
                )
            )
            if n
        }
        facts: dict[str, Any] = {
            fact.case_id: (
                fact.contributions,
                fact.first_attended_at,
                fact.contact_bucket,
                fact.attended_bucket,
            )
            for fact in await session.scalars(select(ReportCaseFact))
        }
    return counts, facts


async def test_kept_model_equals_a_rebuild(app: Any, recorded: dict[str, str]) -> None:
    # A change, then a savepoint rolled back, in one transaction: the change still counts.
    async with app.state.database.write_sessions() as session:
        case = await session.scalar(
            select(Case).where(Case.created_at == at("2025-02-28T23:59:00"))
        )
        assert case is not None
        referral = await session.get(Referral, case.referral_id)
        service = await session.get(SocialPrescribingService, "life-rooms")
        assert referral is not None and service is not None
        await domain.apply_event(
            session,
            case,
            referral,
            service,
            domain.NewEvent(
                "case.discharged",
                "advisor",
                occurred_at=at("2025-03-21T10:00:00"),
                data={"reason": "no-longer-required"},
            ),
            CONTEXT,
            now=at("2025-03-21T10:00:00"),
        )
        nested = await session.begin_nested()
        await nested.rollback()
        await session.commit()
    kept = await _counts(app)
    assert kept[0][("life-rooms", "", "2025-02", "state", "discharged\x1fno-longer-required")] == 1
    assert kept[0][("life-rooms", "Crisis Team", "2025-02", "event", "appointment.attended")] == 1
    assert len(kept[1]) == 3
    async with app.state.database.write_sessions() as session:
        await session.execute(delete(ReportCount))
        await session.execute(delete(ReportCaseFact))
        await session.commit()
    assert (await _counts(app))[0] == {}
    assert (await rebuild(app.state.database)).cases == 3
    assert await _counts(app) == kept


async def _rebuilt(app: Any) -> tuple[dict[tuple[str, ...], int], dict[str, Any]]:
    """The read model made again from nothing (the model as it stands is dropped)."""
    async with app.state.database.write_sessions() as session:
        await session.execute(delete(ReportCount))
        await session.execute(delete(ReportCaseFact))
        await session.commit()
    await rebuild(app.state.database)
    return await _counts(app, drain=False)


async def test_writes_only_queue_their_cases(
    app: Any, bridge: Bridge, recorded: dict[str, str]
) -> None:
    # The fixture's writes queued their three cases and touched no counter.
    async with app.state.database.read_sessions() as session:
        cases = set(await session.scalars(select(Case.id)))
    assert len(cases) == 3
    assert await _pending(app) == cases
    assert await _counts(app, drain=False) == ({}, {})

    # Intake (open_case) in its transaction: one statement on the queue, none on the model.
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = app.state.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        r = Recorder(app, first=3)
        await r.referral("r9", "2025-03-10T09:00:00")
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len([s for s in statements if "report_pending_cases" in s.lower()]) == 1
    assert [s for s in statements if "report_counts" in s.lower()] == []
    assert [s for s in statements if "report_case_facts" in s.lower()] == []
    new_case = r.cases["r9"][0]
    assert await _pending(app) == {*cases, new_case}
    assert await _counts(app, drain=False) == ({}, {})

    # A case written again while queued stays queued once, with its first time.
    async with app.state.database.read_sessions() as session:
        first_noted = await session.scalar(
            select(ReportPendingCase.noted_at).where(ReportPendingCase.case_id == new_case)
        )
    await r.event("r9", "case.accepted", "2025-03-11T09:00:00")
    async with app.state.database.read_sessions() as session:
        noted = list(
            await session.scalars(
                select(ReportPendingCase.noted_at).where(ReportPendingCase.case_id == new_case)
            )
        )
    assert noted == [first_noted]

    # A drain takes what it is asked for, in case id order; a report takes the rest first.
    assert await _drain(app, 2) == 2
    assert await _pending(app) == set(sorted([*cases, new_case])[2:])
    doc = await report(bridge, recorded)
    assert table(doc, "activity") == {
        "referrals": [1, 1, 1, 3],
        "registrations": [2, 0, 2, 4],
        "attended": [0, 1, 0, 1],
        "prescriptions": [0, 1, 0, 1],
    }
    assert await _pending(app) == set()
    kept = await _counts(app, drain=False)
    assert len(kept[1]) == 4
    assert await _rebuilt(app) == kept
    assert await _drain(app) == 0


async def test_a_write_while_its_case_is_drained_stays_queued(
    app: Any, recorded: dict[str, str]
) -> None:
    """PostgreSQL: a drain locks the queued rows, reads the cases, then deletes the rows. A write
    to one of those cases in between must not be lost with the row: its queue insert waits for
    the drain, then queues the case again."""
    if app.state.database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one write transaction at a time")
    r = Recorder(app, first=3)
    await r.referral("r9", "2025-03-10T09:00:00")
    await _drain(app)
    await r.event("r9", "case.accepted", "2025-03-11T09:00:00")
    case_id = r.cases["r9"][0]
    assert await _pending(app) == {case_id}
    async with app.state.database.write_sessions() as drainer:
        # drain's steps, one at a time, so that the write lands after the case was read.
        locked = list(await drainer.scalars(select(ReportPendingCase.case_id).with_for_update()))
        assert locked == [case_id]
        await drainer.run_sync(projection.refresh, locked)
        writer = asyncio.create_task(
            r.event("r9", "case.discharged", "2025-03-12T09:00:00", reason="no-longer-required")
        )
        await asyncio.sleep(0.5)
        assert not writer.done()  # waiting for the drain's row lock
        await drainer.execute(
            delete(ReportPendingCase).where(ReportPendingCase.case_id.in_(locked))
        )
        await drainer.commit()
    await asyncio.wait_for(writer, 10)
    assert await _pending(app) == {case_id}
    kept = await _counts(app)
    assert kept[0][("life-rooms", "", "2025-03", "state", "discharged\x1fno-longer-required")] == 1
    assert await _rebuilt(app) == kept


def test_wait_buckets() -> None:
    assert projection.wait_bucket(at("2025-01-08T10:00:00"), at("2025-01-01T10:00:00")) == 168
    assert projection.wait_bucket(at("2025-01-08T10:00:01"), at("2025-01-01T10:00:00")) == 169
    # Past 60 days, whole days: 61 days and a second is 62 days of 24 buckets.
    assert projection.wait_bucket(at("2025-03-03T10:00:01"), at("2025-01-01T10:00:00")) == 62 * 24


def test_periods_and_their_buckets() -> None:
    whole = Period(dt.date(2025, 1, 1), dt.date(2025, 3, 31))
    assert whole.cut_off() == ()
    cut = Period(dt.date(2025, 1, 15), dt.date(2025, 12, 30))
    assert cut.cut_off() == (
        (at("2025-01-01T00:00:00"), at("2025-01-15T00:00:00")),
        (at("2025-12-31T00:00:00"), at("2026-01-01T00:00:00")),
    )
    bucket = projection.period_bucket(cut)
    assert bucket(at("2025-01-14T23:59:59")) == projection.BEFORE
    assert bucket(at("2025-01-15T00:00:00")) == "2025-01"
    assert bucket(at("2025-12-30T23:59:59")) == "2025-12"
    assert bucket(at("2025-12-31T00:00:00")) == projection.AFTER
    assert projection.BEFORE < "2000-01" < "2999-12" < projection.AFTER


async def test_a_rebuild_while_cases_are_written_stays_exact(
    app: Any, recorded: dict[str, str]
) -> None:
    """The rebuild runs a case at a time while the domain writes to the same cases: once the
    queue is drained, the model equals one made from nothing."""
    r = Recorder(app, first=3)
    names = [f"n{i}" for i in range(6)]
    for i, name in enumerate(names):
        await r.referral(name, f"2025-03-0{i + 1}T09:00:00")
    await _drain(app)

    async def writes() -> None:
        for i, name in enumerate(names):
            await r.event(name, "case.accepted", f"2025-03-0{i + 1}T10:00:00")
            await r.event(name, "contact.attempted", f"2025-03-1{i}T10:00:00", outcome="reached")
            await asyncio.sleep(0)

    rebuilding = asyncio.create_task(rebuild(app.state.database, batch=1))
    await writes()
    assert (await rebuilding).cases == 9
    kept = await _counts(app)
    assert kept[0][("life-rooms", "", "2025-03", "event", "contact.attempted")] == 7
    assert await _rebuilt(app) == kept


async def test_a_write_while_its_case_is_rebuilt_stays_queued(
    app: Any, recorded: dict[str, str]
) -> None:
    """PostgreSQL: a rebuild batch holds its cases' queue rows, as a drain does: a write to one
    of them waits, then queues it again."""
    if app.state.database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one write transaction at a time")
    r = Recorder(app, first=3)
    await r.referral("r9", "2025-03-10T09:00:00")
    await _drain(app)
    case_id = r.cases["r9"][0]
    async with app.state.database.write_sessions() as rebuilder:
        # A rebuild batch's steps, one at a time, so that the write lands after it read the case.
        await queue_for_reports(rebuilder, [case_id], utcnow())
        await rebuilder.run_sync(projection.refresh, [case_id])
        writer = asyncio.create_task(r.event("r9", "case.accepted", "2025-03-11T09:00:00"))
        await asyncio.sleep(0.5)
        assert not writer.done()  # waiting for the batch's row lock
        await rebuilder.execute(
            delete(ReportPendingCase).where(ReportPendingCase.case_id == case_id)
        )
        await rebuilder.commit()
    await asyncio.wait_for(writer, 10)
    assert await _pending(app) == {case_id}
    kept = await _counts(app)
    assert kept[0][("life-rooms", "", "2025-03", "event", "case.accepted")] == 2
    assert await _rebuilt(app) == kept
