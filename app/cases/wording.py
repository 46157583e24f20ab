"""Plain words for what happens in a case, as a clinician reads them (the journey page and the
event registry's descriptions share them)."""

from __future__ import annotations

import datetime as dt

IN_PROGRESS = {
    "awaiting-contact": "trying to contact the person",
    "contacted": "the person has been contacted",
    "appointment-booked": "appointment booked",
    "seen": "seen by the service",
    "prescribed": "social prescription made",
}
COMPLETED = {
    "needs-met": "needs met",
    "referred-on": "referred on to other support",
}
DISCHARGED = {
    "did-not-attend": "did not attend",
    "unable-to-contact": "unable to contact",
    "no-longer-required": "no longer needs the service",
    "inappropriate-referral": "inappropriate referral",
    "declined": "the person declined the service",
    "consent-withdrawn": "the person withdrew consent",
}
CONTACT_METHODS = {
    "telephone": "by telephone",
    "text": "by text message",
    "email": "by email",
    "letter": "by letter",
    "in-person": "in person",
}
HOLD_REASONS = {
    "patient-request": "at the person's request",
    "unwell": "the person is unwell",
    "in-hospital": "the person is in hospital",
    "other": "other reason",
}
# A social prescription's status: its words and the tone the page shows it in.
PRESCRIPTION_STATUS = {
    "proposed": ("Proposed", "info"),
    "active": ("Active", "info"),
    "completed": ("Completed", "good"),
    "declined": ("Declined", "neutral"),
}
CANCELLED_BY = {"patient": "by the person", "service": "by the service"}


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def minutes(value: object) -> str | None:
    return plural(value, "minute") if isinstance(value, int) else None


def lower(text: str) -> str:
    """A display name inside a sentence: "Unable to Contact" → "unable to contact"."""
    return text.lower()


def instant(value: object) -> dt.datetime | None:
    """An ISO 8601 instant from event data, or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
