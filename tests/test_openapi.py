"""openapi/openapi.json is generated from the app (`spbridge openapi`) and must not drift; and the
document is complete for integrators: every operation (whatever routes exist) has a summary, a
description, tags, a clean operation id, its callers' security, examples for every request body
and every response (errors too) that fit their schemas, FHIR bodies as application/fhir+json,
and errors as the app sends them."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema_rs
import pytest

from app.main import openapi_document as document
from tests.conftest import ROOT

FHIR_JSON = "application/fhir+json"
PROBLEM_JSON = "application/problem+json"
METHODS = {"get", "put", "post", "patch", "delete"}
# camelCase (readServiceRequest) or snake_case (read_service_request); never FastAPI's generated
# "<function>_<path>_<method>" (e.g. read_case_api_v1_cases__case_id__get).
CLEAN_OPERATION_ID = re.compile(r"^(?:[a-z][a-zA-Z0-9]*|[a-z][a-z0-9]*(?:_[a-z0-9]+)*)$")
GENERATED_OPERATION_ID = re.compile(r"_(?:get|put|post|patch|delete)$|__|_api_v1_|_fhir_")


# Routes served but not in the document, and why.
UNDOCUMENTED = {
    ("GET", "/"): "the sandbox's landing page, for people: HTML that links to /docs",
}


@cache
def spec() -> dict[str, Any]:
    return document()


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec()["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def _ids() -> list[str]:
    return [f"{method} {path}" for method, path, _ in operations()]


def _operation(where: str) -> tuple[str, str, dict[str, Any]]:
    method, path = where.split(" ", 1)
    return method, path, spec()["paths"][path][method.lower()]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its references resolvable: the document's components beside it."""
    return {**schema, "components": spec()["components"]}


def test_committed_document_matches_the_app() -> None:
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(document())), (
        "openapi/openapi.json is stale: run `spbridge openapi` and commit the result"
    )


def test_the_document_covers_every_route_the_app_serves() -> None:
    from app.config import Settings
    from app.main import create_app
    from app.security.policy import route_rules

    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    served = {key for key in route_rules(app) if not key[1].startswith(("/docs", "/redoc"))}
    served -= {("GET", "/openapi.json"), *UNDOCUMENTED}
    documented = {(method, path) for method, path, _ in operations()}
    assert served == documented


def test_the_operation_id_rule_refuses_generated_ids() -> None:
    # The rule itself, on ids written by hand.
    for good in ("readServiceRequest", "recordCaseEvent", "healthz", "list_deliveries"):
        assert CLEAN_OPERATION_ID.match(good) and not GENERATED_OPERATION_ID.search(good), good
    for bad in ("read_case_api_v1_cases__case_id__get", "healthz_healthz_get", "Read-Case", ""):
        assert not (CLEAN_OPERATION_ID.match(bad) and not GENERATED_OPERATION_ID.search(bad)), bad


@pytest.mark.parametrize("where", _ids())
def test_every_operation_is_documented(where: str) -> None:
    _method, path, operation = _operation(where)
    assert len(operation.get("summary", "")) >= 5
    assert len(operation.get("description", "")) >= 20
    assert operation.get("tags")
    operation_id = operation.get("operationId", "")
    assert CLEAN_OPERATION_ID.match(operation_id), operation_id
    assert not GENERATED_OPERATION_ID.search(operation_id), operation_id
    responses = operation["responses"]
    assert any(code.startswith("2") for code in responses), "no success response"
    for code, response in responses.items():
        assert response.get("description"), code
    if path.startswith(("/api/", "/fhir")) and operation.get("security"):
        # A key is needed: say who may call, and what happens without one or with the wrong role.
        assert "Who may call:" in operation["description"]
        assert {"401", "403"} <= responses.keys()
        assert {"bearerAuth": []} in operation["security"]


def test_operation_ids_are_unique() -> None:
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("where", _ids())
def test_every_body_has_an_example_that_fits_its_schema(where: str) -> None:
    _method, _path, operation = _operation(where)
    parts: list[tuple[str, dict[str, Any]]] = []
    if "requestBody" in operation:
        parts.append(("request", operation["requestBody"]))
    parts += list(operation["responses"].items())
    for part, declared in parts:
        for media_type, media in declared.get("content", {}).items():
            where_part = f"{part} {media_type}"
            assert "example" in media or "examples" in media, f"{where_part}: no example"
            examples = (
                [media["example"]]
                if "example" in media
                else [item["value"] for item in media["examples"].values()]
            )
            schema = media.get("schema")
            if schema and media_type != "application/x-www-form-urlencoded":
                validator = jsonschema_rs.validator_for(resolve(schema))
                for example in examples:
                    errors = [str(e) for e in validator.iter_errors(example)][:3]
                    assert not errors, f"{where_part}: the example breaks its schema: {errors}"


@pytest.mark.parametrize("where", _ids())
def test_errors_are_documented_as_the_app_sends_them(where: str) -> None:
    _method, path, operation = _operation(where)
    fhir = path == "/fhir" or path.startswith("/fhir/")
    for code, response in operation["responses"].items():
        content = response.get("content", {})
        assert "#/components/schemas/HTTPValidationError" not in json.dumps(content), code
        if int(code) < 400:
            continue
        if fhir:
            assert set(content) == {FHIR_JSON}, code
            assert content[FHIR_JSON]["example"]["resourceType"] == "OperationOutcome"
            continue
        refs = {media.get("schema", {}).get("$ref", "") for media in content.values()}
        if any(ref.endswith(("/ProblemDetailsDoc", "/TransitionRefusedDoc")) for ref in refs):
            assert set(content) == {PROBLEM_JSON}, code
            assert content[PROBLEM_JSON]["example"]["status"] == int(code)
        # Otherwise a body of its own kind: the journey page's HTML, the token endpoint's
        # RFC 6749 errors, the readiness report.


@pytest.mark.parametrize("where", [w for w in _ids() if w.split(" ", 1)[1].startswith("/fhir")])
def test_fhir_operations_use_fhir_json(where: str) -> None:
    _method, path, operation = _operation(where)
    if "/.well-known/" in path:
        return  # OAuth2 discovery (SMART) is plain JSON wherever it is served
    body = operation.get("requestBody")
    if path.endswith("/_search"):
        # FHIR's POST _search takes its parameters as a form.
        assert set(body["content"]) == {"application/x-www-form-urlencoded"}
    elif body is not None:
        assert FHIR_JSON in body["content"]
    for code, response in operation["responses"].items():
        if code.startswith("2") and response.get("content"):
            assert set(response["content"]) == {FHIR_JSON}, code


def _fhir_examples() -> Iterator[tuple[str, dict[str, Any]]]:
    for method, path, operation in operations():
        parts = [("request", operation.get("requestBody", {}))]
        parts += list(operation["responses"].items())
        for part, declared in parts:
            media = declared.get("content", {}).get(FHIR_JSON, {})
            if "example" in media:
                yield f"{method} {path} {part}", media["example"]


@pytest.mark.parametrize(("where", "example"), list(_fhir_examples()), ids=lambda v: str(v)[:60])
def test_fhir_examples_are_valid_r4(where: str, example: dict[str, Any]) -> None:
    resource_type = example["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    getattr(module, resource_type).model_validate(example)


def test_security_schemes_name_the_token_endpoint() -> None:
    schemes = spec()["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    flow = schemes["oauth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/oauth2/token"
    assert {"referrals:write", "referrals:read", "admin"} <= flow["scopes"].keys()
    # Public operations say so: no security requirement at all.
    assert spec()["paths"]["/fhir/metadata"]["get"]["security"] == []
    create = spec()["paths"]["/fhir/ServiceRequest"]["post"]
    assert create["security"] == [{"bearerAuth": []}, {"oauth2": ["referrals:write"]}]
    assert (
        "Who may call: clinical-system (OAuth2 scope `referrals:write`)." in (create["description"])
    )
