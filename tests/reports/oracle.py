"""A test oracle: the report figures (app.reports.figures) by live SQL over the operational tables.

This is the report engine as it was before every figure came from the read model (the old
app.reports.queries and the live half of app.reports.sections): each figure aggregated in the
database, the same on SQLite and PostgreSQL, written independently of app.reports.projection. The
tests (and bench/reports.py --compare) run the same sections over these figures and over the read
model's, and compare the reports. Not used by the service.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    and_,
    case,
    cast,
    distinct,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.models import Appointment, Case, CaseEvent, Prescription, Referral, WellbeingScore
from app.cases.wellbeing import MEANINGFUL_CHANGE
from app.directory.models import SocialPrescribingService
from app.reports.figures import ByKey, ByMonth, Percentiles, PrescriptionCounts, WellbeingPairs
from app.reports.period import Scope
from app.reports.projection import (
    CHANGE_TOLERANCE,
    DURATION_BANDS,
    EDI_ITEMS,
    EVENT_ROWS,
)
from app.reports.tables import TOTAL

_ATTRIBUTES = {
    "team": Referral.referring_team,
    "gender": Referral.gender,
    "age_band": Referral.age_band,
    "unit": Referral.referral_unit,
    "source": Referral.referral_source,
    "staff_group": Referral.staff_group,
}


def month_key(value: Any) -> str:
    """'YYYY-MM' from what ``LiveScope.month`` returns on either engine."""
    if isinstance(value, dt.datetime | dt.date):
        return f"{value.year:04d}-{value.month:02d}"
    return str(value)[:7]


async def grouped(session: AsyncSession, query: Select[Any] | Any) -> list[Any]:
    return list((await session.execute(query)).all())


def _nested(rows: Iterable[Any]) -> ByKey:
    """(month, key, count) rows as {key: {month: count}} ('' for no key)."""
    out: ByKey = defaultdict(dict)
    for month, key, count in rows:
        by_month = out[key if key is not None else ""]
        m = month_key(month)
        by_month[m] = by_month.get(m, 0) + int(count)
    return out


def duration_band(minutes: Any) -> ColumnElement[int]:
    """15-minute bands: 0 for 1-15 minutes, 1 for 16-30 … 8 for more than 120; 9 for no
    length recorded."""
    return case((minutes.is_(None), 9), (minutes > 120, 8), else_=(minutes - 1) // 15)


@dataclass(frozen=True)
class LiveScope:
    """A report's scope, as SQL: the expressions that differ between the engines, and who is in
    the report."""

    scope: Scope
    dialect: str

    @property
    def postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def starts_at(self) -> dt.datetime:
        return self.scope.period.starts_at

    @property
    def ends_at(self) -> dt.datetime:
        return self.scope.period.ends_at

    def month(self, instant: Any) -> ColumnElement[Any]:
        if self.postgresql:
            return func.date_trunc("month", func.timezone("UTC", instant))
        # SQLite stores UTC as 'YYYY-MM-DD HH:MM:SS…'.
        return func.substr(instant, 1, 7)

    def days_between(self, later: Any, earlier: Any) -> ColumnElement[Any]:
        if self.postgresql:
            return cast(func.extract("epoch", later - earlier), Float) / 86400.0
        return func.julianday(later) - func.julianday(earlier)

    def referrals(self) -> list[ColumnElement[bool]]:
        conditions = [
            Referral.service_id.in_(self.scope.service_ids),
            Referral.created_at >= self.starts_at,
            Referral.created_at < self.ends_at,
        ]
        if self.scope.team is not None:
            conditions.append(Referral.referring_team == self.scope.team)
        return conditions

    def cases(self) -> list[ColumnElement[bool]]:
        conditions = [
            Case.service_id.in_(self.scope.service_ids),
            Case.created_at >= self.starts_at,
            Case.created_at < self.ends_at,
        ]
        return conditions + self._team(Case.referral_id)

    def case_of_scope(self, case_id: Any) -> list[ColumnElement[bool]]:
        in_scope = select(Case.id).where(Case.service_id.in_(self.scope.service_ids))
        if self.scope.team is not None:
            in_scope = in_scope.where(Case.referral_id.in_(self._team_referrals()))
        return [case_id.in_(in_scope)]

    def _team_referrals(self) -> Select[Any]:
        return select(Referral.id).where(
            Referral.service_id.in_(self.scope.service_ids),
            Referral.referring_team == self.scope.team,
        )

    def _team(self, referral_id: Any) -> list[ColumnElement[bool]]:
        if self.scope.team is None:
            return []
        return [referral_id.in_(self._team_referrals())]

    def during(self, instant: Any) -> list[ColumnElement[bool]]:
        return [instant >= self.starts_at, instant < self.ends_at]

    def events(self, *types: str) -> Select[Any]:
        query = (
            select()
            .select_from(CaseEvent)
            .join(Case, Case.id == CaseEvent.case_id)
            .where(
                CaseEvent.type.in_(types),
                *self.during(CaseEvent.occurred_at),
                Case.service_id.in_(self.scope.service_ids),
            )
        )
        if self.scope.team is not None:
            query = query.where(Case.referral_id.in_(self._team_referrals()))
        return query


async def percentiles(
    session: AsyncSession, values: Select[Any], fractions: Sequence[float] = (0.5, 0.9)
) -> Percentiles:
    """Percentiles (linear interpolation between closest ranks, as PostgreSQL's
    percentile_cont) of the ``value`` column of ``values`` by its ``month`` column, and over
    all rows as TOTAL."""
    source = values.subquery()
    out: Percentiles = {}
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
            _count, ranks = by_key.setdefault(key, (int(n), {}))
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


@dataclass
class LiveFigures:
    session: AsyncSession
    live: LiveScope

    async def referrals(self) -> ByMonth:
        month = self.live.month(Referral.created_at).label("month")
        query = (
            select(month, literal(TOTAL), func.count())
            .where(*self.live.referrals())
            .group_by(month)
        )
        return _nested(await grouped(self.session, query)).get(TOTAL, {})

    async def referrals_by(self, attribute: str) -> ByKey:
        column = _ATTRIBUTES[attribute]
        month = self.live.month(Referral.created_at).label("month")
        query = (
            select(month, column, func.count())
            .where(*self.live.referrals())
            .group_by(month, column)
        )
        return _nested(await grouped(self.session, query))

    async def events(self) -> ByKey:
        month = self.live.month(CaseEvent.occurred_at).label("month")
        query = (
            self.live.events(*(t for t, _ in EVENT_ROWS))
            .add_columns(month, CaseEvent.type, func.count())
            .group_by(month, CaseEvent.type)
        )
        return _nested(await grouped(self.session, query))

    async def reasons(self) -> tuple[ByKey, ByMonth]:
        live = self.live
        domain: Any
        if live.postgresql:
            element = (
                func.jsonb_array_elements(Referral.reasons).table_valued("value").alias("reason")
            )
            domain = element.c.value.op("->>")("domain")
        else:
            element = func.json_each(Referral.reasons).table_valued("value").alias("reason")
            domain = func.json_extract(element.c.value, "$.domain")
        pairs = (
            select(
                Referral.id.label("id"),
                live.month(Referral.created_at).label("month"),
                domain.label("domain"),
            )
            .select_from(Referral)
            .join(element, literal(True))
            .where(*live.referrals(), domain.is_not(None))
            .distinct()
            .subquery()
        )
        by_domain = _nested(
            await grouped(
                self.session,
                select(pairs.c.month, pairs.c.domain, func.count()).group_by(
                    pairs.c.month, pairs.c.domain
                ),
            )
        )
        with_any = _nested(
            await grouped(
                self.session,
                select(pairs.c.month, literal(TOTAL), func.count(distinct(pairs.c.id))).group_by(
                    pairs.c.month
                ),
            )
        ).get(TOTAL, {})
        return by_domain, with_any

    async def states(self) -> list[tuple[str, str, str, int]]:
        month = self.live.month(Case.created_at).label("month")
        query = (
            select(month, Case.state, Case.status_reason, func.count())
            .where(*self.live.cases())
            .group_by(month, Case.state, Case.status_reason)
        )
        return [
            (month_key(m), state, reason or "", int(n))
            for m, state, reason, n in await grouped(self.session, query)
        ]

    async def slots(self) -> ByKey:
        """Walked in Python over every appointment event of the cases in scope, each booked
        time counted where it falls if that is inside the period."""
        live = self.live
        query = (
            select(
                CaseEvent.case_id,
                CaseEvent.type,
                CaseEvent.occurred_at,
                CaseEvent.seq,
                CaseEvent.data,
            )
            .join(Case, Case.id == CaseEvent.case_id)
            .where(
                CaseEvent.type.like("appointment.%"),
                Case.service_id.in_(live.scope.service_ids),
            )
            .order_by(CaseEvent.case_id, CaseEvent.occurred_at, CaseEvent.seq)
        )
        if live.scope.team is not None:
            query = query.where(Case.referral_id.in_(live._team_referrals()))
        out: ByKey = defaultdict(dict)

        def count(at: dt.datetime, outcome: str) -> None:
            if live.starts_at <= at < live.ends_at:
                month = f"{at.year:04d}-{at.month:02d}"
                out[outcome][month] = out[outcome].get(month, 0) + 1

        booked: dict[tuple[str, str], dt.datetime] = {}
        for case_id, kind, occurred_at, _seq, data in (await self.session.execute(query)).all():
            name = (case_id, str(data.get("appointment_id")))
            if kind in ("appointment.booked", "appointment.rescheduled"):
                held = booked.pop(name, None)
                if kind == "appointment.rescheduled" and held is not None:
                    count(held, "rescheduled")
                if data.get("start"):
                    booked[name] = dt.datetime.fromisoformat(data["start"]).astimezone(dt.UTC)
            else:
                count(booked.pop(name, occurred_at), kind.removeprefix("appointment."))
        for at in booked.values():
            count(at, "booked")
        return out

    def _registered(self) -> ColumnElement[bool]:
        return Case.id.in_(select(CaseEvent.case_id).where(CaseEvent.type == "case.accepted"))

    async def registered(self) -> ByMonth:
        month = self.live.month(Referral.created_at).label("month")
        query = (
            select(month, literal(TOTAL), func.count())
            .join(Case, Case.referral_id == Referral.id)
            .where(*self.live.referrals(), self._registered())
            .group_by(month)
        )
        return _nested(await grouped(self.session, query)).get(TOTAL, {})

    async def registered_by(self, attribute: str) -> ByKey:
        column = _ATTRIBUTES[attribute]
        month = self.live.month(Referral.created_at).label("month")
        query = (
            select(month, column, func.count())
            .join(Case, Case.referral_id == Referral.id)
            .where(*self.live.referrals(), self._registered())
            .group_by(month, column)
        )
        return _nested(await grouped(self.session, query))

    async def registered_states(self) -> list[tuple[str, str, str, int]]:
        month = self.live.month(Case.created_at).label("month")
        query = (
            select(month, Case.state, Case.status_reason, func.count())
            .where(*self.live.cases(), self._registered())
            .group_by(month, Case.state, Case.status_reason)
        )
        return [
            (month_key(m), state, reason or "", int(n))
            for m, state, reason, n in await grouped(self.session, query)
        ]

    async def attended(self) -> tuple[ByKey, ByKey]:
        live = self.live
        month = live.month(CaseEvent.occurred_at).label("month")
        band = duration_band(Appointment.attended_minutes).label("band")
        query = (
            live.events("appointment.attended")
            .join(
                Appointment,
                and_(
                    Appointment.case_id == CaseEvent.case_id,
                    Appointment.external_id == CaseEvent.data["appointment_id"].as_string(),
                ),
            )
            .add_columns(month, Appointment.appointment_type, band, func.count())
            .group_by(month, Appointment.appointment_type, band)
        )
        by_type: ByKey = defaultdict(dict)
        by_band: ByKey = defaultdict(dict)
        for raw_month, kind, band_index, count in await grouped(self.session, query):
            m = month_key(raw_month)
            by_type[kind][m] = by_type[kind].get(m, 0) + int(count)
            key = DURATION_BANDS[int(band_index)]
            by_band[key][m] = by_band[key].get(m, 0) + int(count)
        return by_type, by_band

    def _prescribed(self) -> tuple[list[Any], Any]:
        where = [
            *self.live.during(Prescription.prescribed_at),
            *self.live.case_of_scope(Prescription.case_id),
        ]
        return where, self.live.month(Prescription.prescribed_at).label("month")

    async def prescriptions(self) -> PrescriptionCounts:
        session = self.session
        where, month = self._prescribed()
        people = func.count(distinct(Prescription.case_id))
        by_category: ByKey = defaultdict(dict)
        people_by_category: ByKey = defaultdict(dict)
        for raw_month, category, count, persons in await grouped(
            session,
            select(month, Prescription.category, func.count(), people)
            .where(*where)
            .group_by(month, Prescription.category),
        ):
            by_category[category][month_key(raw_month)] = int(count)
            people_by_category[category][month_key(raw_month)] = int(persons)
        people_totals = {
            category: int(persons)
            for category, persons in await grouped(
                session,
                select(Prescription.category, people).where(*where).group_by(Prescription.category),
            )
        }
        prescribed: ByMonth = {}
        for raw_month, persons in await grouped(
            session, select(month, people).where(*where).group_by(month)
        ):
            prescribed[month_key(raw_month)] = int(persons)
        prescribed_total = int(await session.scalar(select(people).where(*where)) or 0)
        return PrescriptionCounts(
            by_category, people_by_category, people_totals, prescribed, prescribed_total
        )

    async def providers(self) -> ByKey:
        where, month = self._prescribed()
        return _nested(
            await grouped(
                self.session,
                select(month, Prescription.provider, func.count())
                .where(*where)
                .group_by(month, Prescription.provider),
            )
        )

    async def wellbeing(self) -> WellbeingPairs:
        live = self.live
        ranked = (
            select(
                WellbeingScore.case_id.label("case_id"),
                WellbeingScore.metric_score.label("score"),
                WellbeingScore.measured_at.label("measured_at"),
                func.row_number()
                .over(
                    partition_by=WellbeingScore.case_id,
                    order_by=(WellbeingScore.measured_at, WellbeingScore.created_at),
                )
                .label("first_rank"),
                func.row_number()
                .over(
                    partition_by=WellbeingScore.case_id,
                    order_by=(
                        WellbeingScore.measured_at.desc(),
                        WellbeingScore.created_at.desc(),
                    ),
                )
                .label("last_rank"),
                func.count().over(partition_by=WellbeingScore.case_id).label("n"),
            )
            .where(
                WellbeingScore.instrument == "SWEMWBS",
                *live.during(WellbeingScore.measured_at),
                *live.case_of_scope(WellbeingScore.case_id),
            )
            .subquery()
        )
        ends = ranked.c.first_rank == 1
        pairs = (
            select(
                ranked.c.case_id,
                func.max(case((ranked.c.last_rank == 1, ranked.c.measured_at))).label("last_at"),
                (
                    func.sum(case((ranked.c.last_rank == 1, ranked.c.score), else_=0.0))
                    - func.sum(case((ends, ranked.c.score), else_=0.0))
                ).label("change"),
            )
            .where(ranked.c.n >= 2, or_(ends, ranked.c.last_rank == 1))
            .group_by(ranked.c.case_id)
            .subquery()
        )
        change = pairs.c.change
        month = live.month(pairs.c.last_at).label("month")

        def flag(condition: Any) -> Any:
            return func.sum(case((condition, 1), else_=0))

        tolerance = CHANGE_TOLERANCE
        query = select(
            month,
            func.count(),
            func.sum(change),
            flag(change > tolerance),
            flag(change < -tolerance),
            flag(and_(change <= tolerance, change >= -tolerance)),
            flag(change >= MEANINGFUL_CHANGE - tolerance),
            flag(change <= -MEANINGFUL_CHANGE + tolerance),
        ).group_by(month)
        names = ("pairs", "increased", "decreased", "unchanged", "improved", "declined")
        counts: dict[str, ByMonth] = {name: {} for name in names}
        sums: dict[str, float] = {}
        for raw_month, n, total_change, *flags in await grouped(self.session, query):
            m = month_key(raw_month)
            counts["pairs"][m] = int(n)
            sums[m] = float(total_change or 0.0)
            for name, value in zip(names[1:], flags, strict=True):
                counts[name][m] = int(value or 0)
        return WellbeingPairs(counts, sums)

    async def equality(self) -> dict[str, ByKey]:
        live = self.live
        if live.postgresql:
            items = func.jsonb_each_text(CaseEvent.data).table_valued("key", "value").alias("item")
        else:
            items = func.json_each(CaseEvent.data).table_valued("key", "value").alias("item")
        latest = (
            select(
                live.month(Case.created_at).label("month"),
                items.c.key.label("key"),
                items.c.value.label("value"),
                func.row_number()
                .over(
                    partition_by=(CaseEvent.case_id, items.c.key),
                    order_by=(CaseEvent.occurred_at.desc(), CaseEvent.seq.desc()),
                )
                .label("rank"),
            )
            .select_from(CaseEvent)
            .join(Case, Case.id == CaseEvent.case_id)
            .join(items, literal(True))
            .where(
                CaseEvent.type == "demographics.recorded",
                *live.cases(),
                items.c.key.in_([key for key, _ in EDI_ITEMS]),
            )
            .subquery()
        )
        values: dict[str, ByKey] = defaultdict(lambda: defaultdict(dict))
        for raw_month, key, value, count in await grouped(
            self.session,
            select(latest.c.month, latest.c.key, latest.c.value, func.count())
            .where(latest.c.rank == 1)
            .group_by(latest.c.month, latest.c.key, latest.c.value),
        ):
            m = month_key(raw_month)
            values[key][str(value)][m] = values[key][str(value)].get(m, 0) + int(count)
        return values

    async def waits(self, wait: str) -> Percentiles:
        live = self.live
        month = live.month(Case.created_at).label("month")
        if wait == "contact":
            values = select(
                month, live.days_between(Case.first_contact_at, Case.created_at).label("value")
            ).where(*live.cases(), Case.first_contact_at.is_not(None))
            return await percentiles(self.session, values)
        first_attended = (
            select(
                CaseEvent.case_id.label("case_id"),
                func.min(CaseEvent.occurred_at).label("at"),
            )
            .where(
                CaseEvent.type == "appointment.attended",
                CaseEvent.occurred_at >= live.starts_at,
            )
            .group_by(CaseEvent.case_id)
            .subquery()
        )
        values = (
            select(month, live.days_between(first_attended.c.at, Case.created_at).label("value"))
            .join(first_attended, first_attended.c.case_id == Case.id)
            .where(*live.cases())
        )
        return await percentiles(self.session, values)

    async def first_contact_target(self) -> tuple[ByMonth, ByMonth]:
        live = self.live
        month = live.month(Case.created_at).label("month")
        within = case(
            (
                and_(
                    Case.first_contact_at.is_not(None),
                    live.days_between(Case.first_contact_at, Case.created_at)
                    <= cast(SocialPrescribingService.first_contact_target_days, Integer),
                ),
                1,
            ),
            else_=0,
        )
        rows = await grouped(
            self.session,
            select(month, func.count(), func.sum(within))
            .join(SocialPrescribingService, SocialPrescribingService.id == Case.service_id)
            .where(*live.cases(), Case.state.not_in(("rejected", "cancelled")))
            .group_by(month),
        )
        return (
            {month_key(m): int(n) for m, n, _ in rows},
            {month_key(m): int(w or 0) for m, _, w in rows},
        )

    async def assessment(self) -> ByKey:
        live = self.live
        since = live.starts_at
        attended = (
            select(CaseEvent.case_id.label("case_id"), func.count().label("n"))
            .where(CaseEvent.type == "appointment.attended", CaseEvent.occurred_at >= since)
            .group_by(CaseEvent.case_id)
            .subquery()
        )
        prescribed = (
            select(Prescription.case_id.label("case_id"))
            .where(Prescription.prescribed_at >= since)
            .distinct()
            .subquery()
        )
        reviewed = (
            select(WellbeingScore.case_id.label("case_id"))
            .where(WellbeingScore.stage.in_(("review", "end")), WellbeingScore.measured_at >= since)
            .distinct()
            .subquery()
        )
        assessed = attended.c.n >= 1

        def flag(condition: Any) -> Any:
            return func.sum(case((condition, 1), else_=0))

        month = live.month(Case.created_at).label("month")
        query = (
            select(
                month,
                flag(assessed),
                flag(prescribed.c.case_id.is_not(None)),
                flag(and_(Case.state == "completed", Case.status_reason == "referred-on")),
                flag(and_(assessed, or_(attended.c.n >= 2, reviewed.c.case_id.is_not(None)))),
                flag(and_(Case.state == "discharged", Case.status_reason == "no-longer-required")),
            )
            .outerjoin(attended, attended.c.case_id == Case.id)
            .outerjoin(prescribed, prescribed.c.case_id == Case.id)
            .outerjoin(reviewed, reviewed.c.case_id == Case.id)
            .where(*live.cases())
            .group_by(month)
        )
        names = ("assessed", "signposted", "referred-onward", "monitored", "treatment-elsewhere")
        counts: ByKey = {name: {} for name in names}
        for raw_month, *values in await grouped(self.session, query):
            for name, value in zip(names, values, strict=True):
                counts[name][month_key(raw_month)] = int(value or 0)
        return counts


async def load(session: AsyncSession, scope: Scope) -> LiveFigures:
    """In place of app.reports.readmodel.load: the figures by live SQL."""
    return LiveFigures(session, LiveScope(scope, session.get_bind().dialect.name))
