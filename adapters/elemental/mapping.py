"""Every field mapping between the bridge and Elemental, in one module (CONTRACT.md).

A site adjusts its mapping here and nowhere else:

- ``REASON_CATEGORIES``: our 22 reason-for-referral domains -> Elemental's referral categories;
- ``GENDERS``, ``URGENCY``: FHIR codes -> Elemental's client and referral vocabulary;
- ``PRESCRIPTION_CATEGORIES``, ``PRESCRIPTION_STATES``, ``CONTACT_RESULTS``,
  ``APPOINTMENT_FORMATS``, ``APPOINTMENT_OUTCOMES``, ``WELLBEING_TIMEPOINTS``,
  ``DEMOGRAPHIC_FIELDS``, ``REJECTION_REASONS``, ``CLOSURE_REASONS``: Elemental's vocabulary ->
  the bridge's canonical case events (DESIGN §5).

Nothing here does I/O. Errors name the field that is wrong, never its value: values may be
patient data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.base import CaseReference, InboundEvent, PlatformReferral
from app.fhir import nhs_number
from app.fhir.codes import NHS_NUMBER_SYSTEM, ODS_ORGANISATION_SYSTEM

SOURCE = "elemental"


class MappingError(ValueError):
    """A field we need is missing or holds something we cannot translate (names the field only)."""

    def __init__(self, field: str, problem: str = "is missing or invalid") -> None:
        super().__init__(f"'{field}' {problem}")
        self.field = field


# --- outbound: referral -> Elemental "create referral" -------------------------------------------

# Elemental's referral categories (its own taxonomy, also used for social prescriptions).
PLATFORM_CATEGORIES = (
    "Mental Health & Wellbeing",
    "Money & Debt",
    "Loneliness & Social Connection",
    "Housing & Homelessness",
    "Employment & Training",
    "Volunteering",
    "Learning & Courses",
    "Healthy Living",
    "Physical Activity & Sport",
    "Long-term Conditions & Physical Health",
    "Food & Essentials",
    "Family & Carers",
    "Other",
)

# Our 22 reason-for-referral domains (fhir/CodeSystem-reason-for-referral.json) -> category.
REASON_CATEGORIES: dict[str, str] = {
    "mental-health-wellbeing": "Mental Health & Wellbeing",
    "wellbeing": "Mental Health & Wellbeing",
    "finance-benefits-debt": "Money & Debt",
    "social-interaction": "Loneliness & Social Connection",
    "social-isolation": "Loneliness & Social Connection",
    "housing": "Housing & Homelessness",
    "employment-training": "Employment & Training",
    "volunteering": "Volunteering",
    "learning-skills": "Learning & Courses",
    "life-rooms-learning": "Learning & Courses",
    "motivation-for-learning": "Learning & Courses",
    "healthy-lifestyles": "Healthy Living",
    "healthy-eating": "Healthy Living",
    "weight-management": "Healthy Living",
    "physical-activity": "Physical Activity & Sport",
    "long-term-condition": "Long-term Conditions & Physical Health",
    "physical-health": "Long-term Conditions & Physical Health",
    "food-bank": "Food & Essentials",
    "food-support": "Food & Essentials",
    "food-poverty": "Food & Essentials",
    "family-support": "Family & Carers",
    "caring-childcare-support": "Family & Carers",
}
# A domain this table does not know yet still reaches the advisor rather than failing delivery.
FALLBACK_CATEGORY = "Other"

# FHIR administrative gender -> Elemental's client gender.
GENDERS: dict[str, str] = {
    "male": "male",
    "female": "female",
    "other": "other",
    "unknown": "not_known",
}

# FHIR request priority -> Elemental's referral urgency.
URGENCY: dict[str, str] = {
    "routine": "standard",
    "urgent": "urgent",
    "asap": "urgent",
    "stat": "urgent",
}
DEFAULT_URGENCY = "standard"

# Why we withdraw a referral on Elemental (the only cancellation the bridge sends).
CANCEL_REASON = "withdrawn_by_referrer"


def categories_for(reasons: Sequence[str]) -> list[str]:
    """Elemental categories for our domain codes, in first-seen order, without repeats.

    Elemental needs at least one; a referral whose reasons mapped to no domain gets the fallback.
    """
    seen: dict[str, None] = {}
    for code in reasons:
        seen.setdefault(REASON_CATEGORIES.get(code, FALLBACK_CATEGORY), None)
    return list(seen) or [FALLBACK_CATEGORY]


def referral_body(referral: PlatformReferral) -> dict[str, Any]:
    """The JSON body of ``POST /api/v1/referrals`` (CONTRACT.md, "Create a referral")."""
    sr = referral.service_request
    patient = _patient(sr)
    number = _nhs_number(sr, patient)
    if number is None:
        raise MappingError("ServiceRequest.subject.identifier", "has no NHS number")

    client: dict[str, Any] = {"nhs_number": number}
    name = _choose(_dicts(patient.get("name")), prefer=("official", "usual"))
    if name is not None:
        given = " ".join(g for g in name.get("given") or [] if isinstance(g, str) and g)
        family = name.get("family")
        _put(client, "first_name", given or None)
        _put(client, "last_name", family if isinstance(family, str) else None)
        if "first_name" not in client and "last_name" not in client:
            # Only an unstructured name: pass it whole rather than guess how to split it.
            _put(client, "full_name", _text(name.get("text")))
    _put(client, "date_of_birth", _text(patient.get("birthDate")))
    gender = patient.get("gender")
    _put(client, "gender", GENDERS.get(gender) if isinstance(gender, str) else None)
    phones = [
        t
        for t in _dicts(patient.get("telecom"))
        if t.get("system") == "phone" and t.get("use") != "old" and _text(t.get("value"))
    ]
    phone = _choose(phones, prefer=("mobile", "home"))
    _put(client, "phone", _text(phone.get("value")) if phone else None)
    addresses = [
        a
        for a in _dicts(patient.get("address"))
        if a.get("use") != "old" and _text(a.get("postalCode"))
    ]
    address = _choose(addresses, prefer=("home",))
    _put(client, "postcode", _text(address.get("postalCode")) if address else None)

    referrer: dict[str, Any] = {}
    requester = sr.get("requester")
    requester = requester if isinstance(requester, Mapping) else {}
    _put(referrer, "name", _text(requester.get("display")))
    # The ServiceRequest's ODS code first; else the organisation the referring client belongs to.
    _put(referrer, "organisation_code", _ods_code(sr, requester) or referral.referring_organisation)
    _put(referrer, "team", referral.referring_team)

    priority = sr.get("priority")
    body: dict[str, Any] = {
        "external_id": referral.referral_id,
        "case_id": referral.case_id,
        "service": referral.service_id,
        "urgency": URGENCY.get(priority, DEFAULT_URGENCY)
        if isinstance(priority, str)
        else DEFAULT_URGENCY,
        "referred_at": _referred_at(sr, referral.received_at),
        "client": client,
        "referrer": referrer,
        "categories": categories_for(referral.reasons),
        "referral_reasons": list(dict.fromkeys(referral.reasons)),
    }
    notes = [text for n in _dicts(sr.get("note")) if (text := _text(n.get("text")))]
    _put(body, "notes", "\n\n".join(notes) or None)
    return body


# What an amendment may change on Elemental (CONTRACT.md, "Update a referral"): the fields a
# referrer may change, as the create sends them.
UPDATE_FIELDS = ("urgency", "categories", "referral_reasons", "notes")
UPDATE_CLIENT_FIELDS = ("phone", "postcode")


def update_body(referral: PlatformReferral) -> dict[str, Any]:
    """The JSON body of ``PATCH /api/v1/referrals/{id}``: every field a referrer may change, at
    its current value (a field now empty is sent as null, so the platform clears it)."""
    created = referral_body(referral)
    body: dict[str, Any] = {"external_id": referral.referral_id}
    for name in UPDATE_FIELDS:
        body[name] = created.get(name)
    client = created["client"]
    body["client"] = {name: client.get(name) for name in UPDATE_CLIENT_FIELDS}
    return body


def cancel_body(case: CaseReference) -> dict[str, Any]:
    """The JSON body of ``POST /api/v1/referrals/{id}/cancel``."""
    return {"reason": CANCEL_REASON, "external_id": case.referral_id}


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    # Absent means "not known": the contract omits fields rather than sending nulls.
    if value is not None and value != "":
        target[key] = value


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _choose(items: Sequence[Mapping[str, Any]], prefer: Sequence[str]) -> Mapping[str, Any] | None:
    for use in prefer:
        for item in items:
            if item.get("use") == use:
                return item
    return items[0] if items else None


def _patient(sr: Mapping[str, Any]) -> Mapping[str, Any]:
    patients = [r for r in _dicts(sr.get("contained")) if r.get("resourceType") == "Patient"]
    subject = sr.get("subject")
    reference = subject.get("reference") if isinstance(subject, Mapping) else None
    if isinstance(reference, str) and reference.startswith("#"):
        for patient in patients:
            if patient.get("id") == reference[1:]:
                return patient
    return patients[0] if patients else {}


def _nhs_number(sr: Mapping[str, Any], patient: Mapping[str, Any]) -> str | None:
    subject = sr.get("subject")
    identifiers: list[Mapping[str, Any]] = []
    if isinstance(subject, Mapping) and isinstance(subject.get("identifier"), Mapping):
        identifiers.append(subject["identifier"])
    identifiers += _dicts(patient.get("identifier"))
    for identifier in identifiers:
        value = _text(identifier.get("value"))
        if identifier.get("system") == NHS_NUMBER_SYSTEM and value:
            return nhs_number.normalise(value)
    return None


def _ods_code(sr: Mapping[str, Any], requester: Mapping[str, Any]) -> str | None:
    candidates: list[Any] = [requester.get("identifier")]
    reference = requester.get("reference")
    if isinstance(reference, str) and reference.startswith("#"):
        for resource in _dicts(sr.get("contained")):
            if resource.get("id") != reference[1:]:
                continue
            if resource.get("resourceType") == "Organization":
                candidates += _dicts(resource.get("identifier"))
            organisation = resource.get("organization")
            if isinstance(organisation, Mapping):
                candidates.append(organisation.get("identifier"))
    for identifier in candidates:
        if isinstance(identifier, Mapping) and identifier.get("system") == ODS_ORGANISATION_SYSTEM:
            code = _text(identifier.get("value"))
            if code:
                return code
    return None


def _referred_at(sr: Mapping[str, Any], received_at: dt.datetime) -> str:
    # authoredOn may be a partial date; Elemental wants an instant, so fall back to our receipt.
    authored = sr.get("authoredOn")
    when = received_at
    if isinstance(authored, str) and "T" in authored:
        try:
            parsed = dt.datetime.fromisoformat(authored)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            when = parsed
    return _instant(when)


def _instant(when: dt.datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def referral_id_from(payload: Any) -> str | None:
    """The Elemental referral id of a create (2xx) response body, if it has one."""
    if isinstance(payload, Mapping):
        value = payload.get("id")
        if isinstance(value, str) and value.strip():
            return value
    return None


def error_code(payload: Any) -> str | None:
    """Elemental's machine-readable error code: ``{"error": {"code": ...}}``."""
    error = payload.get("error") if isinstance(payload, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    return code if isinstance(code, str) else None


def existing_referral_id(payload: Any) -> str | None:
    """The id a 409 ``referral_exists`` answer names (our external_id is already held)."""
    if error_code(payload) != "referral_exists":
        return None
    error = payload["error"]
    value = error.get("referral_id")
    return value if isinstance(value, str) and value.strip() else None


# --- inbound: Elemental events -> canonical case events -----------------------------------------

# Elemental's categories -> our prescription categories (fhir/CodeSystem-prescription-category).
PRESCRIPTION_CATEGORIES: dict[str, str] = {
    "Mental Health & Wellbeing": "mental-wellbeing",
    "Money & Debt": "benefits-money",
    "Loneliness & Social Connection": "social-connection",
    "Housing & Homelessness": "housing",
    "Employment & Training": "employment-volunteering",
    "Volunteering": "employment-volunteering",
    "Learning & Courses": "learning",
    "Healthy Living": "other",
    "Physical Activity & Sport": "physical-activity",
    "Long-term Conditions & Physical Health": "other",
    "Food & Essentials": "food",
    "Family & Carers": "other",
    "Other": "other",
}
# A category Elemental adds later is still recorded, as "other", rather than refused.
FALLBACK_PRESCRIPTION_CATEGORY = "other"

PRESCRIPTION_STATES: dict[str, str] = {
    "suggested": "proposed",
    "agreed": "active",
    "in_progress": "active",
    "finished": "completed",
    "client_declined": "declined",
}

CONTACT_RESULTS: dict[str, str] = {
    "spoke_to_client": "reached",
    "client_called_in": "reached",
    "no_answer": "no-answer",
    "wrong_number": "no-answer",
    "voicemail_left": "message-left",
    "text_sent": "message-left",
    "email_sent": "message-left",
    "letter_sent": "message-left",
}

# Our appointment types are face-to-face / telephone / group; video counts as remote (telephone).
APPOINTMENT_FORMATS: dict[str, str] = {
    "in_person": "face-to-face",
    "home_visit": "face-to-face",
    "phone": "telephone",
    "video": "telephone",
    "group_session": "group",
}

# The longest appointment the bridge records (app.cases.schemas).
MAX_APPOINTMENT_MINUTES = 720
CANCELLED_BY: dict[str, str] = {"cancelled_by_client": "patient", "cancelled_by_service": "service"}

APPOINTMENT_OUTCOMES: dict[str, str] = {
    "attended": "appointment.attended",
    "dna": "appointment.did_not_attend",
    "cancelled_by_client": "appointment.cancelled",
    "cancelled_by_service": "appointment.cancelled",
}

SWEMWBS_TOOL = "swemwbs"
WELLBEING_TIMEPOINTS: dict[str, str] = {
    "baseline": "start",
    "interim": "review",
    "final": "end",
}

# Elemental's EDI fields -> our demographics.recorded keys; other fields are not taken in.
DEMOGRAPHIC_FIELDS: dict[str, str] = {
    "ethnic_group": "ethnicity",
    "sexual_orientation": "sexual_orientation",
    "disability": "disability",
    "religion_or_belief": "religion",
    "gender_identity": "gender_identity",
    "sex": "sex",
    "age_band": "age_band",
    "carer": "carer",
    "armed_forces": "armed_forces",
    "first_language": "first_language",
}

REJECTION_REASONS: dict[str, str] = {
    "out_of_area": "out-of-area",
    "not_eligible": "not-eligible",
    "duplicate": "duplicate-referral",
    "insufficient_information": "insufficient-information",
    "no_capacity": "no-capacity",
    "other": "other",
}

# Elemental's closure reason -> (canonical event, its reason).
CLOSURE_REASONS: dict[str, tuple[str, str]] = {
    "goals_achieved": ("case.completed", "needs-met"),
    "referred_to_another_service": ("case.completed", "referred-on"),
    "did_not_attend": ("case.discharged", "did-not-attend"),
    "no_contact": ("case.discharged", "unable-to-contact"),
    "no_longer_required": ("case.discharged", "no-longer-required"),
    "inappropriate_referral": ("case.discharged", "inappropriate-referral"),
    "client_declined": ("case.discharged", "declined"),
}

Canonical = tuple[str, dict[str, Any]]


class _Fields:
    """Typed reads of one JSON object; errors carry the field's path, never its value."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise MappingError(path, "must be a JSON object")
        self.values: Mapping[str, Any] = value
        self.path = path

    def where(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def opt_text(self, name: str, *, blank_is_none: bool = False) -> str | None:
        value = self.values.get(name)
        if value is None or (blank_is_none and isinstance(value, str) and not value.strip()):
            return None
        # PostgreSQL cannot store NUL in text or jsonb (DESIGN §10): refuse it here.
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise MappingError(self.where(name))
        return value

    def text(self, name: str) -> str:
        value = self.opt_text(name)
        if value is None:
            raise MappingError(self.where(name))
        return value

    def choice(self, name: str, table: Mapping[str, Any]) -> Any:
        value = self.text(name)
        if value not in table:
            raise MappingError(self.where(name), "is not one of the known values")
        return table[value]

    def opt_int(self, name: str, low: int, high: int) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise MappingError(self.where(name), f"must be a whole number from {low} to {high}")
        return value

    def instant(self, name: str) -> dt.datetime:
        value = self.text(name)
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise MappingError(self.where(name), "must be a date-time with a UTC offset")
        try:
            return parsed.astimezone(dt.UTC)
        except OverflowError:  # 0001-01-01T00:00:00+23:59 has no UTC equivalent
            raise MappingError(self.where(name), "is out of range") from None

    def obj(self, name: str) -> _Fields:
        return _Fields(self.values.get(name), self.where(name))

    def array(self, name: str) -> list[Any]:
        value = self.values.get(name)
        if not isinstance(value, list):
            raise MappingError(self.where(name), "must be a JSON array")
        return value


def _accepted(data: _Fields) -> list[Canonical]:
    return [("case.accepted", {})]


def _rejected(data: _Fields) -> list[Canonical]:
    return [("case.rejected", {"reason": data.choice("rejection_reason", REJECTION_REASONS)})]


def _contact(data: _Fields) -> list[Canonical]:
    return [("contact.attempted", {"outcome": data.choice("result", CONTACT_RESULTS)})]


def _slot(data: _Fields) -> dict[str, Any]:
    start = data.instant("starts_at")
    end = data.instant("ends_at")
    if end <= start:
        raise MappingError(data.where("ends_at"), "must be after starts_at")
    return {
        "appointment_id": data.text("appointment_id"),
        "start": start.isoformat(),
        "appointment_type": data.choice("format", APPOINTMENT_FORMATS),
        "duration_minutes": round((end - start).total_seconds() / 60),
    }


def _booked(data: _Fields) -> list[Canonical]:
    return [("appointment.booked", _slot(data))]


def _rescheduled(data: _Fields) -> list[Canonical]:
    return [("appointment.rescheduled", _slot(data))]


def _appointment_outcome(data: _Fields) -> list[Canonical]:
    outcome = data.text("outcome")
    event = data.choice("outcome", APPOINTMENT_OUTCOMES)
    out: dict[str, Any] = {"appointment_id": data.text("appointment_id")}
    minutes = data.opt_int("minutes_spent", 0, MAX_APPOINTMENT_MINUTES)
    # Zero minutes spent says nothing about an attended appointment's length.
    if event == "appointment.attended" and minutes:
        out["duration_minutes"] = minutes
    if event == "appointment.cancelled":
        out["cancelled_by"] = CANCELLED_BY[outcome]
    return [(event, out)]


def _prescription(event: str) -> Callable[[_Fields], list[Canonical]]:
    def translate(data: _Fields) -> list[Canonical]:
        category = data.text("category")
        return [
            (
                event,
                {
                    "prescription_id": data.text("prescription_id"),
                    "category": PRESCRIPTION_CATEGORIES.get(
                        category, FALLBACK_PRESCRIPTION_CATEGORY
                    ),
                    "provider": data.obj("provider").text("name"),
                    "activity": data.obj("offer").text("title"),
                    "status": data.choice("state", PRESCRIPTION_STATES),
                },
            )
        ]

    return translate


def _wellbeing(data: _Fields) -> list[Canonical]:
    if data.text("tool").lower() != SWEMWBS_TOOL:
        # Other tools are Elemental's own business: nothing for the bridge to record.
        return []
    stage = data.choice("timepoint", WELLBEING_TIMEPOINTS)
    scores: dict[int, int] = {}
    for index, answer in enumerate(data.array("answers")):
        fields = _Fields(answer, data.where(f"answers[{index}]"))
        item = fields.opt_int("item", 1, 7)
        score = fields.opt_int("score", 1, 5)
        if item is None or score is None or item in scores:
            raise MappingError(fields.path, "needs a distinct item 1-7 and a score 1-5")
        scores[item] = score
    if len(scores) != 7:
        raise MappingError(data.where("answers"), "must answer all 7 SWEMWBS items")
    return [
        (
            "outcome.recorded",
            {"instrument": "SWEMWBS", "items": [scores[i] for i in range(1, 8)], "stage": stage},
        )
    ]


def _demographics(data: _Fields) -> list[Canonical]:
    answers = data.obj("answers")
    given = {
        ours: value
        for theirs, ours in DEMOGRAPHIC_FIELDS.items()
        if (value := answers.opt_text(theirs, blank_is_none=True)) is not None
    }
    return [("demographics.recorded", given)] if given else []


def _paused(data: _Fields) -> list[Canonical]:
    return [("case.on_hold", {})]


def _resumed(data: _Fields) -> list[Canonical]:
    return [("case.resumed", {})]


def _closed(data: _Fields) -> list[Canonical]:
    event, reason = data.choice("closure_reason", CLOSURE_REASONS)
    return [(event, {"reason": reason})]


# Elemental event type -> its translation. Types not here are ignored (CONTRACT.md).
EVENT_TRANSLATIONS: dict[str, Callable[[_Fields], list[Canonical]]] = {
    "client.registered": _accepted,
    "referral.rejected": _rejected,
    "contact.logged": _contact,
    "appointment.booked": _booked,
    "appointment.rescheduled": _rescheduled,
    "appointment.outcome_recorded": _appointment_outcome,
    "prescription.created": _prescription("prescription.created"),
    "prescription.updated": _prescription("prescription.updated"),
    "wellbeing.recorded": _wellbeing,
    "demographics.recorded": _demographics,
    "referral.paused": _paused,
    "referral.resumed": _resumed,
    "referral.closed": _closed,
}
PLATFORM_EVENT_TYPES = frozenset(EVENT_TRANSLATIONS)


@dataclass(frozen=True)
class PlatformEvent:
    """One Elemental event, translated: its id and the canonical events it becomes."""

    event_id: str
    type: str
    events: list[InboundEvent]


def idempotency_key(event_id: str, index: int, count: int) -> str:
    """Stable per platform event; ``:n`` (from 1) only when one event yields several."""
    base = f"{SOURCE}:{event_id}"
    return f"{base}:{index + 1}" if count > 1 else base


def translate_event(payload: Any) -> PlatformEvent:
    """An Elemental event envelope -> canonical events (none for a type we do not take)."""
    envelope = _Fields(payload, "")
    event_id = envelope.text("id")
    event_type = envelope.text("type")
    translation = EVENT_TRANSLATIONS.get(event_type)
    if translation is None:
        return PlatformEvent(event_id, event_type, [])
    occurred_at = envelope.instant("timestamp")
    data = envelope.obj("data")
    external_reference = data.text("referral_id")
    referral_id = data.opt_text("external_id", blank_is_none=True)
    canonical = translation(data)
    events = [
        InboundEvent(
            type=kind,
            occurred_at=occurred_at,
            idempotency_key=idempotency_key(event_id, index, len(canonical)),
            referral_id=referral_id,
            external_reference=external_reference,
            data=values,
        )
        for index, (kind, values) in enumerate(canonical)
    ]
    return PlatformEvent(event_id, event_type, events)
