"""OAuth2 client credentials (RFC 6749 §4.4) at ``POST /oauth2/token``.

A client authenticates with ``client_secret_basic`` (HTTP Basic: its client id and a secret an
admin issued) or ``private_key_jwt`` (RFC 7523: a JWT it signed with the private half of the public
key an admin registered, RS512 or ES256, ``exp`` at most five minutes ahead and a ``jti`` that is
refused if used again: NHS England's signed-JWT pattern for application-restricted APIs).

It gets a short-lived access token: a JWT the bridge signs (HS256, a per-installation key in
``signing_keys``) naming the client and the scopes granted, which can only narrow what the
client's role allows. On every request the token's client is loaded again (the same one lookup an
API key costs) and refused if revoked, so revocation takes effect at once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import jwt
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import public_base
from app.dependencies import WriteSession, get_now, installation_keys
from app.keys import KeyPurpose
from app.security.models import ApiClient, OAuthJti
from app.security.roles import Role, role_scopes

log = logging.getLogger("spbridge.oauth")

TOKEN_PATH = "/oauth2/token"  # noqa: S105 (a path, not a secret)
ISSUER = "spbridge"
AUDIENCE = "spbridge"
TOKEN_ALGORITHM = "HS256"  # noqa: S105 (an algorithm name, not a secret)
TOKEN_LIFETIME_SECONDS = 300
SECRET_PREFIX = "spbs_"  # noqa: S105 (a format tag, not a secret)
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS512", "ES256")
# A client assertion may expire at most this far ahead of our clock (plus a little skew).
MAX_ASSERTION_LIFETIME_SECONDS = 300
ASSERTION_CLOCK_SKEW_SECONDS = 30
DEFAULT_OVERLAP_SECONDS = 24 * 3600
MAX_OVERLAP_SECONDS = 30 * 24 * 3600
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_PUBLIC_JWK_MEMBERS = {
    "RSA": ("kty", "n", "e", "kid", "alg", "use"),
    "EC": ("kty", "crv", "x", "y", "kid", "alg", "use"),
}


def new_client_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256, as for API keys: secrets are long random strings (DESIGN §10)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


# --- the bridge's access-token key ------------------------------------------------------------


# --- access tokens ----------------------------------------------------------------------------


def issue_access_token(
    key: bytes, client_id: str, scopes: frozenset[str], now: dt.datetime
) -> tuple[str, str]:
    """A signed access token for ``client_id`` and the scope string it carries."""
    scope = " ".join(sorted(scopes))
    issued = int(now.timestamp())
    claims = {
        "iss": ISSUER,
        "sub": client_id,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + TOKEN_LIFETIME_SECONDS,
        "jti": str(uuid.uuid4()),
        "scope": scope,
    }
    token = jwt.encode(claims, key, algorithm=TOKEN_ALGORITHM, headers={"typ": "at+jwt"})
    return token, scope


@dataclass(frozen=True)
class AccessToken:
    client_id: str
    scopes: frozenset[str]


def verify_access_token(key: bytes, token: str, now: dt.datetime) -> AccessToken | None:
    """The client and scopes of a token the bridge signed and that has not expired; else None.

    The role and organisation are not in the token: the caller loads the client afresh."""
    try:
        if jwt.get_unverified_header(token).get("typ") != "at+jwt":
            return None
        claims = jwt.decode(
            token,
            key,
            algorithms=[TOKEN_ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            # Time is checked below against the app's clock (tests control it).
            options={
                "require": ["iss", "sub", "aud", "exp", "jti"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError:
        return None
    expires = claims.get("exp")
    subject = claims.get("sub")
    scope = claims.get("scope", "")
    if not isinstance(expires, int) or expires <= now.timestamp():
        return None
    if not isinstance(subject, str) or not isinstance(scope, str):
        return None
    return AccessToken(client_id=subject, scopes=frozenset(scope.split()))


# --- client keys ------------------------------------------------------------------------------


class JwkRefused(ValueError):
    """A JWK the bridge will not register; the message says why (never echoes the key)."""


def public_jwk(jwk: dict[str, Any]) -> dict[str, Any]:
    """The public members of an RSA (≥ 2048 bits) or EC P-256 key, checked; raises JwkRefused."""
    if _PRIVATE_JWK_MEMBERS & jwk.keys():
        raise JwkRefused("the JWK holds private key material: register the public key only")
    kty = jwk.get("kty")
    if kty not in _PUBLIC_JWK_MEMBERS:
        raise JwkRefused("kty must be 'RSA' or 'EC'")
    if kty == "EC" and jwk.get("crv") != "P-256":
        raise JwkRefused("an EC key must be on the curve P-256 (for ES256)")
    algorithm = "RS512" if kty == "RSA" else "ES256"
    if jwk.get("alg") not in (None, algorithm):
        raise JwkRefused(f"alg must be {algorithm} for this key type")
    try:
        parsed = jwt.PyJWK(jwk, algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise JwkRefused("the JWK is not a valid public key") from None
    if kty == "RSA" and getattr(parsed.key, "key_size", 0) < 2048:
        raise JwkRefused("an RSA key must have at least 2048 bits")
    return {name: jwk[name] for name in _PUBLIC_JWK_MEMBERS[kty] if name in jwk}


def _active(value: Any, expires: dt.datetime | None, now: dt.datetime) -> bool:
    return value is not None and expires is not None and now < expires


# --- the token endpoint -----------------------------------------------------------------------


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def _invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


class TokenResponse(BaseModel):
    access_token: str = Field(description="A JWT signed by the bridge; send it as a Bearer token")
    token_type: str = Field(examples=["Bearer"])
    expires_in: int = Field(description="Seconds the token is valid for", examples=[300])
    scope: str = Field(description="The scopes granted, space-separated")


class OAuthErrorBody(BaseModel):
    error: str = Field(
        description="RFC 6749 §5.2 error code",
        examples=["invalid_client"],
    )
    error_description: str


def _json(body: BaseModel, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body.model_dump_json(),
        status_code=status,
        media_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )


def _token_url(request: Request) -> str:
    """The audience a client assertion must name: this endpoint at the configured address,
    never one built from the Host header (which would let the client choose it)."""
    return public_base(request.app.state.settings) + TOKEN_PATH


def _form(body: bytes, content_type: str) -> dict[str, str]:
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise OAuthError(
            "invalid_request", "Send the parameters as application/x-www-form-urlencoded"
        )
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "The form could not be read") from None
    form: dict[str, str] = {}
    for position, (name, value) in enumerate(pairs, 1):
        if name in form:
            # Its position, not its name: the name is the client's (docs/SECURITY.md T7).
            raise OAuthError("invalid_request", f"Form parameter {position} repeats an earlier one")
        if "\x00" in value:
            raise OAuthError("invalid_request", "The form holds a NUL character")
        form[name] = value
    return form


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("The Basic credentials could not be read") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("The Basic credentials could not be read")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


async def _client(session: AsyncSession, client_id: object) -> ApiClient:
    if not isinstance(client_id, str) or not client_id or len(client_id) > 36:
        raise _invalid_client("The client is not known")
    client = await session.get(ApiClient, client_id)
    if client is None or client.revoked_at is not None:
        raise _invalid_client("The client is not known, or it was revoked")
    return client


async def _by_secret(
    session: AsyncSession, client_id: str, secret: str, now: dt.datetime
) -> ApiClient:
    client = await _client(session, client_id)
    digest = hash_secret(secret)
    current = client.secret_hash is not None and hmac.compare_digest(digest, client.secret_hash)
    previous = (
        client.previous_secret_hash is not None
        and _active(client.previous_secret_hash, client.previous_secret_expires_at, now)
        and hmac.compare_digest(digest, client.previous_secret_hash)
    )
    if not (current or previous):
        raise _invalid_client("The client secret is not valid")
    return client


async def _by_assertion(
    session: AsyncSession,
    assertion: str,
    form_client_id: str | None,
    audience: str,
    now: dt.datetime,
) -> ApiClient:
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _invalid_client("The client assertion is not a JWT") from None
    algorithm = header.get("alg")
    if algorithm not in ASSERTION_ALGORITHMS:
        raise _invalid_client("The client assertion must be signed with RS512 or ES256")
    issuer = unverified.get("iss")
    if form_client_id is not None and form_client_id != issuer:
        raise _invalid_client("client_id does not match the assertion's issuer")
    client = await _client(session, issuer)
    keys = [
        jwk
        for jwk in (
            client.public_key_jwk,
            client.previous_public_key_jwk
            if _active(client.previous_public_key_jwk, client.previous_public_key_expires_at, now)
            else None,
        )
        if jwk is not None
    ]
    if not keys:
        raise _invalid_client("The client has no public key registered")
    claims: dict[str, Any] | None = None
    failure = "The client assertion's signature is not valid"
    for jwk in keys:
        try:
            key = jwt.PyJWK(jwk, algorithm=algorithm).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # a key of the other type: it cannot have signed with this algorithm
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=[algorithm],
                audience=audience,
                issuer=client.id,
                options={
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
            break
        except jwt.InvalidAudienceError:
            failure = "The client assertion's aud must be the token endpoint URL"
        except jwt.InvalidSignatureError:
            pass
        except jwt.PyJWTError:
            failure = "The client assertion is missing a claim or has an invalid one"
    if claims is None:
        raise _invalid_client(failure)
    if claims.get("sub") != client.id:
        raise _invalid_client("The client assertion's sub must be the client id")
    expires, jti = claims.get("exp"), claims.get("jti")
    if not isinstance(expires, int):
        raise _invalid_client("The client assertion's exp must be a number")
    if expires <= now.timestamp():
        raise _invalid_client("The client assertion has expired")
    if expires > now.timestamp() + MAX_ASSERTION_LIFETIME_SECONDS + ASSERTION_CLOCK_SKEW_SECONDS:
        raise _invalid_client("The client assertion's exp is more than 5 minutes ahead")
    if not isinstance(jti, str) or not 0 < len(jti) <= 255:
        raise _invalid_client("The client assertion needs a jti of 1 to 255 characters")
    # Used ids are kept until their assertion expires; expired ones go now and then.
    await session.execute(
        delete(OAuthJti).where(OAuthJti.client_id == client.id, OAuthJti.expires_at < now)
    )
    session.add(
        OAuthJti(
            client_id=client.id,
            jti=jti,
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        )
    )
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise _invalid_client("The client assertion's jti was used before") from None
    return client


def _granted(role: Role, requested: str | None) -> frozenset[str]:
    allowed = role_scopes(role)
    if requested is None or not requested.strip():
        return allowed
    asked = frozenset(requested.split())
    if not asked <= allowed:
        raise OAuthError("invalid_scope", "The scope asks for more than the client's role allows")
    return asked


async def _token(request: Request, session: AsyncSession) -> Response:
    now = get_now(request)
    form = _form(await request.body(), request.headers.get("content-type", ""))
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "Only grant_type=client_credentials is offered")
    key = await installation_keys(request).get(session, KeyPurpose.ACCESS_TOKEN)
    basic = _basic(request.headers.get("authorization", ""))
    assertion = form.get("client_assertion")
    if basic is not None and assertion is not None:
        raise OAuthError("invalid_request", "Use one way of authenticating the client, not two")
    if "client_secret" in form:
        raise OAuthError(
            "invalid_request", "Send the client secret with HTTP Basic (client_secret_basic)"
        )
    if basic is not None:
        client = await _by_secret(session, basic[0], basic[1], now)
    elif assertion is not None:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise OAuthError("invalid_request", f"client_assertion_type must be {JWT_BEARER}")
        client = await _by_assertion(
            session, assertion, form.get("client_id"), _token_url(request), now
        )
    else:
        raise _invalid_client(
            "Authenticate the client with HTTP Basic or a signed client assertion"
        )
    scopes = _granted(Role(client.role), form.get("scope"))
    token, scope = issue_access_token(key, client.id, scopes, now)
    return _json(
        TokenResponse(
            access_token=token,
            token_type="Bearer",  # noqa: S106 (the token type, not a secret)
            expires_in=TOKEN_LIFETIME_SECONDS,
            scope=scope,
        ),
        200,
    )


router = APIRouter(tags=["oauth2"])

_FORM_SCHEMA = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials"]},
        "scope": {
            "type": "string",
            "description": "Space-separated scopes; at most what the client's role allows "
            "(default: all of them)",
            "examples": ["referrals:read cases:read"],
        },
        "client_assertion_type": {"type": "string", "enum": [JWT_BEARER]},
        "client_assertion": {
            "type": "string",
            "description": "private_key_jwt: a JWT signed RS512 or ES256 with the client's "
            "registered key; iss and sub the client id, aud this endpoint's URL, exp at most "
            "5 minutes ahead, a jti never used before",
        },
        "client_id": {"type": "string", "description": "Optional; must match the assertion"},
    },
}


@router.post(
    TOKEN_PATH,
    response_model=None,
    summary="Get an access token (OAuth2 client credentials)",
    description=(
        "RFC 6749 §4.4 client credentials grant. Authenticate the client either with HTTP Basic "
        "(`client_secret_basic`: the client id and a secret issued by "
        "`POST /api/v1/clients/{client_id}/secret`) or with a signed JWT (`private_key_jwt`, "
        "RFC 7523: `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`"
        " and `client_assertion`, signed RS512 or ES256 with the key registered by "
        "`PUT /api/v1/clients/{client_id}/public-key`; iss and sub the client id, aud this "
        "endpoint's URL, exp at most 5 minutes ahead, jti unique: a reused jti is refused). "
        "The access token is valid for 5 minutes; send it as `Authorization: Bearer <token>`. "
        "Its scopes can only narrow what the client's role allows. A revoked client's tokens "
        "stop working at once. Errors are RFC 6749 §5.2 JSON."
    ),
    operation_id="oauth2Token",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA}},
        }
    },
    responses={
        200: {"model": TokenResponse, "description": "The access token"},
        400: {
            "model": OAuthErrorBody,
            "description": "invalid_request, unsupported_grant_type or invalid_scope",
        },
        401: {
            "model": OAuthErrorBody,
            "description": "invalid_client: the client could not be authenticated",
        },
    },
)
async def token(request: Request, session: WriteSession) -> Response:
    try:
        return await _token(request, session)
    except OAuthError as error:
        headers = {"WWW-Authenticate": 'Basic realm="spbridge"'} if error.status == 401 else {}
        body = OAuthErrorBody(error=error.error, error_description=error.description)
        return _json(body, error.status, headers)
