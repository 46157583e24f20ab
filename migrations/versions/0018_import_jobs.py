"""import_jobs: imports of history (spbridge import, POST /api/v1/imports)

Revision ID: 0018
Revises: 0016
Create Date: 2026-12-07 01:00:00.000000

One row per imported file (by its SHA-256): status, counts, the refused lines (line number,
field, reason; never a value) and how far it got, so the admin API can report a background
import and a stopped one can be taken up again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# The report counting when this was written (app.reports.projection.MODEL_VERSION 2: appointments
# by the month they fall in, a "length not recorded" band, the registered cohort). A database
# holding no case has the model of every version: it is stamped with this one, as the service
# does at start-up (app.reports.version.stamp_if_empty), so a fresh installation starts current.
_COUNTING_WHEN_WRITTEN = 2

revision: str = "0018"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("deliver", sa.Boolean(), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=True),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("referrals", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column(
            "refusals",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_jobs")),
    )
    op.create_index(op.f("ix_import_jobs_digest"), "import_jobs", ["digest"], unique=False)
    op.execute(
        sa.text(
            "UPDATE report_model_state SET version = :version, updated_at = CURRENT_TIMESTAMP "
            "WHERE id = 1 AND version < :version AND rebuilding IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM cases)"
        ).bindparams(version=_COUNTING_WHEN_WRITTEN)
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_import_jobs_digest"), table_name="import_jobs")
    op.drop_table("import_jobs")
