"""The equality and diversity (EDI) items, from data: ``fhir/Questionnaire-equality-monitoring
.json`` (issue 18 part 2). Each item's ``linkId`` is a field of the ``demographics.recorded``
event and a table of the activity report, in the Questionnaire's order, labelled by its
``text``; its ``answerOption`` codings are the answer set (with "Prefer not to say"). A
``choice`` item takes only its codes; an ``open-choice`` item also the person's own words. A site
adds an item to the file, and the event and the report follow, without code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import orjson

from app.fhir.codes import FHIR_DATA_DIR

QUESTIONNAIRE = "Questionnaire-equality-monitoring.json"
PREFER_NOT_TO_SAY = "prefer-not-to-say"
_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class EqualityItem:
    key: str  # the linkId: the event's field
    label: str
    open: bool  # open-choice: the person's own words are taken too
    answers: tuple[tuple[str, str], ...]  # (code, display), "prefer-not-to-say" among them

    def display(self, value: str) -> str:
        """An answer as a report shows it: the display of a code, else the words given."""
        return dict(self.answers).get(value, value)

    def accepts(self, value: str) -> bool:
        return self.open or value in dict(self.answers)


def load_equality_items(folder: Path = FHIR_DATA_DIR) -> tuple[EqualityItem, ...]:
    questionnaire = orjson.loads((folder / QUESTIONNAIRE).read_bytes())
    items: list[EqualityItem] = []
    for item in questionnaire.get("item", []):
        key = item["linkId"]
        if not _FIELD.match(key) or key in ("type", "occurred_at", "idempotency_key"):
            raise ValueError(f"{QUESTIONNAIRE}: linkId {key!r} cannot be an event field")
        answers = tuple(
            (option["valueCoding"]["code"], option["valueCoding"].get("display") or "")
            for option in item.get("answerOption", [])
            if "valueCoding" in option
        )
        if PREFER_NOT_TO_SAY not in dict(answers):
            raise ValueError(f"{QUESTIONNAIRE}: item {key!r} has no '{PREFER_NOT_TO_SAY}' answer")
        items.append(EqualityItem(key, item["text"], item["type"] == "open-choice", answers))
    return tuple(items)


@lru_cache(maxsize=1)
def equality_items() -> tuple[EqualityItem, ...]:
    return load_equality_items()
