"""The states of a case and their FHIR Task mapping (DESIGN §5): the vocabulary the event
registry (``app.cases.events``) builds the state machine from. Nothing here touches the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum


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


@dataclass(frozen=True)
class CaseStatus:
    """Where a case stands: its state and the Task fields that show it."""

    state: CaseState
    business_status: str
    task_status: str
    status_reason: str | None = None


def status(state: CaseState, business: str, reason: str | None = None) -> CaseStatus:
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


def discharged(reason: str, contacted: bool) -> CaseStatus:
    if reason in ("did-not-attend", "unable-to-contact"):
        task_status = "failed"
    elif reason == "inappropriate-referral" and not contacted:
        task_status = "rejected"
    else:
        task_status = "cancelled"
    return CaseStatus(CaseState.DISCHARGED, reason, task_status, reason)


def consent_withdrawn(state: str, status_reason: str | None) -> bool:
    """Whether a case was closed by the person withdrawing consent (nothing more is sent)."""
    return state == CaseState.DISCHARGED and status_reason == CONSENT_WITHDRAWN
