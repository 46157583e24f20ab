"""Responses with FHIR JSON bodies."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from app.errors import FHIR_MEDIA_TYPE


class FHIRResponse(Response):
    media_type = FHIR_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'
