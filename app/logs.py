"""Structured JSON logs that never carry patient data (DESIGN §8).

One JSON object per line on stderr: ``time``, ``level``, ``logger``, ``message``, ``request_id``
and ``correlation_id`` (from app.requestids), and only the ``extra`` fields listed in
``SAFE_FIELDS``. The rules that keep NHS numbers, names, dates of birth, phone numbers, addresses
and free text out:

- Our own messages are constants; anything variable goes in an ``extra`` field that is listed
  here (ids, codes, counts, our own error text). Other ``extra`` fields are dropped.
- Messages of other libraries' loggers (except uvicorn and alembic, whose messages are about the
  server and the schema) are logged as their template only, first line, without arguments:
  ``aiosqlite`` puts query parameters in its arguments, ``asyncio`` the repr of an exception.
- Exceptions are logged as their type and traceback frames (file, line, function), never their
  message: a driver error quotes the value it refused, and SQLAlchemy's quotes the statement's
  parameters. Chained causes are logged the same way.
- The access log (``AccessLogMiddleware``) logs the route template
  (``/fhir/ServiceRequest/{referral_id}``), never the path or query string, which can hold ids,
  tokens or an NHS number in a search.
- Loggers that log values at INFO or DEBUG (SQLAlchemy's statements and parameters, httpx's
  URLs) are held at WARNING whatever the level.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import IO, Any

import fastapi.routing
import orjson
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.requestids import correlation_id_var, request_id_var, valid_id

# ``extra`` fields that may be logged: ids, codes, numbers and text the bridge writes itself.
SAFE_FIELDS = (
    # the access log
    "method",
    "route",
    "status",
    "latency_ms",
    "client",
    "role",
    # delivery and background work
    "worker",
    "delivery_id",
    "destination_id",
    "event_type",
    "attempts",
    "service",
    "message_id",
    "error",
    "reason",
    "retry_after",
)
# Loggers whose messages (with their arguments) are about the process, not about people.
TRUSTED_LOGGERS = ("spbridge", "uvicorn", "alembic")
# Held at WARNING whatever the level: they log statements with parameters, or URLs.
QUIET_LOGGERS = ("sqlalchemy", "aiosqlite", "asyncpg", "httpx", "httpcore", "multipart")
MAX_TEXT = 500
MAX_FRAMES = 40
MAX_CHAIN = 5


def _trusted(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in TRUSTED_LOGGERS)


def _short_path(filename: str) -> str:
    """A frame's file from the package or site-packages root, not where we are installed."""
    index = filename.rfind("/site-packages/")
    if index >= 0:
        return filename[index + len("/site-packages/") :]
    index = max(filename.rfind(marker) for marker in ("/app/", "/adapters/", "/tests/"))
    return filename[index + 1 :] if index >= 0 else filename


def describe_exception(
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> dict[str, Any] | None:
    """An exception as its type and frames, with its causes: never its message or arguments."""
    if exc_type is None:
        return None
    seen: set[int] = set()
    described: dict[str, Any] = {}
    current = described
    depth = 0
    while exc_type is not None and depth < MAX_CHAIN:
        current["type"] = f"{exc_type.__module__}.{exc_type.__qualname__}"
        frames = traceback.extract_tb(tb)[-MAX_FRAMES:] if tb is not None else []
        current["frames"] = [
            {"file": _short_path(frame.filename), "line": frame.lineno, "function": frame.name}
            for frame in frames
        ]
        if exc is None:
            break
        seen.add(id(exc))
        following = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if following is None or id(following) in seen:
            break
        nested: dict[str, Any] = {}
        current["cause"] = nested
        current = nested
        exc_type, exc, tb = type(following), following, following.__traceback__
        depth += 1
    return described


def _text(value: str) -> str:
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"


def _safe_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return _text(str(value))


def _id_field(record: logging.LogRecord, name: str) -> str | None:
    value = record.__dict__.get(name)
    return value if isinstance(value, str) and valid_id(value) else None


def _message(record: logging.LogRecord) -> str:
    if _trusted(record.name):
        try:
            return _text(record.getMessage())
        except Exception:  # a bad format string must not lose the record
            return _text(str(record.msg))
    # Another library's message: its template only, without the arguments that fill it.
    template = str(record.msg)
    return _text(template.split("\n", 1)[0])


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module's docstring for what goes in)."""

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        request_id = request_id_var.get()
        correlation_id = correlation_id_var.get()
        if request_id is None:
            # Logged outside the request's context (after the middlewares, in the last-resort
            # error handler): the ids come with the record, checked like incoming ones.
            request_id = _id_field(record, "request_id")
            correlation_id = _id_field(record, "correlation_id")
        if request_id is not None:
            entry["request_id"] = request_id
            entry["correlation_id"] = correlation_id
        for name in SAFE_FIELDS:
            if name in record.__dict__:
                entry[name] = _safe_value(record.__dict__[name])
        if record.exc_info:
            exc_type, exc, tb = record.exc_info
            entry["exception"] = describe_exception(exc_type, exc, tb)
        return orjson.dumps(entry, default=str).decode()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes, not what it was when logging
    was set up: a command run with its output captured (a test's CLI runner) closes that
    stream, and the process's later records must not fail on it."""

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as JSON; returns the handler installed.

    Replaces the root logger's handlers. Uvicorn's loggers keep no handlers of their own, so their
    records come here too (run uvicorn with ``log_config=None`` and ``access_log=False``).
    """
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet(QUIET_LOGGERS)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler


def quiet(names: Iterable[str]) -> None:
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


# --- the access log ----------------------------------------------------------------------------

access_log = logging.getLogger("spbridge.access")


def _templates(application: Any) -> list[tuple[re.Pattern[str], str]]:
    """Every route's path template, compiled: (regex, template), in the order they match."""
    routes: Any = getattr(application, "routes", ())
    # Recent FastAPI keeps each included router as one branch of app.routes, which
    # iter_route_contexts flattens (with the prefixes); older versions copy every route there.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    if flatten is not None:
        routes = flatten(routes)
    table = []
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str) and path.startswith("/"):
            table.append((compile_path(path)[0], path))
    return table


_TEMPLATES_ATTRIBUTE = "access_log_route_templates"


def route_template(scope: Scope) -> str | None:
    """The path template of the route that served this request; for a request answered before
    routing (429, 413), of the route that would have served it. None for no route."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    application = scope.get("app")
    state = getattr(application, "state", None)
    if state is None:
        return None
    cached = getattr(state, _TEMPLATES_ATTRIBUTE, None)
    routes_now = len(getattr(application, "routes", ()))
    if cached is None or cached[0] != routes_now:
        cached = (routes_now, _templates(application))
        setattr(state, _TEMPLATES_ATTRIBUTE, cached)
    requested = scope.get("path", "")
    for regex, template in cached[1]:
        if regex.match(requested):
            return template
    return None


def client_of(scope: Scope) -> tuple[str | None, str | None]:
    """The API client that made the request (its id, or "bootstrap-admin") and its role."""
    state = scope.get("state") or {}
    principal = state.get("principal")
    if principal is not None:
        client_id = getattr(principal, "client_id", None)
        role = getattr(principal, "role", None)
        return (client_id or "bootstrap-admin"), (str(role) if role is not None else None)
    limited_as = state.get("rate_limit_client")
    return (limited_as if isinstance(limited_as, str) else None), None


# Told of every finished request: (method, route template or None, status, seconds).
RequestObserver = Callable[[str, str | None, int, float], None]


class AccessLogMiddleware:
    """One ``spbridge.access`` line per HTTP request: method, route template, status, latency in
    milliseconds, client and role. Sits inside RequestIdMiddleware, so the line has the ids.
    The same measurement goes to each of ``observers`` (the request metrics), so a request is
    timed and its route looked up once."""

    def __init__(self, app: ASGIApp, observers: Sequence[RequestObserver] = ()) -> None:
        self.app = app
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except BaseException:
            if status is None:
                status = 500  # what the server's last-resort handler answers
            raise
        finally:
            seconds = time.perf_counter() - began
            route = route_template(scope)
            client, role = client_of(scope)
            access_log.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    "route": route,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 1),
                    "client": client,
                    "role": role,
                },
            )
            for observe in self.observers:
                observe(str(scope.get("method", "")), route, status or 500, seconds)
