"""Checks on the FHIR R4 terminology artefacts in fhir/ (data only, no Python)."""

import importlib
import json
import re
from pathlib import Path

import pytest

FHIR_DIR = Path(__file__).resolve().parents[2] / "fhir"
BASE = "https://fhir.spbridge.org"
REASON_CS = f"{BASE}/CodeSystem/reason-for-referral"
TEXT_SYSTEM = f"{BASE}/CodeSystem/reason-for-referral-text"

REASON_CODES = [
    ("mental-health-wellbeing", "Mental Health and Wellbeing"),
    ("finance-benefits-debt", "Finance, Benefits and Debt Advice"),
    ("social-interaction", "Social Interaction"),
    ("housing", "Housing"),
    ("social-isolation", "Social Isolation"),
    ("wellbeing", "Wellbeing"),
    ("employment-training", "Employment and Training"),
    ("healthy-lifestyles", "Healthy Lifestyles Support"),
    ("learning-skills", "Learning and Skills Development"),
    ("long-term-condition", "Long-term Condition Management"),
    ("healthy-eating", "Healthy Eating"),
    ("life-rooms-learning", "Life Rooms Learning"),
    ("volunteering", "Volunteering"),
    ("family-support", "Family Support"),
    ("physical-health", "Physical Health"),
    ("weight-management", "Weight Management"),
    ("food-bank", "Food Bank"),
    ("food-support", "Food Support"),
    ("motivation-for-learning", "Motivation for Learning"),
    ("food-poverty", "Food Poverty"),
    ("physical-activity", "Physical Activity"),
    ("caring-childcare-support", "Caring/Childcare Support"),
]

JSON_FILES = sorted(FHIR_DIR.glob("*.json"))


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _resources(resource_type):
    return [r for r in map(_load, JSON_FILES) if r.get("resourceType") == resource_type]


def _codesystems_by_url():
    return {cs["url"]: cs for cs in _resources("CodeSystem")}


def _all_codes(concepts):
    for c in concepts or []:
        yield c["code"]
        yield from _all_codes(c.get("concept"))


def test_fhir_folder_has_json_files():
    assert FHIR_DIR.is_dir()
    assert JSON_FILES, "no *.json files in fhir/"


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: p.name)
def test_file_parses_with_r4b_model(path):
    data = _load(path)
    rtype = data["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{rtype.lower()}")
    model = getattr(module, rtype)
    resource = model.model_validate(data)
    assert resource.id == data["id"]
    assert path.name == f"{rtype}-{data['id']}.json"
    if "url" in data:
        assert data["url"] == f"{BASE}/{rtype}/{data['id']}"


def test_no_python_under_fhir():
    offenders = [p for p in FHIR_DIR.rglob("*") if p.suffix in {".py", ".pyc"}]
    assert not offenders, f"Python files must not live in fhir/: {offenders}"


def test_reason_codesystem_has_exactly_the_22_domains():
    cs = _codesystems_by_url()[REASON_CS]
    got = [(c["code"], c["display"]) for c in cs["concept"]]
    assert got == REASON_CODES
    assert all(c.get("definition") for c in cs["concept"])
    assert cs["content"] == "complete"
    assert cs.get("count", len(got)) == 22


def test_codesystem_codes_unique():
    for cs in _resources("CodeSystem"):
        codes = list(_all_codes(cs.get("concept")))
        assert len(codes) == len(set(codes)), cs["id"]


def test_reason_valueset_includes_whole_codesystem():
    (vs,) = [v for v in _resources("ValueSet") if v["id"] == "reason-for-referral"]
    includes = vs["compose"]["include"]
    assert any(
        i["system"] == REASON_CS and "concept" not in i and "filter" not in i for i in includes
    )


def test_conceptmap_target_codes_exist_in_target_codesystem():
    codesystems = _codesystems_by_url()
    for cm in _resources("ConceptMap"):
        for group in cm["group"]:
            assert group["target"] in codesystems, f"unknown target system {group['target']}"
            valid = set(_all_codes(codesystems[group["target"]]["concept"]))
            for element in group["element"]:
                for target in element.get("target", []):
                    if target.get("equivalence") in ("unmatched", "disjoint"):
                        continue
                    assert target["code"] in valid, (
                        cm["id"],
                        group["source"],
                        element["code"],
                        target["code"],
                    )


def test_conceptmap_source_codes_unique_per_group():
    for cm in _resources("ConceptMap"):
        for group in cm["group"]:
            codes = [e["code"] for e in group["element"]]
            dupes = sorted({c for c in codes if codes.count(c) > 1})
            assert not dupes, (cm["id"], group["source"], dupes)


def test_reason_conceptmap_has_identity_group_and_normalised_text_codes():
    (cm,) = [c for c in _resources("ConceptMap") if c["id"] == "reason-for-referral"]
    groups = {g["source"]: g for g in cm["group"]}
    identity = groups[REASON_CS]
    assert [
        (e["code"], e["target"][0]["code"], e["target"][0]["equivalence"])
        for e in identity["element"]
    ] == [(code, code, "equivalent") for code, _ in REASON_CODES]
    text_codes = {e["code"] for e in groups[TEXT_SYSTEM]["element"]}
    for code in text_codes:
        assert code == " ".join(code.lower().split()), code
        assert not re.match(r"^\W|.*\W$", code), code
    assert {d.lower() for _, d in REASON_CODES} <= text_codes


R4_EQUIVALENCE = {
    "relatedto",
    "equivalent",
    "equal",
    "wider",
    "subsumes",
    "narrower",
    "specializes",
    "inexact",
    "unmatched",
    "disjoint",
}


def test_conceptmap_equivalence_values_are_r4():
    # fhir.resources does not enforce the ConceptMapEquivalence value set, so check it here.
    for cm in _resources("ConceptMap"):
        for group in cm["group"]:
            for element in group["element"]:
                for target in element.get("target", []):
                    assert target.get("equivalence") in R4_EQUIVALENCE, (element["code"], target)
                    if target["equivalence"] == "narrower":
                        assert target.get("comment"), (
                            f"R4 requires a comment for narrower: {element['code']}"
                        )
