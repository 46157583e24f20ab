"""What a referrer may change in a referral it holds open, and what an update changes (DESIGN
§11: amendments never vanish).

A referrer may change the reasons (reasonCode, reasonReference and the contained Conditions),
the notes, the priority, the patient's contact details (the contained Patient's telecom and
address) and the consent (supportingInfo and the contained Consents); and cancel it (status
revoked, a change of status alone). Everything else stays as it was received. Element names
here are R4's (the resource has been validated), never values.
"""

from __future__ import annotations

from typing import Any

from app.fhir.codes import NHS_NUMBER_SYSTEM

CHANGEABLE_ELEMENTS = ("priority", "note", "reasonCode", "reasonReference", "supportingInfo")
CHANGEABLE_CONTAINED = ("Condition", "Consent")
PATIENT_CONTACT = ("telecom", "address")
# Never content: our own meta and id, the narrative, and status (a cancellation says it).
NOT_CONTENT = ("id", "meta", "text", "status")
CHANGEABLE = (
    "a referrer may change the reasons (reasonCode, reasonReference, contained Conditions), "
    "note, priority, the patient's telecom and address, and the consent (supportingInfo, "
    "contained Consents); or cancel with status 'revoked' alone"
)


def stored_resource(raw: dict[str, Any]) -> dict[str, Any]:
    """What we keep of an accepted ServiceRequest: everything but the id and our meta."""
    resource = {k: v for k, v in raw.items() if k not in ("id", "meta")}
    meta = raw.get("meta")
    if isinstance(meta, dict):
        kept = {k: meta[k] for k in ("profile", "tag", "security") if k in meta}
        if kept:
            resource["meta"] = kept
    return resource


def content(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as compared with a repeat: without id, meta, narrative and status."""
    return {k: v for k, v in resource.items() if k not in NOT_CONTENT}


def _contained(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in resource.get("contained") or [] if isinstance(r, dict)]


def _subject_patient(resource: dict[str, Any]) -> dict[str, Any] | None:
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    if isinstance(reference, str) and reference.startswith("#"):
        for item in _contained(resource):
            if item.get("resourceType") == "Patient" and item.get("id") == reference[1:]:
                return item
    return None


def _fixed_contained(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("resourceType") == "Patient":
        return {k: v for k, v in item.items() if k not in PATIENT_CONTACT}
    return item


def fixed_differences(held: dict[str, Any], incoming: dict[str, Any]) -> list[str]:
    """Where ``incoming`` changes what may not change (FHIRPath, in the incoming resource)."""
    old = content(held)
    new = content(incoming)
    out = [
        f"ServiceRequest.{key}"
        for key in sorted((set(old) | set(new)) - {"contained", *CHANGEABLE_ELEMENTS})
        if old.get(key) != new.get(key)
    ]
    kept = {
        item.get("id"): _fixed_contained(item)
        for item in _contained(held)
        if item.get("resourceType") not in CHANGEABLE_CONTAINED
    }
    for index, item in enumerate(new.get("contained") or []):
        if not isinstance(item, dict) or item.get("resourceType") in CHANGEABLE_CONTAINED:
            continue
        before = kept.pop(item.get("id"), None)
        after = _fixed_contained(item)
        if before is None or before.get("resourceType") != after.get("resourceType"):
            out.append(f"ServiceRequest.contained[{index}]")
            continue
        out += [
            f"ServiceRequest.contained[{index}].{key}"
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
        ]
    if kept:
        out.append("ServiceRequest.contained")  # a resource contained before is missing
    return out


def changed_elements(held: dict[str, Any], incoming: dict[str, Any]) -> list[str]:
    """What an amendment changes, by element name: the referral's own elements, contained
    Conditions or Consents, and the Patient's contact details."""
    out = [name for name in CHANGEABLE_ELEMENTS if held.get(name) != incoming.get(name)]
    for kind in CHANGEABLE_CONTAINED:
        before = [r for r in _contained(held) if r.get("resourceType") == kind]
        after = [r for r in _contained(incoming) if r.get("resourceType") == kind]
        if before != after:
            out.append(f"contained.{kind}")
    old_patient = _subject_patient(held) or {}
    new_patient = _subject_patient(incoming) or {}
    out += [
        f"Patient.{name}"
        for name in PATIENT_CONTACT
        if old_patient.get(name) != new_patient.get(name)
    ]
    return out


def patient_of(resource: dict[str, Any], nhs_number: str) -> dict[str, Any]:
    """The referral's Patient (the contained one its subject names, without id and our meta),
    or one made of the subject's NHS number; either way carrying the NHS number."""
    found = _subject_patient(resource)
    if found is None:
        patient: dict[str, Any] = {}
    else:
        patient = stored_resource({k: v for k, v in found.items() if k != "resourceType"})
    identifiers = [i for i in patient.get("identifier") or [] if isinstance(i, dict)]
    if not any(i.get("system") == NHS_NUMBER_SYSTEM for i in identifiers):
        patient["identifier"] = [
            {"system": NHS_NUMBER_SYSTEM, "value": nhs_number},
            *identifiers,
        ]
    return patient
