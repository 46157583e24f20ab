"""The ``fhir_push`` clinical adapter: a referral's resources written to the referrer's FHIR server.

Each time a case changes, the engine hands over the referral's resources that changed (the Task,
and later Appointments, social-prescription ServiceRequests and Observations). Each one is written
in order with ``PUT {base_url}/{resourceType}/{id}`` carrying the full current resource as
``application/fhir+json``, the delivery's ``X-Request-ID`` (the same on every retry, so the server
can de-duplicate) and ``X-Correlation-ID``. The Outcome is that of the last write.

Errors follow ``adapters.base.check_response``: connection failures, timeouts, 408, 429 and 5xx are
retryable (``Retry-After`` honoured); 410 is Gone; any other 4xx is permanent. A failure stops the
update there; the retry writes every resource again, which is harmless because a PUT is idempotent.

Version conflicts (409 or 412 on a PUT). The bridge is the source of truth for these resources,
so a conflict is resolved in its favour, but never by overwriting something newer:

1. GET the server's copy. Any failure of that GET is retryable.
2. If the copy already carries our content, the write is done and nothing more is sent. The
   server's ``meta`` cannot tell us that (servers rewrite ``meta.versionId`` and
   ``meta.lastUpdated``), so we compare our own ``lastModified`` element (the Task): the server's
   being the same instant or later counts as done. Resources without it (or with a value that is not
   a full instant) are compared whole, minus ``meta`` and ``text`` (servers rewrite both).
3. Otherwise PUT once more with ``If-Match`` set to the copy's ETag (or ``W/"<meta.versionId>"``
   when the server sent no ETag; without either, the PUT is repeated as it was).
4. A second conflict means someone else is writing the resource at the same time: retryable.

Authentication: none, a static bearer token, or OAuth2 client credentials (client_secret_basic,
RFC 6749 §4.4). The access token is cached in the adapter instance until 30 seconds before it
expires, one fetch at a time; a 401 from the FHIR server drops it, and the call is repeated once
with a new one. The token endpoint answering 400 or 401 is a misconfiguration (permanent); 5xx and
timeouts are retryable.

Exception messages never carry tokens, secrets or resource content (patient data): only the
method, the resource type and the HTTP status. Response excerpts are kept as the attempt record.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.base import (
    AdapterConfig,
    AdapterError,
    ClinicalAdapter,
    ClinicalUpdate,
    FHIRResourceUpdate,
    Outbound,
    Outcome,
    PermanentError,
    RetryableError,
    check_response,
    excerpt,
    retry_after_seconds,
    send,
)
from adapters.fhir_push.capabilities import (
    NotACapabilityStatement,
    WriteMode,
    supported_modes,
)
from app.fhir.codes import RESOURCE_ID_SYSTEM

FHIR_JSON = "application/fhir+json"
CONFLICT_STATUSES = frozenset({409, 412})
# Refresh a token this long before the server says it expires, so it never lapses in flight.
TOKEN_EXPIRY_MARGIN = 30.0
# expires_in is only RECOMMENDED (RFC 6749 §5.1); without it, ask again after five minutes.
DEFAULT_TOKEN_LIFETIME = 300.0
# Elements servers rewrite on every write, so they say nothing about whose content it is.
SERVER_OWNED_ELEMENTS = ("meta", "text")

# The type and id go into the URL path: anything else could point the PUT elsewhere.
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Credentials go into headers: visible ASCII without spaces, so nothing can inject a header.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")
# An OAuth2 error code (RFC 6749 §5.2): safe to quote in a message.
_OAUTH_ERROR_CODE = re.compile(r"[a-z_]{1,64}")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def _http_url(value: str, *, what: str) -> httpx.URL:
    value = value.strip()
    # httpx would quietly percent-encode spaces, even in the host.
    if _SPACE_OR_CONTROL.search(value):
        raise ValueError(f"{what} must be an http or https URL")
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValueError(f"{what} must be an http or https URL") from None
    if url.scheme not in ("http", "https") or not url.host or "%" in url.host:
        raise ValueError(f"{what} must be an http or https URL")
    if url.userinfo:
        # Credentials in a URL end up in logs and attempt records.
        raise ValueError(f"{what} must not contain credentials")
    if url.fragment:
        raise ValueError(f"{what} must not have a fragment")
    return url


class NoAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["none"] = "none"


class BearerAuth(BaseModel):
    """A static token, sent as ``Authorization: Bearer <token>``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["bearer"]
    # Plain str, not SecretStr: the config is stored with model_dump(mode="json"), which would
    # mask a SecretStr. repr=False keeps it out of reprs and logs.
    token: str = Field(min_length=1, repr=False)

    @field_validator("token")
    @classmethod
    def _header_safe(cls, value: str) -> str:
        if not _HEADER_TOKEN.fullmatch(value):
            raise ValueError("token must be visible ASCII characters without spaces")
        return value


class OAuth2ClientCredentials(BaseModel):
    """OAuth2 client credentials grant, the client authenticated by HTTP Basic."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["oauth2"]
    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1, repr=False)
    scope: str | None = Field(default=None, min_length=1)

    @field_validator("token_url")
    @classmethod
    def _valid_token_url(cls, value: str) -> str:
        return str(_http_url(value, what="token_url"))


FhirAuth = Annotated[NoAuth | BearerAuth | OAuth2ClientCredentials, Field(discriminator="type")]


class ServerCapabilities(BaseModel):
    """What the bridge learned from the server's CapabilityStatement: the write modes it supports
    for every type the bridge writes, best first (empty: none it says it supports), or why it
    could not tell (``problem``)."""

    model_config = ConfigDict(extra="forbid")

    modes: list[WriteMode] = Field(default_factory=list)
    read_at: dt.datetime
    problem: str | None = Field(default=None, max_length=500)
    # The server did not answer (down, timed out, 5xx) the last time: read again at the next send.
    unreachable: bool = False


class FhirPushConfig(AdapterConfig):
    base_url: str
    auth: FhirAuth = Field(default_factory=NoAuth)
    timeout: float = Field(default=10.0, gt=0, le=60, allow_inf_nan=False, strict=True)
    # "auto": the best mode the server's CapabilityStatement offers; or one pinned by the admin.
    write_mode: Literal["auto", "transaction", "conditional", "update"] = "auto"
    # Set by the bridge when the route is saved or refreshed (anything given is replaced).
    capabilities: ServerCapabilities | None = None

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str) -> str:
        url = _http_url(value, what="base_url")
        if url.query:
            raise ValueError("base_url must not have a query")
        # Stored without the trailing slash; resource paths are appended as "/Type/id".
        return str(url).rstrip("/")


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # on the adapter's clock


class FhirPushAdapter(ClinicalAdapter):
    name = "fhir_push"
    config_model: ClassVar[type[AdapterConfig]] = FhirPushConfig
    config: FhirPushConfig

    def __init__(
        self, config: AdapterConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not isinstance(config, FhirPushConfig):
            raise TypeError("FhirPushAdapter needs a FhirPushConfig")
        super().__init__(config)
        self.config = config
        self._clock = clock
        self._token: _Token | None = None
        self._capabilities: ServerCapabilities | None = config.capabilities
        # One token fetch at a time: concurrent sends wait for it instead of fetching their own.
        self._token_lock = asyncio.Lock()

    def outbound_urls(self) -> list[str]:
        urls = [self.config.base_url]
        if isinstance(self.config.auth, OAuth2ClientCredentials):
            urls.append(self.config.auth.token_url)
        return urls

    async def send_update(
        self, http: httpx.AsyncClient, update: ClinicalUpdate, outbound: Outbound
    ) -> Outcome:
        if not update.resources:
            return Outcome()
        mode = await self.write_mode(http)
        if mode == "update":
            outcome = Outcome()
            for resource in update.resources:
                outcome = await self._write(http, resource, outbound)
            return outcome
        for resource in update.resources:
            self._resource_url(resource)  # the same checks as a PUT by id
        items = _in_dependency_order([_Item.of(resource) for resource in update.resources])
        known = await self._find_elsewhere(http, items, outbound)
        if mode == "transaction":
            return await self._send_transaction(http, items, known, outbound)
        return await self._send_conditional(http, items, known, outbound)

    # --- capabilities ------------------------------------------------------------------------

    async def read_capabilities(
        self, http: httpx.AsyncClient, *, now: dt.datetime | None = None
    ) -> ServerCapabilities:
        """GET {base}/metadata and what it says. A server error or no answer raises
        RetryableError; a 4xx or an answer that is no CapabilityStatement is a ``problem``."""
        now = now or dt.datetime.now(dt.UTC)
        what = "GET metadata"
        response = await self._call(
            http,
            "GET",
            f"{self.config.base_url}/metadata",
            what=what,
            headers={"Accept": FHIR_JSON},
        )
        if response.status_code >= 500 or response.status_code in (408, 429):
            check_response(response, what)
        if not 200 <= response.status_code < 300:
            found = ServerCapabilities(read_at=now, problem=f"{what}: HTTP {response.status_code}")
        else:
            try:
                modes = supported_modes(orjson.loads(response.content))
            except (orjson.JSONDecodeError, NotACapabilityStatement) as exc:
                problem = str(exc) if isinstance(exc, NotACapabilityStatement) else "not JSON"
                found = ServerCapabilities(read_at=now, problem=f"{what}: {problem}")
            else:
                found = ServerCapabilities(modes=modes, read_at=now)
        self._capabilities = found
        return found

    async def discover(self, http: httpx.AsyncClient) -> FhirPushConfig:
        """The configuration with what the server's CapabilityStatement says now. A server that
        does not answer keeps what was read before, marked ``unreachable`` with the reason."""
        try:
            found = await self.read_capabilities(http)
        except RetryableError as exc:
            before = self.config.capabilities
            found = ServerCapabilities(
                modes=before.modes if before else [],
                read_at=before.read_at if before else dt.datetime.now(dt.UTC),
                problem=f"not read again: {exc}"[:500],
                unreachable=True,
            )
        return self.config.model_copy(update={"capabilities": found})

    async def write_mode(self, http: httpx.AsyncClient) -> WriteMode:
        """The pinned mode; else the best the server offers (its CapabilityStatement read once).

        Without a CapabilityStatement: ``update`` (PUT by id, as before capabilities were read).
        With one that offers none of the three for every type: ``conditional``, the R4 way, which
        servers often support without saying so."""
        if self.config.write_mode != "auto":
            return self.config.write_mode
        found = self._capabilities
        if found is None or (found.unreachable and not found.modes):
            found = await self.read_capabilities(http)
        if found.modes:
            return found.modes[0]
        return "update" if found.problem else "conditional"

    # --- conditional writes and transactions -------------------------------------------------

    async def _find_elsewhere(
        self, http: httpx.AsyncClient, items: Sequence[_Item], outbound: Outbound
    ) -> dict[tuple[str, str], str]:
        """The server's ids of resources the bridge wrote earlier that these point at (one search
        per type by our identifiers); those it lacks are referred to by identifier alone."""
        here = {item.key for item in items}
        wanted: dict[str, set[str]] = {}
        for item in items:
            for node in _references(item.update.resource):
                target = _written_target(node)
                if target is not None and target not in here:
                    wanted.setdefault(target[0], set()).add(target[1])
        found: dict[tuple[str, str], str] = {}
        for resource_type, ids in sorted(wanted.items()):
            values = ",".join(f"{RESOURCE_ID_SYSTEM}|{i}" for i in sorted(ids))
            query = urllib.parse.urlencode({"identifier": values, "_count": str(len(ids) * 2)})
            for resource in await self._search(
                http, f"{resource_type}?{query}", outbound, resource_type
            ):
                ours = _our_id(resource)
                if ours in ids and isinstance(resource.get("id"), str):
                    found[(resource_type, ours)] = f"{resource_type}/{resource['id']}"
        return found

    async def _search(
        self, http: httpx.AsyncClient, query: str, outbound: Outbound, resource_type: str
    ) -> list[dict[str, Any]]:
        what = f"GET {resource_type} by identifier"
        headers = {"Accept": FHIR_JSON, **outbound.headers()}
        response = await self._call(
            http, "GET", f"{self.config.base_url}/{query}", what=what, headers=headers
        )
        check_response(response, what)
        try:
            bundle = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            bundle = None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise RetryableError(
                f"{what}: the response is not a Bundle",
                status_code=response.status_code,
                response_excerpt=excerpt(response),
            )
        return [
            entry["resource"]
            for entry in bundle.get("entry") or []
            if isinstance(entry, dict)
            and isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") == resource_type
        ]

    async def _send_conditional(
        self,
        http: httpx.AsyncClient,
        items: Sequence[_Item],
        known: dict[tuple[str, str], str],
        outbound: Outbound,
    ) -> Outcome:
        outcome = Outcome()
        for item in items:
            body = _for_their_server(item.update.resource, known)
            what = f"PUT {item.resource_type} by identifier"
            url = f"{self.config.base_url}/{item.search}"
            response = await self._put(http, url, _json_bytes(body), outbound, what=what)
            if response.status_code in CONFLICT_STATUSES:
                outcome, their_id = await self._after_conflict(http, item, body, outbound)
            else:
                outcome = check_response(response, what)
                their_id = _server_id(response, item.resource_type)
            if their_id is not None:
                known[item.key] = f"{item.resource_type}/{their_id}"
        return outcome

    async def _after_conflict(
        self, http: httpx.AsyncClient, item: _Item, body: dict[str, Any], outbound: Outbound
    ) -> tuple[Outcome, str | None]:
        """A conditional update refused with 409/412: as for a PUT by id (see the module)."""
        what = f"PUT {item.resource_type}"
        copies = await self._search(http, item.search, outbound, item.resource_type)
        if len(copies) != 1 or not isinstance(copies[0].get("id"), str):
            raise RetryableError(
                f"{what}: HTTP 409/412 and the server's copy cannot be read back by identifier"
            )
        copy = copies[0]
        their_id: str = copy["id"]
        if _already_holds(body, copy, same_id=False):
            return Outcome(status_code=200), their_id
        response = await self._put(
            http,
            f"{self.config.base_url}/{item.resource_type}/{their_id}",
            _json_bytes({**body, "id": their_id}),
            outbound,
            what=what,
            if_match=_copy_version(copy),
        )
        if response.status_code in CONFLICT_STATUSES:
            raise RetryableError(
                f"{what}: HTTP {response.status_code} again after re-reading the server's copy "
                "(a concurrent writer)",
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
                status_code=response.status_code,
                response_excerpt=excerpt(response),
            )
        return check_response(response, what), their_id

    async def _send_transaction(
        self,
        http: httpx.AsyncClient,
        items: Sequence[_Item],
        known: dict[tuple[str, str], str],
        outbound: Outbound,
    ) -> Outcome:
        targets = {**known, **{item.key: f"urn:uuid:{uuid.uuid4()}" for item in items}}
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": targets[item.key],
                    "resource": _for_their_server(item.update.resource, targets),
                    "request": {"method": "PUT", "url": item.search},
                }
                for item in items
            ],
        }
        what = f"POST transaction ({', '.join(item.resource_type for item in items)})"
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **outbound.headers()}
        response = await self._call(
            http,
            "POST",
            self.config.base_url,
            what=what,
            headers=headers,
            content=_json_bytes(bundle),
        )
        if response.status_code in CONFLICT_STATUSES:
            # A concurrent writer changed one of them: the next attempt sends them again.
            raise RetryableError(
                f"{what}: HTTP {response.status_code} (a concurrent writer)",
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
                status_code=response.status_code,
                response_excerpt=excerpt(response),
            )
        return check_response(response, what)

    # --- one resource ------------------------------------------------------------------------

    async def _write(
        self, http: httpx.AsyncClient, item: FHIRResourceUpdate, outbound: Outbound
    ) -> Outcome:
        url = self._resource_url(item)
        # Our ids are the server's here: what we write keeps them; the rest by identifier.
        body = _json_bytes(_by_our_ids(item.resource))
        what = f"PUT {item.resource_type}"
        response = await self._put(http, url, body, outbound, what=what)
        if response.status_code not in CONFLICT_STATUSES:
            return check_response(response, what)

        read, server_copy = await self._read(http, url, outbound, item.resource_type)
        if _already_holds(item.resource, server_copy):
            return Outcome(status_code=read.status_code, response_excerpt=excerpt(read))

        response = await self._put(
            http, url, body, outbound, what=what, if_match=_version_tag(read, server_copy)
        )
        if response.status_code in CONFLICT_STATUSES:
            raise RetryableError(
                f"{what}: HTTP {response.status_code} again after re-reading the server's copy "
                "(a concurrent writer)",
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
                status_code=response.status_code,
                response_excerpt=excerpt(response),
            )
        return check_response(response, what)

    def _resource_url(self, item: FHIRResourceUpdate) -> str:
        if not _RESOURCE_TYPE.fullmatch(item.resource_type) or not _FHIR_ID.fullmatch(item.id):
            raise PermanentError("Not a valid FHIR resource type and id")
        if (
            item.resource.get("resourceType") != item.resource_type
            or item.resource.get("id") != item.id
        ):
            # The server would refuse it (400) anyway; say why here.
            raise PermanentError(
                f"{item.resource_type}: resourceType and id in the body do not match the update"
            )
        return f"{self.config.base_url}/{item.resource_type}/{item.id}"

    async def _put(
        self,
        http: httpx.AsyncClient,
        url: str,
        body: bytes,
        outbound: Outbound,
        *,
        what: str,
        if_match: str | None = None,
    ) -> httpx.Response:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **outbound.headers()}
        if if_match is not None:
            headers["If-Match"] = if_match
        return await self._call(http, "PUT", url, what=what, headers=headers, content=body)

    async def _read(
        self, http: httpx.AsyncClient, url: str, outbound: Outbound, resource_type: str
    ) -> tuple[httpx.Response, dict[str, Any]]:
        what = f"GET {resource_type} after a version conflict"
        headers = {"Accept": FHIR_JSON, **outbound.headers()}
        response = await self._call(http, "GET", url, what=what, headers=headers)
        if not 200 <= response.status_code < 300:
            # Whatever went wrong, the PUT may well succeed later.
            raise RetryableError(
                f"{what}: HTTP {response.status_code}",
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
                status_code=response.status_code,
                response_excerpt=excerpt(response),
            )
        try:
            resource = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            resource = None
        if not isinstance(resource, dict):
            raise RetryableError(
                f"{what}: the response is not a FHIR resource",
                status_code=response.status_code,
                response_excerpt=excerpt(response),
            )
        return response, resource

    # --- authentication ----------------------------------------------------------------------

    async def _call(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str],
        content: bytes | None = None,
    ) -> httpx.Response:
        """One call to the FHIR server, repeated once with a new OAuth2 token after a 401."""
        authorization = await self._authorization(http)
        response = await self._send(http, method, url, what, headers, authorization, content)
        if response.status_code == 401 and isinstance(self.config.auth, OAuth2ClientCredentials):
            # Revoked or expired early: a new token may do; a second 401 is check_response's.
            self._forget(authorization)
            authorization = await self._authorization(http)
            response = await self._send(http, method, url, what, headers, authorization, content)
        return response

    async def _send(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str],
        authorization: str | None,
        content: bytes | None,
    ) -> httpx.Response:
        if authorization is not None:
            headers = {**headers, "Authorization": authorization}
        return await send(
            http,
            method,
            url,
            timeout=self.config.timeout,
            what=what,
            headers=headers,
            content=content,
        )

    async def _authorization(self, http: httpx.AsyncClient) -> str | None:
        auth = self.config.auth
        if isinstance(auth, BearerAuth):
            return f"Bearer {auth.token}"
        if isinstance(auth, OAuth2ClientCredentials):
            return f"Bearer {await self._access_token(http, auth)}"
        return None

    def _forget(self, authorization: str | None) -> None:
        # Only the token that was refused: another send may already have fetched a fresh one.
        if self._token is not None and authorization == f"Bearer {self._token.value}":
            self._token = None

    def _cached_token(self) -> str | None:
        if self._token is not None and self._clock() < self._token.expires_at:
            return self._token.value
        return None

    async def _access_token(self, http: httpx.AsyncClient, auth: OAuth2ClientCredentials) -> str:
        token = self._cached_token()
        if token is not None:
            return token
        async with self._token_lock:
            token = self._cached_token()  # fetched while we waited for the lock
            if token is not None:
                return token
            asked_at = self._clock()
            token, lifetime = await _fetch_token(http, auth, self.config.timeout)
            self._token = _Token(token, asked_at + lifetime - TOKEN_EXPIRY_MARGIN)
            return token


# --- OAuth2 token endpoint ----------------------------------------------------------------------


async def _fetch_token(
    http: httpx.AsyncClient, auth: OAuth2ClientCredentials, time_limit: float
) -> tuple[str, float]:
    """A new access token and its lifetime in seconds."""
    what = "OAuth2 token request"
    # RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic encoding.
    credentials = (
        f"{urllib.parse.quote_plus(auth.client_id)}:{urllib.parse.quote_plus(auth.client_secret)}"
    )
    form = {"grant_type": "client_credentials"}
    if auth.scope is not None:
        form["scope"] = auth.scope
    response = await send(
        http,
        "POST",
        auth.token_url,
        timeout=time_limit,
        what=what,
        headers={
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode("ascii"),
            "Accept": "application/json",
        },
        data=form,
    )
    status = response.status_code
    if status in (400, 401):
        code = _oauth_error_code(response)
        raise PermanentError(
            f"{what} refused: HTTP {status}{f' ({code})' if code else ''}; "
            "check the client id, secret, scope and token_url",
            status_code=status,
            response_excerpt=_without_secret(excerpt(response), auth.client_secret),
        )
    try:
        check_response(response, what)
    except AdapterError as exc:
        if exc.response_excerpt is not None:
            exc.response_excerpt = _without_secret(exc.response_excerpt, auth.client_secret)
        raise
    return _parse_token(response, what)


def _parse_token(response: httpx.Response, what: str) -> tuple[str, float]:
    # No excerpt on these errors: the body may hold a token.
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise PermanentError(f"{what}: the response is not JSON; is token_url right?")
    token = body.get("access_token")
    if not isinstance(token, str) or not _HEADER_TOKEN.fullmatch(token):
        raise PermanentError(f"{what}: the response has no usable access_token")
    token_type = body.get("token_type")
    if token_type is not None and (
        not isinstance(token_type, str) or token_type.lower() != "bearer"
    ):
        raise PermanentError(f"{what}: the token is not a Bearer token")
    expires_in = body.get("expires_in")
    lifetime = DEFAULT_TOKEN_LIFETIME
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some servers send it as a string
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime = float(expires_in)
    return token, lifetime


def _oauth_error_code(response: httpx.Response) -> str | None:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) and _OAUTH_ERROR_CODE.fullmatch(code) else None


def _without_secret(text: str, secret: str) -> str:
    for form in {secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe="")}:
        text = text.replace(form, "[redacted]")
    return text


# --- comparing our resource with the server's copy ----------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _json_bytes(resource: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(resource, default=_json_default)
    except TypeError:
        raise PermanentError("The resource cannot be serialised as JSON") from None


def _instant(value: Any) -> dt.datetime | None:
    """A FHIR dateTime with a time and a zone; None for anything less (partial dates included)."""
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _content(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in SERVER_OWNED_ELEMENTS}


def _already_holds(
    ours: Mapping[str, Any], theirs: dict[str, Any], *, same_id: bool = True
) -> bool:
    """Whether the server's copy carries our content, or a later version of it (``same_id``
    False: a copy under the server's own id, found by our identifier)."""
    if theirs.get("resourceType") != ours.get("resourceType"):
        return False
    if same_id and theirs.get("id") != ours.get("id"):
        return False
    if not same_id:
        theirs = {k: v for k, v in theirs.items() if k != "id"}
    our_time, their_time = _instant(ours.get("lastModified")), _instant(theirs.get("lastModified"))
    if our_time is not None and their_time is not None:
        return their_time >= our_time
    # Through JSON, so ours compares as the server sees it (e.g. datetimes as strings).
    normalised: dict[str, Any] = orjson.loads(_json_bytes(ours))
    return _content(normalised) == _content(theirs)


def _version_tag(response: httpx.Response, server_copy: dict[str, Any]) -> str | None:
    """The If-Match value for the copy we read: its ETag, else its meta.versionId."""
    etag: str | None = response.headers.get("etag")
    if etag:
        return etag
    meta = server_copy.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    if isinstance(version, str) and _FHIR_ID.fullmatch(version):
        return f'W/"{version}"'
    return None


def _copy_version(copy: Mapping[str, Any]) -> str | None:
    meta = copy.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    if isinstance(version, str) and _FHIR_ID.fullmatch(version):
        return f'W/"{version}"'
    return None


# --- resources as the referrer's server holds them ----------------------------------------------

_RELATIVE_REFERENCE = re.compile(r"([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})")


@dataclass(frozen=True)
class _Item:
    """A resource to write by its business identifier (our id, under RESOURCE_ID_SYSTEM)."""

    update: FHIRResourceUpdate
    search: str  # Type?identifier=system|value, URL-encoded

    @property
    def resource_type(self) -> str:
        return self.update.resource_type

    @property
    def key(self) -> tuple[str, str]:
        return (self.update.resource_type, self.update.id)

    @classmethod
    def of(cls, update: FHIRResourceUpdate) -> _Item:
        if _our_id(update.resource) != update.id:
            raise PermanentError(
                f"{update.resource_type}: no identifier of the bridge's system with its id, "
                "so it cannot be written by identifier"
            )
        query = urllib.parse.urlencode({"identifier": f"{RESOURCE_ID_SYSTEM}|{update.id}"})
        return cls(update, f"{update.resource_type}?{query}")


def _identifiers(resource: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = resource.get("identifier")
    if isinstance(found, Mapping):  # QuestionnaireResponse.identifier is 0..1
        return [found]
    return [i for i in found if isinstance(i, Mapping)] if isinstance(found, list) else []


def _our_id(resource: Mapping[str, Any]) -> str | None:
    for identifier in _identifiers(resource):
        if identifier.get("system") == RESOURCE_ID_SYSTEM and isinstance(
            identifier.get("value"), str
        ):
            value: str = identifier["value"]
            return value
    return None


def _references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference (an object with a string ``reference``) outside contained resources."""
    if isinstance(node, list):
        for item in node:
            yield from _references(item)
    elif isinstance(node, Mapping):
        if isinstance(node.get("reference"), str) and isinstance(node, dict):
            yield node
        for key, value in node.items():
            if key != "contained" and isinstance(value, Mapping | list):
                yield from _references(value)


def _written_target(reference: Mapping[str, Any]) -> tuple[str, str] | None:
    """(type, our id) when the reference points at a resource the bridge writes there too."""
    match = _RELATIVE_REFERENCE.fullmatch(str(reference.get("reference")))
    identifier = reference.get("identifier")
    if (
        match
        and isinstance(identifier, Mapping)
        and identifier.get("system") == RESOURCE_ID_SYSTEM
        and identifier.get("value") == match[2]
    ):
        return (match[1], match[2])
    return None


def _for_their_server(
    resource: Mapping[str, Any], targets: Mapping[tuple[str, str], str]
) -> dict[str, Any]:
    """The resource without our id and meta (the server's own), its references as that server
    resolves them: to what the bridge wrote there (``targets``: ``Type/their id`` or an entry's
    ``urn:uuid``), else by identifier alone (a logical reference), never by an id only we know."""
    body: dict[str, Any] = orjson.loads(_json_bytes(resource))
    body.pop("id", None)
    body.pop("meta", None)
    for reference in list(_references(body)):
        match = _RELATIVE_REFERENCE.fullmatch(reference["reference"])
        if match is None:
            continue  # #contained, absolute or already the server's
        target = targets.get((match[1], match[2]))
        if target is not None and _written_target(reference) is not None:
            reference["reference"] = target
        else:
            del reference["reference"]
            reference.setdefault("type", match[1])
    return body


def _by_our_ids(resource: Mapping[str, Any]) -> dict[str, Any]:
    """For PUT by id: references to what the bridge writes there kept (our ids are that
    server's), the others by identifier alone (a logical reference)."""
    body: dict[str, Any] = orjson.loads(_json_bytes(resource))
    for reference in list(_references(body)):
        match = _RELATIVE_REFERENCE.fullmatch(reference["reference"])
        if match is not None and _written_target(reference) is None:
            del reference["reference"]
            reference.setdefault("type", match[1])
    return body


def _in_dependency_order(items: list[_Item]) -> list[_Item]:
    """Those pointed at before those pointing at them, else as given (the Task last)."""
    by_key = {item.key: item for item in items}
    done: dict[tuple[str, str], _Item] = {}

    def visit(item: _Item, path: frozenset[tuple[str, str]]) -> None:
        if item.key in done or item.key in path:
            return
        for reference in _references(item.update.resource):
            target = _written_target(reference)
            if target in by_key and target != item.key:
                visit(by_key[target], path | {item.key})
        done[item.key] = item

    for item in items:
        visit(item, frozenset())
    return list(done.values())


def _server_id(response: httpx.Response, resource_type: str) -> str | None:
    """The id the server gave a resource it wrote: from the body, else from Location."""
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == resource_type:
        found = body.get("id")
        if isinstance(found, str) and _FHIR_ID.fullmatch(found):
            return found
    location = response.headers.get("location") or response.headers.get("content-location")
    if location:
        match = re.search(rf"(?:^|/){resource_type}/([A-Za-z0-9\-.]{{1,64}})(?:/|$)", location)
        if match:
            return match[1]
    return None
