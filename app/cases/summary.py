"""The plain-language discharge summary a referrer gets when a case closes (Task.note)."""

from __future__ import annotations

from app.cases import wellbeing
from app.cases.records import CaseRecords
from app.cases.states import CONSENT_WITHDRAWN
from app.fhir.task import code_displays

CONSENT_WITHDRAWN_SUMMARY = "Closed: the person withdrew consent."


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def discharge_summary(state: str, reason: str, records: CaseRecords) -> str:
    """What happened, in words a clinician reads at a glance; no patient identifiers."""
    if reason == CONSENT_WITHDRAWN:
        # The person withdrew consent: the referrer learns that the case closed, and no more.
        return CONSENT_WITHDRAWN_SUMMARY
    if state == "completed":
        closed = f"Social prescribing support completed: {_reason('completion-reason', reason)}."
    else:
        closed = f"Discharged from social prescribing: {_reason('discharge-reason', reason)}."
    parts = [closed]

    prescriptions = records.prescriptions
    if prescriptions:
        categories = code_displays("prescription-category")
        listed = "; ".join(
            f"{p.activity} with {p.provider} ({categories.get(p.category, p.category)}, {p.status})"
            for p in prescriptions
        )
        parts.append(f"{_plural(len(prescriptions), 'social prescription')}: {listed}.")
    else:
        parts.append("No social prescriptions were made.")

    counts = {"fulfilled": 0, "noshow": 0, "cancelled": 0, "booked": 0}
    for appointment in records.appointments:
        counts[appointment.status] += 1
    if records.appointments:
        words = [f"{counts['fulfilled']} attended", f"{counts['noshow']} not attended"]
        if counts["cancelled"]:
            words.append(f"{counts['cancelled']} cancelled")
        if counts["booked"]:
            words.append(f"{counts['booked']} still booked")
        parts.append(f"Appointments: {', '.join(words)}.")
    else:
        parts.append("No appointments were booked.")

    scores = records.scores
    if len(scores) >= 2:
        first, last = scores[0].metric_score, scores[-1].metric_score
        parts.append(
            f"Wellbeing (SWEMWBS metric score): {first:.2f} at first, {last:.2f} at last "
            f"({wellbeing.describe_change(first, last)})."
        )
    elif scores:
        parts.append(
            f"Wellbeing (SWEMWBS metric score): {scores[0].metric_score:.2f}, measured once."
        )
    else:
        parts.append("Wellbeing was not measured.")
    return " ".join(parts)


def _reason(code_system: str, code: str) -> str:
    return code_displays(code_system).get(code, code).lower()
