"""A platform's adapter configuration lives in one row, its service's platform destination:
services.adapter_config is copied there (it was copied once into destinations.config when the
service was registered, and nothing kept the two in step) and is no longer read. The column
itself stays for one release, so processes of the previous release keep working while a rolling
upgrade replaces them (docs/DEPLOYMENT.md: add before taking away); the next release's migration
drops it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text elsewhere (as app.db.JSONDoc; a migration never imports app code).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

services = sa.table(
    "services",
    sa.column("id", sa.String),
    sa.column("adapter", sa.String),
    sa.column("adapter_config", JSON_DOC),
)
destinations = sa.table(
    "destinations",
    sa.column("id", sa.String),
    sa.column("kind", sa.String),
    sa.column("adapter", sa.String),
    sa.column("service_id", sa.String),
    sa.column("config", JSON_DOC),
    sa.column("event_types", JSON_DOC),
    sa.column("active", sa.Boolean),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("consecutive_failures", sa.Integer),
)


def upgrade() -> None:
    connection = op.get_bind()
    platforms = {
        service_id: destination_id
        for destination_id, service_id in connection.execute(
            sa.select(destinations.c.id, destinations.c.service_id).where(
                destinations.c.kind == "platform"
            )
        )
    }
    now = dt.datetime.now(dt.UTC)
    for service_id, adapter, config in connection.execute(
        sa.select(services.c.id, services.c.adapter, services.c.adapter_config)
    ):
        if service_id in platforms:
            # The service's copy is the one inbound webhooks and reconciliation used.
            connection.execute(
                destinations.update()
                .where(destinations.c.id == platforms[service_id])
                .values(config=config or {}, updated_at=now)
            )
        elif config:
            # Not expected (only adapters that deliver take a configuration, and they have a
            # destination), but kept rather than lost: on an inactive destination, sent nothing.
            connection.execute(
                destinations.insert().values(
                    id=str(uuid.uuid4()),
                    kind="platform",
                    adapter=adapter,
                    service_id=service_id,
                    config=config,
                    event_types=[],
                    active=False,
                    created_at=now,
                    updated_at=now,
                    consecutive_failures=0,
                )
            )


def downgrade() -> None:
    # The previous release reads the service's copy: give it the destination's, which may have
    # changed since.
    connection = op.get_bind()
    for service_id, config in connection.execute(
        sa.select(destinations.c.service_id, destinations.c.config).where(
            destinations.c.kind == "platform", destinations.c.service_id.is_not(None)
        )
    ):
        connection.execute(
            services.update().where(services.c.id == service_id).values(adapter_config=config)
        )
