"""Who referred and which workforce the person belongs to (the staff-hub monitoring dataset),
mapped through data in ``fhir/`` like the reasons for referral (DESIGN §6).

A referral says them in ``ServiceRequest.extension`` (``EXTENSION_REFERRAL_SOURCE``,
``EXTENSION_STAFF_GROUP``: a ``valueCodeableConcept``) or as a ``ServiceRequest.category``
coding; a site maps its own codes by adding a group to ``fhir/ConceptMap-referral-source.json``
or ``fhir/ConceptMap-staff-group.json``. Whether a team (rather than one person) is referred is
``EXTENSION_REFERRAL_UNIT`` with ``valueCode`` ``individual`` or ``team``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from app.fhir.codes import CANONICAL_BASE, FHIR_DATA_DIR
from app.fhir.terminology import normalise_text

REFERRAL_SOURCE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/referral-source"
STAFF_GROUP_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/staff-group"
EXTENSION_REFERRAL_SOURCE = f"{CANONICAL_BASE}/StructureDefinition/referral-source"
EXTENSION_STAFF_GROUP = f"{CANONICAL_BASE}/StructureDefinition/staff-group"
EXTENSION_REFERRAL_UNIT = f"{CANONICAL_BASE}/StructureDefinition/referral-unit"
REFERRAL_UNITS = ("individual", "team")
SELF_REFERRAL = "self-referral"


@dataclass(frozen=True)
class CodeMap:
    """One of our CodeSystems and the ConceptMap onto it."""

    system: str
    displays: dict[str, str]  # our code -> display
    by_code: dict[tuple[str, str], str]  # (source system, source code) -> our code
    by_text: dict[str, str]  # normalised text -> our code

    def map_concept(self, concept: dict[str, Any]) -> str | None:
        """Our code for a CodeableConcept (R4 JSON), or None when nothing in it maps."""
        codings: list[dict[str, Any]] = concept.get("coding") or []
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            if system and code:
                found = self.by_code.get((system, code))
                if found:
                    return found
        texts = [concept.get("text"), *(c.get("display") for c in codings)]
        for text in texts:
            if text:
                found = self.by_text.get(normalise_text(text))
                if found:
                    return found
        return None


def load_code_map(name: str, folder: Path = FHIR_DATA_DIR) -> CodeMap:
    code_system = orjson.loads((folder / f"CodeSystem-{name}.json").read_bytes())
    concept_map = orjson.loads((folder / f"ConceptMap-{name}.json").read_bytes())
    system = code_system["url"]
    displays = {c["code"]: c["display"] for c in code_system["concept"]}
    text_system = f"{system}-text"
    by_code: dict[tuple[str, str], str] = {}
    by_text: dict[str, str] = {}
    for group in concept_map.get("group", []):
        if group.get("target") != system:
            continue
        for element in group.get("element", []):
            targets = [
                t["code"]
                for t in element.get("target", [])
                if t.get("equivalence") not in ("unmatched", "disjoint")
                and t.get("code") in displays
            ]
            if not targets:
                continue
            if group.get("source") == text_system:
                by_text[normalise_text(element["code"])] = targets[0]
            else:
                by_code[(group["source"], element["code"])] = targets[0]
    for code, display in displays.items():
        by_text.setdefault(normalise_text(display), code)
    return CodeMap(system=system, displays=displays, by_code=by_code, by_text=by_text)


@lru_cache(maxsize=1)
def referral_source_map() -> CodeMap:
    return load_code_map("referral-source")


@lru_cache(maxsize=1)
def staff_group_map() -> CodeMap:
    return load_code_map("staff-group")


@dataclass(frozen=True)
class ReferralContext:
    source: str | None  # a referral-source code, None when the referral does not say
    staff_group: str | None  # a staff-group code, None when the referral does not say
    unit: str  # individual | team


def _extension_concepts(sr: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [
        e["valueCodeableConcept"]
        for e in sr.get("extension") or []
        if e.get("url") == url and "valueCodeableConcept" in e
    ]


def _first_mapped(code_map: CodeMap, concepts: list[dict[str, Any]]) -> str | None:
    for concept in concepts:
        found = code_map.map_concept(concept)
        if found:
            return found
    return None


def referral_context(
    sr: dict[str, Any], *, sources: CodeMap | None = None, staff_groups: CodeMap | None = None
) -> ReferralContext:
    """The source, staff group and unit a ServiceRequest (R4 JSON, already valid R4) says. The
    extension wins over category; a referral whose requester is the patient is a
    self-referral."""
    sources = sources or referral_source_map()
    staff_groups = staff_groups or staff_group_map()
    categories: list[dict[str, Any]] = sr.get("category") or []
    source = _first_mapped(sources, _extension_concepts(sr, EXTENSION_REFERRAL_SOURCE) + categories)
    requester = sr.get("requester")
    if (
        source is None
        and requester is not None
        and (
            requester.get("type") == "Patient"
            or (requester.get("reference") or "").startswith("Patient/")
        )
    ):
        source = SELF_REFERRAL
    staff_group = _first_mapped(
        staff_groups, _extension_concepts(sr, EXTENSION_STAFF_GROUP) + categories
    )
    unit = "individual"
    for extension in sr.get("extension") or []:
        code = extension.get("valueCode")
        if extension.get("url") == EXTENSION_REFERRAL_UNIT and code in REFERRAL_UNITS:
            unit = code
    return ReferralContext(source=source, staff_group=staff_group, unit=unit)
