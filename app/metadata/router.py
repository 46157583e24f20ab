"""Discovery: the FHIR CapabilityStatement and the SMART configuration (no key needed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.config import public_base
from app.dependencies import AppSettings
from app.fhir.http import check_format, fhir_base, fhir_resource_response
from app.fhir.responses import FHIRResponse
from app.metadata.statement import capability_statement
from app.security.oauth import ASSERTION_ALGORITHMS, TOKEN_PATH
from app.security.roles import SCOPE_OF

router = APIRouter(tags=["FHIR metadata"])


@router.get(
    "/fhir/metadata",
    response_class=FHIRResponse,
    summary="What this FHIR server supports",
    description="The CapabilityStatement: resources, interactions, every search parameter, "
    "_include and _revinclude, operations, and the OAuth2 token endpoint (SMART extension). "
    "No key needed.",
    operation_id="readCapabilityStatement",
    dependencies=[Depends(check_format)],
    responses={
        200: fhir_resource_response("CapabilityStatement", "CapabilityStatement"),
        406: {"description": "Only FHIR JSON is served"},
    },
)
async def read_capability_statement(request: Request, settings: AppSettings) -> Response:
    return FHIRResponse(capability_statement(fhir_base(request, settings), public_base(settings)))


def smart_configuration(base: str) -> dict[str, Any]:
    """SMART App Launch 2 discovery, for backend services (client credentials only)."""
    return {
        "token_endpoint": base + TOKEN_PATH,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": sorted(set(SCOPE_OF.values())),
        "capabilities": ["client-confidential-symmetric", "client-confidential-asymmetric"],
    }


_SMART: dict[str, Any] = {
    "summary": "SMART configuration (OAuth2 discovery for backend services)",
    "description": "Where and how to get an access token: the token endpoint, the client "
    "authentication methods (client_secret_basic; private_key_jwt signed RS512 or ES256), the "
    "client_credentials grant and the scopes. No key needed. Served beside the FHIR base too "
    "(/fhir/.well-known/smart-configuration), where SMART clients look.",
    "responses": {
        200: {
            "description": "The SMART configuration (JSON)",
            "content": {
                "application/json": {"example": smart_configuration("http://127.0.0.1:8000")}
            },
        }
    },
}


@router.get("/.well-known/smart-configuration", operation_id="smartConfiguration", **_SMART)
async def read_smart_configuration(settings: AppSettings) -> JSONResponse:
    return JSONResponse(smart_configuration(public_base(settings)))


@router.get(
    "/fhir/.well-known/smart-configuration", operation_id="fhirSmartConfiguration", **_SMART
)
async def read_fhir_smart_configuration(settings: AppSettings) -> JSONResponse:
    return JSONResponse(smart_configuration(public_base(settings)))
