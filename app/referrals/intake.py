"""The business rules a new referral must meet, and what we keep of it (issue: intake core).

``assess`` reads a structurally valid ServiceRequest (bundled resources already contained)
and returns the referral to store, or raises one 422 listing every rule it breaks.
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
# Required bindings the R4B models do not check.
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


def _contained(sr: Any) -> dict[str, Any]:
    return {res.id: res for res in (sr.contained or []) if getattr(res, "id", None)}


def _local(reference: str | None) -> str | None:
    return reference[1:] if reference and reference.startswith("#") else None


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


def _patient_details(draft: ReferralDraft, patient: Any) -> None:
    names = patient.name or []
    if names:
        name = next((n for n in names if n.use == "official"), names[0])
        draft.patient_name = (
            name.text or " ".join([*(name.given or []), name.family or ""]).strip() or None
        )
    if patient.birthDate is not None:
        draft.birth_date = str(patient.birthDate)
    draft.gender = patient.gender
    addresses = patient.address or []
    if addresses:
        address = next((a for a in addresses if a.use == "home"), addresses[0])
        draft.postcode = address.postalCode
    phones = [t for t in (patient.telecom or []) if t.system == "phone" and t.value]
    if phones:
        draft.phone = next((t.value for t in phones if t.use == "mobile"), phones[0].value)


def _nhs_numbers(identifiers: list[Any] | None, where: str) -> list[tuple[str, str]]:
    return [
        (i.value, f"{where}.identifier[{n}].value")
        for n, i in enumerate(identifiers or [])
        if i.system == NHS_NUMBER_SYSTEM and i.value
    ]


def _check_patient(rules: _Rules, sr: Any, contained: dict[str, Any], draft: ReferralDraft) -> None:
    subject = sr.subject
    found: list[tuple[str, str]] = []
    identifier = subject.identifier
    if identifier is not None and identifier.system == NHS_NUMBER_SYSTEM and identifier.value:
        found.append((identifier.value, "ServiceRequest.subject.identifier.value"))
    local = _local(subject.reference)
    if local is not None:
        patient = contained.get(local)
        if patient is None or patient.get_resource_type() != "Patient":
            rules.fail(
                "ServiceRequest.subject.reference",
                "subject refers to a contained or bundled resource that is not a Patient",
                "invalid",
            )
        else:
            index = next(i for i, r in enumerate(sr.contained) if r is patient)
            found += _nhs_numbers(patient.identifier, f"ServiceRequest.contained[{index}]")
            if patient.gender is not None and patient.gender not in GENDERS:
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
    rules: _Rules, sr: Any, contained: dict[str, Any], draft: ReferralDraft
) -> None:
    requester = sr.requester
    if requester is None:
        rules.fail("ServiceRequest.requester", "requester (who refers) is required", "required")
        return
    draft.requester_reference = requester.reference
    draft.requester_display = requester.display
    if requester.identifier is not None and requester.identifier.system == ODS_ORGANISATION_SYSTEM:
        draft.requester_ods = requester.identifier.value
    resource = contained.get(_local(requester.reference) or "")
    if resource is not None:
        kind = resource.get_resource_type()
        if kind == "PractitionerRole" and resource.organization is not None:
            draft.referring_team = resource.organization.display
            ods = resource.organization.identifier
            if ods is not None and ods.system == ODS_ORGANISATION_SYSTEM:
                draft.requester_ods = draft.requester_ods or ods.value
        elif kind in ("Organization", "CareTeam"):
            draft.referring_team = resource.name
        # An Organization's or CareTeam's name is text; a Practitioner's is a list of HumanName.
        name = getattr(resource, "name", None)
        draft.requester_display = draft.requester_display or (
            name if isinstance(name, str) else None
        )
    elif requester.type in ("Organization", "CareTeam", "PractitionerRole") or (
        requester.reference or ""
    ).startswith(("Organization/", "CareTeam/", "PractitionerRole/")):
        draft.referring_team = requester.display


def _check_consent(
    rules: _Rules, sr: Any, contained: dict[str, Any], draft: ReferralDraft, *, required: bool
) -> None:
    consents = {key: r for key, r in contained.items() if r.get_resource_type() == "Consent"}
    for index, info in enumerate(sr.supportingInfo or []):
        reference = info.reference or ""
        local = _local(reference)
        if local is not None and local in consents:
            continue
        if info.type == "Consent" or reference.startswith("Consent/") or "/Consent/" in reference:
            draft.consent_reference = reference or f"ServiceRequest.supportingInfo[{index}]"
            return
    for key, consent in consents.items():
        provision = consent.provision
        if consent.status == "active" and (provision is None or provision.type != "deny"):
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


def _check_target(rules: _Rules, sr: Any, draft: ReferralDraft) -> None:
    for index, performer in enumerate(sr.performer or []):
        match = _HEALTHCARE_SERVICE.search(performer.reference or "")
        if match:
            draft.service_id = match.group(1)
            return
        identifier = performer.identifier
        if identifier is not None and identifier.system == SERVICE_ID_SYSTEM:
            if identifier.value:
                draft.service_id = identifier.value
                return
            rules.fail(
                f"ServiceRequest.performer[{index}].identifier.value", "has no value", "required"
            )


def _reasons(sr: Any, contained: dict[str, Any], reason_map: ReasonMap) -> list[dict[str, Any]]:
    reasons = [reason_map.map_reason(concept) for concept in sr.reasonCode or []]
    for reference in sr.reasonReference or []:
        condition = contained.get(_local(reference.reference) or "")
        if condition is None or condition.get_resource_type() != "Condition":
            continue
        # A social-need Condition (Gravity SDOH) carries its domain in category, not code.
        concepts = [c for c in [condition.code, *(condition.category or [])] if c is not None]
        mapped = [reason_map.map_reason(c) for c in concepts]
        chosen = next((m for m in mapped if m["mapped"]), mapped[0] if mapped else None)
        if chosen is not None:
            reasons.append(chosen)
    return reasons


def assess(
    sr: Any,
    *,
    now: dt.datetime,
    clock_skew: dt.timedelta,
    require_consent: bool,
    reason_map: ReasonMap,
) -> ReferralDraft:
    rules = _Rules()
    contained = _contained(sr)

    if sr.status != "active":
        rules.fail("ServiceRequest.status", "status must be 'active' for a new referral", "value")
    if sr.intent not in ALLOWED_INTENTS:
        rules.fail("ServiceRequest.intent", "intent must be 'order' or 'original-order'", "value")
    if sr.priority is not None and sr.priority not in PRIORITIES:
        rules.fail(
            "ServiceRequest.priority",
            f"priority must be one of {', '.join(PRIORITIES)}",
            "code-invalid",
        )
    if sr.doNotPerform:
        rules.fail("ServiceRequest.doNotPerform", "a referral cannot be a do-not-perform request")

    identifier = next((i for i in sr.identifier or [] if i.system and i.value), None)
    if identifier is None:
        rules.fail(
            "ServiceRequest.identifier",
            "identifier (the referrer's own referral id, with system and value) is required",
            "required",
        )
    elif (
        len(identifier.system) > MAX_IDENTIFIER_LENGTH
        or len(identifier.value) > MAX_IDENTIFIER_LENGTH
    ):
        rules.fail(
            "ServiceRequest.identifier",
            "identifier system and value are limited to 255 characters",
            "value",
        )

    authored_on = ""
    if sr.authoredOn is None:
        rules.fail(
            "ServiceRequest.authoredOn",
            "authoredOn (when the referral was made) is required",
            "required",
        )
    else:
        authored_on = (
            sr.authoredOn.isoformat() if hasattr(sr.authoredOn, "isoformat") else str(sr.authoredOn)
        )
        earliest = _earliest_instant(sr.authoredOn)
        if earliest is None or len(authored_on) > 40:
            rules.fail(
                "ServiceRequest.authoredOn", "authoredOn is not a usable date and time", "value"
            )
        elif earliest > now + clock_skew:
            rules.fail("ServiceRequest.authoredOn", "authoredOn is in the future", "value")

    draft = ReferralDraft(
        identifier_system=identifier.system if identifier else "",
        identifier_value=identifier.value if identifier else "",
        service_id=None,
        nhs_number="",
        authored_on=authored_on,
        intent=sr.intent,
        priority=sr.priority,
        notes="\n".join(n.text for n in sr.note or [] if n.text) or None,
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
    referred = _earliest_instant(sr.authoredOn) if sr.authoredOn is not None else None
    draft.age_band = age_band_on(draft.birth_date, (referred or now).date())

    if rules.issues:
        raise BusinessRuleViolation(rules.issues[0].diagnostics, issues=rules.issues)
    return draft
