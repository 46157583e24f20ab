"""Reading a FHIR request body: media type, size, JSON, structure (DESIGN §6 errors, §10 traps).

Everything here fails with a 4xx that names the bad element and never echoes its value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from app.errors import (
    BadRequest,
    BusinessRuleViolation,
    Issue,
    PayloadTooLarge,
    UnsupportedMediaType,
    validation_location,
    validation_message,
)
from app.fhir.resources import model_class
from app.fhir.validation import validate_resource

ACCEPTED_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json"})


def check_media_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in ACCEPTED_MEDIA_TYPES:
        raise UnsupportedMediaType(
            "Send FHIR resources as application/fhir+json (application/json is also accepted)",
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if declared_size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("The client disconnected before the body was complete") from None
    return b"".join(chunks)


def parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("The request body is empty", issue_code="structure")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses nesting deeper than 1024 (json would recurse); its reasons name the
        # rule broken and where, never the input.
        if exc.msg.startswith("depth limit"):
            raise BadRequest(
                "The request body is nested too deeply: arrays and objects may nest at most "
                "1024 levels",
                issue_code="structure",
            ) from None
        raise BadRequest(
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}",
            issue_code="structure",
        ) from None
    except (ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON", issue_code="structure") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body is not a JSON object", issue_code="structure")
    return data


def _walk_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            yield where, node
        elif isinstance(node, dict):
            for key, child in node.items():
                if isinstance(key, str) and "\x00" in key:
                    yield where, key
                stack.append((child, f"{where}.{key}"))
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))


def refuse_nul_characters(body: bytes, data: dict[str, Any], root: str) -> None:
    """PostgreSQL text cannot hold U+0000: refuse it here rather than fail at insert."""
    if b"\\u0000" not in body:
        return
    for where, text in _walk_strings(data, root):
        if "\x00" in text:
            raise BusinessRuleViolation(
                "Text may not contain the NUL character (U+0000)",
                issue_code="value",
                expression=where,
            )


def fhirpath(root: str, loc: tuple[int | str, ...]) -> str:
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "root":
            continue  # pydantic's name for a root model's value, not a FHIR element
        elif part == "resource_type":
            path += ".resourceType"
        elif part.endswith("__ext"):
            path += f"._{part[:-5]}"
        else:
            path += f".{part}"
    return path


_ISSUE_CODES = {
    "missing": "required",
    "extra_forbidden": "structure",
}


def _safe_message(error: Any) -> str:
    kind = error.get("type", "")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "has an element not defined in R4"
    return validation_message(error)


def validation_issues(
    exc: ValidationError, root: str, prefix: tuple[int | str, ...] = ()
) -> list[Issue]:
    issues = []
    for error in exc.errors(include_url=False, include_context=False):
        # An unknown element is located at its parent: its name is the client's (T7).
        where = fhirpath(root, prefix + validation_location(error))
        code = _ISSUE_CODES.get(error["type"], "value")
        issues.append(Issue(code, f"{where} {_safe_message(error)}", where))
        if len(issues) >= 20:
            break
    return issues


def check_resource_type(data: dict[str, Any], expected: str | None, root: str = "") -> str:
    resource_type = data.get("resourceType")
    where = f"{root}.resourceType" if root else "resourceType"
    if not isinstance(resource_type, str):
        raise BadRequest(
            "The body is not a FHIR resource: resourceType is missing",
            issue_code="structure",
            expression=where,
        )
    if expected is not None and resource_type != expected:
        raise BadRequest(
            f"Expected a {expected} resource; resourceType names another",
            issue_code="invalid",
            expression=where,
        )
    return resource_type


def _known_type(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        model_class(value)
    except (ValueError, KeyError):
        return False
    return True


def _nested_resources(data: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    """Resources held inside a resource: contained ones, and a Bundle's entries."""
    # A wrong shape (contained not a list) is left to the model to report.
    contained = data.get("contained")
    if isinstance(contained, list):
        for index, item in enumerate(contained):
            yield item, f"{where}.contained[{index}]"
    entries = data.get("entry")
    if data.get("resourceType") == "Bundle" and isinstance(entries, list):
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and "resource" in entry:
                yield entry["resource"], f"{where}.entry[{index}].resource"


def check_nested_types(data: dict[str, Any], where: str) -> None:
    """Every nested resource names a real resource type (the models fail obscurely otherwise)."""
    stack = [(data, where)]
    while stack:
        node, path = stack.pop()
        for item, item_path in _nested_resources(node, path):
            if not isinstance(item, dict) or not _known_type(item.get("resourceType")):
                raise BadRequest(
                    f"{item_path} is not a FHIR R4 resource (resourceType missing or unknown)",
                    issue_code="structure",
                    expression=f"{item_path}.resourceType",
                )
            stack.append((item, item_path))


def r4_issues(data: dict[str, Any], root: str | None = None) -> list[Issue]:
    """What makes ``data`` invalid R4: HL7's R4 JSON schema (types, formats, codes of required
    bindings, unknown elements), FHIR JSON's rules (no empty arrays, objects or strings, no
    nulls, real days, one type per choice element, no modifierExtension we do not understand:
    none) and the resource types each reference may name (app.fhir.validation); for a referral,
    the only structural check (tests/fhir/test_r4_covers_the_models.py). Located by FHIRPath,
    never quoting."""
    # One walk for the rules and the references: intake validates every referral.
    issues = validate_resource(data, root=root, references=True)
    return [replace(issue, details="invalid-resource") for issue in issues[:20]]


def prepare_r4_validation() -> None:
    """Load the R4 definitions and compile the schemas intake uses (each once per process)."""
    for resource_type in ("ServiceRequest", "Bundle"):
        r4_issues({"resourceType": resource_type})


def check_r4(data: dict[str, Any], root: str | None = None) -> None:
    """400 with every R4 problem of ``data`` (see :func:`r4_issues`); nothing when it is valid."""
    issues = r4_issues(data, root)
    if issues:
        raise BadRequest(issues[0].diagnostics, issues=issues)


def parse_resource(data: dict[str, Any], expected: str | None = None) -> Any:
    """Validate a resource dict with its R4B model; 400 with every structural issue found."""
    resource_type = check_resource_type(data, expected)
    if not _known_type(resource_type):
        raise BadRequest(
            "resourceType names no FHIR R4 resource",
            issue_code="structure",
            expression="resourceType",
        )
    cls = model_class(resource_type)
    check_nested_types(data, resource_type)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        issues = validation_issues(exc, resource_type)
        raise BadRequest(issues[0].diagnostics, issues=issues) from None
    except (ValueError, TypeError, KeyError, RecursionError):
        raise BadRequest(f"The {resource_type} is not valid FHIR", issue_code="structure") from None
