"""Reasons for referral mapped to the pilot's 22 domains through data in ``fhir/`` (DESIGN §6).

A site maps its own codes by adding a group to ``fhir/ConceptMap-reason-for-referral.json``;
no code changes. Reasons that map to nothing are kept and marked unmapped, never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from app.fhir.codes import FHIR_DATA_DIR, REASON_SYSTEM, REASON_TEXT_SYSTEM

_SPACES = re.compile(r"\s+")
_EDGE_PUNCTUATION = " .,;:!?\"'()[]-"


def normalise_text(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower()).strip(_EDGE_PUNCTUATION)


@dataclass(frozen=True)
class ReasonMap:
    domains: dict[str, str]  # domain code -> display
    by_code: dict[tuple[str, str], str]  # (source system, source code) -> domain code
    by_text: dict[str, str]  # normalised text -> domain code

    def domain_for(self, system: str | None, code: str | None) -> str | None:
        if system and code:
            return self.by_code.get((system, code))
        return None

    def domain_for_text(self, text: str | None) -> str | None:
        if text:
            return self.by_text.get(normalise_text(text))
        return None

    def map_reason(self, concept: dict[str, Any]) -> dict[str, Any]:
        """One reasonCode (a CodeableConcept as R4 JSON, already valid R4) as a stored reason."""
        codings: list[dict[str, Any]] = concept.get("coding") or []
        domain = None
        for coding in codings:
            domain = self.domain_for(coding.get("system"), coding.get("code"))
            if domain:
                break
        if domain is None:
            domain = self.domain_for_text(concept.get("text"))
        if domain is None:
            for coding in codings:
                domain = self.domain_for_text(coding.get("display"))
                if domain:
                    break
        first = codings[0] if codings else {}
        return {
            "domain": domain,
            "domain_display": self.domains.get(domain) if domain else None,
            "mapped": domain is not None,
            "system": first.get("system"),
            "code": first.get("code"),
            "display": first.get("display"),
            "text": concept.get("text"),
        }


def load_reason_map(folder: Path = FHIR_DATA_DIR) -> ReasonMap:
    code_system = orjson.loads((folder / "CodeSystem-reason-for-referral.json").read_bytes())
    concept_map = orjson.loads((folder / "ConceptMap-reason-for-referral.json").read_bytes())
    domains = {c["code"]: c["display"] for c in code_system["concept"]}
    by_code: dict[tuple[str, str], str] = {}
    by_text: dict[str, str] = {}
    for group in concept_map.get("group", []):
        if group.get("target") != REASON_SYSTEM:
            continue
        source = group.get("source")
        for element in group.get("element", []):
            targets = [
                t
                for t in element.get("target", [])
                if t.get("equivalence") not in ("unmatched", "disjoint")
                and t.get("code") in domains
            ]
            if not targets:
                continue
            if source == REASON_TEXT_SYSTEM:
                by_text[normalise_text(element["code"])] = targets[0]["code"]
            else:
                by_code[(source, element["code"])] = targets[0]["code"]
    # Every domain's own name is always understood as text.
    for code, display in domains.items():
        by_text.setdefault(normalise_text(display), code)
    return ReasonMap(domains=domains, by_code=by_code, by_text=by_text)


@lru_cache(maxsize=1)
def reason_map() -> ReasonMap:
    return load_reason_map()
