from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, status
from fastapi.responses import JSONResponse

from app.clients import service
from app.clients.schemas import (
    ActsFor,
    ClientCreate,
    ClientCreated,
    ClientOut,
    PublicKeyRegistered,
    PublicKeyRegistration,
    SecretIssued,
    SecretRotation,
)
from app.dependencies import Now, ReadSession, WriteSession
from app.errors import api_error_responses
from app.security.auth import Principal, require
from app.security.models import ApiClient
from app.security.roles import Operation

router = APIRouter(prefix="/api/v1/clients", tags=["clients"])


def _out(client: ApiClient) -> dict[str, object]:
    return {
        "id": client.id,
        "name": client.name,
        "role": client.role,
        "organisation": client.organisation,
        "default_service": client.default_service_id,
        "acts_for": list(client.acts_for or []),
        "created_at": client.created_at,
        "revoked_at": client.revoked_at,
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ClientCreated,
    summary="Create an API client",
    description=(
        "Admins create clients; the API key is in this response only. An organisation's admin "
        "creates clients of its own organisation only (another `organisation` is 403); the "
        "installation's admin (the bootstrap key), of any. `default_service` may be any "
        "registered service."
    ),
    operation_id="createClient",
    responses=api_error_responses(401, 403, 422),
)
async def create_client(
    body: ClientCreate,
    session: WriteSession,
    admin: Annotated[Principal, Depends(require(Operation.CLIENT_MANAGE, writes=True))],
) -> dict[str, object]:
    client, key = await service.create_client(session, admin, body)
    return {**_out(client), "api_key": key}


@router.get(
    "",
    response_model=list[ClientOut],
    summary="List API clients",
    description=(
        "The clients of the caller's organisation, without keys (the installation's admin: "
        "every client)."
    ),
    operation_id="listClients",
    responses=api_error_responses(401, 403),
)
async def list_clients(
    session: ReadSession,
    admin: Annotated[Principal, Depends(require(Operation.CLIENT_MANAGE, writes=False))],
) -> list[dict[str, object]]:
    return [_out(client) for client in await service.list_clients(session, admin)]


ClientId = Annotated[str, Path(max_length=36, description="The client's id")]
_NO_STORE = {"Cache-Control": "no-store"}


@router.post(
    "/{client_id}/secret",
    response_model=SecretIssued,
    summary="Issue or rotate a client secret (OAuth2)",
    description=(
        "Issues a new client secret for `client_secret_basic` at `POST /oauth2/token`. The "
        "secret is in this response only; only its SHA-256 is kept. A secret it replaces keeps "
        "working for `overlap_seconds` (default 24 hours; 0 ends it at once), so the client can "
        "switch without downtime; only the latest replaced secret is kept. A revoked client "
        "gets 409; another organisation's client is unknown (404)."
    ),
    operation_id="rotateClientSecret",
    responses=api_error_responses(401, 403, 404, 409, 422),
)
async def rotate_secret(
    client_id: ClientId,
    session: WriteSession,
    now: Now,
    admin: Annotated[Principal, Depends(require(Operation.CLIENT_MANAGE, writes=True))],
    body: Annotated[SecretRotation | None, Body()] = None,
) -> JSONResponse:
    overlap = (body or SecretRotation()).overlap_seconds
    client, secret = await service.rotate_secret(session, admin, client_id, overlap, now)
    issued = SecretIssued(
        client_id=client.id,
        client_secret=secret,
        previous_secret_expires_at=client.previous_secret_expires_at,
    )
    return JSONResponse(issued.model_dump(mode="json"), headers=_NO_STORE)


@router.put(
    "/{client_id}/public-key",
    response_model=PublicKeyRegistered,
    summary="Register or rotate a client's public key (OAuth2 private_key_jwt)",
    description=(
        "Registers the public key (a JWK: RSA of at least 2048 bits for RS512, or EC P-256 for "
        "ES256) that the client signs its `private_key_jwt` assertions with at "
        "`POST /oauth2/token`. A key it replaces is still accepted for `overlap_seconds` "
        "(default 24 hours; only the latest replaced key is kept). Private key members are "
        "refused (422). A revoked client gets 409; another organisation's client is unknown "
        "(404)."
    ),
    operation_id="registerClientPublicKey",
    responses=api_error_responses(401, 403, 404, 409, 422),
)
async def register_public_key(
    client_id: ClientId,
    body: PublicKeyRegistration,
    session: WriteSession,
    now: Now,
    admin: Annotated[Principal, Depends(require(Operation.CLIENT_MANAGE, writes=True))],
) -> dict[str, object]:
    client = await service.register_public_key(
        session, admin, client_id, dict(body.jwk), body.overlap_seconds, now
    )
    return {
        "client_id": client.id,
        "jwk": client.public_key_jwk,
        "previous_public_key_expires_at": client.previous_public_key_expires_at,
    }


@router.post(
    "/{client_id}/revoke",
    response_model=ClientOut,
    summary="Revoke an API client",
    description=(
        "Revokes the client at once: its API key, client secrets, public keys and every access "
        "token already issued to it stop working on the next request to this process, and "
        "within `SPBRIDGE_PRINCIPAL_CACHE_SECONDS` (5 s) on the installation's other processes. "
        "Revoking again changes nothing. There is no un-revoke: make a new client. Another "
        "organisation's client is unknown (404)."
    ),
    operation_id="revokeClient",
    responses=api_error_responses(401, 403, 404),
)
async def revoke_client(
    client_id: ClientId,
    session: WriteSession,
    now: Now,
    admin: Annotated[Principal, Depends(require(Operation.CLIENT_MANAGE, writes=True))],
) -> dict[str, object]:
    return _out(await service.revoke(session, admin, client_id, now))


@router.put(
    "/{client_id}/acts-for",
    response_model=ClientOut,
    summary="Name the organisations a client refers for",
    description=(
        "A client acts for its own organisation; here the installation's admin (the bootstrap "
        "key) names others it may refer for, such as the ODS codes a trust's integration engine "
        "sends for. A referral whose `ServiceRequest.requester` names another organisation is "
        "refused (403); the requester's organisation's clinical route gets its updates. The list "
        "replaces the one before (empty: its own organisation only). An organisation's admin "
        "may not (403). Another organisation's client is unknown (404); a revoked one, 409."
    ),
    operation_id="setClientActsFor",
    responses=api_error_responses(401, 403, 404, 409, 422),
)
async def set_acts_for(
    client_id: ClientId,
    body: ActsFor,
    session: WriteSession,
    admin: Annotated[Principal, Depends(require(Operation.CLIENT_MANAGE, writes=True))],
) -> dict[str, object]:
    return _out(await service.set_acts_for(session, admin, client_id, body.organisations))
