"""report_model_state: which version of the counting the report read model holds

Revision ID: 0011
Revises: 0014
Create Date: 2026-12-07 22:00:00.000000

One row. The code's version is app.reports.projection.MODEL_VERSION; when the stored one is
older, the service says so (startup log, /readyz, a note on every report) and `spbridge reports
rebuild` takes every case into the model again with the code's counting, then records its
version here. A migration never runs app code, so this one only records what it can tell from
the tables: version 1 is the counting that app.reports.projection had when this was written (the
one the first version of migration 0008 filled the model with). The model holds it when every
case is in it or queued for it, as on an installation that ran that migration, and on a new,
empty one; otherwise (the model was made empty over cases already there) the version is 0:
never built.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTING_WHEN_WRITTEN = 1


def upgrade() -> None:
    state = op.create_table(
        "report_model_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rebuilding", sa.Integer(), nullable=True),
        sa.Column("rebuilt_through", sa.String(length=36), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_model_state")),
    )
    missing = op.get_bind().scalar(
        sa.text(
            "SELECT count(*) FROM (SELECT 1 FROM cases c "
            "WHERE NOT EXISTS (SELECT 1 FROM report_case_facts f WHERE f.case_id = c.id) "
            "AND NOT EXISTS (SELECT 1 FROM report_pending_cases p WHERE p.case_id = c.id) "
            "LIMIT 1) AS outside"
        )
    )
    op.execute(
        state.insert().values(
            id=1, version=0 if missing else _COUNTING_WHEN_WRITTEN, updated_at=sa.func.now()
        )
    )


def downgrade() -> None:
    op.drop_table("report_model_state")
