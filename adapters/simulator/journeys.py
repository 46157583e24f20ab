"""Planned journeys: what the simulated platform will do with one referral, decided up front.

A journey is a pure function of the seed and the referral id, so the same seed replays the same
journeys (after a restart too) and nothing but the referral id and its arrival time need be kept.
Times are simulated days after the referral arrived; the adapter maps them onto the real clock.

The mix follows the Halton pilot (DESIGN §1): about 60% of cases completed, 30% discharged (did not
attend, unable to contact, no longer required, inappropriate referral) and 10% still active; about
2.3 social prescriptions for each person prescribed (about 1.5 per referral: 230 for 159 people);
about one booked appointment in five not attended and one in six rescheduled before it happens.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COMPLETED = "completed"
DISCHARGED = "discharged"
ACTIVE = "active"

_OUTCOMES = ((COMPLETED, 0.60), (DISCHARGED, 0.30), (ACTIVE, 0.10))
_DISCHARGE_REASONS = (
    ("did-not-attend", 0.30),
    ("unable-to-contact", 0.35),
    ("no-longer-required", 0.20),
    ("inappropriate-referral", 0.15),
)
# Per booked appointment in a journey that goes on (the pilot: 116 attended, 39 did not attend,
# 3 cancelled of 190; 32 rescheduled). Journeys discharged for non-attendance add their own DNAs.
_DID_NOT_ATTEND = 0.08
_CANCELLED = 0.02
_RESCHEDULED = 0.17
# Social prescriptions for a person who gets any (mean 2.3).
_PRESCRIPTIONS = ((1, 0.22), (2, 0.38), (3, 0.25), (4, 0.15))

# A SWEMWBS answer at the start: 1 (none of the time) to 5 (all of the time).
_SWEMWBS_ANSWERS = ((1, 0.1), (2, 0.25), (3, 0.35), (4, 0.22), (5, 0.08))
_MINUTES = {"telephone": (20, 30), "face-to-face": (45, 60), "group": (60, 90)}

ADVISORS = ("Alex Morgan", "Jordan Ellis", "Priya Shah", "Sam Okafor", "Chris Lee")
TEAM = "Sandbox pathway advisors"
# (category, provider organisation, activity): synthetic, but the kinds the pilot prescribed.
CATALOGUE = (
    ("benefits-money", "Citizens Advice (sandbox)", "Benefits check and debt advice"),
    ("benefits-money", "Welfare Rights Service (sandbox)", "Help with a PIP claim"),
    ("housing", "Housing Association (sandbox)", "Tenancy sustainment support"),
    ("learning", "The Life Rooms (sandbox)", "Recovery college course: understanding anxiety"),
    ("learning", "Community College (sandbox)", "Adult learning: digital skills"),
    ("employment-volunteering", "Volunteer Centre (sandbox)", "Volunteering placement"),
    ("employment-volunteering", "Employment Hub (sandbox)", "Work coach sessions"),
    ("mental-wellbeing", "The Life Rooms (sandbox)", "Mindfulness group"),
    ("social-connection", "Befriending Service (sandbox)", "Weekly befriending calls"),
    ("social-connection", "Men's Shed (sandbox)", "Men's shed sessions"),
    ("physical-activity", "Leisure Centre (sandbox)", "Exercise referral scheme"),
    ("physical-activity", "Walking Group (sandbox)", "Weekly health walk"),
    ("food", "Foodbank (sandbox)", "Food parcels and cooking on a budget"),
    ("other", "Carers Centre (sandbox)", "Support for carers"),
)
_DEMOGRAPHICS = {
    "age_band": ("18-24", "25-34", "35-44", "45-54", "55-64", "65+"),
    "sex": ("female", "male"),
    "ethnicity": ("White British", "White Irish", "Mixed", "Asian British", "Black British"),
    "carer": ("yes", "no"),
}


@dataclass(frozen=True)
class PlannedEvent:
    """One canonical case event, ``day`` simulated days after the referral arrived."""

    day: float
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    # An appointment's start, in simulated days (the adapter turns it into an instant).
    start_day: float | None = None


@dataclass(frozen=True)
class Journey:
    outcome: str  # completed | discharged | active
    reason: str | None  # the completion or discharge reason
    events: tuple[PlannedEvent, ...]

    def count(self, event_type: str) -> int:
        return sum(1 for event in self.events if event.type == event_type)


def _pick(rng: random.Random, weighted: tuple[tuple[Any, float], ...]) -> Any:
    values = [value for value, _ in weighted]
    weights = [weight for _, weight in weighted]
    return rng.choices(values, weights)[0]


class _Planner:
    """Writes the journey in order, keeping the simulated clock and the ids it has used."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.day = 0.0
        self.events: list[PlannedEvent] = []
        self.appointments = 0
        self.prescriptions: list[str] = []
        self.swemwbs_start: list[int] | None = None

    def wait(self, low: float, high: float) -> None:
        self.day += self.rng.uniform(low, high)

    def add(self, event_type: str, start_day: float | None = None, **data: Any) -> None:
        self.events.append(PlannedEvent(round(self.day, 4), event_type, data, start_day))

    def contact(self, reached: bool) -> None:
        self.wait(0.5, 3)
        outcome = "reached" if reached else self.rng.choice(("no-answer", "message-left"))
        method = self.rng.choice(("telephone", "telephone", "text"))
        self.add("contact.attempted", outcome=outcome, method=method)

    def demographics(self) -> None:
        if self.rng.random() < 0.6:  # only what the person chose to give
            given = {
                name: self.rng.choice(choices)
                for name, choices in _DEMOGRAPHICS.items()
                if self.rng.random() < 0.8
            }
            if given:
                self.wait(0, 0.2)
                self.events.append(PlannedEvent(round(self.day, 4), "demographics.recorded", given))

    def appointment(self, outcome: str | None = None) -> str:
        """Book one appointment and record what happened: attended, did-not-attend, cancelled."""
        self.appointments += 1
        appointment_id = f"apt-{self.appointments}"
        kind = _pick(self.rng, (("face-to-face", 0.5), ("telephone", 0.4), ("group", 0.1)))
        minutes = self.rng.choice(_MINUTES[kind])
        self.wait(0.5, 2)
        start = self.day + self.rng.uniform(2, 7)
        self.add(
            "appointment.booked",
            start_day=start,
            appointment_id=appointment_id,
            appointment_type=kind,
            duration_minutes=minutes,
        )
        if self.rng.random() < _RESCHEDULED:
            self.wait(0.2, min(1.5, start - self.day))
            start += self.rng.uniform(2, 7)
            self.add(
                "appointment.rescheduled",
                start_day=start,
                appointment_id=appointment_id,
                appointment_type=kind,
                duration_minutes=minutes,
            )
        if outcome is None:
            draw = self.rng.random()
            if draw < _DID_NOT_ATTEND:
                outcome = "did_not_attend"
            elif draw < _DID_NOT_ATTEND + _CANCELLED:
                outcome = "cancelled"
            else:
                outcome = "attended"
        self.day = max(self.day, start + 0.05)
        if outcome == "attended":
            spent = max(5, minutes + self.rng.choice((-15, 0, 0, 0, 15)))
            self.add("appointment.attended", appointment_id=appointment_id, duration_minutes=spent)
        elif outcome == "cancelled":
            by = self.rng.choice(("patient", "service"))
            self.add("appointment.cancelled", appointment_id=appointment_id, cancelled_by=by)
        else:
            self.add("appointment.did_not_attend", appointment_id=appointment_id)
        return outcome

    def attended_appointment(self) -> None:
        """Appointments until one is attended (a missed one is booked again, at most three)."""
        for _ in range(3):
            if self.appointment() == "attended":
                return
        self.appointment("attended")

    def swemwbs(self, stage: str) -> None:
        self.wait(0, 0.1)
        if stage == "start" or self.swemwbs_start is None:
            items = [_pick(self.rng, _SWEMWBS_ANSWERS) for _ in range(7)]
            self.swemwbs_start = items
        else:
            # Most people feel a little better at the end (the pilot's mean change: +1.14).
            items = [
                min(5, max(1, item + _pick(self.rng, ((1, 0.3), (0, 0.6), (-1, 0.1)))))
                for item in self.swemwbs_start
            ]
        self.add("outcome.recorded", instrument="SWEMWBS", stage=stage, items=items)

    def prescribe(self, count: int) -> None:
        for choice in self.rng.sample(range(len(CATALOGUE)), count):
            category, provider, activity = CATALOGUE[choice]
            prescription_id = f"rx-{len(self.prescriptions) + 1}"
            self.prescriptions.append(prescription_id)
            self.wait(0, 0.3)
            self.add(
                "prescription.created",
                prescription_id=prescription_id,
                category=category,
                provider=provider,
                activity=activity,
                status="proposed",
            )

    def update_prescriptions(self, finishing: bool) -> None:
        for prescription_id in self.prescriptions:
            if finishing:
                status = _pick(self.rng, (("completed", 0.7), ("declined", 0.1), ("active", 0.2)))
                if status == "active":
                    continue
            else:
                status = "active"
            self.wait(0, 0.5)
            self.add("prescription.updated", prescription_id=prescription_id, status=status)


def plan(seed: int, referral_id: str) -> Journey:
    """The journey of ``referral_id`` under ``seed``: always the same for the same pair."""
    rng = random.Random(f"spbridge-simulator:{seed}:{referral_id}")  # noqa: S311 (not security)
    outcome = _pick(rng, _OUTCOMES)
    reason = _pick(rng, _DISCHARGE_REASONS) if outcome == DISCHARGED else None
    p = _Planner(rng)
    p.wait(0.1, 1.0)
    p.add("case.accepted", team=TEAM, advisor=rng.choice(ADVISORS))

    if reason == "unable-to-contact":
        for _ in range(rng.randint(2, 4)):
            p.contact(reached=False)
            p.wait(1, 4)
        p.wait(2, 5)
        p.add("case.discharged", reason=reason)
        return Journey(outcome, reason, tuple(p.events))
    if reason == "inappropriate-referral":
        if rng.random() < 0.5:
            p.contact(reached=True)
        p.wait(1, 4)
        p.add("case.discharged", reason=reason)
        return Journey(outcome, reason, tuple(p.events))

    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        p.contact(reached=False)
    p.contact(reached=True)
    p.demographics()

    if reason == "did-not-attend":
        for _ in range(rng.randint(2, 3)):
            p.appointment("did_not_attend")
        p.wait(1, 5)
        p.add("case.discharged", reason=reason)
        return Journey(outcome, reason, tuple(p.events))

    p.attended_appointment()
    p.swemwbs("start")
    if reason == "no-longer-required":
        if rng.random() < 0.4:
            p.prescribe(1)
        p.wait(3, 10)
        p.add("case.discharged", reason=reason)
        return Journey(outcome, reason, tuple(p.events))

    p.prescribe(_pick(rng, _PRESCRIPTIONS))
    if outcome == ACTIVE:
        # Still being worked: the journey stops part-way and the case stays open.
        if rng.random() < 0.5:
            p.wait(3, 10)
            p.update_prescriptions(finishing=False)
            p.appointment()
        return Journey(outcome, None, tuple(p.events))

    p.wait(3, 10)
    p.update_prescriptions(finishing=False)
    if rng.random() < 0.08:
        p.add("case.on_hold", reason=rng.choice(("patient-request", "unwell")))
        p.wait(5, 12)
        p.add("case.resumed")
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        p.wait(3, 10)
        p.appointment()
    p.wait(5, 14)
    p.update_prescriptions(finishing=True)
    p.swemwbs("end")
    completion = _pick(rng, (("needs-met", 0.85), ("referred-on", 0.15)))
    p.wait(0, 1)
    p.add("case.completed", reason=completion)
    return Journey(outcome, completion, tuple(p.events))
