"""The R4 schema's validators run fastjsonschema's generated code with one rewrite (app.fhir.
validation: each array item's path as an f-string, not ``.format(**locals())``): the rewrite
still finds what it rewrites, and the validators answer as fastjsonschema's own would, paths
with their indexes included."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import fastjsonschema
import pytest

from app.fhir import validation
from tests.conftest import referral_resource


def _options() -> dict[str, Any]:
    return {"detailed_exceptions": False, "fast_fail": False}


def _messages(validate: Callable[[Any], Any], resource: dict[str, Any]) -> list[str]:
    try:
        validate(resource)
    except fastjsonschema.JsonSchemaValuesException as errors:
        return sorted(error.message for error in errors.errors)
    except fastjsonschema.JsonSchemaValueException as error:
        return [error.message]
    return []


def test_the_rewrite_finds_every_path_it_rewrites() -> None:
    # If fastjsonschema stops writing paths this way, the rewrite (and this test) can go.
    source = fastjsonschema.compile_to_code(validation._schema("ServiceRequest"), **_options())
    assert source.count(".format(**locals())") > 50
    assert ".format(**locals())" not in validation._with_f_strings(source)


def _broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    resource = copy.deepcopy(referral_resource())
    change(resource)
    return resource


BROKEN = {
    "as sent": lambda r: None,
    "an identifier's system a number": lambda r: r["identifier"][0].update(system=5),
    "a second identifier an array": lambda r: r["identifier"].append([1]),
    "a coding's code a number": lambda r: r["category"].append({"coding": [{"code": 7}]}),
    "a note's text null and a reason a string": lambda r: r.update(
        note=[{"text": "ok"}, {"text": None}], reasonCode="anxiety"
    ),
    "an extension without a url": lambda r: r.setdefault("extension", []).append(
        {"valueString": "x"}
    ),
}


@pytest.mark.parametrize("change", BROKEN.values(), ids=BROKEN.keys())
def test_the_validators_answer_as_fastjsonschema_compiles_them(
    change: Callable[[dict[str, Any]], None],
) -> None:
    resource = _broken(change)
    theirs = fastjsonschema.compile(validation._schema("ServiceRequest"), **_options())
    assert _messages(validation._validator("ServiceRequest"), resource) == _messages(
        theirs, resource
    )


def test_an_item_s_path_names_its_index() -> None:
    resource = _broken(lambda r: r["identifier"].append({"system": 5, "value": "x"}))
    index = len(resource["identifier"]) - 1
    found = _messages(validation._validator("ServiceRequest"), resource)
    assert any(f"data.identifier[{index}].system" in message for message in found), found
