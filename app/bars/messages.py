"""A BaRS referral message (a FHIR message Bundle) read as the referral it carries.

BaRS (the NHS Booking and Referral Standard) sends a referral as a ``message`` Bundle to
``$process-message``: the first entry a ``MessageHeader`` (event ``servicerequest-request``,
reason ``new``, ``update`` or ``cancel``, ``focus`` the ServiceRequest), then the ServiceRequest
and what it needs (Patient, Encounter, CarePlan, Consent, Practitioner, PractitionerRole,
Organization, Flag, QuestionnaireResponse, ...). The bridge stores a referral as one
ServiceRequest with its supporting resources contained (as a transaction Bundle's are,
app.fhir.transaction), so the message becomes that ServiceRequest:

- the resources the ServiceRequest refers to (directly or through each other) are contained,
  ``urn:uuid:`` and ``Type/id`` references between entries becoming ``#id``; the resources that
  only refer to them (a Consent, a Flag, an Observation, a QuestionnaireResponse) are contained
  too and named in ``supportingInfo``, so every contained resource is referenced (R4 dom-3);
  the MessageHeader and what only it names (the sending and receiving organisations) are not;
- tolerance where a real sender may fall short (BaRS's own published examples do): a
  ServiceRequest without an identifier is identified by the message's full URL for it (system
  ``urn:ietf:rfc:3986``, which BaRS keeps the same in an update or a cancellation); without
  ``authoredOn``, the Bundle's timestamp; BaRS's intent ``plan`` is taken as ``order`` (a
  referral here is an order to the service).

Errors found in the ServiceRequest point back at the message's entries (``locate``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from app.errors import BadRequest, BusinessRuleViolation, Issue
from app.fhir.transaction import BundledEntry, UnbundledReferral

EVENTS_SYSTEM = "https://fhir.nhs.uk/CodeSystem/message-events-bars"
REASONS_SYSTEM = "https://fhir.nhs.uk/CodeSystem/message-reason-bars"
REQUEST_EVENT = "servicerequest-request"
RESPONSE_EVENT = "servicerequest-response"
REASONS = ("new", "update", "cancel")
URI_SYSTEM = "urn:ietf:rfc:3986"
_UUID_URN = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_HEADER = "Bundle.entry[0].resource"


@dataclass(frozen=True)
class Message:
    """What the bridge takes of a BaRS referral message."""

    bundle_id: str | None
    reason: str  # new | update | cancel
    source_endpoint: str | None  # where responses go back (MessageHeader.source.endpoint)
    destination_endpoint: str | None  # MessageHeader.destination[0].endpoint
    referral: UnbundledReferral  # the ServiceRequest, its supporting resources contained
    authored_on_supplied: bool  # whether authoredOn was the Bundle's timestamp

    @property
    def service_request(self) -> dict[str, Any]:
        return self.referral.service_request

    def locate(self, issues: list[Issue]) -> list[Issue]:
        return self.referral.locate(issues)


def _coded(concept: Any, system: str) -> str | None:
    if isinstance(concept, dict):
        if concept.get("system") == system and isinstance(concept.get("code"), str):
            return str(concept["code"])
        for coding in concept.get("coding") or []:
            found = _coded(coding, system)
            if found is not None:
                return found
    return None


def _references(node: Any) -> list[str]:
    out: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            reference = item.get("reference")
            if isinstance(reference, str):
                out.append(reference)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _rewrite(node: Any, targets: dict[str, str]) -> None:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            reference = item.get("reference")
            if isinstance(reference, str) and reference in targets:
                item["reference"] = targets[reference]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _header(bundle: dict[str, Any]) -> dict[str, Any]:
    if bundle.get("type") != "message":
        raise BadRequest(
            "$process-message takes a message Bundle (type 'message')",
            issue_code="invalid",
            expression="Bundle.type",
        )
    entries = bundle.get("entry") or []
    first = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
    if not isinstance(first, dict) or first.get("resourceType") != "MessageHeader":
        raise BadRequest(
            "The first entry of a message Bundle must be its MessageHeader",
            issue_code="invalid",
            expression="Bundle.entry[0].resource",
        )
    return first


def read_message(bundle: dict[str, Any]) -> Message:
    """The referral a structurally valid BaRS message carries; 400 or 422 naming the element."""
    header = _header(bundle)
    event = _coded(header.get("eventCoding"), EVENTS_SYSTEM)
    if event != REQUEST_EVENT:
        raise BusinessRuleViolation(
            f"This receiver takes BaRS '{REQUEST_EVENT}' messages (eventCoding system "
            f"{EVENTS_SYSTEM})",
            issue_code="not-supported",
            expression=f"{_HEADER}.eventCoding",
        )
    reason = _coded(header.get("reason"), REASONS_SYSTEM)
    if reason is None:
        raise BadRequest(
            f"MessageHeader.reason is required: one of {', '.join(REASONS)} ({REASONS_SYSTEM})",
            issue_code="required",
            expression=f"{_HEADER}.reason",
        )
    if reason not in REASONS:
        raise BusinessRuleViolation(
            f"MessageHeader.reason must be one of {', '.join(REASONS)}",
            issue_code="not-supported",
            expression=f"{_HEADER}.reason",
        )
    entries: list[dict[str, Any]] = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
    by_reference: dict[str, int] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        if isinstance(entry.get("fullUrl"), str):
            by_reference[entry["fullUrl"]] = index
        if resource.get("id"):
            by_reference[f"{resource.get('resourceType')}/{resource['id']}"] = index
    focus = [f.get("reference") for f in header.get("focus") or [] if isinstance(f, dict)]
    sr_index = next(
        (
            by_reference[ref]
            for ref in focus
            if ref in by_reference
            and entries[by_reference[ref]]["resource"].get("resourceType") == "ServiceRequest"
        ),
        None,
    )
    if sr_index is None:
        raise BusinessRuleViolation(
            "MessageHeader.focus must name the message's ServiceRequest (an entry of the Bundle)",
            issue_code="required",
            expression=f"{_HEADER}.focus",
        )
    message = Message(
        bundle_id=bundle.get("id") if isinstance(bundle.get("id"), str) else None,
        reason=reason,
        source_endpoint=_endpoint((header.get("source") or {}).get("endpoint")),
        destination_endpoint=_endpoint(
            next(
                (d.get("endpoint") for d in header.get("destination") or [] if isinstance(d, dict)),
                None,
            )
        ),
        referral=_referral(entries, sr_index, by_reference),
        authored_on_supplied=False,
    )
    return _with_defaults(message, bundle, entries[sr_index].get("fullUrl"))


def _endpoint(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _closure(
    entries: list[dict[str, Any]], sr_index: int, by_reference: dict[str, int]
) -> tuple[list[int], list[int]]:
    """The entries the ServiceRequest reaches by references, and those that only refer to them
    (each list in Bundle order)."""
    reached = {sr_index}
    stack = [sr_index]
    while stack:
        for reference in _references(entries[stack.pop()]["resource"]):
            target = by_reference.get(reference)
            if target is not None and target not in reached:
                if entries[target]["resource"].get("resourceType") == "MessageHeader":
                    continue
                reached.add(target)
                stack.append(target)
    referring: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index, entry in enumerate(entries):
            resource = entry.get("resource")
            if index in reached or index in referring or not isinstance(resource, dict):
                continue
            if resource.get("resourceType") == "MessageHeader":
                continue
            targets = {by_reference.get(r) for r in _references(resource)}
            if targets & (reached | referring):
                referring.add(index)
                changed = True
                # What it refers to comes along (a Flag's Location, say).
                for reference in _references(resource):
                    target = by_reference.get(reference)
                    if (
                        target is not None
                        and target not in reached
                        and target not in referring
                        and entries[target]["resource"].get("resourceType") != "MessageHeader"
                    ):
                        referring.add(target)
    return sorted(reached - {sr_index}), sorted(referring)


def _referral(
    entries: list[dict[str, Any]], sr_index: int, by_reference: dict[str, int]
) -> UnbundledReferral:
    reached, referring = _closure(entries, sr_index, by_reference)
    service_request = copy.deepcopy(entries[sr_index]["resource"])
    service_request.pop("id", None)
    contained = list(service_request.get("contained") or [])
    taken = {r.get("id") for r in contained if isinstance(r, dict)}
    targets: dict[str, str] = {}
    sr_full_url = entries[sr_index].get("fullUrl")
    if isinstance(sr_full_url, str):
        targets[sr_full_url] = "#"
    sequence: dict[str, int] = {}
    supporting: list[dict[str, Any]] = []
    entry_of_contained: dict[int, int] = {}
    described = [BundledEntry("ServiceRequest", None)]
    local_of: dict[int, str] = {}
    for index in sorted([*reached, *referring]):
        resource = copy.deepcopy(entries[index]["resource"])
        kind = str(resource.get("resourceType"))
        sequence[kind] = sequence.get(kind, 0) + 1
        local_id = kind.lower() if sequence[kind] == 1 else f"{kind.lower()}-{sequence[kind]}"
        while local_id in taken:
            local_id += "-b"
        taken.add(local_id)
        for key, target in by_reference.items():
            if target == index:
                targets[key] = f"#{local_id}"
        resource["id"] = local_id
        resource.pop("meta", None)
        local_of[index] = local_id
        entry_of_contained[len(contained) + len(supporting)] = index
        supporting.append(resource)
        described.append(BundledEntry(kind, local_id))
    # Every contained resource referenced from the referral (R4 dom-3): those that only refer
    # to it are its supporting information.
    named = set(_references(service_request))
    for resource in [entries[i]["resource"] for i in reached]:
        named.update(_references(resource))
    info = list(service_request.get("supportingInfo") or [])
    for index in referring:
        if not any(by_reference.get(r) == index for r in named):
            info.append({"reference": f"#{local_of[index]}"})
    if info:
        service_request["supportingInfo"] = info
    if supporting or contained:
        service_request["contained"] = contained + supporting
    _rewrite(service_request, targets)
    return UnbundledReferral(service_request, described, None, sr_index, entry_of_contained)


def _with_defaults(message: Message, bundle: dict[str, Any], sr_full_url: Any) -> Message:
    service_request = message.service_request
    identifiers = [i for i in service_request.get("identifier") or [] if isinstance(i, dict)]
    if (
        not any(i.get("system") and i.get("value") for i in identifiers)
        and isinstance(sr_full_url, str)
        and _UUID_URN.fullmatch(sr_full_url)
    ):
        service_request["identifier"] = [*identifiers, {"system": URI_SYSTEM, "value": sr_full_url}]
    supplied = False
    if not service_request.get("authoredOn") and isinstance(bundle.get("timestamp"), str):
        service_request["authoredOn"] = bundle["timestamp"]
        supplied = True
    if service_request.get("intent") == "plan":
        service_request["intent"] = "order"
    return Message(
        bundle_id=message.bundle_id,
        reason=message.reason,
        source_endpoint=message.source_endpoint,
        destination_endpoint=message.destination_endpoint,
        referral=message.referral,
        authored_on_supplied=supplied,
    )
