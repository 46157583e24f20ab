"""Reports (issue 7): a hand-built dataset whose tables are written out by hand below.

The dataset is written straight into the tables (as the domain would have recorded it), so that
referrals can be received on chosen days and events can be backdated; what each figure must be
was worked out by hand from the list of records, never by the code under test.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import uuid
from typing import Any

import pytest

from app.cases.after_write import queue_for_reports
from app.cases.models import Appointment, Case, CaseEvent, Prescription, Referral, WellbeingScore
from app.cases.wellbeing import METRIC_SCORES
from app.db import utcnow
from app.reports import readmodel
from app.retention.service import purge
from tests.conftest import Bridge
from tests.reports import oracle

PERIOD = {"from": "2025-01-01", "to": "2025-03-31"}
COLUMNS = ["2025-01", "2025-02", "2025-03", "total"]


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


class Dataset:
    """Rows for one service, made as the domain makes them."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.rows: list[Any] = []
        self.seq: dict[str, int] = {}

    def referral(
        self,
        received: str,
        *,
        team: str | None = None,
        reasons: tuple[str | None, ...] = (),
        gender: str | None = None,
        age_band: str | None = None,
        state: str = "received",
        status_reason: str | None = None,
        first_contact: str | None = None,
        source: str | None = None,
        staff_group: str | None = None,
        unit: str = "individual",
    ) -> str:
        referral_id, case_id = str(uuid.uuid4()), str(uuid.uuid4())
        when = at(received)
        self.rows.append(
            Referral(
                id=referral_id,
                organisation="RW4",
                identifier_system="https://rio.example.nhs.uk/Id/referral",
                identifier_value=referral_id,
                service_id=self.service,
                status="active",
                intent="order",
                authored_on=when.isoformat(),
                nhs_number="9000000009",
                birth_date="1990-01-01",
                gender=gender,
                referring_team=team,
                reasons=[
                    {"domain": d, "mapped": d is not None, "text": "free text"} for d in reasons
                ],
                resource={"intent": "order"},
                created_at=when,
                last_updated=when,
                age_band=age_band,
                referral_source=source,
                staff_group=staff_group,
                referral_unit=unit,
            )
        )
        closed = state in ("completed", "discharged", "rejected", "cancelled")
        self.rows.append(
            Case(
                id=case_id,
                referral_id=referral_id,
                service_id=self.service,
                state=state,
                business_status=status_reason or state,
                task_status="requested",
                status_reason=status_reason,
                first_contact_at=at(first_contact) if first_contact else None,
                created_at=when,
                updated_at=when,
                closed_at=when + dt.timedelta(days=30) if closed else None,
            )
        )
        self.event(case_id, "referral.received", received)
        return case_id

    def event(
        self, case_id: str, kind: str, occurred: str, recorded: str | None = None, **data: Any
    ) -> None:
        self.seq[case_id] = self.seq.get(case_id, 0) + 1
        self.rows.append(
            CaseEvent(
                id=str(uuid.uuid4()),
                case_id=case_id,
                seq=self.seq[case_id],
                type=kind,
                occurred_at=at(occurred),
                recorded_at=at(recorded or occurred),
                source="advisor",
                data=data,
            )
        )

    def _referral_of(self, case_id: str) -> str:
        return next(r.referral_id for r in self.rows if isinstance(r, Case) and r.id == case_id)

    def appointment(
        self,
        case_id: str,
        name: str,
        kind: str,
        minutes: int,
        booked: str,
        outcome: str | None = None,
        outcome_at: str | None = None,
        attended_minutes: int | None = None,
        recorded: str | None = None,
    ) -> None:
        self.event(
            case_id,
            "appointment.booked",
            booked,
            appointment_id=name,
            appointment_type=kind,
            duration_minutes=minutes,
            start=booked,
        )
        status = {"attended": "fulfilled", "did_not_attend": "noshow"}.get(outcome or "", "booked")
        if outcome is not None and outcome_at is not None:
            data: dict[str, Any] = {"appointment_id": name}
            if attended_minutes is not None:
                data["duration_minutes"] = attended_minutes
            self.event(case_id, f"appointment.{outcome}", outcome_at, recorded, **data)
        self.rows.append(
            Appointment(
                id=str(uuid.uuid4()),
                case_id=case_id,
                referral_id=self._referral_of(case_id),
                external_id=name,
                status=status,
                appointment_type=kind,
                start=at(outcome_at or booked),
                minutes=minutes,
                attended_minutes=attended_minutes,
                booked_at=at(booked),
            )
        )

    def prescription(
        self, case_id: str, name: str, category: str, provider: str, when: str, recorded: str
    ) -> None:
        self.event(
            case_id,
            "prescription.created",
            when,
            recorded,
            prescription_id=name,
            category=category,
            provider=provider,
            activity="something",
            status="proposed",
        )
        self.rows.append(
            Prescription(
                id=str(uuid.uuid4()),
                case_id=case_id,
                referral_id=self._referral_of(case_id),
                external_id=name,
                category=category,
                provider=provider,
                activity="something",
                status="proposed",
                prescribed_at=at(when),
            )
        )

    def score(self, case_id: str, stage: str, raw: int, when: str) -> None:
        items = [raw // 7 + (1 if i < raw % 7 else 0) for i in range(7)]
        assert sum(items) == raw
        self.event(
            case_id, "outcome.recorded", when, instrument="SWEMWBS", stage=stage, items=items
        )
        self.rows.append(
            WellbeingScore(
                id=str(uuid.uuid4()),
                questionnaire_response_id=str(uuid.uuid4()),
                case_id=case_id,
                referral_id=self._referral_of(case_id),
                instrument="SWEMWBS",
                stage=stage,
                items=items,
                raw_score=raw,
                metric_score=METRIC_SCORES[raw],
                measured_at=at(when),
                created_at=at(when),
            )
        )


def halton_like(service: str = "life-rooms") -> Dataset:
    """Five referrals received January to March 2025, one in December 2024 with events in
    January, and events on the month boundaries and recorded long after they happened."""
    d = Dataset(service)
    # Received in December: not a referral of the period, but its January events count.
    c0 = d.referral(
        "2024-12-31T23:59:00", team="Crisis Team", reasons=("housing",), state="completed",
        status_reason="referred-on", first_contact="2025-01-02T09:00:00",
    )  # fmt: skip
    d.event(c0, "case.accepted", "2024-12-31T23:59:30")
    d.appointment(c0, "a0", "group", 60, "2024-12-20T10:00:00", "attended",
                  "2025-01-05T10:00:00", attended_minutes=20)  # fmt: skip
    # Made on 5 January, recorded in March: counts in January.
    d.prescription(c0, "p0", "social-connection", "Men's Shed", "2025-01-05T11:00:00",
                   "2025-03-20T09:00:00")  # fmt: skip
    d.score(c0, "start", 20, "2024-12-31T12:00:00")
    d.score(c0, "end", 17, "2025-01-06T12:00:00")  # its only score in the period: no pair

    c1 = d.referral(
        "2025-01-10T10:00:00", team="Crisis Team", reasons=("mental-health-wellbeing", "housing"),
        gender="female", age_band="25-34", state="completed", status_reason="needs-met",
        first_contact="2025-01-12T10:00:00", source="occupational-health", staff_group="nhs",
    )  # fmt: skip
    d.event(c1, "case.accepted", "2025-01-11T09:00:00")
    d.event(c1, "contact.attempted", "2025-01-12T10:00:00", outcome="reached")
    # Attended on 2 February, recorded on 10 March (backdated): counts in February.
    d.appointment(c1, "a1", "face-to-face", 60, "2025-01-12T10:30:00", "attended",
                  "2025-02-02T10:00:00", attended_minutes=50,
                  recorded="2025-03-10T16:00:00")  # fmt: skip
    d.prescription(c1, "p1", "housing", "Citizens Advice", "2025-02-02T11:00:00",
                   "2025-02-02T11:00:00")  # fmt: skip
    d.prescription(c1, "p2", "benefits-money", "Citizens Advice", "2025-02-03T11:00:00",
                   "2025-02-03T11:00:00")  # fmt: skip
    # After the period (the first instant of April): not counted.
    d.prescription(c1, "p3", "learning", "Adult Learning", "2025-04-01T00:00:00",
                   "2025-04-01T00:00:00")  # fmt: skip
    d.score(c1, "start", 12, "2025-01-12T11:00:00")
    d.score(c1, "end", 16, "2025-03-01T11:00:00")
    d.event(c1, "demographics.recorded", "2025-01-12T11:00:00", ethnicity="White British")
    d.event(c1, "demographics.recorded", "2025-02-01T11:00:00", ethnicity="Mixed", disability="No")
    d.event(c1, "case.completed", "2025-03-05T11:00:00", reason="needs-met")

    # Received in the last second of January.
    c2 = d.referral(
        "2025-01-31T23:59:59", team="Crisis Team", reasons=("housing",), gender="male",
        age_band="35-44", state="in_progress", first_contact="2025-02-01T23:59:59",
        source="hr", staff_group="social-care",
    )  # fmt: skip
    d.event(c2, "case.accepted", "2025-02-01T00:30:00")
    d.appointment(c2, "a2", "telephone", 30, "2025-02-01T01:00:00", "did_not_attend",
                  "2025-02-10T10:00:00")  # fmt: skip
    d.appointment(c2, "a3", "telephone", 30, "2025-02-11T10:00:00", "attended",
                  "2025-03-01T23:59:59")  # fmt: skip
    d.event(c2, "appointment.rescheduled", "2025-02-12T10:00:00", appointment_id="a3")
    d.score(c2, "start", 10, "2025-02-01T12:00:00")
    d.score(c2, "review", 19, "2025-03-01T12:00:00")
    d.event(c2, "demographics.recorded", "2025-02-01T12:00:00", ethnicity="Asian", carer="Yes")

    # Received in the first second of February.
    c3 = d.referral(
        "2025-02-01T00:00:00", team="Community Team",
        reasons=("finance-benefits-debt", "housing", "finance-benefits-debt"), gender="female",
        state="discharged", status_reason="unable-to-contact", source="self-referral",
    )  # fmt: skip
    d.event(c3, "case.accepted", "2025-02-02T09:00:00")
    d.score(c3, "start", 14, "2025-02-20T09:00:00")
    d.event(c3, "case.discharged", "2025-03-10T09:00:00", reason="unable-to-contact")

    c4 = d.referral("2025-02-15T09:00:00", reasons=(None,), state="rejected",
                    status_reason="out-of-area")  # fmt: skip
    d.event(c4, "case.rejected", "2025-02-16T09:00:00", reason="out-of-area")

    c5 = d.referral("2025-03-03T09:00:00", team="Crisis Team", reasons=("social-isolation",),
                    gender="other", age_band="18-24", unit="team")  # fmt: skip
    d.event(c5, "contact.attempted", "2025-04-01T00:00:00", outcome="no-answer")
    return d


async def store(app: Any, dataset: Dataset) -> None:
    async with app.state.database.write_sessions() as session:
        # Referrals and cases first (the records point at them).
        for kind in (Referral, Case):
            session.add_all([r for r in dataset.rows if isinstance(r, kind)])
            await session.flush()
        session.add_all([r for r in dataset.rows if not isinstance(r, Referral | Case)])
        # Written straight into the tables, so the writer's after-write step is ours to call.
        cases = [r.id for r in dataset.rows if isinstance(r, Case)]
        await queue_for_reports(session, cases, utcnow())
        await session.commit()


async def report(
    bridge: Bridge, headers: dict[str, str], name: str = "activity", **params: Any
) -> dict[str, Any]:
    response = await bridge.http.get(
        f"/api/v1/reports/{name}", params={**PERIOD, **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def table(document: dict[str, Any], table_id: str) -> dict[str, list[Any]]:
    """{row key: values} of one table (and its columns checked)."""
    for section in document["sections"]:
        for found in section["tables"]:
            if found["id"] == table_id:
                assert found["columns"] == COLUMNS
                return {row["key"]: row["values"] for row in found["rows"]}
    raise AssertionError(f"no table {table_id}")


@pytest.fixture
async def reporting(app: Any, bridge: Bridge) -> dict[str, str]:
    await bridge.service("life-rooms", "LR001")
    await bridge.service("zz-service", "ZZ001")
    await store(app, halton_like("life-rooms"))
    # Another organisation's service, busy in the same months: never in LR001's reports.
    other = Dataset("zz-service")
    for day in ("2025-01-05", "2025-02-05", "2025-03-05"):
        case_id = other.referral(f"{day}T10:00:00", team="Crisis Team", reasons=("housing",))
        other.event(case_id, "case.accepted", f"{day}T11:00:00")
    await store(app, other)
    return await bridge.key("reporting", "LR001")


EXPECTED_ACTIVITY = {
    "referrals": [2, 2, 1, 5],
    "registrations": [1, 2, 0, 3],
    "attended": [1, 1, 1, 3],
    "prescriptions": [1, 2, 0, 3],
}


async def test_activity_tables_by_hand(bridge: Bridge, reporting: dict[str, str]) -> None:
    doc = await report(bridge, reporting)
    assert doc["report"] == "activity"
    assert doc["services"] == [{"id": "life-rooms", "name": "Service life-rooms"}]
    assert doc["months"] == COLUMNS[:3]
    assert doc["suppressed"] is False
    assert table(doc, "activity") == EXPECTED_ACTIVITY

    assert table(doc, "referring-teams-count") == {
        "Crisis Team": [2, 0, 1, 3],
        "Community Team": [0, 1, 0, 1],
        "not-recorded": [0, 1, 0, 1],
        "total": [2, 2, 1, 5],
    }
    assert table(doc, "referring-teams-percent") == {
        "Crisis Team": [100.0, 0.0, 100.0, 60.0],
        "Community Team": [0.0, 50.0, 0.0, 20.0],
        "not-recorded": [0.0, 50.0, 0.0, 20.0],
    }

    reasons = table(doc, "reasons-percent")
    assert len(reasons) == 23  # the 22 domains, then referrals with none of them
    assert reasons["no-mapped-reason"] == [0.0, 50.0, 0.0, 20.0]
    assert reasons["housing"] == [100.0, 50.0, 0.0, 60.0]
    assert reasons["mental-health-wellbeing"] == [50.0, 0.0, 0.0, 20.0]
    assert reasons["finance-benefits-debt"] == [0.0, 50.0, 0.0, 20.0]  # named twice, counted once
    assert reasons["social-isolation"] == [0.0, 0.0, 100.0, 20.0]
    assert reasons["food-bank"] == [0.0, 0.0, 0.0, 0.0]
    assert table(doc, "reasons-count")["no-mapped-reason"] == [0, 1, 0, 1]

    assert table(doc, "case-status") == {
        "active": [1, 0, 1, 2],
        "completed": [1, 0, 0, 1],
        "discharged": [0, 1, 0, 1],
        "rejected": [0, 1, 0, 1],
        "cancelled": [0, 0, 0, 0],
        "total": [2, 2, 1, 5],
    }
    discharge = table(doc, "discharge-reasons")
    assert discharge["unable-to-contact"] == [0, 1, 0, 1]
    assert discharge["did-not-attend"] == [0, 0, 0, 0]
    assert discharge["total"] == [0, 1, 0, 1]

    assert table(doc, "appointments") == {
        "booked": [1, 2, 0, 3],
        "attended": [1, 1, 1, 3],
        "did_not_attend": [0, 1, 0, 1],
        "cancelled": [0, 0, 0, 0],
        "rescheduled": [0, 1, 0, 1],
    }
    assert table(doc, "attended-by-type") == {
        "face-to-face": [0, 1, 0, 1],
        "telephone": [0, 0, 1, 1],
        "group": [1, 0, 0, 1],
        "total": [1, 1, 1, 3],
    }
    durations = table(doc, "attended-by-duration")
    assert durations["16-30 minutes"] == [1, 0, 0, 1]  # 20 spent
    # 30 booked, no length given: a planned length is not an attended length.
    assert durations["length not recorded"] == [0, 0, 1, 1]
    assert durations["46-60 minutes"] == [0, 1, 0, 1]  # 50 spent of 60 booked
    assert durations["1-15 minutes"] == [0, 0, 0, 0]

    categories = table(doc, "prescriptions-by-category")
    assert categories["social-connection"] == [1, 0, 0, 1]
    assert categories["housing"] == [0, 1, 0, 1]
    assert categories["benefits-money"] == [0, 1, 0, 1]
    assert categories["learning"] == [0, 0, 0, 0]  # made on 1 April
    assert categories["total"] == [1, 2, 0, 3]
    assert table(doc, "people-by-category")["any"] == [1, 1, 0, 2]
    people = table(doc, "people-by-category-percent")
    assert people["housing"] == [0.0, 100.0, None, 50.0]
    assert people["social-connection"] == [100.0, 0.0, None, 50.0]
    assert table(doc, "prescriptions-per-person") == {"mean": [1.0, 2.0, None, 1.5]}
    assert table(doc, "providers-percent") == {
        "Citizens Advice": [0.0, 100.0, None, 66.7],
        "Men's Shed": [100.0, 0.0, None, 33.3],
    }

    # Pairs: c1 14.08 -> 16.36 (+2.28), c2 12.40 -> 17.98 (+5.58); both last scored in March.
    # c0's December score is outside the period and c3 has one score: no pairs.
    assert table(doc, "swemwbs-pairs") == {
        "pairs": [0, 0, 2, 2],
        "increased": [0, 0, 2, 2],
        "decreased": [0, 0, 0, 0],
        "unchanged": [0, 0, 0, 0],
        "improved": [0, 0, 1, 1],
        "declined": [0, 0, 0, 0],
    }
    assert table(doc, "swemwbs-mean-change") == {"mean-change": [None, None, 3.93, 3.93]}
    assert table(doc, "swemwbs-pairs-percent")["improved"] == [None, None, 50.0, 50.0]

    assert table(doc, "gender") == {
        "female": [1, 1, 0, 2],
        "male": [1, 0, 0, 1],
        "other": [0, 0, 1, 1],
        "unknown": [0, 0, 0, 0],
        "not-recorded": [0, 1, 0, 1],
        "total": [2, 2, 1, 5],
    }
    ages = table(doc, "age-band")
    assert ages["25-34"] == [1, 0, 0, 1]
    assert ages["18-24"] == [0, 0, 1, 1]
    assert ages["not-recorded"] == [0, 2, 0, 2]
    # The latest answer counts: c1 said White British, then Mixed.
    assert table(doc, "edi-ethnicity") == {
        "Asian": [1, 0, 0, 1],
        "Mixed": [1, 0, 0, 1],
        "not-recorded": [0, 2, 1, 3],
        "total": [2, 2, 1, 5],
    }
    recorded = table(doc, "edi-recorded")
    assert recorded["ethnicity"] == [100.0, 0.0, 0.0, 40.0]
    assert recorded["disability"] == [50.0, 0.0, 0.0, 20.0]
    assert recorded["religion"] == [0.0, 0.0, 0.0, 0.0]

    # First contact: c1 after 2 days, c2 after 1 (both January referrals).
    # First attended: c1 after 23 days, c2 after 29.
    assert table(doc, "waiting-days") == {
        "contact-median": [1.5, None, None, 1.5],
        "contact-p90": [1.9, None, None, 1.9],
        "attended-median": [26.0, None, None, 26.0],
        "attended-p90": [28.4, None, None, 28.4],
    }
    assert table(doc, "first-contact-target") == {"within-target": [100.0, 0.0, 0.0, 50.0]}


async def test_staff_hub_tables_by_hand(bridge: Bridge, reporting: dict[str, str]) -> None:
    doc = await report(bridge, reporting, "staff-hub")
    assert doc["report"] == "staff-hub"
    assert table(doc, "staff-referrals") == {
        "individual": [2, 2, 0, 4],
        "team": [0, 0, 1, 1],
        "total": [2, 2, 1, 5],
    }
    sources = table(doc, "referral-sources-count")
    assert sources["occupational-health"] == [1, 0, 0, 1]
    assert sources["hr"] == [1, 0, 0, 1]
    assert sources["self-referral"] == [0, 1, 0, 1]
    assert sources["gp"] == [0, 0, 0, 0]
    assert sources["not-recorded"] == [0, 1, 1, 2]
    assert table(doc, "staff-groups-count") == {
        "nhs": [1, 0, 0, 1],
        "social-care": [1, 0, 0, 1],
        "not-recorded": [0, 2, 1, 3],
        "total": [2, 2, 1, 5],
    }
    # c1: seen, prescribed, end score; c2: seen, review score; nobody else seen.
    assert table(doc, "assessment") == {
        "assessed": [2, 0, 0, 2],
        "signposted": [1, 0, 0, 1],
        "referred-onward": [0, 0, 0, 0],
        "monitored": [2, 0, 0, 2],
        "treatment-elsewhere": [0, 0, 0, 0],
    }
    assert table(doc, "waiting-days")["contact-median"] == [1.5, None, None, 1.5]
    assert table(doc, "gender")["total"] == [2, 2, 1, 5]


async def test_a_shorter_period_moves_nothing_across_months(
    bridge: Bridge, reporting: dict[str, str]
) -> None:
    # February alone: the referral received at 00:00:00 on 1 February is in; the one received
    # at 23:59:59 on 31 January is out, though its case was accepted in February.
    response = await bridge.http.get(
        "/api/v1/reports/activity",
        params={"from": "2025-02-01", "to": "2025-02-28"},
        headers=reporting,
    )
    doc = response.json()
    activity = {row["key"]: row["values"] for row in doc["sections"][0]["tables"][0]["rows"]}
    assert activity == {
        "referrals": [2, 2],
        "registrations": [2, 2],
        "attended": [1, 1],
        "prescriptions": [2, 2],
    }


async def test_suppressed_report(bridge: Bridge, reporting: dict[str, str]) -> None:
    doc = await report(bridge, reporting, suppress="true")
    assert doc["suppressed"] is True
    # Every count here is 0 or 1-7: shown as 0 or *; their percentages and means hidden.
    assert table(doc, "activity")["referrals"] == ["*", "*", "*", "*"]
    assert table(doc, "case-status")["cancelled"] == [0, 0, 0, 0]
    # 0 of 2 in February: the base is small, so the percentage is hidden too.
    assert table(doc, "referring-teams-percent")["Crisis Team"] == ["*", "*", "*", "*"]
    assert table(doc, "swemwbs-mean-change") == {"mean-change": [None, None, "*", "*"]}
    assert table(doc, "waiting-days")["contact-median"] == ["*", None, None, "*"]


async def test_isolation(app: Any, bridge: Bridge, reporting: dict[str, str]) -> None:
    # LR001's reporting client: its own service only; another's is unknown (404).
    response = await bridge.http.get(
        "/api/v1/reports/activity", params={**PERIOD, "service": "zz-service"}, headers=reporting
    )
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    own = await report(bridge, reporting, service="life-rooms")
    assert table(own, "activity") == EXPECTED_ACTIVITY
    # An admin client of ZZ001 sees ZZ001's service and nothing of LR001's.
    zz_admin = await bridge.key("admin", "ZZ001")
    theirs = await report(bridge, zz_admin)
    assert [s["id"] for s in theirs["services"]] == ["zz-service"]
    assert table(theirs, "activity")["referrals"] == [1, 1, 1, 3]
    response = await bridge.http.get(
        "/api/v1/reports/staff-hub", params={**PERIOD, "service": "life-rooms"}, headers=zz_admin
    )
    assert response.status_code == 404
    # The bootstrap admin (no organisation) sees both services.
    everything = await report(bridge, bridge.admin)
    assert table(everything, "activity")["referrals"] == [3, 3, 2, 8]
    # Other roles may not read reports at all.
    advisor = await bridge.key("advisor", "LR001")
    response = await bridge.http.get("/api/v1/reports/activity", headers=advisor)
    assert response.status_code == 403


async def test_team_filter(bridge: Bridge, reporting: dict[str, str]) -> None:
    doc = await report(bridge, reporting, team="Crisis Team")
    assert table(doc, "activity") == {
        "referrals": [2, 0, 1, 3],
        # Events of Crisis Team referrals, whenever received (c0 in December included).
        "registrations": [1, 1, 0, 2],
        "attended": [1, 1, 1, 3],
        "prescriptions": [1, 2, 0, 3],
    }
    assert table(doc, "case-status")["total"] == [2, 0, 1, 3]


@pytest.mark.parametrize(
    ("params", "status", "pointer"),
    [
        ({"from": "2025-13-01", "to": "2025-03-31"}, 422, "from"),
        ({"from": "2025-03-01", "to": "2025-01-31"}, 422, "from"),
        ({"from": "2020-01-01", "to": "2025-01-31"}, 422, "to"),
        ({**PERIOD, "format": "xml"}, 422, "format"),
        ({**PERIOD, "service": "nowhere"}, 404, "service"),
        ({**PERIOD, "suppress": "perhaps"}, 422, "suppress"),
    ],
)
async def test_bad_requests_are_clear_4xx(
    bridge: Bridge,
    reporting: dict[str, str],
    params: dict[str, str],
    status: int,
    pointer: str,
) -> None:
    response = await bridge.http.get("/api/v1/reports/activity", params=params, headers=reporting)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert pointer in {e["pointer"] for e in body.get("errors", [])}


async def test_csv_shape(bridge: Bridge, reporting: dict[str, str]) -> None:
    for kwargs in ({"params": {**PERIOD, "format": "csv"}}, {"params": PERIOD}):
        response = await bridge.http.get(
            "/api/v1/reports/activity",
            headers={**reporting, "Accept": "text/csv"},
            **kwargs,  # type: ignore[arg-type]
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        lines = list(csv.reader(io.StringIO(response.text)))
        assert lines[0] == [
            "report", "section", "table", "unit", "row_key", "row", "column", "value"
        ]  # fmt: skip
        rows = {(r[2], r[4], r[6]): r for r in lines[1:]}
        assert rows[("activity", "referrals", "2025-01")] == [
            "activity", "activity", "activity", "count", "referrals", "Referrals", "2025-01", "2"
        ]  # fmt: skip
        assert rows[("activity", "attended", "total")][7] == "3"
        assert rows[("swemwbs-mean-change", "mean-change", "2025-01")][7] == ""
        assert rows[("referring-teams-percent", "Crisis Team", "total")][7] == "60.0"
        assert len({len(r) for r in lines}) == 1
    suppressed = await bridge.http.get(
        "/api/v1/reports/activity",
        params={**PERIOD, "format": "csv", "suppress": "true"},
        headers=reporting,
    )
    cells = {(r[2], r[4], r[6]): r[7] for r in csv.reader(io.StringIO(suppressed.text))}
    assert cells[("activity", "referrals", "total")] == "*"


async def test_html_page(bridge: Bridge, reporting: dict[str, str]) -> None:
    response = await bridge.http.get(
        "/api/v1/reports/activity", params=PERIOD, headers={**reporting, "Accept": "text/html"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    page = response.text
    assert page.startswith("<!doctype html>")
    assert "@media print" in page
    assert "<svg" in page and 'class="bar"' in page
    # Nothing is fetched from anywhere: no scripts, links, images or remote URLs.
    for forbidden in ("<script", "<link", "<img", "src=", "https://", "http://cdn"):
        assert forbidden not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "Referrals by referring team" in page
    assert "Crisis Team" in page
    assert page.count("<table>") == sum(
        len(s["tables"]) for s in (await report(bridge, reporting))["sections"]
    )
    # Every element id once: a section and its first table share a name in the JSON.
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), sorted(i for i in set(ids) if ids.count(i) > 1)


async def test_figures_survive_the_retention_purge(
    app: Any, bridge: Bridge, reporting: dict[str, str]
) -> None:
    before = await report(bridge, reporting)
    staff_before = await report(bridge, reporting, "staff-hub")
    async with app.state.database.write_sessions() as session:
        result = await purge(
            session, now=at("2027-01-01T00:00:00"), retention_days=30, run_by="test"
        )
        await session.commit()
    assert result.referrals == 4  # c0, c1, c3, c4 closed; c2 and c5 open
    after = await report(bridge, reporting)
    staff_after = await report(bridge, reporting, "staff-hub")
    for old, new in ((before, after), (staff_before, staff_after)):
        assert old["sections"] == new["sections"]
    assert table(after, "age-band")["25-34"] == [1, 0, 0, 1]  # c1's birth date is gone


async def test_every_report_equals_the_live_queries(
    bridge: Bridge, reporting: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read model's figures and the live SQL's (tests/reports/oracle.py), section by
    section, for whole months and for periods cut inside a month: at the last second of
    January, at c2's first contact, between c1's prescriptions, on the first of April."""
    periods = [
        PERIOD,
        {"from": "2024-12-01", "to": "2025-04-30"},
        {"from": "2025-02-01", "to": "2025-02-28"},
        {"from": "2025-01-31", "to": "2025-03-31"},
        {"from": "2025-01-06", "to": "2025-03-01"},
        {"from": "2025-02-03", "to": "2025-04-01"},
        {"from": "2025-01-11", "to": "2025-02-02"},
        {"from": "2025-02-10", "to": "2025-02-10"},
    ]
    asked = [
        (name, period, team)
        for name in ("activity", "staff-hub")
        for period in periods
        for team in (None, "Crisis Team")
    ]

    async def documents() -> list[Any]:
        found = []
        for name, period, team in asked:
            params = {**period, **({"team": team} if team else {})}
            found.append((await report(bridge, reporting, name, **params))["sections"])
        return found

    from_model = await documents()
    monkeypatch.setattr(readmodel, "load", oracle.load)
    live = await documents()
    for question, model_sections, live_sections in zip(asked, from_model, live, strict=True):
        assert model_sections == live_sections, question
