"""The patient journey page: its short-lived signed links, and what it shows.

A link is ``/journey/{referral_id}?token=v1.<expires>.<mac>``: ``expires`` is a unix time and
``mac`` the base64url HMAC-SHA256, under the installation's journey-link key, of the version tag,
the referral id and the expiry. The referral id is in the signed text but not in the token, so a
token only opens the page of the referral it was issued for.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases import records, wellbeing
from app.cases.events import REGISTRY, TransitionRefused, next_status, reaches_patient
from app.cases.models import Appointment, Case, CaseEvent, Prescription, Referral, WellbeingScore
from app.cases.states import CLOSED_STATES, CaseState, CaseStatus
from app.cases.wording import (
    CANCELLED_BY,
    COMPLETED,
    DISCHARGED,
    IN_PROGRESS,
    PRESCRIPTION_STATUS,
    lower,
    plural,
)
from app.directory.models import SocialPrescribingService
from app.fhir.task import code_displays, instant
from app.journey.schemas import (
    AppointmentRow,
    EmptyWords,
    Fact,
    JourneyPage,
    PatientBanner,
    PrescriptionRow,
    ScoreRow,
    TimelineEntry,
    WellbeingView,
    When,
)
from app.keys import KeyPurpose

log = logging.getLogger("spbridge.journey")

# --- signed links --------------------------------------------------------------------------

TOKEN_VERSION = "v1"  # noqa: S105 (a format tag, not a secret)
# How long a link works unless the caller asks for another lifetime (within the bounds).
LINK_LIFETIME = dt.timedelta(minutes=15)
MIN_LIFETIME_SECONDS = 60
MAX_LIFETIME_SECONDS = 3600
_TOKEN = re.compile(r"^v1\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


def _mac(key: bytes, referral_id: str, expires: int) -> str:
    message = (
        f"spbridge.{KeyPurpose.JOURNEY_LINK}.{TOKEN_VERSION}\n{referral_id}\n{expires}".encode()
    )
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(key: bytes, referral_id: str, expires: int) -> str:
    """A token that opens ``referral_id``'s journey until the unix time ``expires``."""
    return f"{TOKEN_VERSION}.{expires}.{_mac(key, referral_id, expires)}"


def issue(key: bytes, referral_id: str, now: dt.datetime, lifetime_seconds: int) -> tuple[str, int]:
    """A token for ``referral_id`` and its expiry (unix time)."""
    expires = int(now.timestamp()) + lifetime_seconds
    return sign(key, referral_id, expires), expires


def token_is_valid(key: bytes, token: str | None, referral_id: str, now: dt.datetime) -> bool:
    """Whether ``token`` was signed with ``key`` for this referral and has not expired.

    The MAC is compared as text, in constant time: comparing the encoded form also refuses the
    other spellings of the same bytes that lenient base64 decoding would accept.
    """
    if not token:
        return False
    match = _TOKEN.fullmatch(token)
    if match is None:
        return False
    expires = int(match.group(1))
    expected = _mac(key, referral_id, expires)
    if not hmac.compare_digest(match.group(2), expected):
        return False
    return now.timestamp() < expires


class RedactLinkTokens(logging.Filter):
    """Keeps journey-link tokens out of access logs: a logged link would open the page."""

    _TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "token=" in arg for arg in record.args
        ):
            record.args = tuple(
                self._TOKEN_IN_QUERY.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def redact_tokens_in_access_logs() -> None:
    """Install the filter on uvicorn's access log once (it logs the path with its query)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactLinkTokens) for f in access.filters):
        access.addFilter(RedactLinkTokens())


# --- dates and words -----------------------------------------------------------------------

try:
    TIME_ZONE: dt.tzinfo = ZoneInfo("Europe/London")
    TIME_ZONE_NOTE = "Times are UK time (GMT in winter, BST in summer)."
except ZoneInfoNotFoundError:  # no time zone database on this machine: say UTC plainly
    TIME_ZONE = dt.UTC
    TIME_ZONE_NOTE = "Times are UTC."

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def when(value: dt.datetime) -> When:
    """A moment in the page's time zone, with the zone named: "5 Dec 2026, 10:00 GMT" (with
    no-break spaces, so a narrow column breaks it only after the comma)."""
    local = value.astimezone(TIME_ZONE)
    day = f"{local.day}\u00a0{_MONTHS[local.month - 1]}\u00a0{local.year}"
    return When(iso=instant(value), text=f"{day}, {local:%H:%M}\u00a0{local.tzname()}")


def nhs_number(value: str) -> str:
    """The NHS number as it is written: 3 3 4."""
    digits = value.strip()
    if len(digits) == 10 and digits.isdigit():
        return f"{digits[:3]} {digits[3:6]} {digits[6:]}"
    return digits


NOT_KNOWN = "Not known"


def banner_name(referral: Referral) -> str:
    """The patient's name as the NHS patient banner writes it: "FAMILY, Given" (family name in
    capitals), from the referral's Patient; else the name as the referral gave it."""
    subject = (referral.resource or {}).get("subject") or {}
    reference = subject.get("reference") if isinstance(subject, dict) else None
    for resource in (referral.resource or {}).get("contained") or []:
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue
        if isinstance(reference, str) and reference != f"#{resource.get('id')}":
            continue
        names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
        name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
        family = name.get("family")
        given = " ".join(g for g in name.get("given") or [] if isinstance(g, str))
        if isinstance(family, str) and family.strip():
            return f"{family.strip().upper()}, {given}".rstrip(", ")
    return referral.patient_name or "Name not known"


def born(birth_date: str | None, today: dt.date) -> str:
    """A date of birth as the banner writes it: "14-Jul-1985 (54y)"; a partial date as given
    ("Jul-1985", "1985"), with no age."""
    if not birth_date:
        return NOT_KNOWN
    parts = birth_date.split("-")
    try:
        numbers = [int(part) for part in parts]
        if len(numbers) == 3:
            day = dt.date(*numbers)
            years = today.year - day.year - ((today.month, today.day) < (day.month, day.day))
            return f"{day.day:02d}-{_MONTHS[day.month - 1]}-{day.year} ({years}y)"
        if len(numbers) == 2:
            return f"{_MONTHS[numbers[1] - 1]}-{numbers[0]}"
    except (ValueError, IndexError):
        return birth_date
    return birth_date


def _display(code_system: str, code: object, fallback: str = "") -> str:
    if not isinstance(code, str):
        return fallback
    return code_displays(code_system).get(code, code)


def state_words(case: Case) -> tuple[str, str]:
    """Where the case stands in plain words, and its tone (open, hold, done, ended)."""
    state, business = case.state, case.business_status
    if state == CaseState.RECEIVED:
        return "Received — waiting for the service to accept the referral", "open"
    if state == CaseState.ACCEPTED:
        return "Accepted — registered with the service, contact to follow", "open"
    if state == CaseState.IN_PROGRESS:
        detail = IN_PROGRESS.get(business, lower(_display("task-business-status", business)))
        return f"In progress — {detail}", "open"
    if state == CaseState.ON_HOLD:
        return "On hold — support is paused for now", "hold"
    if state == CaseState.COMPLETED:
        detail = COMPLETED.get(business, lower(_display("completion-reason", business)))
        return f"Completed — {detail}", "done"
    if state == CaseState.DISCHARGED:
        detail = DISCHARGED.get(business, lower(_display("discharge-reason", business)))
        return f"Discharged — {detail}", "ended"
    if state == CaseState.REJECTED:
        reason = lower(_display("rejection-reason", case.status_reason, "no reason given"))
        return f"Not accepted by the service — {reason}", "ended"
    if state == CaseState.CANCELLED:
        return "Cancelled by the referrer", "ended"
    return state.replace("_", " ").capitalize(), "open"


def state_since(events: Iterable[CaseEvent]) -> dt.datetime | None:
    """When the case came to its current status: the events replayed in the order they were
    recorded, through the state table; None if they do not replay (then the caller falls back)."""
    status: CaseStatus | None = None
    contacted = False
    progress: str | None = None
    since: dt.datetime | None = None
    for event in sorted(events, key=lambda e: e.seq):
        try:
            after = next_status(
                status, event.type, event.data, contacted=contacted, progress_status=progress
            )
        except TransitionRefused:
            return None
        if after != status:
            since = event.occurred_at
        status = after
        if after.state is CaseState.IN_PROGRESS:
            progress = after.business_status
        contacted = contacted or reaches_patient(event.type, event.data)
    return since


# --- the timeline --------------------------------------------------------------------------


class _Narrator:
    """What the event registry's descriptions need from this page (app.cases.events.Narrator)."""

    def __init__(
        self, appointments: Mapping[str, Appointment], prescriptions: Mapping[str, Prescription]
    ) -> None:
        self._appointments = appointments
        self._prescriptions = prescriptions

    def when(self, instant: dt.datetime) -> str:
        return when(instant).text

    def display(self, code_system: str, code: object, fallback: str = "") -> str:
        return _display(code_system, code, fallback)

    def appointment(self, appointment_id: object) -> Appointment | None:
        return self._appointments.get(str(appointment_id))

    def prescription(self, prescription_id: object) -> Prescription | None:
        return self._prescriptions.get(str(prescription_id))


def describe(
    event: CaseEvent,
    appointments: Mapping[str, Appointment],
    prescriptions: Mapping[str, Prescription],
) -> tuple[str, str | None]:
    """One event as a line a clinician reads at a glance (and an optional second line), as its
    type's declaration describes it."""
    declared = REGISTRY.get(event.type)
    if declared is None:
        return f"Update recorded ({event.type})", None
    return declared.journey(event.data or {}, _Narrator(appointments, prescriptions))


# --- the records ---------------------------------------------------------------------------

_APPOINTMENT_OUTCOMES = {
    "fulfilled": ("Attended", "good"),
    "noshow": ("Did not attend", "warn"),
    "cancelled": ("Cancelled", "neutral"),
}


def _appointment_row(appointment: Appointment, now: dt.datetime, closed: bool) -> AppointmentRow:
    if appointment.status == "booked":
        if closed:
            outcome, tone = "Booked — no outcome recorded before the case closed", "neutral"
        elif appointment.start > now:
            outcome, tone = "Booked", "info"
        else:
            outcome, tone = "Booked — outcome not recorded yet", "info"
    else:
        outcome, tone = _APPOINTMENT_OUTCOMES.get(appointment.status, (appointment.status, ""))
    if appointment.status == "fulfilled" and appointment.attended_minutes:
        outcome += f" ({plural(appointment.attended_minutes, 'minute')})"
    if appointment.status == "cancelled" and appointment.cancelled_by in CANCELLED_BY:
        outcome += f" {CANCELLED_BY[appointment.cancelled_by]}"
    if appointment.reschedules:
        moved = "once" if appointment.reschedules == 1 else f"{appointment.reschedules} times"
        outcome += f"; moved {moved}"
    return AppointmentRow(
        when=when(appointment.start),
        kind=_display("appointment-type", appointment.appointment_type),
        minutes=plural(appointment.minutes, "minute"),
        outcome=outcome,
        tone=tone or "neutral",
    )


# Statuses that say the activity is still going on: on a closed case the page says they are
# what the provider last reported, not where things stand now.
_UNFINISHED = frozenset({"proposed", "active"})


def _prescription_row(
    prescription: Prescription, closed: bool, reported: dt.datetime | None
) -> PrescriptionRow:
    status, tone = PRESCRIPTION_STATUS.get(prescription.status, (prescription.status, "neutral"))
    if closed and prescription.status in _UNFINISHED:
        local = (reported or prescription.prescribed_at).astimezone(TIME_ZONE)
        day = f"{local.day}\u00a0{_MONTHS[local.month - 1]}\u00a0{local.year}"
        status, tone = f"{status} at last report ({day})", "neutral"
    return PrescriptionRow(
        activity=prescription.activity,
        provider=prescription.provider,
        category=_display("prescription-category", prescription.category),
        status=status,
        tone=tone,
        since=when(prescription.prescribed_at),
    )


def _last_reports(events: Iterable[CaseEvent]) -> dict[str, dt.datetime]:
    """When each social prescription's status was last reported (its external id → instant)."""
    reported: dict[str, dt.datetime] = {}
    for event in events:
        if event.type in ("prescription.created", "prescription.updated"):
            ident = (event.data or {}).get("prescription_id")
            if isinstance(ident, str) and (
                ident not in reported or event.occurred_at >= reported[ident]
            ):
                reported[ident] = event.occurred_at
    return reported


def _wellbeing(scores: Sequence[WellbeingScore], closed: bool = False) -> WellbeingView:
    rows = [
        ScoreRow(
            when=when(score.measured_at),
            stage=_display("wellbeing-measure", score.stage),
            score=f"{score.metric_score:.2f}",
        )
        for score in scores
    ]
    threshold = f"{wellbeing.MEANINGFUL_CHANGE:g}"
    if len(scores) >= 2:
        first, last = scores[0].metric_score, scores[-1].metric_score
        change = round(last - first, 2)
        words = wellbeing.describe_change(first, last)
        headline = f"From {first:.2f} to {last:.2f}: {words}."
        if abs(change) >= wellbeing.MEANINGFUL_CHANGE:
            meaning = f"A change of {threshold} or more points is meaningful for one person."
        elif change == 0:
            meaning = "The score has not changed between the first and latest measurement."
        else:
            meaning = (
                f"This is less than the {threshold} points that count as a meaningful change "
                "for one person."
            )
        return WellbeingView(rows, headline, meaning)
    if scores and closed:
        meaning = "Measured once only, so there is no change to show."
    elif scores:
        meaning = "Measured once so far: a change shows after a second measurement."
    elif closed:
        meaning = "Wellbeing was not measured while the service supported the person."
    else:
        meaning = "Wellbeing has not been measured yet."
    return WellbeingView(rows, None, meaning)


def _reasons(referral: Referral) -> list[str]:
    seen: list[str] = []
    for reason in referral.reasons or []:
        label = reason.get("domain_display") or reason.get("text") or reason.get("display")
        if isinstance(label, str) and label and label not in seen:
            seen.append(label)
    return seen


# --- the page ------------------------------------------------------------------------------

_OPEN_EMPTY = EmptyWords("No social prescriptions yet.", "No appointments booked yet.")
_CLOSED_EMPTY = EmptyWords("No social prescriptions were made.", "No appointments were booked.")


async def journey_page(
    session: AsyncSession, referral_id: str, now: dt.datetime
) -> JourneyPage | None:
    """Everything the page shows for one referral; None when the bridge holds no such case.

    No principal: the caller has checked the signed link, which only a client allowed to see
    the referral could get.
    """
    row = (
        await session.execute(
            select(Case, Referral, SocialPrescribingService)
            .join(Case.referral)
            .join(SocialPrescribingService, SocialPrescribingService.id == Case.service_id)
            .where(Case.referral_id == referral_id)
        )
    ).first()
    if row is None:
        return None
    case, referral, service = row
    if referral.purged_at is not None:
        return None  # past its retention: the patient data is gone, so is the page
    events = list(
        await session.scalars(
            select(CaseEvent)
            .where(CaseEvent.case_id == case.id)
            .order_by(CaseEvent.occurred_at, CaseEvent.seq)
        )
    )
    held = (await records.records_of(session, [case.id]))[case.id]
    appointments = {a.external_id: a for a in held.appointments}
    prescriptions = {p.external_id: p for p in held.prescriptions}

    state, tone = state_words(case)
    since = state_since(events) or case.updated_at
    requester = referral.requester_display or referral.referring_team
    facts = [
        Fact("Service", service.name),
        Fact(
            "Referred by",
            f"{requester} ({referral.organisation})" if requester else referral.organisation,
        ),
    ]
    reasons = _reasons(referral)
    if reasons:
        facts.append(Fact("Referred for", "; ".join(reasons)))
    facts.append(Fact("Received", "", when(case.created_at)))
    closed = case.state in CLOSED_STATES
    if case.first_contact_at:
        facts.append(Fact("First contact", "", when(case.first_contact_at)))
    elif not closed:
        facts.append(Fact("First contact", "Not yet"))
    else:
        facts.append(Fact("First contact", "None before the case closed"))
    working_with = ", ".join(part for part in (case.advisor, case.team) if part)
    if working_with:
        facts.append(Fact("Working with", working_with))
    if case.closed_at and case.state in CLOSED_STATES:
        facts.append(Fact("Closed", "", when(case.closed_at)))

    timeline = []
    for event in events:
        text, detail = describe(event, appointments, prescriptions)
        timeline.append(TimelineEntry(when(event.occurred_at), text, detail))

    reported = _last_reports(events)
    return JourneyPage(
        service_name=service.name,
        patient=PatientBanner(
            name=banner_name(referral),
            born=born(referral.birth_date, now.astimezone(TIME_ZONE).date()),
            nhs_number=nhs_number(referral.nhs_number),
        ),
        state=state,
        state_tone=tone,
        state_since=when(since),
        facts=facts,
        summary=case.summary if case.state in CLOSED_STATES else None,
        prescriptions=[
            _prescription_row(p, closed, reported.get(p.external_id)) for p in held.prescriptions
        ],
        appointments=[_appointment_row(a, now, closed) for a in held.appointments],
        wellbeing=_wellbeing(held.scores, closed),
        timeline=timeline,
        empty=_CLOSED_EMPTY if closed else _OPEN_EMPTY,
        produced=when(now),
        time_zone_note=TIME_ZONE_NOTE,
    )
