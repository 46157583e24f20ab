"""case work: appointments, prescriptions, wellbeing, worklist targets, signing keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 18:28:06.942467
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON text elsewhere (as app.db.JSONDoc).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("purpose", name=op.f("pk_signing_keys")),
    )
    # Each installation gets its own key for journey links, shared by all its processes.
    signing_keys = sa.table(
        "signing_keys",
        sa.column("purpose", sa.String),
        sa.column("secret", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        signing_keys,
        [
            {
                "purpose": "journey-link",
                "secret": secrets.token_urlsafe(48),
                "created_at": dt.datetime.now(dt.UTC),
            }
        ],
    )
    op.create_table(
        "appointments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("appointment_type", sa.String(length=16), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("minutes", sa.Integer(), nullable=False),
        sa.Column("attended_minutes", sa.Integer(), nullable=True),
        sa.Column("reschedules", sa.Integer(), nullable=False),
        sa.Column("cancelled_by", sa.String(length=16), nullable=True),
        sa.Column("booked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_appointments_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_appointments_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointments")),
        sa.UniqueConstraint(
            "case_id", "external_id", name=op.f("uq_appointments_case_id_external_id")
        ),
    )
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_appointments_referral_id"), ["referral_id"], unique=False
        )

    op.create_table(
        "prescriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("activity", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("prescribed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_prescriptions_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_prescriptions_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prescriptions")),
        sa.UniqueConstraint(
            "case_id", "external_id", name=op.f("uq_prescriptions_case_id_external_id")
        ),
    )
    with op.batch_alter_table("prescriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_prescriptions_referral_id"), ["referral_id"], unique=False
        )

    op.create_table(
        "wellbeing_scores",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("questionnaire_response_id", sa.String(length=36), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=False),
        sa.Column("instrument", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("items", JSON_DOC, nullable=False),
        sa.Column("raw_score", sa.Integer(), nullable=False),
        sa.Column("metric_score", sa.Float(), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_wellbeing_scores_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_wellbeing_scores_referral_id_referrals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wellbeing_scores")),
        sa.UniqueConstraint(
            "questionnaire_response_id", name=op.f("uq_wellbeing_scores_questionnaire_response_id")
        ),
    )
    with op.batch_alter_table("wellbeing_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_wellbeing_scores_case_id"), ["case_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_wellbeing_scores_referral_id"), ["referral_id"], unique=False
        )

    with op.batch_alter_table("case_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("resources", JSON_DOC, nullable=False, server_default=sa.text("'[]'"))
        )

    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("outputs", JSON_DOC, nullable=False, server_default=sa.text("'[]'"))
        )
        batch_op.add_column(sa.Column("summary", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_cases_service_id_created_at", ["service_id", "created_at"], unique=False
        )

    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("first_contact_target_days", sa.Integer(), nullable=False, server_default="7")
        )
        batch_op.add_column(
            sa.Column("support_window_days", sa.Integer(), nullable=False, server_default="42")
        )


def downgrade() -> None:
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_column("support_window_days")
        batch_op.drop_column("first_contact_target_days")

    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index("ix_cases_service_id_created_at")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("summary")
        batch_op.drop_column("outputs")

    with op.batch_alter_table("case_events", schema=None) as batch_op:
        batch_op.drop_column("resources")

    with op.batch_alter_table("wellbeing_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_wellbeing_scores_referral_id"))
        batch_op.drop_index(batch_op.f("ix_wellbeing_scores_case_id"))

    op.drop_table("wellbeing_scores")
    with op.batch_alter_table("prescriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prescriptions_referral_id"))

    op.drop_table("prescriptions")
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_appointments_referral_id"))

    op.drop_table("appointments")
    op.drop_table("signing_keys")
