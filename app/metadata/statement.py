"""The CapabilityStatement as served: fhir/CapabilityStatement-spbridge.json (what each resource
type is and which interactions it has), with every search parameter, _include and _revinclude
from the search tables (app.fhir.searchparams), and the OAuth2 token endpoint (SMART)."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import orjson

import app
from app.fhir.codes import FHIR_DATA_DIR
from app.fhir.searchparams import RESULT_PARAMETERS, SEARCHES
from app.security.oauth import TOKEN_PATH

SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        (FHIR_DATA_DIR / "CapabilityStatement-spbridge.json").read_bytes()
    )
    return data


def _search_params(resource_type: str) -> list[dict[str, Any]]:
    table = SEARCHES[resource_type]
    out = []
    for parameter in table.parameters:
        forms = [
            *(f"{parameter.name}:{m}" for m in parameter.modifiers),
            *(f"{parameter.name}.{c}" for c in parameter.chains),
        ]
        documentation = parameter.documentation
        if forms:
            documentation += f" (also {', '.join(forms)})"
        if parameter.sortable:
            documentation += "; _sort may name it"
        entry: dict[str, Any] = {"name": parameter.name, "type": parameter.type}
        if parameter.definition:
            entry["definition"] = parameter.definition
        entry["documentation"] = documentation
        out.append(entry)
    return out


def capability_statement(fhir_base: str, public_base: str) -> dict[str, Any]:
    statement = copy.deepcopy(_data())
    statement["software"]["version"] = app.__version__
    statement["implementation"]["url"] = fhir_base
    rest = statement["rest"][0]
    rest["security"]["extension"] = [
        {
            "url": SMART_OAUTH_URIS,
            "extension": [{"url": "token", "valueUri": public_base + TOKEN_PATH}],
        }
    ]
    for resource in rest["resource"]:
        table = SEARCHES.get(resource["type"])
        if table is None:
            continue
        resource["searchParam"] = _search_params(resource["type"])
        if table.includes:
            resource["searchInclude"] = list(table.includes)
        if table.revincludes:
            resource["searchRevInclude"] = list(table.revincludes)
        if table.documentation:
            resource["documentation"] += " Search: " + table.documentation
    rest["searchParam"] = [
        {"name": name, "type": "string" if name != "_count" else "number", "documentation": text}
        for name, text in RESULT_PARAMETERS.items()
        if name not in ("_include", "_revinclude", "_cursor")
    ]
    return statement
