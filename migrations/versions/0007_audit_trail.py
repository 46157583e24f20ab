"""audit trail: append-only records of every access to patient data

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 22:00:00.000000

The tables refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) by trigger, so no code path,
API or mistaken script changes a record; only dropping the tables (a migration) removes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("audit_events", "audit_event_patients")
MESSAGE = "audit records are append-only"


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("agent_name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("organisation", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=1), nullable=False),
        sa.Column("interaction", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=True),
        sa.Column("route", sa.String(length=200), nullable=True),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=2), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_recorded_at"), "audit_events", ["recorded_at"])
    op.create_index(op.f("ix_audit_events_organisation"), "audit_events", ["organisation"])
    op.create_index("ix_audit_events_client_recorded", "audit_events", ["client_id", "recorded_at"])
    op.create_table(
        "audit_event_patients",
        sa.Column("audit_event_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("patient", sa.String(length=10), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["audit_event_id"],
            ["audit_events.id"],
            name=op.f("fk_audit_event_patients_audit_event_id_audit_events"),
        ),
        sa.PrimaryKeyConstraint("audit_event_id", "position", name=op.f("pk_audit_event_patients")),
    )
    op.create_index(op.f("ix_audit_event_patients_patient"), "audit_event_patients", ["patient"])
    op.create_index(
        op.f("ix_audit_event_patients_referral_id"), "audit_event_patients", ["referral_id"]
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'insufficient_privilege';
            END $$
            """
        )
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
            )
    else:
        for table in TABLES:
            for change in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{change.lower()} BEFORE {change} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
                )


def downgrade() -> None:
    # Dropping a table drops its triggers; the records go with it (a deliberate schema change).
    op.drop_table("audit_event_patients")
    op.drop_table("audit_events")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_append_only()")
