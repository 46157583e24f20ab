"""The EDI items are data (fhir/Questionnaire-equality-monitoring.json): a site adds one there."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from app.cases.events import REGISTRY, parse_event
from app.errors import BusinessRuleViolation
from app.fhir.codes import FHIR_DATA_DIR
from app.fhir.equality import PREFER_NOT_TO_SAY, QUESTIONNAIRE, equality_items, load_equality_items

EVALUATION = (
    "ethnicity",
    "sexual_orientation",
    "disability",
    "long_term_condition",
    "religion",
    "carer",
    "has_carer",
    "armed_forces",
    "lives_alone",
    "employment_status",
    "substance_use",
    "relationship_status",
)


def test_the_evaluation_items_each_with_an_answer_set_and_prefer_not_to_say() -> None:
    items = {item.key: item for item in equality_items()}
    for key in EVALUATION:
        assert key in items, key
        assert PREFER_NOT_TO_SAY in dict(items[key].answers)
        assert len(items[key].answers) >= 2
    assert set(items) <= set(REGISTRY["demographics.recorded"].body.model_fields)


def test_a_choice_item_takes_only_its_codes_an_open_one_words_too() -> None:
    assert parse_event("demographics.recorded", {"lives_alone": "yes"}) == {"lives_alone": "yes"}
    with pytest.raises(BusinessRuleViolation) as refused:
        parse_event("demographics.recorded", {"lives_alone": "sometimes"})
    assert "sometimes" not in refused.value.diagnostics
    assert "lives_alone" in refused.value.diagnostics
    words = {"ethnicity": "Mixed: White and Asian"}
    assert parse_event("demographics.recorded", words) == words


def test_a_site_adds_an_item_without_code(tmp_path: Path) -> None:
    shutil.copy(FHIR_DATA_DIR / QUESTIONNAIRE, tmp_path / QUESTIONNAIRE)
    questionnaire = orjson.loads((tmp_path / QUESTIONNAIRE).read_bytes())
    questionnaire["item"].append(
        {
            "linkId": "housing_tenure",
            "text": "Housing tenure",
            "type": "choice",
            "answerOption": [
                {"valueCoding": {"code": "owner", "display": "Owner"}},
                {"valueCoding": {"code": "renting", "display": "Renting"}},
                {"valueCoding": {"code": PREFER_NOT_TO_SAY, "display": "Prefer not to say"}},
            ],
        }
    )
    (tmp_path / QUESTIONNAIRE).write_bytes(orjson.dumps(questionnaire))
    items = load_equality_items(tmp_path)
    assert items[-1].key == "housing_tenure"
    assert items[-1].display("renting") == "Renting"
    assert not items[-1].accepts("caravan")
    # An item without "prefer not to say" is refused when the file is read.
    questionnaire["item"][-1]["answerOption"].pop()
    (tmp_path / QUESTIONNAIRE).write_bytes(orjson.dumps(questionnaire))
    with pytest.raises(ValueError, match="prefer-not-to-say"):
        load_equality_items(tmp_path)
