"""Shared pieces of the FHIR HTTP interface: base URL, request context, OpenAPI fragments."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from starlette.requests import Request

from app.config import Settings, public_base
from app.errors import FHIR_MEDIA_TYPE
from app.fhir.codes import FHIR_DATA_DIR


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
