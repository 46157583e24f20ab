"""services.delivers: whether a service's platform adapter holds its cases (so the case API
records nothing there), kept on the service when it is registered instead of asked of the
adapter registry by the domain

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 22:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The adapters that held cases on their platform when this was written (`delivers` in
# adapters/*; a migration never imports app code): every one but `local`.
_HOLDING_ADAPTERS = ("elemental", "simulator")


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(
            sa.Column("delivers", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    services = sa.table("services", sa.column("adapter", sa.String), sa.column("delivers"))
    op.execute(
        services.update()
        .where(services.c.adapter.in_(_HOLDING_ADAPTERS))
        .values(delivers=sa.true())
    )


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("delivers")
