"""The state table of DESIGN §5, row by row."""

import pytest

from app.cases.events import TransitionRefused, allowed_events, next_status
from app.cases.states import CLOSED_STATES, CaseState, CaseStatus

S = CaseState


def status(state: CaseState, business: str = "x", task: str = "x") -> CaseStatus:
    return CaseStatus(state, business, task)


def test_received() -> None:
    assert next_status(None, "referral.received", {}) == CaseStatus(
        S.RECEIVED, "received", "requested"
    )


def test_accepted() -> None:
    assert next_status(status(S.RECEIVED), "case.accepted", {}) == CaseStatus(
        S.ACCEPTED, "registered", "accepted"
    )


@pytest.mark.parametrize(
    ("event", "data", "business"),
    [
        ("contact.attempted", {"outcome": "no-answer"}, "awaiting-contact"),
        ("contact.attempted", {"outcome": "message-left"}, "awaiting-contact"),
        ("contact.attempted", {"outcome": "reached"}, "contacted"),
        ("appointment.booked", {}, "appointment-booked"),
        ("appointment.rescheduled", {}, "appointment-booked"),
        ("appointment.attended", {}, "seen"),
        ("appointment.did_not_attend", {}, "awaiting-contact"),
        ("appointment.cancelled", {}, "contacted"),
        ("prescription.created", {}, "prescribed"),
    ],
)
def test_in_progress(event: str, data: dict[str, str], business: str) -> None:
    for start in (S.ACCEPTED, S.IN_PROGRESS):
        assert next_status(status(start), event, data) == CaseStatus(
            S.IN_PROGRESS, business, "in-progress"
        )


def test_recording_events_keep_the_status() -> None:
    current = CaseStatus(S.IN_PROGRESS, "seen", "in-progress")
    for event in (
        "outcome.recorded",
        "demographics.recorded",
        "prescription.updated",
        "referral.updated",
    ):
        assert next_status(current, event, {}) == current


def test_on_hold_and_resume_restores_progress() -> None:
    held = next_status(CaseStatus(S.IN_PROGRESS, "seen", "in-progress"), "case.on_hold", {})
    assert held == CaseStatus(S.ON_HOLD, "on-hold", "on-hold")
    resumed = next_status(held, "case.resumed", {}, progress_status="seen")
    assert resumed == CaseStatus(S.IN_PROGRESS, "seen", "in-progress")


@pytest.mark.parametrize("reason", ["needs-met", "referred-on"])
def test_completed(reason: str) -> None:
    assert next_status(status(S.IN_PROGRESS), "case.completed", {"reason": reason}) == CaseStatus(
        S.COMPLETED, reason, "completed", reason
    )


@pytest.mark.parametrize(
    ("reason", "contacted", "task_status"),
    [
        ("did-not-attend", True, "failed"),
        ("unable-to-contact", False, "failed"),
        ("no-longer-required", True, "cancelled"),
        ("declined", False, "cancelled"),
        ("inappropriate-referral", False, "rejected"),
        ("inappropriate-referral", True, "cancelled"),
    ],
)
def test_discharged(reason: str, contacted: bool, task_status: str) -> None:
    result = next_status(
        status(S.IN_PROGRESS), "case.discharged", {"reason": reason}, contacted=contacted
    )
    assert result == CaseStatus(S.DISCHARGED, reason, task_status, reason)


def test_rejected() -> None:
    result = next_status(status(S.RECEIVED), "case.rejected", {"reason": "out of area"})
    assert (result.state, result.task_status, result.status_reason) == (
        S.REJECTED,
        "rejected",
        "out of area",
    )


def test_cancelled_by_referrer() -> None:
    for start in (S.RECEIVED, S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD):
        result = next_status(status(start), "referral.cancelled", {})
        assert result == CaseStatus(
            S.CANCELLED, "cancelled-by-referrer", "cancelled", "cancelled-by-referrer"
        )


def test_consent_withdrawn_closes_any_open_case() -> None:
    for start in (S.RECEIVED, S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD):
        assert "consent.withdrawn" in allowed_events(start)
        for data in ({}, {"reason": "patient-request"}, {"reason": "objection"}):
            result = next_status(status(start), "consent.withdrawn", data)
            assert result == CaseStatus(
                S.DISCHARGED, "consent-withdrawn", "cancelled", "consent-withdrawn"
            )


@pytest.mark.parametrize("closed", sorted(CLOSED_STATES))
def test_closed_cases_accept_nothing(closed: CaseState) -> None:
    assert allowed_events(closed) == []
    for event in ("referral.cancelled", "consent.withdrawn"):
        with pytest.raises(TransitionRefused) as refused:
            next_status(status(closed), event, {})
        assert refused.value.current is closed


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.RECEIVED, "appointment.booked"),
        (S.RECEIVED, "case.completed"),
        (S.ACCEPTED, "case.accepted"),
        (S.ON_HOLD, "appointment.attended"),
        (S.IN_PROGRESS, "case.resumed"),
        (S.IN_PROGRESS, "case.rejected"),
    ],
)
def test_transitions_not_in_the_table_are_refused(state: CaseState, event: str) -> None:
    with pytest.raises(TransitionRefused) as refused:
        next_status(status(state), event, {})
    assert event not in refused.value.allowed
    assert refused.value.allowed == allowed_events(state)


def test_received_twice_is_refused() -> None:
    with pytest.raises(TransitionRefused):
        next_status(status(S.RECEIVED), "referral.received", {})


def test_unknown_event_and_bad_reasons_are_refused() -> None:
    with pytest.raises(TransitionRefused):
        next_status(status(S.RECEIVED), "case.exploded", {})
    with pytest.raises(TransitionRefused):
        next_status(status(S.IN_PROGRESS), "case.completed", {"reason": "bored"})
    with pytest.raises(TransitionRefused):
        next_status(status(S.IN_PROGRESS), "case.discharged", {})
