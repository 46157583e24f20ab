"""The business rules a new referral must meet, and what we keep of it (issue: intake core).

``assess`` reads a ServiceRequest as R4 JSON, already valid R4 (bundled resources already
contained), and returns the referral to store, or raises one 422 listing every rule it breaks.
It reads the JSON itself, not a model of it: the R4 validation intake runs anyway checks every
element's type and form, and parsing the referral into the fhir.resources models as well cost
about a tenth of intake's CPU.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from app.errors import BusinessRuleViolation, Issue
from app.fhir import nhs_number
from app.fhir.codes import NHS_NUMBER_SYSTEM, ODS_ORGANISATION_SYSTEM, SERVICE_ID_SYSTEM
from app.fhir.referral_context import referral_context
from app.fhir.terminology import ReasonMap

ALLOWED_INTENTS = ("order", "original-order")
# Required bindings this checks itself (with its own message).
PRIORITIES = ("routine", "urgent", "asap", "stat")
GENDERS = ("male", "female", "other", "unknown")
MAX_IDENTIFIER_LENGTH = 255
_HEALTHCARE_SERVICE = re.compile(r"(?:^|/)HealthcareService/([A-Za-z0-9\-.]{1,64})$")
# Age bands the reports count (kept when retention removes the birth date): (lowest age, band).
AGE_BANDS = (
    (0, "under-18"),
    (18, "18-24"),
    (25, "25-34"),
    (35, "35-44"),
    (45, "45-54"),
    (55, "55-64"),
    (65, "65-74"),
    (75, "75-plus"),
)


@dataclass
class ReferralDraft:
    identifier_system: str
    identifier_value: str
    service_id: str | None
    nhs_number: str
    authored_on: str
    intent: str
    priority: str | None
    patient_name: str | None = None
    birth_date: str | None = None
    gender: str | None = None
    postcode: str | None = None
    phone: str | None = None
    requester_reference: str | None = None
    requester_display: str | None = None
    requester_ods: str | None = None
    referring_team: str | None = None
    consent_reference: str | None = None
    notes: str | None = None
    reasons: list[dict[str, Any]] = field(default_factory=list)
    # What the reports count, taken at intake (the birth date may later be purged).
    age_band: str | None = None
    referral_source: str | None = None
    staff_group: str | None = None
    referral_unit: str = "individual"


def age_band_on(birth_date: str | None, on: dt.date) -> str | None:
    """The band of the person's age on ``on``; a partial birth date ('1980', '1980-05') counts
    from its first day. None when there is no usable birth date or it is after ``on``."""
    if not birth_date:
        return None
    parts = birth_date.split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2][:2]) if len(parts) > 2 else 1
        born = dt.date(year, month, day)
    except (ValueError, IndexError):
        return None
    if born > on:
        return None
    age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return next(band for lowest, band in reversed(AGE_BANDS) if age >= lowest)


class _Rules:
    """Collects every broken rule so the referrer can fix them all in one go."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def fail(self, expression: str, diagnostics: str, code: str = "business-rule") -> None:
        self.issues.append(Issue(code, diagnostics, expression))


Resource = dict[str, Any]


def _contained(sr: Resource) -> dict[str, Resource]:
    return {res["id"]: res for res in sr.get("contained") or [] if "id" in res}


def _local(reference: str | None) -> str | None:
    return reference[1:] if reference and reference.startswith("#") else None


def _date_time(value: str) -> dt.datetime | dt.date | str:
    """A FHIR dateTime (valid R4) as its value: an instant, a date, or a partial date ('2023',
    '2023-01') as it is; a time Python cannot hold (a leap second) also stays text."""
    if "T" in value:
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if len(value) == 10:
        return dt.date.fromisoformat(value)
    return value


def _earliest_instant(value: Any) -> dt.datetime | None:
    """The first instant a FHIR dateTime (possibly partial: '2023', '2023-01') can mean."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):
        parts = value.split("-")
        try:
            year = int(parts[0])
            month = int(parts[1]) if len(parts) > 1 else 1
            return dt.datetime(year, month, 1, tzinfo=dt.UTC)
        except (ValueError, IndexError):
            return None
    return None


def _patient_details(draft: ReferralDraft, patient: Resource) -> None:
    names: list[Resource] = patient.get("name") or []
    if names:
        name = next((n for n in names if n.get("use") == "official"), names[0])
        draft.patient_name = (
            name.get("text")
            or " ".join([*(name.get("given") or []), name.get("family") or ""]).strip()
            or None
        )
    draft.birth_date = patient.get("birthDate")
    draft.gender = patient.get("gender")
    addresses: list[Resource] = patient.get("address") or []
    if addresses:
        address = next((a for a in addresses if a.get("use") == "home"), addresses[0])
        draft.postcode = address.get("postalCode")
    phones = [
        t for t in patient.get("telecom") or [] if t.get("system") == "phone" and t.get("value")
    ]
    if phones:
        draft.phone = next(
            (t["value"] for t in phones if t.get("use") == "mobile"), phones[0]["value"]
        )


def _nhs_numbers(identifiers: list[Resource] | None, where: str) -> list[tuple[str, str]]:
    return [
        (i["value"], f"{where}.identifier[{n}].value")
        for n, i in enumerate(identifiers or [])
        if i.get("system") == NHS_NUMBER_SYSTEM and i.get("value")
    ]


def _check_patient(
    rules: _Rules, sr: Resource, contained: dict[str, Resource], draft: ReferralDraft
) -> None:
    subject: Resource = sr.get("subject") or {}
    found: list[tuple[str, str]] = []
    identifier = subject.get("identifier") or {}
    if identifier.get("system") == NHS_NUMBER_SYSTEM and identifier.get("value"):
        found.append((identifier["value"], "ServiceRequest.subject.identifier.value"))
    local = _local(subject.get("reference"))
    if local is not None:
        patient = contained.get(local)
        if patient is None or patient.get("resourceType") != "Patient":
            rules.fail(
                "ServiceRequest.subject.reference",
                "subject refers to a contained or bundled resource that is not a Patient",
                "invalid",
            )
        else:
            index = next(i for i, r in enumerate(sr["contained"]) if r is patient)
            found += _nhs_numbers(patient.get("identifier"), f"ServiceRequest.contained[{index}]")
            gender = patient.get("gender")
            if gender is not None and gender not in GENDERS:
                rules.fail(
                    f"ServiceRequest.contained[{index}].gender",
                    f"gender must be one of {', '.join(GENDERS)}",
                    "code-invalid",
                )
            _patient_details(draft, patient)
    if not found:
        rules.fail(
            "ServiceRequest.subject",
            f"subject must carry an NHS number (identifier system {NHS_NUMBER_SYSTEM}), on the "
            "reference's identifier or on the bundled or contained Patient",
            "required",
        )
        return
    numbers = {nhs_number.normalise(value) for value, _ in found}
    if len(numbers) > 1:
        rules.fail(found[1][1], "The referral carries two different NHS numbers for its subject")
        return
    value, where = found[0]
    if not nhs_number.is_valid(value):
        rules.fail(
            where, "The NHS number is not valid (ten digits with a modulus-11 check digit)", "value"
        )
        return
    draft.nhs_number = nhs_number.normalise(value)


def _check_requester(
    rules: _Rules, sr: Resource, contained: dict[str, Resource], draft: ReferralDraft
) -> None:
    requester: Resource | None = sr.get("requester")
    if requester is None:
        rules.fail("ServiceRequest.requester", "requester (who refers) is required", "required")
        return
    reference: str | None = requester.get("reference")
    draft.requester_reference = reference
    draft.requester_display = requester.get("display")
    identifier = requester.get("identifier") or {}
    if identifier.get("system") == ODS_ORGANISATION_SYSTEM:
        draft.requester_ods = identifier.get("value")
    resource = contained.get(_local(reference) or "")
    if resource is not None:
        kind = resource.get("resourceType")
        organization = resource.get("organization")
        if kind == "PractitionerRole" and organization is not None:
            draft.referring_team = organization.get("display")
            ods = organization.get("identifier") or {}
            if ods.get("system") == ODS_ORGANISATION_SYSTEM:
                draft.requester_ods = draft.requester_ods or ods.get("value")
        elif kind in ("Organization", "CareTeam"):
            draft.referring_team = resource.get("name")
        # An Organization's or CareTeam's name is text; a Practitioner's is a list of HumanName.
        name = resource.get("name")
        draft.requester_display = draft.requester_display or (
            name if isinstance(name, str) else None
        )
    elif requester.get("type") in ("Organization", "CareTeam", "PractitionerRole") or (
        reference or ""
    ).startswith(("Organization/", "CareTeam/", "PractitionerRole/")):
        draft.referring_team = requester.get("display")


def _check_consent(
    rules: _Rules,
    sr: Resource,
    contained: dict[str, Resource],
    draft: ReferralDraft,
    *,
    required: bool,
) -> None:
    consents = {key: r for key, r in contained.items() if r.get("resourceType") == "Consent"}
    for index, info in enumerate(sr.get("supportingInfo") or []):
        reference = info.get("reference") or ""
        local = _local(reference)
        if local is not None and local in consents:
            continue
        if (
            info.get("type") == "Consent"
            or reference.startswith("Consent/")
            or "/Consent/" in reference
        ):
            draft.consent_reference = reference or f"ServiceRequest.supportingInfo[{index}]"
            return
    for key, consent in consents.items():
        provision = consent.get("provision") or {}
        if consent.get("status") == "active" and provision.get("type") != "deny":
            draft.consent_reference = f"#{key}"
            return
    if not required:
        return
    if consents:
        rules.fail(
            "ServiceRequest.contained.where(resourceType='Consent')",
            "The patient's Consent is not active (or denies sharing): the referral cannot be sent",
            "business-rule",
        )
        return
    rules.fail(
        "ServiceRequest.supportingInfo",
        "The patient's consent to share with the service is required: bundle or contain a Consent, "
        "or reference one in supportingInfo",
        "required",
    )


def _check_target(rules: _Rules, sr: Resource, draft: ReferralDraft) -> None:
    for index, performer in enumerate(sr.get("performer") or []):
        match = _HEALTHCARE_SERVICE.search(performer.get("reference") or "")
        if match:
            draft.service_id = match.group(1)
            return
        identifier = performer.get("identifier") or {}
        if identifier.get("system") == SERVICE_ID_SYSTEM:
            if identifier.get("value"):
                draft.service_id = identifier["value"]
                return
            rules.fail(
                f"ServiceRequest.performer[{index}].identifier.value", "has no value", "required"
            )


def _reasons(
    sr: Resource, contained: dict[str, Resource], reason_map: ReasonMap
) -> list[dict[str, Any]]:
    reasons = [reason_map.map_reason(concept) for concept in sr.get("reasonCode") or []]
    for reference in sr.get("reasonReference") or []:
        condition = contained.get(_local(reference.get("reference")) or "")
        if condition is None or condition.get("resourceType") != "Condition":
            continue
        # A social-need Condition (Gravity SDOH) carries its domain in category, not code.
        concepts = [
            c for c in [condition.get("code"), *(condition.get("category") or [])] if c is not None
        ]
        mapped = [reason_map.map_reason(c) for c in concepts]
        chosen = next((m for m in mapped if m["mapped"]), mapped[0] if mapped else None)
        if chosen is not None:
            reasons.append(chosen)
    return reasons


def assess(
    sr: Resource,
    *,
    now: dt.datetime,
    clock_skew: dt.timedelta,
    require_consent: bool,
    reason_map: ReasonMap,
) -> ReferralDraft:
    """The referral ``sr`` makes (a ServiceRequest as R4 JSON, already valid R4:
    app.fhir.parsing.check_r4), or 422 with every rule it breaks."""
    rules = _Rules()
    contained = _contained(sr)
    intent = sr.get("intent")
    priority = sr.get("priority")

    if sr.get("status") != "active":
        rules.fail("ServiceRequest.status", "status must be 'active' for a new referral", "value")
    if intent not in ALLOWED_INTENTS:
        rules.fail("ServiceRequest.intent", "intent must be 'order' or 'original-order'", "value")
    if priority is not None and priority not in PRIORITIES:
        rules.fail(
            "ServiceRequest.priority",
            f"priority must be one of {', '.join(PRIORITIES)}",
            "code-invalid",
        )
    if sr.get("doNotPerform"):
        rules.fail("ServiceRequest.doNotPerform", "a referral cannot be a do-not-perform request")

    identifier = next(
        (i for i in sr.get("identifier") or [] if i.get("system") and i.get("value")), None
    )
    if identifier is None:
        rules.fail(
            "ServiceRequest.identifier",
            "identifier (the referrer's own referral id, with system and value) is required",
            "required",
        )
    elif (
        len(identifier["system"]) > MAX_IDENTIFIER_LENGTH
        or len(identifier["value"]) > MAX_IDENTIFIER_LENGTH
    ):
        rules.fail(
            "ServiceRequest.identifier",
            "identifier system and value are limited to 255 characters",
            "value",
        )

    authored_on = ""
    earliest: dt.datetime | None = None
    given: str | None = sr.get("authoredOn")
    when = _date_time(given) if given is not None else None
    if when is None:
        rules.fail(
            "ServiceRequest.authoredOn",
            "authoredOn (when the referral was made) is required",
            "required",
        )
    else:
        # As an instant (its offset written +00:00) or a date, as the referral has always kept it.
        authored_on = when if isinstance(when, str) else when.isoformat()
        earliest = _earliest_instant(when)
        if earliest is None or len(authored_on) > 40:
            rules.fail(
                "ServiceRequest.authoredOn", "authoredOn is not a usable date and time", "value"
            )
        elif earliest > now + clock_skew:
            rules.fail("ServiceRequest.authoredOn", "authoredOn is in the future", "value")

    draft = ReferralDraft(
        identifier_system=identifier["system"] if identifier else "",
        identifier_value=identifier["value"] if identifier else "",
        service_id=None,
        nhs_number="",
        authored_on=authored_on,
        intent=intent or "",
        priority=priority,
        notes="\n".join(n["text"] for n in sr.get("note") or [] if n.get("text")) or None,
    )
    _check_patient(rules, sr, contained, draft)
    _check_requester(rules, sr, contained, draft)
    _check_consent(rules, sr, contained, draft, required=require_consent)
    _check_target(rules, sr, draft)
    draft.reasons = _reasons(sr, contained, reason_map)
    context = referral_context(sr)
    draft.referral_source = context.source
    draft.staff_group = context.staff_group
    draft.referral_unit = context.unit
    draft.age_band = age_band_on(draft.birth_date, (earliest or now).date())

    if rules.issues:
        raise BusinessRuleViolation(rules.issues[0].diagnostics, issues=rules.issues)
    return draft
