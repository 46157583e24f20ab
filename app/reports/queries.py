"""The report engine's live SQL: every figure is aggregated in the database (GROUP BY over
indexed columns), the same on SQLite and PostgreSQL; only grouped rows come back to Python.
Reports of whole months read the same figures from the read model instead (app.reports.readmodel,
kept by app.reports.projection); these queries answer any other period, and are what the read
model is tested against.

Time rules (issue 7):
- A referral counts in the month it was received by the bridge (``referrals.created_at``, the
  ``occurred_at`` of its ``referral.received`` event, which is also ``cases.created_at``). The
  referrer's ``authoredOn`` is not used: it may be partial ('2025-03') and is the referrer's
  claim; the bridge accepts referrals within milliseconds even while the platform is down, so
  received is when the referral was made, to the second. Figures about the people referred
  (status now, reasons, waiting, demographics) follow the same cohort: referrals received in
  the period, by month received.
- Every other figure counts in the month of its event's ``occurred_at`` (when it happened),
  never ``recorded_at``: appointments by the ``occurred_at`` of their attended / did-not-attend
  / cancelled / rescheduled / booked events, prescriptions by ``prescribed_at`` (the
  ``occurred_at`` of ``prescription.created``), wellbeing scores by ``measured_at`` (the
  ``occurred_at`` of ``outcome.recorded``).
- Months are calendar months in UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    case,
    cast,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.models import Case, CaseEvent, Referral
from app.reports.tables import TOTAL

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Period:
    start: dt.date
    end: dt.date  # inclusive

    @property
    def starts_at(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time(), tzinfo=dt.UTC)

    @property
    def ends_at(self) -> dt.datetime:
        """The first instant after the period."""
        return dt.datetime.combine(self.end + DAY, dt.time(), tzinfo=dt.UTC)

    def months(self) -> tuple[str, ...]:
        months = []
        year, month = self.start.year, self.start.month
        while (year, month) <= (self.end.year, self.end.month):
            months.append(f"{year:04d}-{month:02d}")
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return tuple(months)


@dataclass(frozen=True)
class Scope:
    """What one report covers: these services' referrals (a referring team's only, if given)."""

    service_ids: tuple[str, ...]
    period: Period
    team: str | None
    dialect: str  # "postgresql" or "sqlite"

    @property
    def postgresql(self) -> bool:
        return self.dialect == "postgresql"

    # --- expressions that differ between the engines -----------------------------------------

    def month(self, instant: Any) -> ColumnElement[Any]:
        """The UTC calendar month of a timestamp, as a value ``month_key`` turns into 'YYYY-MM'."""
        if self.postgresql:
            return func.date_trunc("month", func.timezone("UTC", instant))
        # SQLite stores UTC as 'YYYY-MM-DD HH:MM:SS…'.
        return func.substr(instant, 1, 7)

    def days_between(self, later: Any, earlier: Any) -> ColumnElement[Any]:
        if self.postgresql:
            return cast(func.extract("epoch", later - earlier), Float) / 86400.0
        return func.julianday(later) - func.julianday(earlier)

    def json_text(self, document: Any, key: str) -> ColumnElement[str]:
        return document[key].as_string()  # type: ignore[no-any-return]

    # --- who is in the report --------------------------------------------------------------------

    def referrals(self) -> list[ColumnElement[bool]]:
        """Referrals received in the period by the services in scope."""
        conditions = [
            Referral.service_id.in_(self.service_ids),
            Referral.created_at >= self.period.starts_at,
            Referral.created_at < self.period.ends_at,
        ]
        if self.team is not None:
            conditions.append(Referral.referring_team == self.team)
        return conditions

    def cases(self) -> list[ColumnElement[bool]]:
        """The cases of those referrals (a case is received when its referral is)."""
        conditions = [
            Case.service_id.in_(self.service_ids),
            Case.created_at >= self.period.starts_at,
            Case.created_at < self.period.ends_at,
        ]
        return conditions + self._team(Case.referral_id)

    def case_of_scope(self, case_id: Any) -> list[ColumnElement[bool]]:
        """Things (events, records) of any case of the services in scope, whenever received."""
        in_scope = select(Case.id).where(Case.service_id.in_(self.service_ids))
        if self.team is not None:
            in_scope = in_scope.where(Case.referral_id.in_(self._team_referrals()))
        return [case_id.in_(in_scope)]

    def _team_referrals(self) -> Select[Any]:
        return select(Referral.id).where(
            Referral.service_id.in_(self.service_ids), Referral.referring_team == self.team
        )

    def _team(self, referral_id: Any) -> list[ColumnElement[bool]]:
        if self.team is None:
            return []
        return [referral_id.in_(self._team_referrals())]

    def during(self, instant: Any) -> list[ColumnElement[bool]]:
        return [instant >= self.period.starts_at, instant < self.period.ends_at]

    def events(self, *types: str) -> Select[Any]:
        """Events of these types that happened in the period, on cases in scope: a FROM with
        ``CaseEvent`` joined to ``Case`` (for the service)."""
        query = (
            select()
            .select_from(CaseEvent)
            .join(Case, Case.id == CaseEvent.case_id)
            .where(
                CaseEvent.type.in_(types),
                *self.during(CaseEvent.occurred_at),
                Case.service_id.in_(self.service_ids),
            )
        )
        if self.team is not None:
            query = query.where(Case.referral_id.in_(self._team_referrals()))
        return query


def month_key(value: Any) -> str:
    """'YYYY-MM' from what ``Scope.month`` returns on either engine."""
    if isinstance(value, dt.datetime | dt.date):
        return f"{value.year:04d}-{value.month:02d}"
    return str(value)[:7]


async def grouped(session: AsyncSession, query: Select[Any] | Any) -> list[Any]:
    return list((await session.execute(query)).all())


def duration_band(minutes: Any) -> ColumnElement[int]:
    """15-minute bands: 0 for 1-15 minutes, 1 for 16-30 … 8 for more than 120."""
    return case((minutes > 120, 8), else_=(minutes - 1) // 15)


DURATION_BANDS = (
    "1-15 minutes",
    "16-30 minutes",
    "31-45 minutes",
    "46-60 minutes",
    "61-75 minutes",
    "76-90 minutes",
    "91-105 minutes",
    "106-120 minutes",
    "over 120 minutes",
)


async def percentiles(
    session: AsyncSession,
    scope: Scope,
    values: Select[Any],
    fractions: Sequence[float] = (0.5, 0.9),
) -> dict[str, tuple[int, dict[float, float]]]:
    """Percentiles (linear interpolation between closest ranks, as PostgreSQL's
    percentile_cont) of the ``value`` column of ``values`` by its ``month`` column, and over
    all rows as TOTAL: {month: (how many values, {fraction: percentile})}. Only the (at most
    two) ranks each percentile needs come back from the database."""
    source = values.subquery()
    out: dict[str, tuple[int, dict[float, float]]] = {}
    for by_month in (True, False):
        partition = [source.c.month] if by_month else []
        ranked = select(
            (source.c.month if by_month else literal(TOTAL)).label("month"),
            source.c.value,
            func.row_number().over(partition_by=partition, order_by=source.c.value).label("rank"),
            func.count().over(partition_by=partition).label("n"),
        ).subquery()
        wanted = []
        for fraction in fractions:
            lowest = ((ranked.c.n - 1) * round(fraction * 100)) // 100
            wanted += [ranked.c.rank - 1 == lowest, ranked.c.rank - 1 == lowest + 1]
        rows = await grouped(
            session,
            select(ranked.c.month, ranked.c.n, ranked.c.rank, ranked.c.value).where(or_(*wanted)),
        )
        by_key: dict[str, tuple[int, dict[int, float]]] = {}
        for month, n, rank, value in rows:
            key = TOTAL if not by_month else month_key(month)
            count, ranks = by_key.setdefault(key, (int(n), {}))
            ranks[int(rank) - 1] = float(value)
        for key, (count, ranks) in by_key.items():
            results: dict[float, float] = {}
            for fraction in fractions:
                position = (count - 1) * fraction
                low = (count - 1) * round(fraction * 100) // 100
                lower = ranks[low]
                upper = ranks.get(low + 1, lower)
                results[fraction] = lower + (position - low) * (upper - lower)
            out[key] = (count, results)
    return out
