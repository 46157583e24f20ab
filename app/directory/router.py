from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from app.clients.auth import Principal, require
from app.clients.roles import Operation
from app.dependencies import ReadSession, WriteSession
from app.directory import service
from app.directory.models import SocialPrescribingService
from app.directory.schemas import ServiceCreate, ServiceOut
from app.errors import api_error_responses

router = APIRouter(prefix="/api/v1/services", tags=["services"])


def _out(record: SocialPrescribingService) -> ServiceOut:
    return ServiceOut(
        id=record.id,
        name=record.name,
        organisation=record.organisation,
        adapter=record.adapter,
        created_at=record.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ServiceOut,
    summary="Register a social prescribing service",
    description="Admins register the services referrals can be sent to, with the adapter that "
    "holds their cases.",
    operation_id="registerService",
    responses=api_error_responses(401, 403, 409, 422),
)
async def register_service(
    body: ServiceCreate,
    session: WriteSession,
    _admin: Annotated[Principal, Depends(require(Operation.SERVICE_MANAGE, writes=True))],
) -> ServiceOut:
    return _out(await service.register_service(session, body))


@router.get(
    "",
    response_model=list[ServiceOut],
    summary="List social prescribing services",
    description="The services a referral's performer may name.",
    operation_id="listServices",
    responses=api_error_responses(401),
)
async def list_services(
    session: ReadSession,
    _caller: Annotated[Principal, Depends(require(Operation.SERVICE_READ, writes=False))],
) -> list[ServiceOut]:
    return [_out(record) for record in await service.list_services(session)]


@router.get(
    "/{service_id}",
    response_model=ServiceOut,
    summary="Read a social prescribing service",
    description="One service by id.",
    operation_id="readService",
    responses=api_error_responses(401, 404),
)
async def read_service(
    service_id: str,
    session: ReadSession,
    _caller: Annotated[Principal, Depends(require(Operation.SERVICE_READ, writes=False))],
) -> ServiceOut:
    return _out(await service.get_service(session, service_id))
