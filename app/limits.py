"""Limits and abuse (DESIGN §8): rate per client, body size and JSON nesting, CORS.

Rate: a token bucket per API client (the bootstrap admin counts as one), refilled at
``SPBRIDGE_RATE_LIMIT_PER_MINUTE`` up to ``SPBRIDGE_RATE_LIMIT_BURST``; a request that finds it
empty is answered 429 with ``Retry-After``. The middleware runs before authentication, so it
knows a client by its key: once a key has been accepted (the route's authentication puts a
principal on the request), later requests with it count against that client's bucket. Anything
else (no key, a key not yet seen, a wrong key, the journey page, platform webhooks) counts against
the client IP address's bucket, at the lower ``SPBRIDGE_RATE_LIMIT_ANONYMOUS_*`` rate, so guessing
keys or flooding unauthenticated routes is limited per address. Buckets live in process memory:
with N API processes a client may make N times as many requests (a limiter shared through
PostgreSQL is future work). Behind a reverse proxy the client address is the proxy's unless
uvicorn is told to trust its ``X-Forwarded-For`` (``--forwarded-allow-ips``).

Bodies outside ``/fhir`` (which reads its own, app.fhir.parsing): larger than
``SPBRIDGE_MAX_BODY_BYTES`` is 413, refused on a too-large Content-Length before anything is read
and, for a body streamed without one, as soon as it passes the limit; a JSON body nested deeper
than ``SPBRIDGE_MAX_JSON_DEPTH`` is 400 ("nested too deeply"); under ``/api/v1`` a body that is
not sent as JSON is 415, and one that is not valid JSON is 400 naming the line and column where
it breaks (:func:`json_syntax_error`; never quoting it).

CORS: off unless ``SPBRIDGE_CORS_ORIGINS`` lists origins (FastAPI adds no CORS headers itself).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.errors import (
    AppError,
    BadRequest,
    BusinessRuleViolation,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_response,
    is_fhir_path,
)

# Routes no limit applies to: probes and the metrics scrape come often, carry nothing, and must
# not take a process out of rotation because its address is busy.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Bearer keys recognised, and buckets kept, at most this many (least recently used go first).
MAX_KEYS = 10_000


class TooManyRequests(AppError):
    status = 429
    issue_code = "throttled"
    title = "Too many requests"


async def refuse(scope: Scope, receive: Receive, send: Send, error: AppError) -> None:
    """Answer with ``error`` as the app would (before the app is reached)."""
    await error_response(scope.get("path", ""), error)(scope, receive, send)


# --- rate -----------------------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per key: ``burst`` tokens, refilled at ``per_minute`` a minute."""

    def __init__(self, per_minute: float, burst: int, max_keys: int = MAX_KEYS) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Take a token: 0 if there was one, else the seconds until there will be."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            while len(self._buckets) > self.max_keys:
                # A forgotten bucket starts full again: only a client with that many others
                # between two of its requests gains by it.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            if now > bucket.updated:  # a clock that went back refills nothing
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
                bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


def _bearer_digest(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if scheme.lower() == b"bearer" and token:
                return hashlib.sha256(token).hexdigest()
            return None
    return None


def _client_key(principal: Any) -> str:
    client_id = getattr(principal, "client_id", None)
    return client_id if isinstance(client_id, str) and client_id else "bootstrap-admin"


class RateLimits:
    """The process's buckets and the keys it has seen accepted; ``clock`` is injectable."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.clients = (
            TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst)
            if settings.rate_limit_per_minute > 0
            else None
        )
        self.addresses = (
            TokenBuckets(
                settings.rate_limit_anonymous_per_minute, settings.rate_limit_anonymous_burst
            )
            if settings.rate_limit_anonymous_per_minute > 0
            else None
        )
        # SHA-256 of a bearer key → the client it authenticated as.
        self.known: OrderedDict[str, str] = OrderedDict()

    def client_for(self, digest: str | None) -> str | None:
        if digest is None:
            return None
        client = self.known.get(digest)
        if client is not None:
            self.known.move_to_end(digest)
        return client

    def learn(self, digest: str, client: str) -> None:
        self.known[digest] = client
        self.known.move_to_end(digest)
        while len(self.known) > MAX_KEYS:
            self.known.popitem(last=False)

    def forget(self, digest: str) -> None:
        self.known.pop(digest, None)

    def wait(self, client: str | None, address: str) -> float:
        """0 if the request may go on, else the seconds to wait."""
        now = self.clock()
        if client is not None:
            return self.clients.take(client, now) if self.clients is not None else 0.0
        return self.addresses.take(address, now) if self.addresses is not None else 0.0


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        limits = self.limits
        digest = _bearer_digest(scope)
        client = limits.client_for(digest)
        address = (scope.get("client") or ("unknown", 0))[0]
        state = scope.setdefault("state", {})
        if client is not None:
            state["rate_limit_client"] = client
        wait = limits.wait(client, str(address))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            await refuse(
                scope,
                receive,
                send,
                TooManyRequests(
                    f"Too many requests; try again in {seconds} seconds",
                    headers={"Retry-After": str(seconds)},
                ),
            )
            return

        async def send_and_learn(message: Message) -> None:
            if message["type"] == "http.response.start" and digest is not None:
                principal = state.get("principal")
                if principal is not None:
                    limits.learn(digest, _client_key(principal))
                elif message["status"] == 401:
                    limits.forget(digest)  # revoked, or never valid
            await send(message)

        await self.app(scope, receive, send_and_learn)


# --- bodies ---------------------------------------------------------------------------------

# A JSON string, or an unterminated one up to the end: never fails at a quote, so linear.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets become +1 and closing ones -1 (0xff read as a signed byte).
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in ``body`` (brackets inside strings do not count)."""
    if b"[" not in body and b"{" not in body:
        return 0
    structure = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS).translate(_STEPS)
    return max(itertools.accumulate(memoryview(structure).cast("b")), default=0)


def _is_json(content_type: str | None) -> bool:
    """Whether the body may be read as JSON (without a type it is checked too, to be safe)."""
    if not content_type:
        return True
    return _json_media_type(content_type)


def _json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


# Where bodies must be JSON: the API outside /fhir, except the platforms' own webhooks, which
# each adapter reads as its platform sends them.
_JSON_API = "/api/v1/"
_OWN_FORMAT = "/api/v1/adapters/"
NOT_JSON = "Send the request body as JSON, with the header Content-Type: application/json"


def wrong_media_type(path: str, content_type: str | None) -> UnsupportedMediaType | None:
    """A 415 for a body under /api/v1 that is not declared as JSON (a form, text, or nothing)."""
    if not path.startswith(_JSON_API) or path.startswith(_OWN_FORMAT):
        return None
    if content_type and _json_media_type(content_type):
        return None
    declared = "no Content-Type" if not content_type else "another media type"
    return UnsupportedMediaType(f"{NOT_JSON} (it came with {declared})")


def json_syntax_error(document: str | bytes, position: int, reason: str) -> BadRequest:
    """A 400 saying where a JSON body stops being JSON (line and column, counted from 1) and
    what the parser expected there; the body itself is never quoted."""
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
    position = max(0, min(position, len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    # The json module's reasons name the rule ("Expecting ',' delimiter"), never the input.
    words = reason[:1].lower() + reason[1:] if reason else "it cannot be read"
    return BadRequest(
        f"The request body is not valid JSON: {words} at line {line}, column {column}",
        issue_code="structure",
    )


def too_deep(max_depth: int) -> BadRequest:
    return BadRequest(
        f"The request body is nested too deeply: arrays and objects may nest at most "
        f"{max_depth} levels"
    )


# A JSON \u0000 escape (an odd run of backslashes before u0000; an even run is a literal
# backslash followed by the text "u0000").
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def has_nul(scope: Scope) -> bool:
    """Whether the path or query string carries a NUL character (PostgreSQL refuses it in text,
    so it would otherwise surface as a database error). The journey page answers every input
    with a page of its own, and checks its signed token before it reads anything."""
    path: str = scope.get("path", "")
    if path.startswith("/journey/"):
        return False
    query: bytes = scope.get("query_string", b"")
    return "\x00" in path or b"\x00" in query or b"%00" in query


def _nul_pointer(
    value: Any, path: tuple[str, ...] = (), declared: frozenset[str] = frozenset()
) -> str | None:
    """Where the first NUL sits in a parsed body (nesting is already bounded), as a.b.0.c. A
    member whose name no schema declares is named by its parent: its name is the client's."""
    if isinstance(value, str):
        return ".".join(path) or "body" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if key in declared:
                found = _nul_pointer(item, (*path, key), declared)
            elif "\x00" in key or _nul_pointer(item) is not None:
                found = ".".join(path) or "body"
            else:
                found = None
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_pointer(item, (*path, str(index)), declared)
            if found is not None:
                return found
    return None


def declared_members(scope: Scope) -> frozenset[str]:
    """The member names the app's request and response schemas declare (its OpenAPI document),
    read once per app."""
    application = scope.get("app")
    if application is None or not hasattr(application, "openapi"):
        return frozenset()
    names: frozenset[str] | None = getattr(application.state, "declared_members", None)
    if names is None:
        found: set[str] = set()
        stack: list[Any] = [application.openapi()]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                properties = node.get("properties")
                if isinstance(properties, dict):
                    found.update(properties)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        names = application.state.declared_members = frozenset(found)
    return names


def nul_refusal(body: bytes, declared: frozenset[str] = frozenset()) -> BusinessRuleViolation:
    """A 422 naming the field that holds the NUL character (not quoting it, nor any member name
    ``declared`` does not hold)."""
    try:
        pointer = _nul_pointer(orjson.loads(body), declared=declared)
    except orjson.JSONDecodeError:
        pointer = None
    where = pointer or "body"
    return BusinessRuleViolation(f"{where}: text must not contain NUL characters", expression=where)


# Routes that stream their body to disk under a limit of their own (an import file).
STREAMED_PATHS = frozenset({"/api/v1/imports"})


class BodyLimitMiddleware:
    """NUL characters refused in every path and query; size, JSON nesting and NUL limits for
    every body outside /fhir (which enforces its own)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and has_nul(scope):
            await refuse(
                scope,
                receive,
                send,
                BadRequest("The URL must not contain NUL characters", issue_code="invalid"),
            )
            return
        if (
            scope["type"] != "http"
            or is_fhir_path(scope.get("path", ""))
            or scope.get("path") in STREAMED_PATHS
        ):
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes")
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await refuse(scope, receive, send, BadRequest("Content-Length is not a number"))
                return
            if int(declared) > self.max_bytes:
                await refuse(scope, receive, send, too_large)
                return
        chunks: list[bytes] = []
        size = 0
        early: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                early.append(message)  # the client went away: let the app see it
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await refuse(scope, receive, send, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            not_json = wrong_media_type(scope.get("path", ""), headers.get("content-type"))
            if not_json is not None:
                await refuse(scope, receive, send, not_json)
                return
        if body and _is_json(headers.get("content-type")) and json_depth(body) > self.max_depth:
            await refuse(scope, receive, send, too_deep(self.max_depth))
            return
        if body and _is_json(headers.get("content-type")) and _JSON_NUL.search(body):
            await refuse(scope, receive, send, nul_refusal(body, declared_members(scope)))
            return
        replay: list[Message] = early or [
            {"type": "http.request", "body": body, "more_body": False}
        ]

        async def receive_again() -> Message:
            if replay:
                return replay.pop(0)
            return await receive()

        await self.app(scope, receive_again, send)


# --- wiring ---------------------------------------------------------------------------------

CORS_HEADERS = ["Authorization", "Content-Type", "If-Match", "If-None-Exist", "Idempotency-Key"]
EXPOSED_HEADERS = [
    "X-Request-ID",
    "X-Correlation-ID",
    "Retry-After",
    "Location",
    "ETag",
    "Link",
    "X-Case-ID",
]


def install(application: FastAPI, settings: Settings) -> RateLimits:
    """Add the limit middlewares (outermost last: CORS, then rate, then bodies) and return the
    rate limits, also kept as ``application.state.rate_limits`` (tests set its ``clock``)."""
    limits = RateLimits(settings)
    application.state.rate_limits = limits
    application.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
    )
    application.add_middleware(RateLimitMiddleware, limits=limits)
    if settings.cors_origins:
        application.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[*CORS_HEADERS, "X-Request-ID", "X-Correlation-ID"],
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=600,
        )
    return limits
