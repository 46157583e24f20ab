"""The FHIR surface (issue 16): every version of the resources we serve (resource_versions, for
vread and _history), the referral's Patient as a resource of its own (patients), Task searches by
_lastUpdated (an index on cases.updated_at), and referral.updated sent to the platforms

Revision ID: 0014
Revises: 0010
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text elsewhere (as app.db.JSONDoc).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# What a platform destination was sent before (adapters.base.PlatformAdapter.event_types when
# this was written; a migration never imports app code), and what it is sent now.
_PLATFORM_EVENTS_BEFORE = ["referral.cancelled", "referral.received"]
_PLATFORM_EVENTS_NOW = ["referral.cancelled", "referral.received", "referral.updated"]


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=False),
        sa.Column("resource", JSON_DOC, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_patients_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint("referral_id", name=op.f("uq_patients_referral_id")),
    )
    op.create_table(
        "resource_versions",
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resource", JSON_DOC, nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_resource_versions_referral_id_referrals"),
        ),
        sa.PrimaryKeyConstraint(
            "resource_type", "resource_id", "version_id", name=op.f("pk_resource_versions")
        ),
    )
    with op.batch_alter_table("resource_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_resource_versions_referral_id"), ["referral_id"], unique=False
        )
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index("ix_cases_updated_at_id", ["updated_at", "id"], unique=False)
    _platform_events(_PLATFORM_EVENTS_BEFORE, _PLATFORM_EVENTS_NOW)


def downgrade() -> None:
    _platform_events(_PLATFORM_EVENTS_NOW, _PLATFORM_EVENTS_BEFORE)
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index("ix_cases_updated_at_id")
    with op.batch_alter_table("resource_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_resource_versions_referral_id"))
    op.drop_table("resource_versions")
    op.drop_table("patients")


def _platform_events(before: list[str], now: list[str]) -> None:
    """Platform destinations that were sent exactly ``before`` are sent ``now`` (one chosen by
    hand is left as it is)."""
    destinations = sa.table(
        "destinations",
        sa.column("id", sa.String),
        sa.column("kind", sa.String),
        sa.column("event_types", JSON_DOC),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(destinations.c.id, destinations.c.event_types).where(
            destinations.c.kind == "platform"
        )
    )
    for ident, events in list(rows):
        if sorted(events or []) == before:
            connection.execute(
                destinations.update().where(destinations.c.id == ident).values(event_types=now)
            )
