"""A real HTTP receiver on 127.0.0.1 for end-to-end delivery tests.

It runs uvicorn in the test's event loop, records every request, and answers as told: a queue of
statuses (with optional headers) to return first, then ``default_status``. It can also be "down":
not listening at all, so connections are refused, as in an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import conformance


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    default_status: int = 200
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    # Statuses (and headers) to answer next, in order, before the default.
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    # Decide per request: return (status, headers) or None for the scripted/default answer.
    rule: Callable[[Received], tuple[int, dict[str, str]] | None] | None = None
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.script.extend((status, headers or {}) for status in statuses)

    async def _handle(self, request: Request) -> Response:
        received = Received(
            request.method,
            request.url.path,
            {k.lower(): v for k, v in request.headers.items()},
            await request.body(),
            time.monotonic(),
        )
        self.requests.append(received)
        recorder = conformance.current()
        if recorder is not None:
            with contextlib.suppress(ValueError):
                recorder.saw(f"pushed {received.method} {received.path}", received.json())
        if self.delay:
            await asyncio.sleep(self.delay)
        decided = self.rule(received) if self.rule else None
        if decided is None:
            decided = self.script.pop(0) if self.script else (self.default_status, {})
        status, headers = decided
        return Response(b'{"ok": true}', status_code=status, headers=headers)

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])

    async def start(self) -> Receiver:
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(500):
            if self._server.started:
                return self
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        raise RuntimeError("receiver did not start")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=10)
        self._server = None
        self._task = None

    def bodies(self) -> list[Any]:
        return [r.json() for r in self.requests]


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        await asyncio.sleep(0.02)
