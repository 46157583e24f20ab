"""The landing page, and the sandbox reset."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from app import sandbox
from app.config import public_base
from app.dependencies import AppSettings, WriteSession
from app.errors import NotFound, api_error_responses
from app.sandbox import landing
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter()

Resetter = Annotated[Principal, Depends(require(Operation.SANDBOX_RESET, writes=True))]


class SandboxReset(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "reset",
                    "removed": {"referrals": 3, "cases": 3, "case_events": 41, "deliveries": 44},
                    "clients": [f"sandbox-{role.value}" for role in sandbox.SANDBOX_KEYS],
                }
            ]
        }
    )

    status: str = Field(examples=["reset"])
    removed: dict[str, int] = Field(
        description="Rows removed, by table", examples=[{"referrals": 3, "cases": 3}]
    )
    clients: list[str] = Field(
        description="The sandbox clients, seeded again with their fixed keys",
        examples=[["sandbox-clinical-system", "sandbox-advisor"]],
    )


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
async def landing_page(request: Request, settings: AppSettings) -> HTMLResponse:
    base_url = landing.plain_base_url(public_base(settings))
    return HTMLResponse(
        landing.render(settings, base_url),
        headers={
            "Content-Security-Policy": landing.CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


@router.post(
    "/api/v1/sandbox/reset",
    response_model=SandboxReset,
    tags=["sandbox"],
    summary="Start the sandbox again",
    description="Sandbox mode only (404 otherwise): removes every referral, case, subscription, "
    "delivery and client made since start-up, stops the simulated journeys, and seeds the "
    "sandbox service and clients again. Their fixed keys keep working. The audit trail stays.",
    operation_id="resetSandbox",
    responses=api_error_responses(401, 403, 404),
)
async def reset_sandbox(
    session: WriteSession, settings: AppSettings, _admin: Resetter
) -> SandboxReset:
    if not settings.sandbox:
        raise NotFound("The sandbox is not enabled on this bridge")
    removed = await sandbox.reset(session, settings)
    return SandboxReset(
        status="reset",
        removed={table: count for table, count in removed.items() if count},
        clients=[f"sandbox-{role.value}" for role in sandbox.SANDBOX_KEYS],
    )
