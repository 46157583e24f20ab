"""The case state machine and its FHIR Task mapping (DESIGN §5).

Pure functions: the one domain function (``app.cases.service.apply_event``) asks here whether an
event may move a case and where to; nothing here touches the database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class CaseState(StrEnum):
    RECEIVED = "received"
    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    DISCHARGED = "discharged"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


# How far ahead of our clock an event may say it happened (the sender's clock may drift); the
# reports rely on it too (nothing can have happened later than now plus this).
FUTURE_TOLERANCE = dt.timedelta(minutes=5)

OPEN_STATES = frozenset(
    {CaseState.RECEIVED, CaseState.ACCEPTED, CaseState.IN_PROGRESS, CaseState.ON_HOLD}
)
CLOSED_STATES = frozenset(CaseState) - OPEN_STATES
WORKING_STATES = frozenset({CaseState.ACCEPTED, CaseState.IN_PROGRESS})

COMPLETION_REASONS = ("needs-met", "referred-on")
DISCHARGE_REASONS = (
    "did-not-attend",
    "unable-to-contact",
    "no-longer-required",
    "inappropriate-referral",
    "declined",
)

# Why a person withdrew consent (the consent.withdrawn event): codes only, never free text.
CONSENT_WITHDRAWAL_REASONS = ("patient-request", "objection")
# The business status and Task.statusReason of a case closed by consent.withdrawn.
CONSENT_WITHDRAWN = "consent-withdrawn"

# Business status an in-progress event leaves the case in.
_PROGRESS = {
    "appointment.booked": "appointment-booked",
    "appointment.rescheduled": "appointment-booked",
    "appointment.attended": "seen",
    "appointment.did_not_attend": "awaiting-contact",
    "appointment.cancelled": "contacted",
    "prescription.created": "prescribed",
}
# Events that record something without moving the case.
_RECORDING = frozenset({"prescription.updated", "outcome.recorded", "demographics.recorded"})

EVENT_TYPES = frozenset(
    {
        "referral.received",
        "referral.updated",
        "referral.cancelled",
        "case.accepted",
        "case.rejected",
        "contact.attempted",
        *_PROGRESS,
        *_RECORDING,
        "case.on_hold",
        "case.resumed",
        "case.completed",
        "case.discharged",
        "consent.withdrawn",
    }
)


@dataclass(frozen=True)
class CaseStatus:
    """Where a case stands: its state and the Task fields that show it."""

    state: CaseState
    business_status: str
    task_status: str
    status_reason: str | None = None


class TransitionRefused(Exception):
    def __init__(self, current: CaseState | None, event_type: str, reason: str) -> None:
        super().__init__(reason)
        self.current = current
        self.event_type = event_type
        self.reason = reason
        self.allowed = allowed_events(current)


def _status(state: CaseState, business: str, reason: str | None = None) -> CaseStatus:
    task_status = {
        CaseState.RECEIVED: "requested",
        CaseState.ACCEPTED: "accepted",
        CaseState.IN_PROGRESS: "in-progress",
        CaseState.ON_HOLD: "on-hold",
        CaseState.COMPLETED: "completed",
        CaseState.REJECTED: "rejected",
        CaseState.CANCELLED: "cancelled",
    }.get(state, "failed")
    return CaseStatus(state, business, task_status, reason)


def _discharged(reason: str, contacted: bool) -> CaseStatus:
    if reason in ("did-not-attend", "unable-to-contact"):
        task_status = "failed"
    elif reason == "inappropriate-referral" and not contacted:
        task_status = "rejected"
    else:
        task_status = "cancelled"
    return CaseStatus(CaseState.DISCHARGED, reason, task_status, reason)


_SOURCES: dict[str, frozenset[CaseState]] = {
    "referral.updated": OPEN_STATES,
    "referral.cancelled": OPEN_STATES,
    "case.accepted": frozenset({CaseState.RECEIVED}),
    "case.rejected": frozenset({CaseState.RECEIVED, CaseState.ACCEPTED}),
    "contact.attempted": WORKING_STATES,
    **dict.fromkeys(_PROGRESS, WORKING_STATES),
    **{event: WORKING_STATES | {CaseState.ON_HOLD} for event in _RECORDING},
    "case.on_hold": WORKING_STATES,
    "case.resumed": frozenset({CaseState.ON_HOLD}),
    "case.completed": WORKING_STATES | {CaseState.ON_HOLD},
    "case.discharged": OPEN_STATES,
    # The person withdraws consent (or objects to the processing) at any point while the case
    # is open: the case closes as discharged and no more of their data is sent anywhere (only
    # the closing Task to the referrer). See app.outbox.service.stop_for_withdrawal.
    "consent.withdrawn": OPEN_STATES,
}


def allowed_events(current: CaseState | None) -> list[str]:
    if current is None:
        return ["referral.received"]
    return sorted(event for event, sources in _SOURCES.items() if current in sources)


def next_status(
    current: CaseStatus | None,
    event_type: str,
    data: Mapping[str, Any],
    *,
    contacted: bool = False,
    progress_status: str | None = None,
) -> CaseStatus:
    """The status after ``event_type``; TransitionRefused when the table has no such move.

    ``contacted``: the patient has been reached (decides how an inappropriate-referral discharge
    shows). ``progress_status``: the last in-progress business status (restored on resume).
    """
    state = current.state if current else None
    if event_type not in EVENT_TYPES:
        raise TransitionRefused(state, event_type, f"'{event_type}' is not a case event type")
    if event_type == "referral.received":
        if current is not None:
            raise TransitionRefused(state, event_type, "The referral has already been received")
        return _status(CaseState.RECEIVED, "received")
    if current is None or state not in _SOURCES[event_type]:
        where = f"in state '{state}'" if state else "before the referral is received"
        raise TransitionRefused(state, event_type, f"'{event_type}' is not allowed {where}")

    match event_type:
        case (
            "referral.updated"
            | "prescription.updated"
            | "outcome.recorded"
            | "demographics.recorded"
        ):
            return current
        case "referral.cancelled":
            return _status(CaseState.CANCELLED, "cancelled-by-referrer", "cancelled-by-referrer")
        case "case.accepted":
            return _status(CaseState.ACCEPTED, "registered")
        case "case.rejected":
            return _status(CaseState.REJECTED, "rejected", str(data.get("reason") or "rejected"))
        case "contact.attempted":
            reached = data.get("outcome") == "reached"
            return _status(CaseState.IN_PROGRESS, "contacted" if reached else "awaiting-contact")
        case "case.on_hold":
            return _status(CaseState.ON_HOLD, "on-hold")
        case "case.resumed":
            return _status(CaseState.IN_PROGRESS, progress_status or "awaiting-contact")
        case "case.completed":
            reason = data.get("reason", "needs-met")
            if reason not in COMPLETION_REASONS:
                raise TransitionRefused(
                    state, event_type, "reason must be needs-met or referred-on"
                )
            return _status(CaseState.COMPLETED, reason, reason)
        case "case.discharged":
            reason = data.get("reason")
            if reason not in DISCHARGE_REASONS:
                raise TransitionRefused(
                    state, event_type, f"reason must be one of {', '.join(DISCHARGE_REASONS)}"
                )
            return _discharged(reason, contacted)
        case "consent.withdrawn":
            # Discharged (the pilot's outcome tables count it there), shown to the referrer as a
            # cancelled Task whose businessStatus and statusReason say why.
            return CaseStatus(
                CaseState.DISCHARGED, CONSENT_WITHDRAWN, "cancelled", CONSENT_WITHDRAWN
            )
    return _status(CaseState.IN_PROGRESS, _PROGRESS[event_type])


def consent_withdrawn(state: str, status_reason: str | None) -> bool:
    """Whether a case was closed by the person withdrawing consent (nothing more is sent)."""
    return state == CaseState.DISCHARGED and status_reason == CONSENT_WITHDRAWN


def is_contact(event_type: str, data: Mapping[str, Any]) -> bool:
    """Whether this event shows the patient was reached."""
    if event_type == "contact.attempted":
        return data.get("outcome") == "reached"
    return event_type == "appointment.attended"
