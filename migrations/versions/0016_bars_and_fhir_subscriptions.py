"""BaRS and FHIR Subscriptions (issue 17): the BaRS messages already processed (bars_messages,
a repeated X-Request-ID is 409), how a referral came when not by FHIR REST (referrals.origin:
the BaRS message its responses answer), and topic-based FHIR Subscriptions (topic_subscriptions,
their channel a destination of kind rest-hook)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text elsewhere (as app.db.JSONDoc).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "bars_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("organisation", sa.String(length=16), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("bundle_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_bars_messages_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bars_messages")),
        sa.UniqueConstraint(
            "organisation", "request_id", name=op.f("uq_bars_messages_organisation_request_id")
        ),
    )
    with op.batch_alter_table("bars_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bars_messages_referral_id"), ["referral_id"], unique=False
        )
    # A plain ADD COLUMN (no table copy: referrals is referred to by many tables).
    op.add_column("referrals", sa.Column("origin", JSON_DOC, nullable=True))
    op.create_table(
        "topic_subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("filters", JSON_DOC, nullable=False),
        sa.Column("content", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("events_since_start", sa.Integer(), nullable=False),
        sa.Column("heartbeat_period", sa.Integer(), nullable=True),
        sa.Column("heartbeat_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resource", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["id"], ["destinations.id"], name=op.f("fk_topic_subscriptions_id_destinations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topic_subscriptions")),
    )


def downgrade() -> None:
    op.drop_table("topic_subscriptions")
    # A plain DROP COLUMN (SQLite 3.35 and later), as the upgrade added it.
    op.drop_column("referrals", "origin")
    with op.batch_alter_table("bars_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bars_messages_referral_id"))
    op.drop_table("bars_messages")
