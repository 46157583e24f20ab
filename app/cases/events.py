"""The case event registry: every event type declared once (DESIGN §5, "extend it, don't bypass
it").

A declaration (:func:`declare`) says everything the bridge does with one event type: its body (the
pydantic model the API and every adapter's translation are checked against), the states it may
come from and the status it leads to (state, Task.status, businessStatus, statusReason), its
effect on the case's records, whether it shows the patient was reached, how the journey page
describes it, and how the reports count it. The state machine (:func:`next_status`,
:func:`allowed_events`), the API's body union (``app.cases.schemas``), the journey's timeline
and the reports' monthly rows are all built from :data:`REGISTRY`; nothing else lists event
types. docs/ARCHITECTURE.md shows what adding one takes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar, Union

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from app.cases import records, wellbeing, wording
from app.cases.models import Appointment, Prescription
from app.cases.states import (
    COMPLETION_REASONS,
    CONSENT_WITHDRAWAL_REASONS,
    CONSENT_WITHDRAWN,
    DISCHARGE_REASONS,
    OPEN_STATES,
    WORKING_STATES,
    CaseState,
    CaseStatus,
    discharged,
    status,
)
from app.db import utc_in_range
from app.errors import BusinessRuleViolation, Issue, validation_location, validation_message
from app.fhir.equality import EqualityItem, equality_items

# --- the fields event bodies are made of ----------------------------------------------------


def _no_nul(value: str) -> str:
    # PostgreSQL text and jsonb refuse NUL (DESIGN §10).
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    return utc_in_range(value)


Text = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1), AfterValidator(_no_nul)
]
ShortText = Annotated[Text, StringConstraints(max_length=200)]
# An id the advisor's or platform's system gave a thing (appointment, prescription).
LocalId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")]
Instant = Annotated[AwareDatetime, AfterValidator(_utc)]

AppointmentType = Literal["face-to-face", "telephone", "group"]
PrescriptionCategory = Literal[
    "benefits-money",
    "learning",
    "housing",
    "employment-volunteering",
    "mental-wellbeing",
    "social-connection",
    "physical-activity",
    "food",
    "other",
]
PrescriptionStatus = Literal["proposed", "active", "completed", "declined"]
RejectionReason = Literal[
    "out-of-area",
    "not-eligible",
    "duplicate-referral",
    "insufficient-information",
    "no-capacity",
    "other",
]
CompletionReason = Literal["needs-met", "referred-on"]
DischargeReason = Literal[
    "did-not-attend",
    "unable-to-contact",
    "no-longer-required",
    "inappropriate-referral",
    "declined",
]
ConsentWithdrawalReason = Literal["patient-request", "objection"]
# The state vocabulary (app.cases.states) and the bodies' literals are one list each.
assert set(CompletionReason.__args__) == set(COMPLETION_REASONS)  # type: ignore[attr-defined]
assert set(DischargeReason.__args__) == set(DISCHARGE_REASONS)  # type: ignore[attr-defined]
assert set(ConsentWithdrawalReason.__args__) == set(CONSENT_WITHDRAWAL_REASONS)  # type: ignore[attr-defined]

# Fields every event has besides its own data.
ENVELOPE_FIELDS = frozenset({"type", "occurred_at", "idempotency_key"})


class EventBody(BaseModel):
    """What every event body has; each event type's model narrows ``type`` to its own name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    occurred_at: Instant | None = Field(
        default=None,
        description="When it happened (defaults to now). May be in the past, since advisors "
        "record late; not more than 5 minutes in the future.",
    )
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")]
        | None
    ) = Field(
        default=None, description="Send the same key again and the event is applied only once."
    )

    def data(self) -> dict[str, Any]:
        """The event's own fields, as stored in the CaseEvent."""
        return self.model_dump(mode="json", exclude=set(ENVELOPE_FIELDS), exclude_none=True)


# --- how a declaration says what an event does -----------------------------------------------


@dataclass(frozen=True)
class Move:
    """What the state machine knows besides the event: the case's status before it (None for a
    new case), whether the patient has been reached, and the last in-progress business status
    (restored when a case resumes)."""

    current: CaseStatus
    data: Mapping[str, Any]
    contacted: bool
    progress_status: str | None


Leads = Callable[[Move], CaseStatus]


def stays(move: Move) -> CaseStatus:
    """The event records something without moving the case."""
    return move.current


def to(state: CaseState, business: str, reason: str | None = None) -> Leads:
    """The event leads to this state and business status."""
    return lambda _move: status(state, business, reason)


def progress(business: str) -> Leads:
    """The event moves the case on, in progress, to this business status."""
    return to(CaseState.IN_PROGRESS, business)


class Narrator(Protocol):
    """What describing an event needs from the page it appears on."""

    def when(self, instant: dt.datetime) -> str:
        """A moment as the page writes it."""
        ...

    def display(self, code_system: str, code: object, fallback: str = "") -> str:
        """A code's display name in one of our CodeSystems."""
        ...

    def appointment(self, appointment_id: object) -> Appointment | None: ...

    def prescription(self, prescription_id: object) -> Prescription | None: ...


Describe = Callable[[Mapping[str, Any], Narrator], tuple[str, str | None]]


def says(text: str) -> Describe:
    """A description that is the same for every event of the type."""
    return lambda _data, _narrator: (text, None)


@dataclass(frozen=True)
class Counted:
    """How the reports count an event type by the month it happened: its row in the activity
    report's monthly table (rows are shown by ``row``) and the row's label."""

    row: int
    label: str


@dataclass(frozen=True)
class EventType:
    """One declared case event type (see :func:`declare`)."""

    body: type[EventBody]
    name: str
    sources: frozenset[CaseState]  # empty: only a new case (referral.received)
    leads_to: Leads
    effect: records.Effector | None
    journey: Describe
    counted: Counted | None
    reaches_patient: Callable[[Mapping[str, Any]], bool]
    # Sent by the referrer (through a FHIR update), never recorded through the case API.
    from_referrer: bool
    # Its data is seen only by the service's own organisation (EDI monitoring answers).
    service_only: bool
    # The ServiceRequest.status the event gives the referral. Only the requester's own events
    # set one (SDOH Clinical Care IG): the Task carries fulfilment, so how the case ends never
    # changes the referral's status.
    referral_status: str | None


REGISTRY: dict[str, EventType] = {}
Body = TypeVar("Body", bound=EventBody)


def declare(
    *,
    sources: frozenset[CaseState],
    leads_to: Leads = stays,
    effect: records.Effector | None = None,
    journey: Describe,
    counted: Counted | None = None,
    reaches_patient: Callable[[Mapping[str, Any]], bool] = lambda _data: False,
    from_referrer: bool = False,
    service_only: bool = False,
    referral_status: str | None = None,
) -> Callable[[type[Body]], type[Body]]:
    """Declare the event type whose body is the decorated model; its name is the body's ``type``
    literal. Bodies are declared in the order the API documents them."""

    def register(body: type[Body]) -> type[Body]:
        (name,) = body.model_fields["type"].annotation.__args__  # type: ignore[union-attr]
        assert name not in REGISTRY, f"{name} is declared twice"
        REGISTRY[name] = EventType(
            body=body,
            name=name,
            sources=sources,
            leads_to=leads_to,
            effect=effect,
            journey=journey,
            counted=counted,
            reaches_patient=reaches_patient,
            from_referrer=from_referrer,
            service_only=service_only,
            referral_status=referral_status,
        )
        assert referral_status is None or from_referrer, f"{name}: only the referrer's events"
        return body

    return register


# --- helpers the descriptions share ----------------------------------------------------------


def _booking(data: Mapping[str, Any], narrator: Narrator) -> str:
    parts = [
        wording.lower(
            narrator.display("appointment-type", data.get("appointment_type"), "appointment")
        )
    ]
    minutes = wording.minutes(data.get("duration_minutes"))
    if minutes:
        parts.append(minutes)
    start = wording.instant(data.get("start"))
    if start:
        parts.append(narrator.when(start))
    return ", ".join(parts)


def _which(data: Mapping[str, Any], narrator: Narrator) -> str:
    appointment = narrator.appointment(data.get("appointment_id"))
    return "" if appointment is None else f" ({narrator.when(appointment.start)})"


def _prescription_name(data: Mapping[str, Any], held: Prescription | None) -> str:
    activity = data.get("activity") or (held.activity if held else None)
    provider = data.get("provider") or (held.provider if held else None)
    if activity and provider:
        return f"{activity} with {provider}"
    return str(activity or provider or "a social prescription")


# --- the declarations ------------------------------------------------------------------------

RECORDABLE = WORKING_STATES | {CaseState.ON_HOLD}


RECORDABLE = WORKING_STATES | {CaseState.ON_HOLD}
NEW_CASE: frozenset[CaseState] = frozenset()


@declare(
    sources=NEW_CASE,
    leads_to=to(CaseState.RECEIVED, "received"),
    journey=says("Referral received"),
    from_referrer=True,
)
class ReferralReceived(EventBody):
    type: Literal["referral.received"]


def _updated(data: Mapping[str, Any], _narrator: Narrator) -> tuple[str, str | None]:
    changed = [str(name) for name in data.get("changed") or []]
    return "Referral updated by the referrer", (
        f"Changed: {', '.join(changed)}" if changed else None
    )


@declare(sources=OPEN_STATES, journey=_updated, from_referrer=True)
class ReferralUpdated(EventBody):
    """The referrer amended the open referral (a FHIR update of its ServiceRequest): what
    changed, by element name (the referral itself holds the new values)."""

    type: Literal["referral.updated"]
    changed: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z.]{1,64}$")]] = Field(
        default_factory=list, max_length=20
    )


@declare(
    sources=OPEN_STATES,
    leads_to=to(CaseState.CANCELLED, "cancelled-by-referrer", "cancelled-by-referrer"),
    journey=says("Referral cancelled by the referrer"),
    from_referrer=True,
    referral_status="revoked",
)
class ReferralCancelled(EventBody):
    type: Literal["referral.cancelled"]


def _accepted(data: Mapping[str, Any], _narrator: Narrator) -> tuple[str, str | None]:
    who = ", ".join(str(data[k]) for k in ("advisor", "team") if data.get(k))
    return "Accepted and registered by the service", (f"Working with: {who}" if who else None)


@declare(
    sources=frozenset({CaseState.RECEIVED}),
    leads_to=to(CaseState.ACCEPTED, "registered"),
    effect=records.register,
    journey=_accepted,
    counted=Counted(1, "Registrations (case accepted)"),
)
class CaseAccepted(EventBody):
    """Registered with the service; optionally who will work with the person."""

    type: Literal["case.accepted"]
    team: ShortText | None = None
    advisor: ShortText | None = None


def _rejected(move: Move) -> CaseStatus:
    return status(CaseState.REJECTED, "rejected", str(move.data.get("reason") or "rejected"))


def _not_accepted(data: Mapping[str, Any], narrator: Narrator) -> tuple[str, str | None]:
    reason = narrator.display("rejection-reason", data.get("reason"), "no reason given")
    return f"Referral not accepted: {wording.lower(reason)}", None


@declare(
    sources=frozenset({CaseState.RECEIVED, CaseState.ACCEPTED}),
    leads_to=_rejected,
    journey=_not_accepted,
)
class CaseRejected(EventBody):
    type: Literal["case.rejected"]
    reason: RejectionReason


def _reached(data: Mapping[str, Any]) -> bool:
    return data.get("outcome") == "reached"


def _contact(move: Move) -> CaseStatus:
    return status(CaseState.IN_PROGRESS, "contacted" if _reached(move.data) else "awaiting-contact")


def _contacted(data: Mapping[str, Any], _narrator: Narrator) -> tuple[str, str | None]:
    method = wording.CONTACT_METHODS.get(str(data.get("method")))
    outcome = data.get("outcome")
    if outcome == "reached":
        text = "Contact made with the person"
    elif outcome == "message-left":
        text = "Contact attempted: message left"
    else:
        text = "Contact attempted: no answer"
    return (f"{text} ({method})" if method else text), None


@declare(
    sources=WORKING_STATES,
    leads_to=_contact,
    journey=_contacted,
    counted=Counted(8, "Contact attempts"),
    reaches_patient=_reached,
)
class ContactAttempted(EventBody):
    type: Literal["contact.attempted"]
    outcome: Literal["reached", "no-answer", "message-left"]
    method: Literal["telephone", "text", "email", "letter", "in-person"] | None = None


@declare(
    sources=WORKING_STATES,
    leads_to=progress("appointment-booked"),
    effect=records.book,
    journey=lambda data, narrator: (f"Appointment booked: {_booking(data, narrator)}", None),
    counted=Counted(2, "Appointments booked (by the month they were booked)"),
)
class AppointmentBooked(EventBody):
    type: Literal["appointment.booked"]
    appointment_id: LocalId
    start: Instant
    appointment_type: AppointmentType
    duration_minutes: int = Field(ge=5, le=480, description="Minutes planned")


@declare(
    sources=WORKING_STATES,
    leads_to=progress("appointment-booked"),
    effect=records.reschedule,
    journey=lambda data, narrator: (f"Appointment moved: now {_booking(data, narrator)}", None),
    counted=Counted(6, "Appointments rescheduled"),
)
class AppointmentRescheduled(EventBody):
    """The same appointment moved to another time (and maybe another type or length)."""

    type: Literal["appointment.rescheduled"]
    appointment_id: LocalId
    start: Instant
    appointment_type: AppointmentType
    duration_minutes: int = Field(ge=5, le=480, description="Minutes planned")


def _attended(data: Mapping[str, Any], narrator: Narrator) -> tuple[str, str | None]:
    spent = wording.minutes(data.get("duration_minutes"))
    return f"Attended appointment{_which(data, narrator)}", (f"Took {spent}" if spent else None)


@declare(
    sources=WORKING_STATES,
    leads_to=progress("seen"),
    effect=records.close_appointment("fulfilled"),
    journey=_attended,
    counted=Counted(3, "Appointments attended"),
    reaches_patient=lambda _data: True,
)
class AppointmentAttended(EventBody):
    type: Literal["appointment.attended"]
    appointment_id: LocalId
    duration_minutes: int | None = Field(
        default=None, ge=1, le=720, description="Minutes actually spent, when known"
    )


@declare(
    sources=WORKING_STATES,
    leads_to=progress("awaiting-contact"),
    effect=records.close_appointment("noshow"),
    journey=lambda data, narrator: (f"Did not attend appointment{_which(data, narrator)}", None),
    counted=Counted(4, "Appointments not attended (DNA)"),
)
class AppointmentDidNotAttend(EventBody):
    type: Literal["appointment.did_not_attend"]
    appointment_id: LocalId


def _appointment_cancelled(data: Mapping[str, Any], narrator: Narrator) -> tuple[str, str | None]:
    by = wording.CANCELLED_BY.get(str(data.get("cancelled_by")))
    return f"Appointment cancelled{' ' + by if by else ''}{_which(data, narrator)}", None


@declare(
    sources=WORKING_STATES,
    leads_to=progress("contacted"),
    effect=records.close_appointment("cancelled"),
    journey=_appointment_cancelled,
    counted=Counted(5, "Appointments cancelled"),
)
class AppointmentCancelled(EventBody):
    type: Literal["appointment.cancelled"]
    appointment_id: LocalId
    cancelled_by: Literal["patient", "service"] | None = None


def _prescribed(data: Mapping[str, Any], narrator: Narrator) -> tuple[str, str | None]:
    status_ = wording.PRESCRIPTION_STATUS.get(str(data.get("status")), ("proposed", ""))[0]
    category = narrator.display("prescription-category", data.get("category"))
    return f"Social prescription: {_prescription_name(data, None)} ({status_.lower()})", (
        f"Category: {category}" if category else None
    )


@declare(
    sources=WORKING_STATES,
    leads_to=progress("prescribed"),
    effect=records.prescribe,
    journey=_prescribed,
    counted=Counted(7, "Social prescriptions"),
)
class PrescriptionCreated(EventBody):
    """A social prescription co-produced with the person."""

    type: Literal["prescription.created"]
    prescription_id: LocalId
    category: PrescriptionCategory
    provider: ShortText = Field(description="The organisation that provides the support")
    activity: ShortText = Field(description="What the person will do there")
    status: PrescriptionStatus = "proposed"


def _prescription_changed(data: Mapping[str, Any], narrator: Narrator) -> tuple[str, str | None]:
    held = narrator.prescription(data.get("prescription_id"))
    name = _prescription_name({}, held) if held else _prescription_name(data, None)
    if data.get("status") in wording.PRESCRIPTION_STATUS:
        status_ = wording.PRESCRIPTION_STATUS[data["status"]][0].lower()
        return f"Social prescription {status_}: {name}", None
    return f"Social prescription changed: {name}", None


@declare(
    sources=RECORDABLE,
    effect=records.change_prescription,
    journey=_prescription_changed,
)
class PrescriptionUpdated(EventBody):
    type: Literal["prescription.updated"]
    prescription_id: LocalId
    status: PrescriptionStatus | None = None
    category: PrescriptionCategory | None = None
    provider: ShortText | None = None
    activity: ShortText | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> PrescriptionUpdated:
        if not self.data().keys() - {"prescription_id"}:
            raise ValueError("give at least one of status, category, provider, activity")
        return self


def _measured(data: Mapping[str, Any], narrator: Narrator) -> tuple[str, str | None]:
    instrument = str(data.get("instrument") or "SWEMWBS")
    stage = narrator.display("wellbeing-measure", data.get("stage"))
    items = data.get("items")
    score = ""
    if isinstance(items, list) and all(isinstance(item, int) for item in items):
        try:
            score = f": {wellbeing.metric_score(wellbeing.raw_score(items)):.2f}"
        except (ValueError, KeyError):
            score = ""
    text = f"Wellbeing measured ({instrument}){score}"
    return text + (f", {wording.lower(stage)}" if stage else ""), None


@declare(sources=RECORDABLE, effect=records.measure, journey=_measured)
class OutcomeRecorded(EventBody):
    """A SWEMWBS measurement: the seven answers in item order, each 1 (none of the time) to 5
    (all of the time)."""

    type: Literal["outcome.recorded"]
    instrument: Literal["SWEMWBS"] = "SWEMWBS"
    stage: Literal["start", "review", "end"]
    items: list[Annotated[int, Field(ge=1, le=5, strict=True)]] = Field(min_length=7, max_length=7)


class _Demographics(EventBody):
    """Equality and diversity monitoring: only what the person chose to give. The items are
    those of fhir/Questionnaire-equality-monitoring.json (app.fhir.equality), one field each."""

    type: Literal["demographics.recorded"]

    @model_validator(mode="after")
    def _gives_something(self) -> _Demographics:
        given = self.data()
        if not given:
            raise ValueError("give at least one item")
        for item in equality_items():
            value = given.get(item.key)
            if value is not None and not item.accepts(str(value)):
                raise ValueError(
                    f"{item.key} takes a code of its answer set "
                    "(fhir/Questionnaire-equality-monitoring.json)"
                )
        return self


def _equality_field(item: EqualityItem) -> Any:
    codes = ", ".join(code for code, _display in item.answers)
    kind = "one of" if not item.open else "the person's own words, or one of"
    return (ShortText | None, Field(default=None, description=f"{item.label}: {kind} {codes}"))


DemographicsRecorded = declare(
    sources=RECORDABLE,
    journey=says("Equality monitoring information recorded"),
    service_only=True,
)(
    create_model(
        "DemographicsRecorded",
        __base__=_Demographics,
        __doc__=_Demographics.__doc__,
        **{item.key: _equality_field(item) for item in equality_items()},
    )
)


def _on_hold(data: Mapping[str, Any], _narrator: Narrator) -> tuple[str, str | None]:
    why = wording.HOLD_REASONS.get(str(data.get("reason")))
    return "Support put on hold" + (f": {why}" if why else ""), None


@declare(sources=WORKING_STATES, leads_to=to(CaseState.ON_HOLD, "on-hold"), journey=_on_hold)
class CaseOnHold(EventBody):
    type: Literal["case.on_hold"]
    reason: Literal["patient-request", "unwell", "in-hospital", "other"] | None = None


def _resumed(move: Move) -> CaseStatus:
    return status(CaseState.IN_PROGRESS, move.progress_status or "awaiting-contact")


@declare(
    sources=frozenset({CaseState.ON_HOLD}),
    leads_to=_resumed,
    journey=says("Support resumed after a hold"),
)
class CaseResumed(EventBody):
    type: Literal["case.resumed"]


def _completed(move: Move) -> CaseStatus:
    reason = move.data.get("reason", "needs-met")
    if reason not in COMPLETION_REASONS:
        raise TransitionRefused(
            move.current.state, "case.completed", "reason must be needs-met or referred-on"
        )
    return status(CaseState.COMPLETED, reason, reason)


def _support_completed(data: Mapping[str, Any], _narrator: Narrator) -> tuple[str, str | None]:
    return f"Support completed: {wording.COMPLETED.get(str(data.get('reason')), 'needs met')}", None


@declare(sources=RECORDABLE, leads_to=_completed, journey=_support_completed)
class CaseCompleted(EventBody):
    type: Literal["case.completed"]
    reason: CompletionReason = "needs-met"


def _discharge(move: Move) -> CaseStatus:
    reason = move.data.get("reason")
    if reason not in DISCHARGE_REASONS:
        raise TransitionRefused(
            move.current.state,
            "case.discharged",
            f"reason must be one of {', '.join(DISCHARGE_REASONS)}",
        )
    return discharged(reason, move.contacted)


def _discharged_text(data: Mapping[str, Any], _narrator: Narrator) -> tuple[str, str | None]:
    reason = wording.DISCHARGED.get(str(data.get("reason")), "no reason given")
    return f"Discharged: {reason}", None


@declare(sources=OPEN_STATES, leads_to=_discharge, journey=_discharged_text)
class CaseDischarged(EventBody):
    type: Literal["case.discharged"]
    reason: DischargeReason


@declare(
    sources=OPEN_STATES,
    # Discharged (the pilot's outcome tables count it there), shown to the referrer as a
    # cancelled Task whose businessStatus and statusReason say why.
    leads_to=lambda _move: CaseStatus(
        CaseState.DISCHARGED, CONSENT_WITHDRAWN, "cancelled", CONSENT_WITHDRAWN
    ),
    journey=says("The person withdrew consent: the case is closed and nothing more is shared"),
)
class ConsentWithdrawn(EventBody):
    """The person withdrew their consent, or objected to the processing of their data: the case
    closes (discharged, Task cancelled with statusReason consent-withdrawn), every delivery of
    their data still queued is cancelled, and nothing more is sent but the closing Task to the
    referrer (and, where a platform holds the case, a cancellation carrying only our ids).
    Recorded by the service side; a referrer withdraws a referral by cancelling it."""

    type: Literal["consent.withdrawn"]
    reason: ConsentWithdrawalReason | None = Field(
        default=None,
        description="patient-request: the person withdrew consent; objection: the person "
        "objected to the processing of their data",
    )


# --- what is built from the registry ---------------------------------------------------------

EVENT_TYPES = frozenset(REGISTRY)
# The reports' monthly rows: event types counted by the month they happened, in row order.
COUNTED_ROWS: tuple[tuple[str, str], ...] = tuple(
    (name, counted.label)
    for name, counted in sorted(
        ((n, e.counted) for n, e in REGISTRY.items() if e.counted is not None),
        key=lambda item: item[1].row,
    )
)


class TransitionRefused(Exception):
    def __init__(self, current: CaseState | None, event_type: str, reason: str) -> None:
        super().__init__(reason)
        self.current = current
        self.event_type = event_type
        self.reason = reason
        self.allowed = allowed_events(current)


def allowed_events(current: CaseState | None) -> list[str]:
    if current is None:
        return sorted(name for name, declared in REGISTRY.items() if not declared.sources)
    return sorted(name for name, declared in REGISTRY.items() if current in declared.sources)


def next_status(
    current: CaseStatus | None,
    event_type: str,
    data: Mapping[str, Any],
    *,
    contacted: bool = False,
    progress_status: str | None = None,
) -> CaseStatus:
    """The status after ``event_type``; TransitionRefused when the registry has no such move.

    ``contacted``: the patient has been reached (decides how an inappropriate-referral discharge
    shows). ``progress_status``: the last in-progress business status (restored on resume).
    """
    state = current.state if current else None
    declared = REGISTRY.get(event_type)
    if declared is None:
        raise TransitionRefused(state, event_type, f"'{event_type}' is not a case event type")
    if not declared.sources:
        if current is not None:
            raise TransitionRefused(state, event_type, "The referral has already been received")
        return declared.leads_to(Move(status(CaseState.RECEIVED, ""), data, contacted, None))
    if current is None or current.state not in declared.sources:
        where = f"in state '{state}'" if state else "before the referral is received"
        raise TransitionRefused(state, event_type, f"'{event_type}' is not allowed {where}")
    return declared.leads_to(Move(current, data, contacted, progress_status))


def reaches_patient(event_type: str, data: Mapping[str, Any]) -> bool:
    """Whether this event shows the patient was reached (their first contact)."""
    declared = REGISTRY.get(event_type)
    return declared is not None and declared.reaches_patient(data)


# The body of any event type, chosen by ``type`` (the API's request body), built from the
# registry; type checkers see the base class.
if TYPE_CHECKING:
    CaseEventIn = EventBody
else:
    CaseEventIn = Annotated[
        Union[tuple(declared.body for declared in REGISTRY.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]
_EVENT: TypeAdapter[EventBody] = TypeAdapter(CaseEventIn)


def parse_event(event_type: str, data: dict[str, Any], *, where: str = "data") -> dict[str, Any]:
    """An event's data checked against its type's body, normalised; 422 naming the field."""
    try:
        model = _EVENT.validate_python({**data, "type": event_type})
    except ValidationError as exc:
        issues = []
        for error in exc.errors()[:20]:
            inside = ".".join(str(part) for part in validation_location(error)[1:])
            path = f"{where}.{inside}" if inside else where
            issues.append(Issue("value", f"{path}: {validation_message(error)}", inside or where))
        raise BusinessRuleViolation(issues[0].diagnostics, issues=issues) from None
    return model.data()
