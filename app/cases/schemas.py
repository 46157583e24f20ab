"""Case events as the API takes them: one model per event type, chosen by ``type``.

Every source of a change (advisor API, platform adapter, simulator, referrer) ends up as one of
these before the domain applies it, so the same rules hold wherever an event comes from. Unknown
fields and impossible values are refused, naming the field, never echoing the value.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from app.cases.states import (
    COMPLETION_REASONS,
    CONSENT_WITHDRAWAL_REASONS,
    DISCHARGE_REASONS,
)
from app.db import utc_in_range
from app.errors import BusinessRuleViolation, Issue, validation_location, validation_message


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
assert set(CompletionReason.__args__) == set(COMPLETION_REASONS)  # type: ignore[attr-defined]
ConsentWithdrawalReason = Literal["patient-request", "objection"]
assert set(DischargeReason.__args__) == set(DISCHARGE_REASONS)  # type: ignore[attr-defined]
assert set(ConsentWithdrawalReason.__args__) == set(CONSENT_WITHDRAWAL_REASONS)  # type: ignore[attr-defined]

# Fields every event has besides its own data.
ENVELOPE_FIELDS = frozenset({"type", "occurred_at", "idempotency_key"})


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str  # each event type narrows it to its own name (the discriminator)
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


class ReferralReceived(_Event):
    type: Literal["referral.received"]


class ReferralUpdated(_Event):
    type: Literal["referral.updated"]


class ReferralCancelled(_Event):
    type: Literal["referral.cancelled"]


class CaseAccepted(_Event):
    """Registered with the service; optionally who will work with the person."""

    type: Literal["case.accepted"]
    team: ShortText | None = None
    advisor: ShortText | None = None


class CaseRejected(_Event):
    type: Literal["case.rejected"]
    reason: RejectionReason


class ContactAttempted(_Event):
    type: Literal["contact.attempted"]
    outcome: Literal["reached", "no-answer", "message-left"]
    method: Literal["telephone", "text", "email", "letter", "in-person"] | None = None


class AppointmentBooked(_Event):
    type: Literal["appointment.booked"]
    appointment_id: LocalId
    start: Instant
    appointment_type: AppointmentType
    duration_minutes: int = Field(ge=5, le=480, description="Minutes planned")


class AppointmentRescheduled(_Event):
    """The same appointment moved to another time (and maybe another type or length)."""

    type: Literal["appointment.rescheduled"]
    appointment_id: LocalId
    start: Instant
    appointment_type: AppointmentType
    duration_minutes: int = Field(ge=5, le=480, description="Minutes planned")


class AppointmentAttended(_Event):
    type: Literal["appointment.attended"]
    appointment_id: LocalId
    duration_minutes: int | None = Field(
        default=None, ge=1, le=720, description="Minutes actually spent, when known"
    )


class AppointmentDidNotAttend(_Event):
    type: Literal["appointment.did_not_attend"]
    appointment_id: LocalId


class AppointmentCancelled(_Event):
    type: Literal["appointment.cancelled"]
    appointment_id: LocalId
    cancelled_by: Literal["patient", "service"] | None = None


class PrescriptionCreated(_Event):
    """A social prescription co-produced with the person."""

    type: Literal["prescription.created"]
    prescription_id: LocalId
    category: PrescriptionCategory
    provider: ShortText = Field(description="The organisation that provides the support")
    activity: ShortText = Field(description="What the person will do there")
    status: PrescriptionStatus = "proposed"


class PrescriptionUpdated(_Event):
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


class OutcomeRecorded(_Event):
    """A SWEMWBS measurement: the seven answers in item order, each 1 (none of the time) to 5
    (all of the time)."""

    type: Literal["outcome.recorded"]
    instrument: Literal["SWEMWBS"] = "SWEMWBS"
    stage: Literal["start", "review", "end"]
    items: list[Annotated[int, Field(ge=1, le=5, strict=True)]] = Field(min_length=7, max_length=7)


class DemographicsRecorded(_Event):
    """Equality and diversity monitoring: only what the person chose to give."""

    type: Literal["demographics.recorded"]
    ethnicity: ShortText | None = None
    sex: ShortText | None = None
    gender_identity: ShortText | None = None
    sexual_orientation: ShortText | None = None
    disability: ShortText | None = None
    religion: ShortText | None = None
    age_band: ShortText | None = None
    carer: ShortText | None = None
    armed_forces: ShortText | None = None
    first_language: ShortText | None = None

    @model_validator(mode="after")
    def _gives_something(self) -> DemographicsRecorded:
        if not self.data():
            raise ValueError("give at least one item")
        return self


class CaseOnHold(_Event):
    type: Literal["case.on_hold"]
    reason: Literal["patient-request", "unwell", "in-hospital", "other"] | None = None


class CaseResumed(_Event):
    type: Literal["case.resumed"]


class CaseCompleted(_Event):
    type: Literal["case.completed"]
    reason: CompletionReason = "needs-met"


class CaseDischarged(_Event):
    type: Literal["case.discharged"]
    reason: DischargeReason


class ConsentWithdrawn(_Event):
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


CaseEventIn = Annotated[
    ReferralReceived
    | ReferralUpdated
    | ReferralCancelled
    | CaseAccepted
    | CaseRejected
    | ContactAttempted
    | AppointmentBooked
    | AppointmentRescheduled
    | AppointmentAttended
    | AppointmentDidNotAttend
    | AppointmentCancelled
    | PrescriptionCreated
    | PrescriptionUpdated
    | OutcomeRecorded
    | DemographicsRecorded
    | CaseOnHold
    | CaseResumed
    | CaseCompleted
    | CaseDischarged
    | ConsentWithdrawn,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter[Any](CaseEventIn)
# Any one of them, once parsed.
CaseEventModel = _Event


def parse_event(event_type: str, data: dict[str, Any], *, where: str = "data") -> dict[str, Any]:
    """An event's data checked against its type's model, normalised; 422 naming the field."""
    try:
        model = _EVENT.validate_python({**data, "type": event_type})
    except ValidationError as exc:
        issues = []
        for error in exc.errors()[:20]:
            inside = ".".join(str(part) for part in validation_location(error)[1:])
            path = f"{where}.{inside}" if inside else where
            issues.append(Issue("value", f"{path}: {validation_message(error)}", inside or where))
        raise BusinessRuleViolation(issues[0].diagnostics, issues=issues) from None
    result: dict[str, Any] = model.data()
    return result


# --- what the API answers ------------------------------------------------------------------


class CaseEventOut(BaseModel):
    event_id: str
    sequence: int = Field(description="Order in which the bridge recorded it")
    type: str
    occurred_at: dt.datetime
    recorded_at: dt.datetime
    source: str = Field(description="adapter / platform / advisor / clinician / system")
    idempotency_key: str | None = None
    data: dict[str, Any]
    resources: list[str] = Field(
        default_factory=list, description="FHIR resources this event made or changed"
    )


class CaseResources(BaseModel):
    """The FHIR resources of the case, readable under /fhir."""

    service_request: str = Field(examples=["ServiceRequest/4d1c…"])
    task: str = Field(examples=["Task/9e2a…"])
    appointments: list[str] = Field(default_factory=list)
    prescriptions: list[str] = Field(
        default_factory=list, description="Social prescriptions (ServiceRequests)"
    )
    observations: list[str] = Field(default_factory=list, description="SWEMWBS scores")
    questionnaire_responses: list[str] = Field(default_factory=list, description="SWEMWBS answers")


class CaseOut(BaseModel):
    case_id: str
    referral_id: str = Field(description="The referral's ServiceRequest id")
    service: str
    state: str
    business_status: str
    task_status: str
    status_reason: str | None
    team: str | None
    advisor: str | None
    external_reference: str | None = Field(description="The platform's own id for the case")
    received_at: dt.datetime
    first_contact_at: dt.datetime | None
    closed_at: dt.datetime | None
    updated_at: dt.datetime
    version: int
    summary: str | None = Field(description="The discharge summary, once the case has closed")
    allowed_events: list[str] = Field(description="Event types the case accepts now")
    resources: CaseResources
    events: list[CaseEventOut] = Field(description="In the order they happened (occurred_at)")


class RecordedEvent(BaseModel):
    """The event as recorded and where the case stands after it."""

    event: CaseEventOut
    case_id: str
    state: str
    business_status: str
    task_status: str
    version: int
    applied: bool = Field(
        description="false when this was a repeat of an idempotency key already applied"
    )


class TransitionRefusedDoc(BaseModel):
    """A 409: the case's state does not allow this event (or a record it names is closed)."""

    model_config = ConfigDict(title="TransitionRefused")
    type: str = "about:blank"
    title: str = Field(examples=["Conflict"])
    status: int = Field(examples=[409])
    detail: str = Field(
        examples=[
            "'case.resumed' is not allowed in state 'completed'. The case is 'completed'; "
            "events allowed now: none (the case is closed)"
        ]
    )
    current_state: str | None = Field(
        default=None, description="The case's state (when the state machine refused)"
    )
    allowed_events: list[str] | None = Field(
        default=None, description="The event types the case accepts now"
    )
    errors: list[dict[str, Any]] | None = None
