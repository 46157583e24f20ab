"""api_clients.acts_for: the organisations (ODS codes) a client may refer for besides its own

Revision ID: 0015
Revises: 0011
Create Date: 2026-12-07 01:40:00.000000

An API client acts for its own organisation and, where the installation's admin names them, for
other organisations (a trust's integration engine sending for several ODS codes): the ODS code of
a referral's ServiceRequest.requester must be one of them. Existing clients act for their own
organisation only (an empty list).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text elsewhere (as app.db.JSONDoc; a migration never imports app code).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(
            sa.Column("acts_for", JSON_DOC, nullable=False, server_default=sa.text("'[]'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_column("acts_for")
