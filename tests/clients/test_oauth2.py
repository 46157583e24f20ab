"""OAuth2 client credentials (issue 5 part 1): POST /oauth2/token with client_secret_basic and
private_key_jwt (RS512, ES256), access tokens with scopes, rotation with overlap, revocation."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select, text

from app.db import create_engine
from app.security.models import ApiClient
from app.security.oauth import JWT_BEARER
from tests.conftest import Bridge
from tests.support.cases import open_case

TOKEN_URL = "http://testserver/oauth2/token"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class Clock:
    """The app's clock (app.state.clock), moved by the test."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock(app: Any) -> Clock:
    clock = Clock()
    app.state.clock = clock
    return clock


async def new_client(
    bridge: Bridge, role: str = "clinical-system", organisation: str = "RW4"
) -> tuple[str, dict[str, str]]:
    """A new client's id and its API-key headers."""
    response = await bridge.http.post(
        "/api/v1/clients",
        json={"name": f"{role} {organisation}", "role": role, "organisation": organisation},
        headers=bridge.admin,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], {"Authorization": f"Bearer {body['api_key']}"}


async def issue_secret(bridge: Bridge, client_id: str, **body: Any) -> str:
    response = await bridge.http.post(
        f"/api/v1/clients/{client_id}/secret", json=body or None, headers=bridge.admin
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    secret: str = response.json()["client_secret"]
    return secret


async def token_by_secret(
    http: httpx.AsyncClient, client_id: str, secret: str, **form: str
) -> httpx.Response:
    return await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", **form},
        auth=(client_id, secret),
    )


def bearer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk


async def register_key(bridge: Bridge, client_id: str, key: PrivateKey, **body: Any) -> None:
    response = await bridge.http.put(
        f"/api/v1/clients/{client_id}/public-key",
        json={"jwk": public_jwk(key), **body},
        headers=bridge.admin,
    )
    assert response.status_code == 200, response.text


def assertion(
    key: PrivateKey | bytes,
    client_id: str,
    now: dt.datetime,
    *,
    algorithm: str | None = None,
    **claims: Any,
) -> str:
    if algorithm is None:
        algorithm = "RS512" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + 240,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    return jwt.encode(body, key, algorithm=algorithm)  # type: ignore[arg-type]


async def token_by_assertion(http: httpx.AsyncClient, signed: str, **form: str) -> httpx.Response:
    return await http.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": signed,
            **form,
        },
    )


def refused(response: httpx.Response, error: str = "invalid_client") -> str:
    status = 401 if error == "invalid_client" else 400
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert response.headers["cache-control"] == "no-store"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")
    description: str = body["error_description"]
    return description


# --- client_secret_basic ----------------------------------------------------------------------


async def test_client_secret_basic_token_works_on_a_real_endpoint(
    bridge: Bridge, clock: Clock
) -> None:
    case = await open_case(bridge)
    client_id, _ = await new_client(bridge, "clinical-system", "RW4")
    secret = await issue_secret(bridge, client_id)
    response = await token_by_secret(bridge.http, client_id, secret)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert set(body["scope"].split()) == {
        "referrals:read",
        "referrals:write",
        "cases:read",
        "services:read",
        "subscriptions:write",
    }
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == client_id and claims["aud"] == "spbridge"
    assert claims["exp"] - claims["iat"] == 300
    assert "role" not in claims and "organisation" not in claims
    tasks = await bridge.http.get(
        "/fhir/Task",
        params={"focus": f"ServiceRequest/{case.referral_id}"},
        headers=bearer(response),
    )
    # The token's client is at RW4, the referrer's organisation: it sees the case's Task.
    assert tasks.status_code == 200, tasks.text
    assert tasks.json()["entry"][0]["resource"]["id"] == case.case_id


async def test_wrong_or_missing_client_credentials_are_refused(
    bridge: Bridge, clock: Clock
) -> None:
    client_id, _ = await new_client(bridge)
    secret = await issue_secret(bridge, client_id)
    refused(await token_by_secret(bridge.http, client_id, secret + "x"))
    refused(await token_by_secret(bridge.http, str(uuid.uuid4()), secret))
    refused(await bridge.http.post("/oauth2/token", data={"grant_type": "client_credentials"}))
    # A client with no secret issued has nothing to match.
    other_id, _ = await new_client(bridge)
    refused(await token_by_secret(bridge.http, other_id, ""))
    # The secret in the form (client_secret_post) is not offered.
    body = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    refused(await bridge.http.post("/oauth2/token", data=body), "invalid_request")
    # Other grants, no grant, JSON instead of a form.
    refused(
        await token_by_secret(bridge.http, client_id, secret, grant_type="password"),
        "unsupported_grant_type",
    )
    response = await bridge.http.post("/oauth2/token", data={}, auth=(client_id, secret))
    refused(response, "invalid_request")
    response = await bridge.http.post(
        "/oauth2/token", json={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    refused(response, "invalid_request")


async def test_a_rotated_secret_works_during_the_overlap_only(bridge: Bridge, clock: Clock) -> None:
    client_id, _ = await new_client(bridge)
    first = await issue_secret(bridge, client_id)
    second = await issue_secret(bridge, client_id, overlap_seconds=3600)
    assert first != second
    bearer(await token_by_secret(bridge.http, client_id, first))
    bearer(await token_by_secret(bridge.http, client_id, second))
    clock.advance(seconds=3601)
    refused(await token_by_secret(bridge.http, client_id, first))
    bearer(await token_by_secret(bridge.http, client_id, second))
    # The default overlap is 24 hours; overlap 0 ends the old secret at once.
    third = await issue_secret(bridge, client_id)
    clock.advance(hours=23)
    bearer(await token_by_secret(bridge.http, client_id, second))
    clock.advance(hours=2)
    refused(await token_by_secret(bridge.http, client_id, second))
    fourth = await issue_secret(bridge, client_id, overlap_seconds=0)
    refused(await token_by_secret(bridge.http, client_id, third))
    bearer(await token_by_secret(bridge.http, client_id, fourth))


async def test_secrets_are_shown_once_and_stored_hashed(
    app: Any, bridge: Bridge, clock: Clock, database_url: str
) -> None:
    client_id, _ = await new_client(bridge)
    first = await issue_secret(bridge, client_id)
    second = await issue_secret(bridge, client_id)
    listed = await bridge.http.get("/api/v1/clients", headers=bridge.admin)
    revoked = await bridge.http.post(f"/api/v1/clients/{client_id}/revoke", headers=bridge.admin)
    for response in (listed, revoked):
        assert response.status_code == 200, response.text
        assert first not in response.text and second not in response.text
        assert "secret_hash" not in response.text
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    select(ApiClient.secret_hash, ApiClient.previous_secret_hash).where(
                        ApiClient.id == client_id
                    )
                )
            ).one()
            everything = str((await connection.execute(text("SELECT * FROM api_clients"))).all())
    finally:
        await engine.dispose()
    assert len(row.secret_hash) == 64 and len(row.previous_secret_hash) == 64
    assert first not in everything and second not in everything


# --- private_key_jwt --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RS512", "ES256"])
async def test_private_key_jwt_gives_a_token(bridge: Bridge, clock: Clock, kind: str) -> None:
    client_id, _ = await new_client(bridge, "advisor", "LR001")
    key = rsa_key() if kind == "RS512" else ec_key()
    await register_key(bridge, client_id, key)
    signed = assertion(key, client_id, clock.now)
    assert jwt.get_unverified_header(signed)["alg"] == kind
    response = await token_by_assertion(bridge.http, signed, scope="worklist:read")
    assert response.json()["scope"] == "worklist:read"
    worklist = await bridge.http.get("/api/v1/worklist", headers=bearer(response))
    assert worklist.status_code == 200, worklist.text
    # client_id in the form must match the assertion.
    other = assertion(key, client_id, clock.now)
    refused(await token_by_assertion(bridge.http, other, client_id=str(uuid.uuid4())))
    again = assertion(key, client_id, clock.now)
    bearer(await token_by_assertion(bridge.http, again, client_id=client_id))


async def test_bad_assertions_are_refused(bridge: Bridge, clock: Clock) -> None:
    client_id, _ = await new_client(bridge)
    key = rsa_key()
    await register_key(bridge, client_id, key)
    now = clock.now
    stamp = int(now.timestamp())

    async def refuse(signed: str, words: str) -> None:
        description = refused(await token_by_assertion(bridge.http, signed))
        assert words in description, description

    await refuse(assertion(key, client_id, now, exp=stamp - 1), "expired")
    await refuse(assertion(key, client_id, now, exp=stamp + 3600), "5 minutes")
    await refuse(assertion(key, client_id, now, aud="https://elsewhere.example/token"), "aud")
    await refuse(assertion(rsa_key(), client_id, now), "signature")
    await refuse(assertion(ec_key(), client_id, now), "signature")  # ES256, not the key's type
    await refuse(assertion(key, client_id, now, sub=str(uuid.uuid4())), "sub")
    await refuse(assertion(key, client_id, now, jti=None), "claim")
    await refuse(assertion(key, str(uuid.uuid4()), now), "not known")
    await refuse(assertion(key, client_id, now, algorithm="RS256"), "RS512 or ES256")
    await refuse(assertion(b"k" * 32, client_id, now, algorithm="HS256"), "RS512 or ES256")
    unsigned = jwt.encode(
        {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": stamp + 60, "jti": "x"},
        None,
        algorithm="none",
    )
    await refuse(unsigned, "RS512 or ES256")
    await refuse("not-a-jwt", "not a JWT")
    # The wrong assertion type.
    response = await bridge.http.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:other",
            "client_assertion": assertion(key, client_id, now),
        },
    )
    refused(response, "invalid_request")
    # Assertions past the client's clock are refused once our clock passes them too.
    later = assertion(key, client_id, now)
    clock.advance(seconds=241)
    await refuse(later, "expired")


async def test_a_reused_jti_is_refused(bridge: Bridge, clock: Clock) -> None:
    client_id, _ = await new_client(bridge)
    key = ec_key()
    await register_key(bridge, client_id, key)
    signed = assertion(key, client_id, clock.now, jti="once-only")
    bearer(await token_by_assertion(bridge.http, signed))
    description = refused(await token_by_assertion(bridge.http, signed))
    assert "jti" in description
    # Also in a new assertion with the same jti; another client may use the same jti.
    refused(
        await token_by_assertion(bridge.http, assertion(key, client_id, clock.now, jti="once-only"))
    )
    other_id, _ = await new_client(bridge)
    await register_key(bridge, other_id, key)
    bearer(
        await token_by_assertion(bridge.http, assertion(key, other_id, clock.now, jti="once-only"))
    )


async def test_a_rotated_public_key_is_accepted_during_the_overlap_only(
    bridge: Bridge, clock: Clock
) -> None:
    client_id, _ = await new_client(bridge)
    old, new = rsa_key(), ec_key()
    await register_key(bridge, client_id, old)
    await register_key(bridge, client_id, new, overlap_seconds=600)
    bearer(await token_by_assertion(bridge.http, assertion(old, client_id, clock.now)))
    bearer(await token_by_assertion(bridge.http, assertion(new, client_id, clock.now)))
    clock.advance(seconds=601)
    refused(await token_by_assertion(bridge.http, assertion(old, client_id, clock.now)))
    bearer(await token_by_assertion(bridge.http, assertion(new, client_id, clock.now)))


async def test_only_acceptable_public_keys_are_registered(bridge: Bridge, clock: Clock) -> None:
    client_id, _ = await new_client(bridge)
    small = public_jwk(rsa_key(1024))
    private = jwt.algorithms.ECAlgorithm.to_jwk(ec_key(), as_dict=True)
    p384 = jwt.algorithms.ECAlgorithm.to_jwk(
        ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True
    )
    for jwk, words in (
        (small, "2048"),
        (private, "private"),
        (p384, "P-256"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "private"),
        ({"kty": "RSA", "n": "!!", "e": "AQAB"}, "not a valid"),
    ):
        response = await bridge.http.put(
            f"/api/v1/clients/{client_id}/public-key", json={"jwk": jwk}, headers=bridge.admin
        )
        assert response.status_code == 422, response.text
        assert words in response.text
        assert private["d"] not in response.text
    response = await bridge.http.put(
        f"/api/v1/clients/{uuid.uuid4()}/public-key",
        json={"jwk": public_jwk(ec_key())},
        headers=bridge.admin,
    )
    assert response.status_code == 404, response.text


# --- access tokens ----------------------------------------------------------------------------


async def test_an_expired_or_tampered_access_token_is_refused(bridge: Bridge, clock: Clock) -> None:
    client_id, _ = await new_client(bridge)
    headers = bearer(
        await token_by_secret(bridge.http, client_id, await issue_secret(bridge, client_id))
    )
    assert (await bridge.http.get("/api/v1/services", headers=headers)).status_code == 200
    token = headers["Authorization"].removeprefix("Bearer ")
    head, claims, signature = token.split(".")
    for bad in (
        f"{head}.{claims}.{signature[:-4]}AAAA",
        f"{head}.{claims}.",
        jwt.encode(
            {**jwt.decode(token, options={"verify_signature": False}), "scope": "admin"},
            b"guessed-key-of-32-bytes-or-more!!",
            algorithm="HS256",
            headers={"typ": "at+jwt"},
        ),
    ):
        response = await bridge.http.get(
            "/api/v1/services", headers={"Authorization": f"Bearer {bad}"}
        )
        assert response.status_code == 401, response.text
    clock.advance(seconds=301)
    response = await bridge.http.get("/api/v1/services", headers=headers)
    assert response.status_code == 401, response.text
    assert "invalid_token" in response.headers["www-authenticate"]


async def test_a_client_assertion_is_not_an_access_token(bridge: Bridge, clock: Clock) -> None:
    client_id, _ = await new_client(bridge)
    key = rsa_key()
    await register_key(bridge, client_id, key)
    signed = assertion(key, client_id, clock.now, aud="spbridge")
    response = await bridge.http.get(
        "/api/v1/services", headers={"Authorization": f"Bearer {signed}"}
    )
    assert response.status_code == 401, response.text


async def test_revocation_takes_effect_at_once(bridge: Bridge, clock: Clock) -> None:
    client_id, key_headers = await new_client(bridge)
    secret = await issue_secret(bridge, client_id)
    private = ec_key()
    await register_key(bridge, client_id, private)
    headers = bearer(await token_by_secret(bridge.http, client_id, secret))
    assert (await bridge.http.get("/api/v1/services", headers=headers)).status_code == 200
    response = await bridge.http.post(f"/api/v1/clients/{client_id}/revoke", headers=bridge.admin)
    assert response.status_code == 200, response.text
    revoked_at = response.json()["revoked_at"]
    assert revoked_at is not None
    # The token it already holds, its API key, its secret and its key: all refused now.
    assert (await bridge.http.get("/api/v1/services", headers=headers)).status_code == 401
    assert (await bridge.http.get("/api/v1/services", headers=key_headers)).status_code == 401
    refused(await token_by_secret(bridge.http, client_id, secret))
    refused(await token_by_assertion(bridge.http, assertion(private, client_id, clock.now)))
    # Revoking again keeps the first time; a revoked client gets no new secret.
    again = await bridge.http.post(f"/api/v1/clients/{client_id}/revoke", headers=bridge.admin)
    assert again.json()["revoked_at"] == revoked_at
    response = await bridge.http.post(f"/api/v1/clients/{client_id}/secret", headers=bridge.admin)
    assert response.status_code == 409, response.text
    missing = await bridge.http.post(f"/api/v1/clients/{uuid.uuid4()}/revoke", headers=bridge.admin)
    assert missing.status_code == 404, missing.text


async def test_scopes_narrow_the_role_and_never_widen_it(bridge: Bridge, clock: Clock) -> None:
    case = await open_case(bridge, register=True)
    advisor_id, _ = await new_client(bridge, "advisor", "LR001")
    secret = await issue_secret(bridge, advisor_id)
    reader = bearer(await token_by_secret(bridge.http, advisor_id, secret, scope="cases:read"))
    assert (await case.detail(reader)).status_code == 200
    write = await case.post({"type": "case.accepted"}, headers=reader)
    assert write.status_code == 403, write.text
    assert "cases:write" in write.text
    writer = bearer(
        await token_by_secret(bridge.http, advisor_id, secret, scope="cases:read cases:write")
    )
    assert (await case.post({"type": "case.accepted"}, headers=writer)).status_code == 201
    # A scope outside the role (or unknown) is refused; the role's rules still apply in full.
    for scope in ("referrals:write", "admin", "cases:read everything"):
        refused(
            await token_by_secret(bridge.http, advisor_id, secret, scope=scope), "invalid_scope"
        )
    full = bearer(await token_by_secret(bridge.http, advisor_id, secret))
    listed = await bridge.http.get("/api/v1/clients", headers=full)
    assert listed.status_code == 403, listed.text


async def test_management_routes_are_for_admins(bridge: Bridge, clock: Clock) -> None:
    client_id, key_headers = await new_client(bridge, "advisor", "LR001")
    for method, path, body in (
        ("POST", f"/api/v1/clients/{client_id}/secret", None),
        ("PUT", f"/api/v1/clients/{client_id}/public-key", {"jwk": public_jwk(ec_key())}),
        ("POST", f"/api/v1/clients/{client_id}/revoke", None),
    ):
        response = await bridge.http.request(method, path, json=body, headers=key_headers)
        assert response.status_code == 403, response.text
        response = await bridge.http.request(method, path, json=body)
        assert response.status_code == 401, response.text
