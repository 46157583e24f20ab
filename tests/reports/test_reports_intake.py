"""What intake keeps for the reports: referral source and staff group (mapped through fhir/),
individual or team, and the age band on the day of referral."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.fhir.referral_context import (
    EXTENSION_REFERRAL_SOURCE,
    EXTENSION_REFERRAL_UNIT,
    EXTENSION_STAFF_GROUP,
    REFERRAL_SOURCE_SYSTEM,
    referral_context,
)
from app.referrals.intake import age_band_on
from tests.conftest import Bridge, referral_resource


@pytest.mark.parametrize(
    ("birth", "on", "band"),
    [
        ("1990-01-01", "2026-11-20", "35-44"),
        ("2008-11-21", "2026-11-20", "under-18"),  # 18 tomorrow
        ("2008-11-20", "2026-11-20", "18-24"),  # 18 today
        ("1951", "2026-01-01", "75-plus"),  # partial: from 1 January 1951
        ("1951-06", "2026-05-31", "65-74"),  # partial: from 1 June 1951
        ("2027-01-01", "2026-11-20", None),  # born after the referral
        ("not a date", "2026-11-20", None),
        (None, "2026-11-20", None),
    ],
)
def test_age_band(birth: str | None, on: str, band: str | None) -> None:
    assert age_band_on(birth, dt.date.fromisoformat(on)) == band


def _request(**elements: Any) -> Any:
    return referral_resource(**elements)


def test_context_from_extensions_categories_and_requester() -> None:
    coded = _request(
        extension=[
            {
                "url": EXTENSION_REFERRAL_SOURCE,
                "valueCodeableConcept": {
                    "coding": [{"system": REFERRAL_SOURCE_SYSTEM, "code": "wellbeing-team"}]
                },
            },
            {"url": EXTENSION_STAFF_GROUP, "valueCodeableConcept": {"text": "Adult social care"}},
            {"url": EXTENSION_REFERRAL_UNIT, "valueCode": "team"},
        ]
    )
    context = referral_context(coded)
    assert (context.source, context.staff_group, context.unit) == (
        "wellbeing-team",
        "social-care",
        "team",
    )
    # Free text in category, through the ConceptMaps' text groups; unmapped text is no code.
    by_category = _request(
        category=[{"text": "Occupational Health"}, {"text": "NHS staff"}, {"text": "Patient"}]
    )
    context = referral_context(by_category)
    assert (context.source, context.staff_group, context.unit) == (
        "occupational-health",
        "nhs",
        "individual",
    )
    # The example's category (SNOMED 'Patient referral') maps to neither; the requester is a
    # team, so the source is not known.
    assert referral_context(_request()).source is None
    own = _request(requester={"reference": "Patient/abc", "type": "Patient"})
    assert referral_context(own).source == "self-referral"


async def test_intake_keeps_them_and_the_staff_hub_report_counts_them(
    bridge: Bridge, app: Any
) -> None:
    await bridge.service("life-rooms", "LR001")
    referrer = await bridge.key("clinical-system", "RW4")
    resource = referral_resource(
        extension=[
            {
                "url": EXTENSION_REFERRAL_SOURCE,
                "valueCodeableConcept": {
                    "coding": [{"system": REFERRAL_SOURCE_SYSTEM, "code": "gp"}]
                },
            },
            {"url": EXTENSION_REFERRAL_UNIT, "valueCode": "team"},
        ],
        category=[{"text": "Social care staff"}],
    )
    response = await bridge.refer(referrer, resource)
    assert response.status_code == 201, response.text
    reporting = await bridge.key("reporting", "LR001")
    today = dt.datetime.now(dt.UTC).date()
    month = f"{today.year:04d}-{today.month:02d}"
    report = await bridge.http.get(
        "/api/v1/reports/staff-hub",
        params={"from": today.replace(day=1).isoformat(), "to": today.isoformat()},
        headers=reporting,
    )
    assert report.status_code == 200, report.text
    tables = {t["id"]: t for s in report.json()["sections"] for t in s["tables"]}
    assert tables["staff-referrals"]["columns"] == [month, "total"]

    def row(table_id: str, key: str) -> list[Any]:
        return next(r["values"] for r in tables[table_id]["rows"] if r["key"] == key)

    assert row("referral-sources-count", "gp") == [1, 1]
    assert row("staff-groups-count", "social-care") == [1, 1]
    assert row("staff-referrals", "team") == [1, 1]
    # The example patient was born on 1 January 1990 and referred on 20 November 2026.
    assert row("age-band", "35-44") == [1, 1]
    assert row("gender", "unknown") == [1, 1]
