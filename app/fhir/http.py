"""Shared pieces of the FHIR HTTP interface: base URL, request context, OpenAPI fragments."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.config import Settings, public_base
from app.errors import FHIR_MEDIA_TYPE, Issue, NotAcceptable, operation_outcome
from app.fhir.codes import FHIR_DATA_DIR
from app.fhir.responses import FHIRResponse, etag


def fhir_base(request: Request, settings: Settings) -> str:
    """The FHIR base for fullUrls, Locations and links: from the settings, never from the
    request's Host header (``request`` is kept for the callers' sake)."""
    return public_base(settings) + "/fhir"


@lru_cache
def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FHIR_DATA_DIR / "examples" / f"{name}.json").read_bytes())
    return data


def fhir_body(resource_type: str, example_name: str | None = None) -> dict[str, Any]:
    """An OpenAPI requestBody for a FHIR resource read from the raw body."""
    media: dict[str, Any] = {
        "schema": {
            "type": "object",
            "description": f"A FHIR R4 {resource_type} resource",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string", "enum": [resource_type]}},
        }
    }
    if example_name:
        media["example"] = example(example_name)
    return {
        "requestBody": {
            "required": True,
            "content": {FHIR_MEDIA_TYPE: media, "application/json": media},
        }
    }


def fhir_resource_response(description: str, resource_type: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            FHIR_MEDIA_TYPE: {
                "schema": {
                    "type": "object",
                    "description": f"A FHIR R4 {resource_type}",
                    "properties": {"resourceType": {"type": "string", "enum": [resource_type]}},
                }
            }
        },
        **extra,
    }


# --- formats, versions and preferences (FHIR RESTful API, HTTP) --------------------------------

# What _format may name: we serve FHIR JSON only.
JSON_FORMATS = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir"}
)
_ACCEPTED_RANGES = frozenset({"*/*", "application/*", *JSON_FORMATS - {"json"}})


def _accepts_json(accept: str) -> bool:
    for media_range in accept.split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media.lower() in _ACCEPTED_RANGES and quality > 0:
            return True
    return False


def check_format_parameter(wanted: str | None) -> None:
    """406 when ``_format`` names a format we do not serve."""
    if wanted is not None and wanted.split(";")[0].strip().lower() not in JSON_FORMATS:
        raise NotAcceptable(
            "_format asks for a format this server does not serve: only FHIR JSON "
            "(json, application/fhir+json)",
            expression="_format",
        )


async def check_format(request: Request) -> None:
    """406 when the client asks (``_format`` or ``Accept``) only for formats we do not serve."""
    check_format_parameter(request.query_params.get("_format"))
    accept = request.headers.get("accept")
    if accept and accept.strip() and not _accepts_json(accept):
        raise NotAcceptable(
            "Accept names no format this server serves: only FHIR JSON "
            "(application/fhir+json, application/json)"
        )


def preferences(request: Request) -> dict[str, str]:
    """The Prefer header's preferences (RFC 7240), name → value, lower-cased."""
    found: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            name, _, value = part.split(";", 1)[0].strip().partition("=")
            if name:
                found.setdefault(name.strip().lower(), value.strip().strip('"').lower())
    return found


def strict_handling(request: Request) -> bool:
    """Prefer: handling=strict (FHIR search: unknown parameters are an error, not ignored)."""
    return preferences(request).get("handling") == "strict"


def matches_etag(header: str | None, version_id: int) -> bool:
    """Whether an If-None-Match / If-Match header names this version (or any, with *)."""
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == f'"{version_id}"':
            return True
    return False


def http_date(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def version_headers(version_id: int, last_updated: dt.datetime) -> dict[str, str]:
    return {"ETag": etag(version_id), "Last-Modified": http_date(last_updated)}


def read_response(
    request: Request, resource: dict[str, Any], version_id: int, last_updated: dt.datetime
) -> Response:
    """A read: 304 when If-None-Match names the current version, else the resource."""
    headers = version_headers(version_id, last_updated)
    if matches_etag(request.headers.get("if-none-match"), version_id):
        return Response(status_code=304, headers=headers)
    return FHIRResponse(resource, headers=headers)


_RETURNS = ("minimal", "representation", "OperationOutcome")


def write_response(
    request: Request,
    resource: dict[str, Any],
    status_code: int,
    headers: dict[str, str],
    said: str,
) -> Response:
    """A create or update, as Prefer: return= asks: the resource (representation, the default),
    nothing (minimal) or an OperationOutcome saying ``said`` (OperationOutcome); the preference
    honoured is named in Preference-Applied."""
    wanted = next((r for r in _RETURNS if r.lower() == preferences(request).get("return")), None)
    if wanted is None:
        return FHIRResponse(resource, status_code=status_code, headers=headers)
    applied = {**headers, "Preference-Applied": f"return={wanted}"}
    if wanted == "minimal":
        return Response(status_code=status_code, headers=applied)
    if wanted == "OperationOutcome":
        outcome = operation_outcome([Issue("informational", said, severity="information")])
        return FHIRResponse(outcome, status_code=status_code, headers=applied)
    return FHIRResponse(resource, status_code=status_code, headers=applied)
