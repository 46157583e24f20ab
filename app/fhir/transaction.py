"""A transaction Bundle (Patient + ServiceRequest [+ Consent, Condition, QuestionnaireResponse])
turned into one ServiceRequest whose supporting resources are contained.

The referral is the unit we store and send on, so the resources that came with it travel with it;
``urn:uuid:`` references between entries become local ``#id`` references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from app.errors import BusinessRuleViolation, Issue

SUPPORTING_TYPES = ("Patient", "Consent", "Condition", "QuestionnaireResponse")


@dataclass(frozen=True)
class BundledEntry:
    resource_type: str
    contained_id: str | None  # None for the ServiceRequest itself


@dataclass(frozen=True)
class UnbundledReferral:
    service_request: dict[str, Any]
    entries: list[BundledEntry]
    if_none_exist: str | None
    service_request_entry: int = 0
    # contained position in the merged ServiceRequest -> the Bundle entry it came from
    entry_of_contained: dict[int, int] = field(default_factory=dict)

    def locate(self, issues: list[Issue]) -> list[Issue]:
        """Issues found in the merged ServiceRequest, pointed back at what the client sent."""
        return [
            replace(
                issue,
                expression=self._path(issue.expression) if issue.expression else None,
                diagnostics=_CONTAINED.sub(self._contained_path, issue.diagnostics).replace(
                    "ServiceRequest.", f"Bundle.entry[{self.service_request_entry}].resource."
                ),
            )
            for issue in issues
        ]

    def _contained_path(self, match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index in self.entry_of_contained:
            return f"Bundle.entry[{self.entry_of_contained[index]}].resource"
        return match.group(0)

    def _path(self, expression: str) -> str:
        located = _CONTAINED.sub(self._contained_path, expression, count=1)
        if located.startswith("ServiceRequest"):
            located = f"Bundle.entry[{self.service_request_entry}].resource" + located[14:]
        return located


_CONTAINED = re.compile(r"ServiceRequest\.contained\[(\d+)\]")


def _rewrite_references(node: Any, targets: dict[str, str]) -> None:
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


def unbundle(bundle: dict[str, Any]) -> UnbundledReferral:
    """The referral a structurally valid transaction Bundle carries; 422 for any other shape."""
    if bundle.get("type") != "transaction":
        raise BusinessRuleViolation(
            "Only transaction Bundles are accepted at POST /fhir",
            issue_code="not-supported",
            expression="Bundle.type",
        )
    entries = bundle.get("entry") or []
    issues: list[Issue] = []
    sr_index: int | None = None
    counts: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}]"
        resource = entry.get("resource")
        request = entry.get("request") or {}
        if not isinstance(resource, dict):
            issues.append(Issue("required", f"{where}.resource is required", f"{where}.resource"))
            continue
        kind = resource.get("resourceType")
        if request.get("method") != "POST":
            issues.append(
                Issue(
                    "not-supported",
                    f"{where}.request.method must be POST",
                    f"{where}.request.method",
                )
            )
        if kind == "ServiceRequest":
            if sr_index is not None:
                issues.append(
                    Issue(
                        "not-supported",
                        "A Bundle carries one referral (ServiceRequest)",
                        f"{where}.resource",
                    )
                )
            sr_index = index
        elif kind in SUPPORTING_TYPES:
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "Patient" and counts[kind] > 1:
                issues.append(
                    Issue("not-supported", "A Bundle carries one Patient", f"{where}.resource")
                )
        else:
            issues.append(
                Issue(
                    "not-supported",
                    "This resource type is not accepted in a referral Bundle (accepted: "
                    "ServiceRequest, "
                    f"{', '.join(SUPPORTING_TYPES)})",
                    f"{where}.resource",
                )
            )
    if sr_index is None and not issues:
        issues.append(Issue("required", "The Bundle carries no ServiceRequest", "Bundle.entry"))
    if issues:
        raise BusinessRuleViolation(issues[0].diagnostics, issues=issues)
    assert sr_index is not None

    service_request = dict(entries[sr_index]["resource"])
    contained = list(service_request.get("contained") or [])
    taken = {r.get("id") for r in contained if isinstance(r, dict)}
    targets: dict[str, str] = {}
    described: list[BundledEntry] = []
    sequence: dict[str, int] = {}
    sr_full_url = entries[sr_index].get("fullUrl")
    if sr_full_url:
        targets[sr_full_url] = "#"  # a contained resource pointing at its container
    supporting: list[dict[str, Any]] = []
    entry_of_contained: dict[int, int] = {}
    for index, entry in enumerate(entries):
        if index == sr_index:
            described.append(BundledEntry("ServiceRequest", None))
            continue
        resource = dict(entry["resource"])
        kind = resource["resourceType"]
        sequence[kind] = sequence.get(kind, 0) + 1
        local_id = kind.lower() if sequence[kind] == 1 else f"{kind.lower()}-{sequence[kind]}"
        while local_id in taken:
            local_id += "-b"
        taken.add(local_id)
        for key in (
            entry.get("fullUrl"),
            f"{kind}/{resource.get('id')}" if resource.get("id") else None,
        ):
            if key:
                targets[key] = f"#{local_id}"
        resource["id"] = local_id
        resource.pop("meta", None)
        entry_of_contained[len(contained) + len(supporting)] = index
        supporting.append(resource)
        described.append(BundledEntry(kind, local_id))
    service_request["contained"] = contained + supporting
    _rewrite_references(service_request, targets)
    if_none_exist = (entries[sr_index].get("request") or {}).get("ifNoneExist")
    return UnbundledReferral(
        service_request, described, if_none_exist, sr_index, entry_of_contained
    )
