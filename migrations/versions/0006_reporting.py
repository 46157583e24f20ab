"""reporting: what reports count, taken at intake (age band, referral source, staff group,
individual or team), and the index a service's referrals in a period are found by

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 21:45:00.000000
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As app.referrals.intake.AGE_BANDS at the time of writing (a migration never imports app code).
_AGE_BANDS = (
    (0, "under-18"),
    (18, "18-24"),
    (25, "25-34"),
    (35, "35-44"),
    (45, "45-54"),
    (55, "55-64"),
    (65, "65-74"),
    (75, "75-plus"),
)
_BATCH = 1000


def _date(value: str | None) -> dt.date | None:
    if not value:
        return None
    parts = value[:10].split("-")
    try:
        return dt.date(
            int(parts[0]),
            int(parts[1]) if len(parts) > 1 else 1,
            int(parts[2]) if len(parts) > 2 else 1,
        )
    except (ValueError, IndexError):
        return None


def _age_band(birth_date: str | None, on: dt.date | None) -> str | None:
    born = _date(birth_date)
    if born is None or on is None or born > on:
        return None
    age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return next(band for lowest, band in reversed(_AGE_BANDS) if age >= lowest)


def upgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("age_band", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("referral_source", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("staff_group", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column(
                "referral_unit",
                sa.String(length=16),
                nullable=False,
                server_default="individual",
            )
        )
        batch_op.create_index(
            batch_op.f("ix_referrals_service_id_created_at"),
            ["service_id", "created_at"],
            unique=False,
        )

    # Referrals held already get their age band (while their birth date is still there);
    # their source and staff group were never kept, and stay unknown.
    referrals = sa.table(
        "referrals",
        sa.column("id", sa.String),
        sa.column("birth_date", sa.String),
        sa.column("authored_on", sa.String),
        sa.column("age_band", sa.String),
    )
    connection = op.get_bind()
    last = ""
    while True:
        rows = connection.execute(
            sa.select(referrals.c.id, referrals.c.birth_date, referrals.c.authored_on)
            .where(referrals.c.id > last, referrals.c.birth_date.is_not(None))
            .order_by(referrals.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        for referral_id, birth_date, authored_on in rows:
            band = _age_band(birth_date, _date(authored_on))
            if band is not None:
                connection.execute(
                    referrals.update().where(referrals.c.id == referral_id).values(age_band=band)
                )
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referrals_service_id_created_at"))
        batch_op.drop_column("referral_unit")
        batch_op.drop_column("staff_group")
        batch_op.drop_column("referral_source")
        batch_op.drop_column("age_band")
