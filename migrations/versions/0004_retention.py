"""retention: purged referrals, purge runs, the pseudonym key

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PSEUDONYM_KEY = "pseudonym"


def upgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "purge_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("referrals_purged", sa.Integer(), nullable=False),
        sa.Column("run_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purge_runs")),
    )

    # Each installation gets its own key for the NHS-number pseudonyms of purged referrals,
    # shared by all its processes. Kept on downgrade (see below), so made only if missing.
    signing_keys = sa.table(
        "signing_keys",
        sa.column("purpose", sa.String),
        sa.column("secret", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    held = op.get_bind().execute(
        sa.select(signing_keys.c.purpose).where(signing_keys.c.purpose == PSEUDONYM_KEY)
    )
    if held.first() is None:
        op.bulk_insert(
            signing_keys,
            [
                {
                    "purpose": PSEUDONYM_KEY,
                    "secret": secrets.token_urlsafe(48),
                    "created_at": dt.datetime.now(dt.UTC),
                }
            ],
        )


def downgrade() -> None:
    # The pseudonym key stays: pseudonyms already written must match those made after an
    # upgrade again (0003's downgrade drops the whole table).
    op.drop_table("purge_runs")
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
