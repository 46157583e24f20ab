"""Drop three indexes that a composite index already covers

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 18:30:00.000000

ix_referrals_service_id and ix_cases_service_id are the leading column of
ix_referrals_service_id_created_at and ix_cases_service_id_created_at; ix_case_events_case_id is
the leading column of the unique (case_id, seq). A lookup by the one column uses the composite
index as well, so the single-column ones only cost every insert their upkeep: intake wrote
13.8 KB of PostgreSQL WAL a referral with them, 13.5 KB without (bench, issue 19). Dropping an
index changes no query's result, so processes of the previous release work on unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, column): each covered by a composite index that leads with its column.
COVERED = (
    ("ix_referrals_service_id", "referrals", "service_id"),
    ("ix_cases_service_id", "cases", "service_id"),
    ("ix_case_events_case_id", "case_events", "case_id"),
)


def upgrade() -> None:
    for index, table, _column in COVERED:
        op.drop_index(index, table_name=table)


def downgrade() -> None:
    for index, table, column in COVERED:
        op.create_index(index, table, [column])
