"""Delivery helpers shared by the tests: a dispatcher the test drives, a webhook subscription."""

from __future__ import annotations

from typing import Any

from app.db import utcnow
from app.delivery.dispatcher import Dispatcher
from app.delivery.senders import standard_senders
from tests.conftest import ADMIN_KEY, Bridge

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def dispatcher_for(app: Any, clock: Any = utcnow, name: str | None = None) -> Dispatcher:
    settings = app.state.settings
    return Dispatcher(
        app.state.database,
        settings,
        app.state.http,
        senders=standard_senders(settings),
        clock=clock,
        name=name,
    )


async def subscribe(
    bridge: Bridge, url: str, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    response = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": url, **body}, headers=headers or ADMIN
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
