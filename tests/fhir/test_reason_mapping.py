from app.fhir.codes import REASON_SYSTEM
from app.fhir.terminology import load_reason_map, normalise_text, reason_map
from tests.conftest import ROOT


def concept(**data: object) -> dict[str, object]:
    """A CodeableConcept as R4 JSON, as intake's assessment reads it."""
    return data


def test_all_22_domains_are_loaded() -> None:
    assert len(reason_map().domains) == 22
    assert reason_map().domains["caring-childcare-support"] == "Caring/Childcare Support"


def test_our_own_code_maps_to_itself() -> None:
    mapped = reason_map().map_reason(concept(coding=[{"system": REASON_SYSTEM, "code": "housing"}]))
    assert mapped["domain"] == "housing"
    assert mapped["mapped"] is True
    assert mapped["code"] == "housing"


def test_gravity_sdoh_code_maps_through_the_concept_map() -> None:
    sdoh = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
    mapped = reason_map().map_reason(concept(coding=[{"system": sdoh, "code": "food-insecurity"}]))
    assert (mapped["domain"], mapped["domain_display"]) == ("food-support", "Food Support")


def test_free_text_maps_case_and_punctuation_insensitively() -> None:
    assert reason_map().map_reason(concept(text="  Loneliness. "))["domain"] == "social-isolation"
    assert reason_map().map_reason(concept(text="DEBT"))["domain"] == "finance-benefits-debt"
    assert reason_map().map_reason(concept(text="Finance, Benefits and Debt Advice"))["domain"] == (
        "finance-benefits-debt"
    )


def test_coding_display_is_tried_when_code_is_unknown() -> None:
    mapped = reason_map().map_reason(
        concept(
            coding=[{"system": "https://rio.example/reasons", "code": "R17", "display": "Housing"}]
        )
    )
    assert mapped["domain"] == "housing"


def test_unmapped_reason_is_kept_and_marked() -> None:
    mapped = reason_map().map_reason(
        concept(coding=[{"system": "https://rio.example/reasons", "code": "Z99"}], text="Pet care")
    )
    assert mapped == {
        "domain": None,
        "domain_display": None,
        "mapped": False,
        "system": "https://rio.example/reasons",
        "code": "Z99",
        "display": None,
        "text": "Pet care",
    }


def test_a_site_adds_its_own_codes_as_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    folder = tmp_path
    for name in ("CodeSystem-reason-for-referral.json", "ConceptMap-reason-for-referral.json"):
        (folder / name).write_text((ROOT / "fhir" / name).read_text())
    concept_map = json.loads((folder / "ConceptMap-reason-for-referral.json").read_text())
    concept_map["group"].append(
        {
            "source": "https://rio.example/reasons",
            "target": REASON_SYSTEM,
            "element": [
                {"code": "R17", "target": [{"code": "housing", "equivalence": "equivalent"}]}
            ],
        }
    )
    (folder / "ConceptMap-reason-for-referral.json").write_text(json.dumps(concept_map))
    site_map = load_reason_map(folder)
    mapped = site_map.map_reason(
        concept(coding=[{"system": "https://rio.example/reasons", "code": "R17"}])
    )
    assert mapped["domain"] == "housing"


def test_normalise_text() -> None:
    assert normalise_text("  Low   Mood! ") == "low mood"
