"""delivery engine: attempts, claims and circuits, subscriptions, platform messages

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 23:03:23.060405
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON text elsewhere (as app.db.JSONDoc).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "platform_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_platform_messages_service_id_services")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_messages")),
        sa.UniqueConstraint(
            "service_id", "message_id", name=op.f("uq_platform_messages_service_id_message_id")
        ),
    )
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_attempts_delivery_id_deliveries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_delivery_attempts_delivery_id"), ["delivery_id"], unique=False
        )

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_status_code", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("payload", JSON_DOC, nullable=True))
        batch_op.alter_column("referral_id", existing_type=sa.VARCHAR(length=36), nullable=True)
        batch_op.alter_column("case_event_id", existing_type=sa.VARCHAR(length=36), nullable=True)

    with op.batch_alter_table("destinations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("owner_client_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("secret", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("previous_secret", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("disabled_reason", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("probe_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column(
                "updated_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.func.now(),
            )
        )

    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.add_column(sa.Column("poll_cursor", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("poll_due_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_column("poll_due_at")
        batch_op.drop_column("poll_cursor")

    with op.batch_alter_table("destinations", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("probe_at")
        batch_op.drop_column("failing_since")
        batch_op.drop_column("consecutive_failures")
        batch_op.drop_column("disabled_reason")
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("previous_secret_expires_at")
        batch_op.drop_column("previous_secret")
        batch_op.drop_column("secret")
        batch_op.drop_column("owner_client_id")
        batch_op.drop_column("description")
        batch_op.drop_column("url")

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column("case_event_id", existing_type=sa.VARCHAR(length=36), nullable=False)
        batch_op.alter_column("referral_id", existing_type=sa.VARCHAR(length=36), nullable=False)
        batch_op.drop_column("payload")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("delivered_at")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("last_status_code")

    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_attempts_delivery_id"))

    op.drop_table("delivery_attempts")
    op.drop_table("platform_messages")
