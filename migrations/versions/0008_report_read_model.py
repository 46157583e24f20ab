"""report read model: a fact row per case and monthly counters for the reports

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 23:00:00.000000

Every write to a case notes it in report_pending_cases; app.reports.projection.drain takes the
noted cases into both (before a report, and in the background). This migration creates the
three tables only: a migration never runs app code, whose counting changes over time. The
cases already there are taken in by `spbridge reports rebuild`, which the service asks for
when the stored version of the model is older than its code's (migration 0011).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_doc = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
    op.create_table(
        "report_case_facts",
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("service_id", sa.String(length=64), nullable=False),
        sa.Column("team", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_contact_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_attended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("contact_bucket", sa.Integer(), nullable=True),
        sa.Column("attended_bucket", sa.Integer(), nullable=True),
        sa.Column("contributions", json_doc, nullable=False),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_report_case_facts")),
    )
    op.create_index(
        "ix_report_case_facts_contact",
        "report_case_facts",
        ["service_id", "contact_bucket", "received_at"],
    )
    op.create_index(
        "ix_report_case_facts_attended",
        "report_case_facts",
        ["service_id", "attended_bucket", "received_at"],
    )
    op.create_table(
        "report_counts",
        sa.Column("service_id", sa.String(length=64), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("measure", sa.String(length=32), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("team", sa.Text(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "service_id", "month", "measure", "key", "team", name=op.f("pk_report_counts")
        ),
    )
    op.create_table(
        "report_pending_cases",
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("noted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_report_pending_cases")),
    )


def downgrade() -> None:
    op.drop_table("report_pending_cases")
    op.drop_table("report_counts")
    op.drop_index("ix_report_case_facts_attended", table_name="report_case_facts")
    op.drop_index("ix_report_case_facts_contact", table_name="report_case_facts")
    op.drop_table("report_case_facts")
