from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from app.clients import service
from app.clients.auth import Principal, require
from app.clients.models import ApiClient
from app.clients.roles import Operation
from app.clients.schemas import ClientCreate, ClientCreated, ClientOut
from app.dependencies import ReadSession, WriteSession
from app.errors import api_error_responses

router = APIRouter(prefix="/api/v1/clients", tags=["clients"])


def _out(client: ApiClient) -> dict[str, object]:
    return {
        "id": client.id,
        "name": client.name,
        "role": client.role,
        "organisation": client.organisation,
        "default_service": client.default_service_id,
        "created_at": client.created_at,
        "revoked_at": client.revoked_at,
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ClientCreated,
    summary="Create an API client",
    description="Admins create clients; the API key is in this response only.",
    operation_id="createClient",
    responses=api_error_responses(401, 403, 422),
)
async def create_client(
    body: ClientCreate,
    session: WriteSession,
    _admin: Annotated[Principal, Depends(require(Operation.CLIENT_MANAGE, writes=True))],
) -> dict[str, object]:
    client, key = await service.create_client(session, body)
    return {**_out(client), "api_key": key}


@router.get(
    "",
    response_model=list[ClientOut],
    summary="List API clients",
    description="Every client, without keys.",
    operation_id="listClients",
    responses=api_error_responses(401, 403),
)
async def list_clients(
    session: ReadSession,
    _admin: Annotated[Principal, Depends(require(Operation.CLIENT_MANAGE, writes=False))],
) -> list[dict[str, object]]:
    return [_out(client) for client in await service.list_clients(session)]
