"""oauth2: client secrets and public keys with rotation overlap, used assertion ids, token key

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09 10:00:00.000000
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCESS_TOKEN_KEY = "access-token"  # noqa: S105 (a key purpose, not a secret)
# JSONB on PostgreSQL, JSON text elsewhere (as app.db.JSONDoc).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("api_clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("previous_secret_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("public_key_jwk", JSON_DOC, nullable=True))
        batch_op.add_column(sa.Column("previous_public_key_jwk", JSON_DOC, nullable=True))
        batch_op.add_column(
            sa.Column("previous_public_key_expires_at", sa.DateTime(timezone=True), nullable=True)
        )

    op.create_table(
        "oauth_jtis",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["api_clients.id"], name=op.f("fk_oauth_jtis_client_id_api_clients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_jtis")),
        sa.UniqueConstraint("client_id", "jti", name=op.f("uq_oauth_jtis_client_id_jti")),
    )
    with op.batch_alter_table("oauth_jtis", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_oauth_jtis_expires_at"), ["expires_at"], unique=False)

    # The key the bridge signs its access tokens with, shared by all processes of one
    # installation. Made only if missing; dropped on downgrade (outstanding tokens then fail).
    signing_keys = sa.table(
        "signing_keys",
        sa.column("purpose", sa.String),
        sa.column("secret", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    held = op.get_bind().execute(
        sa.select(signing_keys.c.purpose).where(signing_keys.c.purpose == ACCESS_TOKEN_KEY)
    )
    if held.first() is None:
        op.bulk_insert(
            signing_keys,
            [
                {
                    "purpose": ACCESS_TOKEN_KEY,
                    "secret": secrets.token_urlsafe(48),
                    "created_at": dt.datetime.now(dt.UTC),
                }
            ],
        )


def downgrade() -> None:
    signing_keys = sa.table("signing_keys", sa.column("purpose", sa.String))
    op.execute(signing_keys.delete().where(signing_keys.c.purpose == ACCESS_TOKEN_KEY))
    with op.batch_alter_table("oauth_jtis", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oauth_jtis_expires_at"))
    op.drop_table("oauth_jtis")
    with op.batch_alter_table("api_clients", schema=None) as batch_op:
        batch_op.drop_column("previous_public_key_expires_at")
        batch_op.drop_column("previous_public_key_jwk")
        batch_op.drop_column("public_key_jwk")
        batch_op.drop_column("previous_secret_expires_at")
        batch_op.drop_column("previous_secret_hash")
        batch_op.drop_column("secret_hash")
