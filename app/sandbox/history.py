"""What the sandbox holds when it starts: a second service whose cases advisors work through the
API, and a few of its cases already under way, with weeks of history.

A referral sent to the sandbox now lives its simulated journey in seconds (the simulated platform,
``adapters/simulator``), so its times are seconds apart. These cases show what a live service looks
like instead: each was received some days or weeks ago and its events happened along its journey
on the simulator's clock at the speed of the real one (``simulator.REAL_TIME``), so waiting times,
flags, appointments next week and a six-week timeline are there from the first minute. They are
written through the same domain path as any referral and event (the referral's intake, then
``apply_event`` for each event), by the sandbox's clinical system and advisor.

Each case has a fixed identifier, so seeding again (every start) adds only what is missing; the
sandbox reset removes them with everything else and seeds them afresh, timed from the reset.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import simulator
from adapters.local import LocalAdapter
from app.cases import service as cases
from app.cases.models import Case, Referral
from app.config import Settings
from app.directory.models import SocialPrescribingService
from app.fhir.terminology import reason_map
from app.referrals import service as referrals
from app.referrals.intake import assess
from app.sandbox.patients import PATIENTS, referral_resource
from app.security.auth import Principal
from app.security.roles import Role

# The second sandbox service: cases held by the bridge itself (the `local` adapter), recorded by
# advisors through POST /api/v1/cases/{id}/events with the sandbox advisor's key.
COMMUNITY_HUB = "sandbox-community-hub"
COMMUNITY_HUB_NAME = "Sandbox Community Wellbeing Hub"
SEEDED_IDENTIFIER_SYSTEM = "https://sandbox.spbridge.example/Id/referral"
SEEDED_PREFIX = "SBX-SEED-"
TEAM = "Community hub advisors"


@dataclass(frozen=True)
class Step:
    """One case event, ``day`` simulated days after the referral arrived."""

    day: float
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    # An appointment's start, in simulated days after the referral arrived.
    start_day: float | None = None


@dataclass(frozen=True)
class SeededCase:
    key: str  # the referral's identifier is SBX-SEED-<key>
    what: str  # where it stands, in words (the landing page lists them)
    patient: int  # index into PATIENTS
    received_days_ago: float
    reasons: tuple[tuple[str, str], ...]
    steps: tuple[Step, ...]

    @property
    def identifier(self) -> str:
        return f"{SEEDED_PREFIX}{self.key}"


def _outcome(day: float, stage: str, items: list[int]) -> Step:
    return Step(day, "outcome.recorded", {"stage": stage, "items": items})


def _booked(day: float, ident: str, start: float, kind: str, minutes: int) -> Step:
    data = {"appointment_id": ident, "appointment_type": kind, "duration_minutes": minutes}
    return Step(day, "appointment.booked", data, start_day=start)


def _prescribed(day: float, ident: str, category: str, provider: str, activity: str) -> Step:
    data = {"prescription_id": ident, "category": category, "provider": provider}
    return Step(day, "prescription.created", {**data, "activity": activity, "status": "proposed"})


def _attended(day: float, ident: str, minutes: int | None = None) -> Step:
    data: dict[str, Any] = {"appointment_id": ident}
    if minutes is not None:
        data["duration_minutes"] = minutes
    return Step(day, "appointment.attended", data)


def _updated(day: float, ident: str, status: str) -> Step:
    return Step(day, "prescription.updated", {"prescription_id": ident, "status": status})


def _contact(day: float, outcome: str, method: str = "telephone") -> Step:
    return Step(day, "contact.attempted", {"outcome": outcome, "method": method})


def _accepted(day: float, advisor: str) -> Step:
    return Step(day, "case.accepted", {"team": TEAM, "advisor": advisor})


FINANCE = ("finance-benefits-debt", "Finance, Benefits and Debt Advice")
ISOLATION = ("social-isolation", "Social Isolation")
HOUSING = ("housing", "Housing")
WELLBEING = ("mental-health-wellbeing", "Mental Health and Wellbeing")
EMPLOYMENT = ("employment-training", "Employment and Training")
ACTIVITY = ("physical-activity", "Physical Activity")

SEEDED_CASES: tuple[SeededCase, ...] = (
    SeededCase(
        "completed",
        "completed six weeks after the referral: needs met, wellbeing up",
        0,
        70,
        (FINANCE, ISOLATION),
        (
            _accepted(0.3, "Priya Shah"),
            _contact(1.1, "no-answer"),
            _contact(2.2, "reached"),
            _booked(2.3, "HUB-1", 7.4, "face-to-face", 60),
            Step(7.5, "appointment.did_not_attend", {"appointment_id": "HUB-1"}),
            _booked(8.1, "HUB-2", 12.6, "telephone", 30),
            _attended(12.63, "HUB-2", 40),
            _outcome(12.65, "start", [2, 3, 2, 3, 2, 3, 2]),
            _prescribed(
                12.7,
                "HUB-RX-1",
                "benefits-money",
                "Citizens Advice (sandbox)",
                "Benefits check and debt advice",
            ),
            _prescribed(
                12.72,
                "HUB-RX-2",
                "social-connection",
                "Befriending Service (sandbox)",
                "Weekly befriending calls",
            ),
            _prescribed(
                12.74,
                "HUB-RX-3",
                "physical-activity",
                "Walking Group (sandbox)",
                "Weekly health walk",
            ),
            Step(13.0, "demographics.recorded", {"age_band": "25-34", "carer": "no"}),
            _updated(19.2, "HUB-RX-1", "active"),
            _updated(19.3, "HUB-RX-2", "active"),
            _updated(19.4, "HUB-RX-3", "active"),
            _booked(26.1, "HUB-3", 33.5, "group", 90),
            _attended(33.57, "HUB-3"),
            _updated(40.2, "HUB-RX-1", "completed"),
            _updated(40.3, "HUB-RX-2", "completed"),
            _updated(40.4, "HUB-RX-3", "declined"),
            _outcome(43.6, "end", [3, 4, 3, 4, 3, 3, 3]),
            Step(44.5, "case.completed", {"reason": "needs-met"}),
        ),
    ),
    SeededCase(
        "discharged",
        "discharged after two missed appointments",
        2,
        100,
        (HOUSING,),
        (
            _accepted(0.5, "Sam Okafor"),
            _contact(1.4, "reached"),
            _booked(1.5, "HUB-1", 6.4, "face-to-face", 45),
            Step(6.5, "appointment.did_not_attend", {"appointment_id": "HUB-1"}),
            _booked(7.2, "HUB-2", 13.4, "telephone", 30),
            Step(13.5, "appointment.did_not_attend", {"appointment_id": "HUB-2"}),
            Step(20.1, "case.discharged", {"reason": "did-not-attend"}),
        ),
    ),
    SeededCase(
        "support-window",
        "in progress, first seen seven weeks ago: past the six-week support window",
        1,
        51,
        (EMPLOYMENT, WELLBEING),
        (
            _accepted(0.4, "Jordan Ellis"),
            _contact(1.2, "reached"),
            _booked(1.3, "HUB-1", 5.5, "face-to-face", 60),
            _attended(5.55, "HUB-1"),
            _outcome(5.6, "start", [3, 3, 2, 3, 3, 2, 3]),
            _prescribed(
                5.7,
                "HUB-RX-1",
                "employment-volunteering",
                "Employment Hub (sandbox)",
                "Work coach sessions",
            ),
            _prescribed(
                5.72,
                "HUB-RX-2",
                "learning",
                "The Life Rooms (sandbox)",
                "Recovery college course: understanding anxiety",
            ),
            _updated(12.3, "HUB-RX-1", "active"),
            _booked(44.2, "HUB-2", 53.4, "telephone", 30),
        ),
    ),
    SeededCase(
        "on-hold",
        "on hold: the person is in hospital",
        4,
        26,
        (ISOLATION, ACTIVITY),
        (
            _accepted(0.5, "Alex Morgan"),
            _contact(2.1, "reached"),
            _booked(2.2, "HUB-1", 6.4, "face-to-face", 60),
            _attended(6.45, "HUB-1", 50),
            _outcome(6.5, "start", [2, 2, 3, 2, 2, 3, 2]),
            _prescribed(
                6.6, "HUB-RX-1", "social-connection", "Men's Shed (sandbox)", "Men's shed sessions"
            ),
            Step(19.3, "case.on_hold", {"reason": "in-hospital"}),
        ),
    ),
    SeededCase(
        "appointment-next-week",
        "contacted, first appointment booked for next week",
        5,
        5,
        (WELLBEING,),
        (
            _accepted(0.2, "Chris Lee"),
            _contact(1.3, "no-answer", "text"),
            _contact(2.5, "reached"),
            _booked(2.6, "HUB-1", 11.6, "face-to-face", 60),
        ),
    ),
    SeededCase(
        "first-contact-overdue",
        "accepted nine days ago, not yet reached: first contact overdue",
        3,
        9.2,
        (FINANCE, HOUSING),
        (
            _accepted(0.3, "Priya Shah"),
            _contact(1.1, "no-answer"),
            _contact(4.0, "message-left"),
            _contact(7.2, "no-answer", "text"),
        ),
    ),
    SeededCase(
        "new-today",
        "received this morning, waiting to be accepted",
        0,
        0.15,
        (ISOLATION,),
        (),
    ),
)


def _resource(seeded: SeededCase, received_at: dt.datetime, referrer: str) -> dict[str, Any]:
    stamp = received_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    resource = referral_resource(
        PATIENTS[seeded.patient],
        identifier=seeded.identifier,
        authored_on=stamp,
        requester=referrer,
        service=COMMUNITY_HUB,
    )
    resource["identifier"] = [{"system": SEEDED_IDENTIFIER_SYSTEM, "value": seeded.identifier}]
    resource["reasonCode"] = [
        {
            "coding": [
                {
                    "system": "https://fhir.spbridge.org/CodeSystem/reason-for-referral",
                    "code": code,
                    "display": display,
                }
            ]
        }
        for code, display in seeded.reasons
    ]
    return resource


async def seed_community_hub(session: AsyncSession, organisation: str) -> None:
    """The second service, on the `local` adapter (the bridge holds its cases)."""
    if await session.get(SocialPrescribingService, COMMUNITY_HUB) is not None:
        return
    session.add(
        SocialPrescribingService(
            id=COMMUNITY_HUB,
            name=COMMUNITY_HUB_NAME,
            organisation=organisation,
            adapter=LocalAdapter.name,
            delivers=LocalAdapter.delivers,
        )
    )
    await session.flush()


async def seed_cases(
    session: AsyncSession, settings: Settings, referrer: str, now: dt.datetime | None = None
) -> int:
    """The seeded cases that are not there yet, referred from the organisation ``referrer``,
    each with its history up to ``now``; returns how many were made."""
    now = now or dt.datetime.now(dt.UTC)
    held = set(
        await session.scalars(
            select(Referral.identifier_value).where(
                Referral.identifier_system == SEEDED_IDENTIFIER_SYSTEM
            )
        )
    )
    made = 0
    for seeded in SEEDED_CASES:
        if seeded.identifier not in held:
            await _seed_case(session, settings, seeded, referrer, now)
            made += 1
    return made


async def _seed_case(
    session: AsyncSession,
    settings: Settings,
    seeded: SeededCase,
    referrer_organisation: str,
    now: dt.datetime,
) -> None:
    received_at = (now - dt.timedelta(days=seeded.received_days_ago)).replace(microsecond=0)
    clock = simulator.SimulatedClock(received_at, simulator.REAL_TIME)
    raw = _resource(seeded, received_at, referrer_organisation)
    draft = assess(
        raw,
        now=received_at,
        clock_skew=dt.timedelta(seconds=settings.clock_skew_seconds),
        require_consent=settings.require_consent,
        reason_map=reason_map(),
    )
    referrer = Principal(
        client_id="sandbox-clinical-system",
        name="Sandbox clinical-system",
        role=Role.CLINICAL_SYSTEM,
        organisation=referrer_organisation,
    )
    context = cases.EventContext(client_id=referrer.client_id, request_id=None, correlation_id=None)
    intake = await referrals.create_referral(
        session, draft, raw, referrer, context, received_at=received_at
    )
    referral = intake.referral
    case = await session.scalar(select(Case).where(Case.referral_id == referral.id))
    service = await session.get(SocialPrescribingService, COMMUNITY_HUB)
    assert case is not None
    assert service is not None
    advisor = cases.EventContext(client_id="sandbox-advisor", request_id=None, correlation_id=None)
    for index, step in enumerate(seeded.steps):
        occurred_at = clock.at(step.day)
        if occurred_at > now:
            break  # the rest of the journey has not happened yet
        data = dict(step.data)
        if step.start_day is not None:
            data["start"] = clock.at(step.start_day).isoformat()
        await cases.apply_event(
            session,
            case,
            referral,
            service,
            cases.NewEvent(
                type=step.type,
                source="advisor",
                occurred_at=occurred_at,
                data=data,
                idempotency_key=f"{seeded.identifier}:{index}",
            ),
            advisor,
            # Recorded when it happened, as an advisor working the case would have.
            now=occurred_at,
        )
