"""What the journey link endpoint answers, and the page's view model.

The view model holds only display-ready text: every value is worked out (and every code turned into
words) in ``app.journey.service``, so the template only lays it out, escaping everything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydantic import BaseModel, Field


class JourneyLink(BaseModel):
    """A link a clinician can open for a short while, bound to one referral."""

    url: str = Field(
        description="The patient journey page for this referral, with its signed token",
        examples=["https://bridge.example.nhs.uk/journey/4d1c0e0a-…?token=v1.1796486400.Xk3…"],
    )
    expires_at: dt.datetime = Field(
        description="When the link stops working (UTC); ask for a new one after that",
        examples=["2026-12-01T10:15:00Z"],
    )


@dataclass(frozen=True)
class When:
    """A moment as the page shows it: machine-readable and in words with its time zone."""

    iso: str  # for <time datetime=…>: UTC with a Z
    text: str  # "5 Dec 2026, 10:00 GMT"


@dataclass(frozen=True)
class Fact:
    """One line of the referral's key facts (a <dt>/<dd> pair)."""

    label: str
    text: str
    when: When | None = None


@dataclass(frozen=True)
class TimelineEntry:
    when: When
    text: str
    detail: str | None = None


@dataclass(frozen=True)
class PrescriptionRow:
    activity: str
    provider: str
    category: str
    status: str
    tone: str  # a CSS modifier for the status tag; the status is always in the text too
    since: When


@dataclass(frozen=True)
class AppointmentRow:
    when: When
    kind: str
    minutes: str
    outcome: str
    tone: str


@dataclass(frozen=True)
class ScoreRow:
    when: When
    stage: str
    score: str


@dataclass(frozen=True)
class WellbeingView:
    scores: list[ScoreRow]
    change: str | None  # first → last, when measured at least twice
    meaning: str


@dataclass(frozen=True)
class PatientBanner:
    """Who the page is about, as a clinician checks it (the NHS patient banner's order and
    labels): name, date of birth, NHS number. Each is text ready to show."""

    name: str  # "EXAMPLE, Sam", or what the referral gave, or "Name not known"
    born: str  # "14-Jul-1985 (54y)", or "Not known"
    nhs_number: str  # "999 000 0018"


@dataclass(frozen=True)
class EmptyWords:
    """What an empty section says: "yet" while the case is open, plain past once it closed."""

    prescriptions: str
    appointments: str


@dataclass(frozen=True)
class JourneyPage:
    service_name: str
    patient: PatientBanner
    state: str
    state_tone: str  # open | hold | done | ended
    state_since: When
    facts: list[Fact]
    summary: str | None
    prescriptions: list[PrescriptionRow]
    appointments: list[AppointmentRow]
    wellbeing: WellbeingView
    timeline: list[TimelineEntry]
    empty: EmptyWords
    produced: When
    time_zone_note: str
