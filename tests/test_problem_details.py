"""Problem details under /api/v1 say in words what is wrong with a body that is not what the API
takes: where JSON stops being JSON (line and column, never quoting it), the wrong media type
(415), and nesting too deep. And the same plain words under /fhir (OperationOutcome)."""

from __future__ import annotations

from typing import Any

import pytest

from app.limits import json_syntax_error
from tests.conftest import ADMIN_KEY, FHIR_JSON, Bridge

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SECRET = "Sam_Example_9434765919"  # stands for anything a client sends: never echoed


async def post(bridge: Bridge, body: bytes, content_type: str | None) -> Any:
    headers = dict(ADMIN)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await bridge.http.post("/api/v1/subscriptions", content=body, headers=headers)


def test_line_and_column_count_from_one() -> None:
    assert json_syntax_error("{", 1, "Expecting value").diagnostics.endswith(
        "expecting value at line 1, column 2"
    )
    assert json_syntax_error('{\n  "a": \n}', 10, "Expecting value").diagnostics.endswith(
        "at line 3, column 1"
    )
    assert json_syntax_error(b"[1,\n2,,]", 6, "Expecting value").diagnostics.endswith(
        "at line 2, column 3"
    )


async def test_json_syntax_error_names_the_line_and_column(bridge: Bridge) -> None:
    body = f'{{"url": "https://93.184.216.34/",\n "description": {SECRET}}}'.encode()
    response = await post(bridge, body, "application/json")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Bad request",
        "status": 400,
        "detail": "The request body is not valid JSON: expecting value at line 2, column 17",
    }
    assert SECRET not in response.text and "Sam" not in response.text


@pytest.mark.parametrize(
    ("content_type", "declared"),
    [
        ("application/x-www-form-urlencoded", "another media type"),
        ("text/plain", "another media type"),
        ("multipart/form-data; boundary=x", "another media type"),
        (None, "no Content-Type"),
    ],
)
async def test_a_body_that_is_not_json_is_415(
    bridge: Bridge, content_type: str | None, declared: str
) -> None:
    response = await post(bridge, f"url=https://93.184.216.34/&d={SECRET}".encode(), content_type)
    assert response.status_code == 415, response.text
    assert response.json() == {
        "type": "about:blank",
        "title": "Unsupported media type",
        "status": 415,
        "detail": "Send the request body as JSON, with the header Content-Type: application/json"
        f" (it came with {declared})",
    }
    assert SECRET not in response.text


async def test_json_with_a_parameter_or_a_json_suffix_is_json(bridge: Bridge) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = await post(bridge, b'{"description": "x"}', content_type)
        # Read as JSON and judged on its fields: url is missing.
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["pointer"] == "url"


async def test_json_nested_5000_deep_is_nested_too_deeply(bridge: Bridge) -> None:
    for body in (
        b'{"url": "https://93.184.216.34/", "description": ' + _nested(5000) + b"}",
        b"[" * 5000 + b"]" * 5000,
    ):
        response = await post(bridge, body, "application/json")
        assert response.status_code == 400, response.text
        assert response.json()["detail"] == (
            "The request body is nested too deeply: arrays and objects may nest at most 64 levels"
        )


async def test_fhir_says_the_same_in_an_operation_outcome(bridge: Bridge) -> None:
    referrer = await bridge.key("clinical-system", "RW4")
    for body, words in (
        (b'{"resourceType": "ServiceRequest",\n  "status": ,}', "line 2, column 13"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ):
        response = await bridge.http.post(
            "/fhir/ServiceRequest", content=body, headers={**referrer, **FHIR_JSON}
        )
        assert response.status_code == 400, response.text
        (issue,) = response.json()["issue"]
        assert issue["code"] == "structure"
        assert words in issue["diagnostics"], issue


def _nested(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth
