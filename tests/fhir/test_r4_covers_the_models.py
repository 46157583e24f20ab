"""Intake reads a referral as R4 JSON checked by app.fhir.validation alone, no longer through the
fhir.resources (R4B) models: so whatever those models refuse, the R4 validation must refuse too.

Each referral here (ours, and the published Gravity SDOH and BaRS ServiceRequests) is broken in
every place it has a value, one way at a time, and in every object by an element R4 does not
have; a break the models refuse and the validation lets through fails this test.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from app.fhir.validation import validate_resource
from tests.conftest import ROOT

# BaRS's read example is not valid R4 (basedOn an object): test_validation.py says so.
INVALID = "bars/service_request/id/GET-success.json"
REFERRALS = [
    path
    for path in [
        *sorted((ROOT / "fhir" / "examples").glob("*.json")),
        *sorted((ROOT / "tests" / "fixtures" / "fhir-examples").rglob("*.json")),
    ]
    if json.loads(path.read_text(encoding="utf-8")).get("resourceType") == "ServiceRequest"
    and not path.as_posix().endswith(INVALID)
]
# Ways a value can be wrong: of the wrong JSON type, empty, null, not a day, not a code.
BREAKS: list[Any] = [None, "", 5, 1.5, True, {}, [], {"x": 1}, ["a"], "2023-02-30", "a b", " "]


def _places(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        yield path
        for key, child in node.items():
            if key != "resourceType":
                yield from _places(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _places(child, (*path, index))
    else:
        yield path


def _with(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(resource)
    node: Any = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return changed


def _mutants(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _places(resource):
        where = ".".join(map(str, path)) or "(root)"
        if not path:
            yield "(root).colour", {**resource, "colour": "red"}
            continue
        node: Any = resource
        for part in path:
            node = node[part]
        if isinstance(node, dict):
            yield f"{where}.colour", _with(resource, path, {**node, "colour": "red"})
            continue
        for value in BREAKS:
            yield f"{where} = {value!r}", _with(resource, path, value)
    yield (
        "occurrence twice",
        {
            **resource,
            "occurrenceDateTime": "2024-05-01",
            "occurrencePeriod": {"start": "2024-05-01"},
        },
    )


def _refused_by_the_models(resource: dict[str, Any]) -> bool:
    try:
        ServiceRequest.model_validate(resource)
    except (ValidationError, ValueError, TypeError, KeyError):
        return True
    return False


@pytest.mark.parametrize("path", REFERRALS, ids=lambda p: p.name)
def test_what_the_models_refuse_the_r4_validation_refuses(path: Any) -> None:
    resource = json.loads(path.read_text(encoding="utf-8"))
    assert not _refused_by_the_models(resource)
    assert validate_resource(resource, references=True) == []
    let_through = []
    tried = 0
    for label, mutant in _mutants(resource):
        if _refused_by_the_models(mutant):
            tried += 1
            if not validate_resource(mutant, references=True):
                let_through.append(label)
    assert tried > 50  # the breaks reached the models
    assert let_through == []
