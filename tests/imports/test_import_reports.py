"""A small pilot-like history loaded through the import (issue 18 part 2, "done when"): the
activity report for its months reproduces hand-worked figures for every table: activity by
month, teams, reasons, status (both cohorts) and discharge reasons, appointments by the month
they fall in and by outcome, type and length band, prescriptions by category and provider and
per person, SWEMWBS pairs and change, age bands, gender (both cohorts), the EDI items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.imports.service import Options, run_import
from tests.conftest import Bridge
from tests.imports.lines import event_line, referral_line, write

CRISIS = "Halton Crisis Resolution Team"
CMHT = "Halton Community Mental Health Team"
REASONS = "https://fhir.spbridge.org/CodeSystem/reason-for-referral"
# Columns: Sep, Oct, Nov 2022, total.
PERIOD = {"from": "2022-09-01", "to": "2022-11-30"}


def _referral(value: str, received: str, team: str, gender: str, born: str, reason: str) -> Any:
    line = referral_line(value, received)
    resource = line["resource"]
    resource["requester"]["display"] = team
    resource["reasonCode"] = [{"coding": [{"system": REASONS, "code": reason}]}]
    for contained in resource["contained"]:
        if contained["resourceType"] == "Patient":
            contained["gender"] = gender
            contained["birthDate"] = born
    return line


def booked(value: str, at: str, name: str, start: str, kind: str, minutes: int) -> Any:
    return event_line(
        value,
        "appointment.booked",
        at,
        appointment_id=name,
        start=f"{start}+00:00",
        appointment_type=kind,
        duration_minutes=minutes,
    )


def history() -> list[dict[str, Any]]:
    r1, r2, r3, r4 = "P-1", "P-2", "P-3", "P-4"
    return [
        # R1: crisis team, registered, two appointments (one moved), a prescription, a pair of
        # SWEMWBS scores, some EDI items; completed.
        _referral(
            r1, "2022-09-05T10:00:00", CRISIS, "female", "1990-01-01", "finance-benefits-debt"
        ),
        event_line(r1, "case.accepted", "2022-09-06T10:00:00"),
        event_line(r1, "contact.attempted", "2022-09-07T10:00:00", outcome="reached"),
        booked(r1, "2022-09-08T10:00:00", "a1", "2022-09-20T10:00:00", "face-to-face", 60),
        event_line(
            r1,
            "appointment.attended",
            "2022-09-20T11:00:00",
            appointment_id="a1",
            duration_minutes=50,
        ),
        event_line(r1, "outcome.recorded", "2022-09-20T11:05:00", stage="start", items=[3] * 7),
        event_line(
            r1,
            "demographics.recorded",
            "2022-09-20T11:10:00",
            ethnicity="white",
            long_term_condition="yes",
            lives_alone="prefer-not-to-say",
        ),
        booked(r1, "2022-09-21T10:00:00", "a2", "2022-10-04T10:00:00", "telephone", 30),
        event_line(
            r1,
            "appointment.rescheduled",
            "2022-09-30T10:00:00",
            appointment_id="a2",
            start="2022-10-11T10:00:00+00:00",
            appointment_type="telephone",
            duration_minutes=30,
        ),
        event_line(r1, "appointment.attended", "2022-10-11T10:40:00", appointment_id="a2"),
        event_line(
            r1,
            "prescription.created",
            "2022-10-11T11:00:00",
            prescription_id="p1",
            category="benefits-money",
            provider="Citizens Advice Halton",
            activity="Benefits check",
            status="active",
        ),
        event_line(
            r1, "outcome.recorded", "2022-10-25T10:00:00", stage="end", items=[4, 4, 4, 3, 3, 3, 3]
        ),
        event_line(r1, "case.completed", "2022-10-26T10:00:00", reason="needs-met"),
        # R2: crisis team, registered, did not attend, discharged.
        _referral(r2, "2022-09-19T10:00:00", CRISIS, "male", "1960-06-01", "social-isolation"),
        event_line(r2, "case.accepted", "2022-09-20T10:00:00"),
        booked(r2, "2022-09-21T12:00:00", "b1", "2022-10-03T10:00:00", "group", 90),
        event_line(r2, "appointment.did_not_attend", "2022-10-03T11:00:00", appointment_id="b1"),
        event_line(r2, "case.discharged", "2022-10-20T10:00:00", reason="did-not-attend"),
        # R3: never registered.
        _referral(r3, "2022-10-10T10:00:00", CMHT, "female", "2000-03-01", "housing"),
        # R4: registered in November; one appointment cancelled, one booked for December.
        _referral(r4, "2022-11-02T10:00:00", CMHT, "unknown", "1975-05-01", "housing"),
        event_line(r4, "case.accepted", "2022-11-03T10:00:00"),
        booked(r4, "2022-11-03T11:00:00", "c1", "2022-12-01T10:00:00", "telephone", 45),
        booked(r4, "2022-11-04T11:00:00", "c2", "2022-11-10T10:00:00", "face-to-face", 30),
        event_line(
            r4,
            "appointment.cancelled",
            "2022-11-08T10:00:00",
            appointment_id="c2",
            cancelled_by="patient",
        ),
        event_line(
            r4,
            "prescription.created",
            "2022-11-10T10:00:00",
            prescription_id="p1",
            category="social-connection",
            provider="Halton Men's Shed",
            activity="Woodwork group",
        ),
        event_line(
            r4,
            "demographics.recorded",
            "2022-11-03T10:30:00",
            employment_status="retired",
            relationship_status="widowed",
            substance_use="none",
        ),
    ]


def tables(document: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    out: dict[str, dict[str, list[Any]]] = {}
    for section in document["sections"]:
        for found in section["tables"]:
            assert found["columns"] == ["2022-09", "2022-10", "2022-11", "total"], found["id"]
            out[found["id"]] = {row["key"]: row["values"] for row in found["rows"]}
    return out


async def test_an_imported_history_reproduces_the_evaluation_tables(
    app: Any, bridge: Bridge, tmp_path: Path
) -> None:
    await bridge.service()
    path = write(tmp_path / "pilot.ndjson", history())
    summary = await run_import(
        app.state.database, [path], app.state.settings, Options(name=path.name)
    )
    assert (summary.created, summary.refused, summary.events) == (4, 0, 22), summary.refusals
    reporting = await bridge.key("reporting", "LR001")
    response = await bridge.http.get("/api/v1/reports/activity", params=PERIOD, headers=reporting)
    assert response.status_code == 200, response.text
    t = tables(response.json())

    assert t["activity"] == {
        "referrals": [2, 1, 1, 4],
        "registrations": [2, 0, 1, 3],
        "attended": [1, 1, 0, 2],
        "prescriptions": [0, 1, 1, 2],
    }
    assert t["referring-teams-count"] == {
        CMHT: [0, 1, 1, 2],
        CRISIS: [2, 0, 0, 2],
        "not-recorded": [0, 0, 0, 0],
        "total": [2, 1, 1, 4],
    }
    reasons = t["reasons-count"]
    assert reasons["finance-benefits-debt"] == [1, 0, 0, 1]
    assert reasons["social-isolation"] == [1, 0, 0, 1]
    assert reasons["housing"] == [0, 1, 1, 2]

    # Case status, both cohorts; discharge reasons.
    assert t["case-status"] == {
        "active": [0, 1, 1, 2],
        "completed": [1, 0, 0, 1],
        "discharged": [1, 0, 0, 1],
        "rejected": [0, 0, 0, 0],
        "cancelled": [0, 0, 0, 0],
        "total": [2, 1, 1, 4],
    }
    assert t["case-status-registered"] == {
        "active": [0, 0, 1, 1],
        "completed": [1, 0, 0, 1],
        "discharged": [1, 0, 0, 1],
        "rejected": [0, 0, 0, 0],
        "cancelled": [0, 0, 0, 0],
        "total": [2, 0, 1, 3],
    }
    assert t["discharge-reasons"]["did-not-attend"] == [1, 0, 0, 1]
    assert t["discharge-reasons"]["total"] == [1, 0, 0, 1]

    # Appointments by the month they fall in (the evaluation's), and by when booked.
    assert t["appointments-by-month-held"] == {
        "attended": [1, 1, 0, 2],
        "did_not_attend": [0, 1, 0, 1],
        "cancelled": [0, 0, 1, 1],
        "rescheduled": [0, 1, 0, 1],
        "booked": [0, 0, 0, 0],  # c1 falls in December, after the period
        "total": [1, 3, 1, 5],
    }
    assert t["appointments"] == {
        "booked": [3, 0, 2, 5],
        "attended": [1, 1, 0, 2],
        "did_not_attend": [0, 1, 0, 1],
        "cancelled": [0, 0, 1, 1],
        "rescheduled": [1, 0, 0, 1],
    }
    assert t["attended-by-type"] == {
        "face-to-face": [1, 0, 0, 1],
        "telephone": [0, 1, 0, 1],
        "group": [0, 0, 0, 0],
        "total": [1, 1, 0, 2],
    }
    lengths = t["attended-by-duration"]
    assert lengths["46-60 minutes"] == [1, 0, 0, 1]
    assert lengths["length not recorded"] == [0, 1, 0, 1]  # 30 planned is not 30 attended
    assert lengths["16-30 minutes"] == [0, 0, 0, 0]
    assert lengths["total"] == [1, 1, 0, 2]

    # Social prescriptions: by category, provider and per person.
    categories = t["prescriptions-by-category"]
    assert categories["benefits-money"] == [0, 1, 0, 1]
    assert categories["social-connection"] == [0, 0, 1, 1]
    assert categories["total"] == [0, 1, 1, 2]
    assert t["providers"] == {
        "Citizens Advice Halton": [0, 1, 0, 1],
        "Halton Men's Shed": [0, 0, 1, 1],
        "total": [0, 1, 1, 2],
    }
    people = t["people-by-category"]
    assert (people["benefits-money"], people["social-connection"], people["any"]) == (
        [0, 1, 0, 1],
        [0, 0, 1, 1],
        [0, 1, 1, 2],
    )
    assert t["prescriptions-per-person"] == {"mean": [None, 1.0, 1.0, 1.0]}

    # SWEMWBS: one pair, raw 21 (19.25) to raw 24 (21.54): +2.29, by the month of its end.
    assert t["swemwbs-pairs"] == {
        "pairs": [0, 1, 0, 1],
        "increased": [0, 1, 0, 1],
        "decreased": [0, 0, 0, 0],
        "unchanged": [0, 0, 0, 0],
        "improved": [0, 0, 0, 0],  # under 3 points
        "declined": [0, 0, 0, 0],
    }
    assert t["swemwbs-mean-change"] == {"mean-change": [None, 2.29, None, 2.29]}

    # Waits from the historical received times: R1 contacted after 2 days, seen after 15
    # days and an hour; R2 never reached.
    assert t["waiting-days"] == {
        "contact-median": [2.0, None, None, 2.0],
        "contact-p90": [2.0, None, None, 2.0],
        "attended-median": [15.0, None, None, 15.0],
        "attended-p90": [15.0, None, None, 15.0],
    }

    # Age bands and gender, both cohorts.
    ages = t["age-band"]
    assert (ages["25-34"], ages["55-64"], ages["18-24"], ages["45-54"]) == (
        [1, 0, 0, 1],
        [1, 0, 0, 1],
        [0, 1, 0, 1],
        [0, 0, 1, 1],
    )
    ages_registered = t["age-band-registered"]
    assert ages_registered["18-24"] == [0, 0, 0, 0]
    assert ages_registered["total"] == [2, 0, 1, 3]
    assert t["gender"]["female"] == [1, 1, 0, 2]
    assert t["gender-registered"]["female"] == [1, 0, 0, 1]
    assert t["gender-registered"]["unknown"] == [0, 0, 1, 1]

    # The EDI items: every one of the evaluation's twelve has its table.
    for item in (
        "ethnicity",
        "sexual-orientation",
        "disability",
        "long-term-condition",
        "religion",
        "carer",
        "has-carer",
        "armed-forces",
        "lives-alone",
        "employment-status",
        "substance-use",
        "relationship-status",
    ):
        assert f"edi-{item}" in t, item
        assert t[f"edi-{item}"]["total"] == [2, 1, 1, 4]
    assert t["edi-ethnicity"]["white"] == [1, 0, 0, 1]
    assert t["edi-ethnicity"]["not-recorded"] == [1, 1, 1, 3]
    assert t["edi-long-term-condition"]["yes"] == [1, 0, 0, 1]
    assert t["edi-lives-alone"]["prefer-not-to-say"] == [1, 0, 0, 1]
    assert t["edi-employment-status"]["retired"] == [0, 0, 1, 1]
    assert t["edi-relationship-status"]["widowed"] == [0, 0, 1, 1]
    assert t["edi-substance-use"]["none"] == [0, 0, 1, 1]
