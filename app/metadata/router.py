from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

import app
from app.dependencies import AppSettings
from app.fhir.codes import FHIR_DATA_DIR
from app.fhir.http import fhir_base, fhir_resource_response
from app.fhir.responses import FHIRResponse

router = APIRouter(prefix="/fhir", tags=["FHIR metadata"])


@lru_cache(maxsize=1)
def _capability_statement() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        (FHIR_DATA_DIR / "CapabilityStatement-spbridge.json").read_bytes()
    )
    return data


@router.get(
    "/metadata",
    response_class=FHIRResponse,
    summary="What this FHIR server supports",
    description="The CapabilityStatement: resources, interactions and search parameters. "
    "No key needed.",
    operation_id="readCapabilityStatement",
    responses={200: fhir_resource_response("CapabilityStatement", "CapabilityStatement")},
)
async def capability_statement(request: Request, settings: AppSettings) -> Response:
    statement = copy.deepcopy(_capability_statement())
    statement["software"]["version"] = app.__version__
    statement["implementation"]["url"] = fhir_base(request, settings)
    return FHIRResponse(statement)
