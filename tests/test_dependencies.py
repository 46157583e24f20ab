"""No request waits for a worker thread: FastAPI runs a plain ``def`` endpoint or dependency in
anyio's thread pool, a hop that cost intake more than a millisecond of wall time (issue 19) and,
under load, keeps a request's transaction idle while it waits for a thread."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.main import create_app
from tests.conftest import make_settings


def _runs_on_the_loop(call: Any) -> bool:
    target = call if inspect.isroutine(call) else getattr(call, "__call__", call)  # noqa: B004
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def _calls(dependant: Dependant, where: str) -> Iterator[tuple[str, Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield f"{where} → {getattr(sub.call, '__qualname__', sub.call)}", sub.call
        yield from _calls(sub, where)


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    # An included router (FastAPI >= 0.130) keeps the router it includes as original_router.
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)


def test_every_endpoint_and_dependency_is_a_coroutine(tmp_path: Any) -> None:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"))
    in_threads = []
    routes = list(_routes(app.router.routes))
    assert len(routes) > 50
    for route in routes:
        where = f"{sorted(route.methods)} {route.path}"
        if not _runs_on_the_loop(route.endpoint):
            in_threads.append(where)
        in_threads += [
            name for name, call in _calls(route.dependant, where) if not _runs_on_the_loop(call)
        ]
    assert not in_threads, "\n".join(sorted(set(in_threads)))
