"""Who a key belongs to is remembered for a few seconds, so a request needs no query to
authenticate: a revocation in this process counts at once, one made elsewhere within the bound
(SPBRIDGE_PRINCIPAL_CACHE_SECONDS), and a lookup racing a change never keeps the old state."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import event, select

from app.clients import service as clients
from app.db import utcnow
from app.main import create_app
from app.security.auth import Principal, PrincipalCache
from app.security.models import ApiClient
from app.security.roles import Role
from tests.conftest import ADMIN_KEY, Bridge, make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_known_key_costs_no_query_and_a_revocation_here_counts_at_once(
    app: Any, client: httpx.AsyncClient, bridge: Bridge
) -> None:
    await bridge.service()
    clinical = await bridge.key("clinical-system", "RW4")
    assert (await client.get("/api/v1/services", headers=clinical)).status_code == 200
    asked: list[str] = []

    def sent(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        asked.append(statement)

    engine = app.state.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", sent)
    try:
        assert (await client.get("/api/v1/services", headers=clinical)).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", sent)
    assert not [s for s in asked if "api_clients" in s]

    (listed,) = [
        c
        for c in (await client.get("/api/v1/clients", headers=bridge.admin)).json()
        if c["role"] == "clinical-system"
    ]
    revoked = await client.post(f"/api/v1/clients/{listed['id']}/revoke", headers=bridge.admin)
    assert revoked.status_code == 200
    assert (await client.get("/api/v1/services", headers=clinical)).status_code == 401


async def test_a_revocation_by_another_process_counts_within_the_bound(
    database_url: str, client: httpx.AsyncClient, bridge: Bridge
) -> None:
    """Two apps on one database stand for two processes: one revokes, the other learns of it
    once its remembered principal is older than the bound, not before."""
    await bridge.service()
    clinical = await bridge.key("clinical-system", "RW4")
    other = create_app(make_settings(database_url, principal_cache_seconds=5))
    clock = Clock()
    other.state.principals = PrincipalCache(5, clock)
    async with other.router.lifespan_context(other):
        # Not following changes (PostgreSQL's notifications): the bound is what is left.
        await other.state.database.stop_following()
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/api/v1/services", headers=clinical)).status_code == 200
            (listed,) = [
                c
                for c in (await client.get("/api/v1/clients", headers=bridge.admin)).json()
                if c["role"] == "clinical-system"
            ]
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            revoked = await client.post(f"/api/v1/clients/{listed['id']}/revoke", headers=admin)
            assert revoked.status_code == 200
            clock.now += 4.9  # within the bound: the other process still knows the old client
            assert (await http.get("/api/v1/services", headers=clinical)).status_code == 200
            clock.now += 0.2  # past it: read again, and refused
            assert (await http.get("/api/v1/services", headers=clinical)).status_code == 401


def test_a_lookup_that_raced_a_change_is_not_kept() -> None:
    cache = PrincipalCache(60, Clock())
    principal = Principal(client_id="c", name="n", role=Role.ADVISOR, organisation="LR001")
    started = cache.generation  # a request reads the client...
    cache.forget_all()  # ...while another commits a change to it
    cache.put("key", principal, started)
    assert cache.get("key") is None
    cache.put("key", principal, cache.generation)
    assert cache.get("key") == principal


def test_no_cache_when_the_bound_is_zero() -> None:
    cache = PrincipalCache(0, Clock())
    cache.put("key", Principal("c", "n", Role.ADVISOR, "LR001"), cache.generation)
    assert cache.get("key") is None


async def test_a_change_outside_a_request_counts_at_once(
    app: Any, client: httpx.AsyncClient, bridge: Bridge
) -> None:
    """The cache is emptied through the session's after-commit hook (app.caches): a session no
    request authenticated on (a command run in the process, a background job) empties it too."""
    await bridge.service()
    clinical = await bridge.key("clinical-system", "RW4")
    assert (await client.get("/api/v1/services", headers=clinical)).status_code == 200
    admin = Principal(client_id=None, name="admin", role=Role.ADMIN, organisation=None)
    database = app.state.database
    async with database.write_sessions() as session, session.begin():
        (client_id,) = await session.scalars(
            select(ApiClient.id).where(ApiClient.role == "clinical-system")
        )
        await clients.revoke(session, admin, client_id, utcnow())
    assert (await client.get("/api/v1/services", headers=clinical)).status_code == 401
