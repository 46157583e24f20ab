"""Migration 0010 moves a platform's adapter configuration from services.adapter_config (kept,
unread, for one release) to the service's platform destination, and back on a downgrade, losing
nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db import create_engine
from app.migrate import downgrade_async, upgrade_async
from tests.conftest import _admin_execute, postgres_database_async

NEW = {"base_url": "https://new.example", "api_key": "k2", "webhook_secret": "s2"}
STALE = {"base_url": "https://stale.example", "api_key": "k1", "webhook_secret": "s1"}
ORPHAN = {"base_url": "https://orphan.example"}


@pytest.fixture
async def scratch_url(backend: str, tmp_path: Path, database_url: str) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/m0010.db"
        return
    name = f"{make_url(database_url).database}_m0010"
    yield await postgres_database_async(name)
    await _admin_execute([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


async def run(url: str, statement: str, **values: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(statement), values)
            return list(result) if result.returns_rows else []
    finally:
        await engine.dispose()


def as_dict(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


SERVICE = (
    "INSERT INTO services (id, name, organisation, adapter, adapter_config, created_at, delivers) "
    "VALUES (:id, :id, 'LR001', :adapter, :config, CURRENT_TIMESTAMP, :delivers)"
)
PLATFORM = (
    "INSERT INTO destinations (id, kind, adapter, service_id, config, event_types, active, "
    "created_at, updated_at, consecutive_failures) VALUES (:id, 'platform', 'elemental', "
    ":service, :config, '[]', true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0)"
)


async def test_the_configuration_moves_to_the_platform_destination_and_back(
    scratch_url: str,
) -> None:
    await upgrade_async(scratch_url, "0009")
    await run(
        scratch_url,
        SERVICE,
        id="elemental-svc",
        adapter="elemental",
        config=json.dumps(NEW),
        delivers=True,
    )
    # The copy made at registration, since gone stale: the service's was the one inbound
    # webhooks and reconciliation used.
    await run(scratch_url, PLATFORM, id="d-1", service="elemental-svc", config=json.dumps(STALE))
    await run(scratch_url, SERVICE, id="local-svc", adapter="local", config="{}", delivers=False)
    await run(
        scratch_url,
        SERVICE,
        id="orphan-svc",
        adapter="elemental",
        config=json.dumps(ORPHAN),
        delivers=True,
    )

    await upgrade_async(scratch_url, "0010")
    rows = await run(
        scratch_url,
        "SELECT service_id, config, active FROM destinations WHERE kind = 'platform' "
        "ORDER BY service_id",
    )
    assert [(s, as_dict(c), bool(a)) for s, c, a in rows] == [
        ("elemental-svc", NEW, True),
        ("orphan-svc", ORPHAN, False),  # kept, and sent nothing
    ]
    # Changed under the new code, where it now lives...
    changed = {**NEW, "api_key": "k3"}
    await run(
        scratch_url,
        "UPDATE destinations SET config = :config WHERE id = 'd-1'",
        config=json.dumps(changed),
    )
    # ...and given back to the previous release, which reads the service's copy.
    await downgrade_async(scratch_url, "0009")
    rows = await run(scratch_url, "SELECT id, adapter_config FROM services ORDER BY id")
    assert [(s, as_dict(c)) for s, c in rows] == [
        ("elemental-svc", changed),
        ("local-svc", {}),
        ("orphan-svc", ORPHAN),
    ]
