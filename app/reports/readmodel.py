"""A report's figures (app.reports.figures) from the reporting read model, for any period.

The counters (``report_counts``, kept by app.reports.projection) are by calendar month: one
grouped query gives the period's months. A period that is not whole months (``Period.cut_off``)
reads the same counters, corrected for the cases that have an instant (received, an event, a
prescription, a score) in the parts of its first and last months outside it: their stored
contributions come off and their contributions by ``period_bucket`` go on, worked out from their
rows by the same function (``projection.contributions``). Every other case contributes the same
to the period either way (``projection.period_bucket`` says why), so the result is what every
case's contributions by ``period_bucket`` would sum to, at the cost of the cases near the cut.

Waits are exact percentiles: the counters give how many waits fall in each hour bucket, down to
the bucket a percentile needs; then the few waits in it are read (fact rows, or the cases worked
out again) and ranked.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, Text, and_, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.cases.models import Case, CaseEvent, Prescription, Referral, WellbeingScore
from app.directory.models import SocialPrescribingService
from app.reports import projection
from app.reports.figures import (
    ByKey,
    ByMonth,
    Percentiles,
    PrescriptionCounts,
    Wait,
    WellbeingPairs,
)
from app.reports.models import ReportCaseFact, ReportCount
from app.reports.period import Scope, next_month
from app.reports.projection import DURATION_BANDS, SEP, days_between, month_of
from app.reports.tables import TOTAL

# measure -> key -> month -> n
Counted = dict[str, dict[str, dict[str, int]]]
FRACTIONS = (0.5, 0.9)
_MEASURES = {"contact": "contact", "attended": "attended_wait"}
_CHUNK = 2000


@dataclass
class _Recomputed:
    """The cases near a cut, worked out again: their ids, and their waits
    ({wait: [(month received, hour bucket, days)]})."""

    case_ids: set[str] = field(default_factory=set)
    waits: dict[str, list[tuple[str, int, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )


@dataclass
class CountedFigures:
    """The figures of one report from the counters (corrected near any cut)."""

    session: AsyncSession
    scope: Scope
    counted: Counted
    # service -> key of the "contact" measure -> month -> n (targets are per service)
    contact_by_service: dict[str, dict[str, dict[str, int]]]
    targets: dict[str, int]
    recomputed: _Recomputed

    @property
    def first_month(self) -> str:
        return self.scope.period.months()[0]

    @property
    def last_month(self) -> str:
        return self.scope.period.months()[-1]

    def measure(self, name: str) -> ByKey:
        return {key: dict(by_month) for key, by_month in self.counted.get(name, {}).items()}

    def split(self, name: str) -> list[tuple[list[str], str, int]]:
        """(key parts, month, n) of every counter of a measure."""
        return [
            (key.split(SEP), month, n)
            for key, by_month in self.counted.get(name, {}).items()
            for month, n in by_month.items()
        ]

    async def referrals(self) -> ByMonth:
        return self.measure("referrals").get("", {})

    async def referrals_by(self, attribute: str) -> ByKey:
        return self.measure(attribute)

    async def events(self) -> ByKey:
        return self.measure("event")

    async def reasons(self) -> tuple[ByKey, ByMonth]:
        return self.measure("reason"), self.measure("reason_any").get("", {})

    async def states(self) -> list[tuple[str, str, str, int]]:
        return [(month, state, reason, n) for (state, reason), month, n in self.split("state")]

    async def slots(self) -> ByKey:
        return self.measure("slot")

    async def registered(self) -> ByMonth:
        return self.measure("registered").get("", {})

    async def registered_by(self, attribute: str) -> ByKey:
        return self.measure(f"reg_{attribute}")

    async def registered_states(self) -> list[tuple[str, str, str, int]]:
        return [(month, state, reason, n) for (state, reason), month, n in self.split("reg_state")]

    async def attended(self) -> tuple[ByKey, ByKey]:
        by_band = {
            DURATION_BANDS[int(index)]: by_month
            for index, by_month in self.measure("attended_band").items()
        }
        return self.measure("attended_type"), by_band

    async def prescriptions(self) -> PrescriptionCounts:
        by_previous: dict[str, dict[str, Mapping[str, int]]] = defaultdict(dict)
        for key, by_month in self.measure("rx_people").items():
            category, previous = key.split(SEP)
            by_previous[category][previous] = by_month
        people_by_category: ByKey = {}
        people_totals: dict[str, int] = {}
        for category, counts in by_previous.items():
            people_by_category[category], people_totals[category] = _people_once(
                counts, self.first_month
            )
        people, people_total = _people_once(self.measure("rx_people_any"), self.first_month)
        return PrescriptionCounts(
            by_category=self.measure("rx_category"),
            people_by_category=people_by_category,
            people_totals=people_totals,
            people=people,
            people_total=people_total,
        )

    async def providers(self) -> ByKey:
        return self.measure("rx_provider")

    async def wellbeing(self) -> WellbeingPairs:
        names = ("pairs", "increased", "decreased", "unchanged", "improved", "declined")
        counts: dict[str, ByMonth] = {name: {} for name in names}
        for name in names:
            for bounds, month, n in self.split(f"wb_{name}"):
                if self._pairs_in(bounds):
                    counts[name][month] = counts[name].get(month, 0) + n
        hundredths: dict[str, int] = defaultdict(int)
        for bounds, month, n in self.split("wb_change"):
            if self._pairs_in(bounds):
                hundredths[month] += n
        return WellbeingPairs(counts, {m: hundredths[m] / 100 for m in counts["pairs"]})

    def _pairs_in(self, bounds: Sequence[str]) -> bool:
        """Whether a SWEMWBS pair keyed (lo, first, hi) is the pair of a report of these
        months: its first score is the first in the period, its last the last."""
        lo, first, hi = bounds
        start, end = self.first_month, self.last_month
        return (lo == "" or lo < start) and first >= start and (hi == "" or hi > end)

    async def equality(self) -> dict[str, ByKey]:
        values: dict[str, ByKey] = defaultdict(lambda: defaultdict(dict))
        for (item, value), month, n in self.split("edi"):
            values[item][value][month] = values[item][value].get(month, 0) + n
        return values

    async def assessment(self) -> ByKey:
        counts: ByKey = defaultdict(dict)
        for (flag, threshold), month, n in self.split("assess"):
            # The flag holds for reports starting in its threshold month or earlier.
            if threshold == "" or threshold >= self.first_month:
                counts[flag][month] = counts[flag].get(month, 0) + n
        return counts

    async def first_contact_target(self) -> tuple[ByMonth, ByMonth]:
        eligible = self.measure("eligible").get("", {})
        within: ByMonth = defaultdict(int)
        for service_id, by_key in self.contact_by_service.items():
            target = self.targets.get(service_id)
            if target is None:
                continue
            for key, by_month in by_key.items():
                bucket, counted = key.split(SEP)
                # A bucket is whole hours rounded up: within n days exactly when at most 24 n.
                if counted == "1" and int(bucket) <= 24 * target:
                    for month, n in by_month.items():
                        within[month] += n
        return eligible, dict(within)

    async def waits(self, wait: Wait) -> Percentiles:
        # bucket counts by column (month or TOTAL)
        buckets: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for key, by_month in self.counted.get(_MEASURES[wait], {}).items():
            bucket = int(key.split(SEP)[0])
            for month, n in by_month.items():
                buckets[month][bucket] += n
                buckets[TOTAL][bucket] += n
        # which rank of which bucket each percentile needs
        wanted = {column: _locate(counts) for column, counts in buckets.items()}
        wanted = {column: located for column, located in wanted.items() if located}
        if not wanted:
            return {}
        values = await self._waits_in(
            wait, {column: {b for b, _ in located.values()} for column, located in wanted.items()}
        )
        out: Percentiles = {}
        for column, located in wanted.items():
            n = sum(buckets[column].values())
            at = {
                rank: sorted(values[(column, bucket)])[index]
                for rank, (bucket, index) in located.items()
            }
            out[column] = (n, _interpolate(n, at))
        return out

    async def _waits_in(
        self, wait: Wait, needed: Mapping[str, Iterable[int]]
    ) -> dict[tuple[str, int], list[float]]:
        """The waits in these (column, hour bucket)s: from the fact rows, but for the cases
        worked out again near a cut, whose own are used."""
        period = self.scope.period
        if wait == "contact":
            bucket_column, later = ReportCaseFact.contact_bucket, ReportCaseFact.first_contact_at
        else:
            bucket_column, later = ReportCaseFact.attended_bucket, ReportCaseFact.first_attended_at
        conditions = []
        for column, buckets in needed.items():
            start, end = period.starts_at, period.ends_at
            if column != TOTAL:
                month = dt.datetime(int(column[:4]), int(column[5:7]), 1, tzinfo=dt.UTC)
                start, end = max(start, month), min(end, next_month(month))
            conditions.append(
                and_(
                    bucket_column.in_(sorted(buckets)),
                    ReportCaseFact.received_at >= start,
                    ReportCaseFact.received_at < end,
                )
            )
        query = select(
            ReportCaseFact.case_id, ReportCaseFact.received_at, bucket_column, later
        ).where(ReportCaseFact.service_id.in_(self.scope.service_ids), or_(*conditions))
        if self.scope.team is not None:
            query = query.where(ReportCaseFact.team == self.scope.team)
        values: dict[tuple[str, int], list[float]] = defaultdict(list)
        skip = self.recomputed.case_ids
        for case_id, received_at, stored, later_at in await self.session.execute(query):
            if later_at is None or stored is None or case_id in skip:
                continue
            for column in (month_of(received_at), TOTAL):
                if int(stored) in needed.get(column, ()):
                    values[(column, int(stored))].append(days_between(later_at, received_at))
        for cohort, hours, days in self.recomputed.waits[wait]:
            for column in (cohort, TOTAL):
                if hours in needed.get(column, ()):
                    values[(column, hours)].append(days)
        return values


def _locate(counts: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """{rank: (bucket, index in the bucket)} of the ranks the percentiles need, from how many
    values each bucket (in order) holds."""
    n = sum(counts.values())
    if n <= 0:
        return {}
    ranks: set[int] = set()
    for fraction in FRACTIONS:
        low = (n - 1) * round(fraction * 100) // 100
        ranks.update(r for r in (low, low + 1) if r < n)
    located: dict[int, tuple[int, int]] = {}
    before = 0
    for bucket in sorted(counts):
        size = counts[bucket]
        for rank in ranks:
            if before <= rank < before + size:
                located[rank] = (bucket, rank - before)
        before += size
    return located


def _interpolate(n: int, at: Mapping[int, float]) -> dict[float, float]:
    """Percentiles by linear interpolation between the closest ranks (as PostgreSQL's
    percentile_cont), from the values at the ranks ``_locate`` chose."""
    results: dict[float, float] = {}
    for fraction in FRACTIONS:
        position = (n - 1) * fraction
        low = (n - 1) * round(fraction * 100) // 100
        lower = at[low]
        upper = at.get(low + 1, lower)
        results[fraction] = lower + (position - low) * (upper - lower)
    return results


def _people_once(by_key: Mapping[str, Mapping[str, int]], start: str) -> tuple[ByMonth, int]:
    """People by month, and over all the months once each, from counters keyed by the month of
    the person's previous prescription ('' for none)."""
    by_month: ByMonth = defaultdict(int)
    total = 0
    for previous, months in by_key.items():
        for month, n in months.items():
            by_month[month] += n
            if previous == "" or previous < start:
                total += n
    return dict(by_month), total


# --- loading ---------------------------------------------------------------------------------


async def load(session: AsyncSession, scope: Scope) -> CountedFigures:
    """The figures of a report of ``scope``, from the read model as it stands (the caller
    drains the queue first)."""
    months = scope.period.months()
    query = (
        select(
            ReportCount.service_id,
            ReportCount.measure,
            ReportCount.key,
            ReportCount.month,
            func.sum(ReportCount.n),
        )
        .where(
            ReportCount.service_id.in_(scope.service_ids),
            ReportCount.month >= months[0],
            ReportCount.month <= months[-1],
        )
        .group_by(ReportCount.service_id, ReportCount.measure, ReportCount.key, ReportCount.month)
    )
    if scope.team is not None:
        query = query.where(ReportCount.team == scope.team)
    counts: dict[tuple[str, str, str, str], int] = {
        (service_id, measure, key, month): int(n)
        for service_id, measure, key, month, n in await session.execute(query)
    }
    recomputed = _Recomputed()
    if scope.period.cut_off():

        def correct(sync: Session) -> None:
            _correct(sync, scope, counts, recomputed)

        await session.run_sync(correct)
    counted: Counted = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    contact: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    for (service_id, measure, key, month), n in counts.items():
        if not n:
            continue
        counted[measure][key][month] += n
        if measure == "contact":
            contact[service_id][key][month] += n
    targets = {
        service_id: int(days)
        for service_id, days in await session.execute(
            select(
                SocialPrescribingService.id, SocialPrescribingService.first_contact_target_days
            ).where(SocialPrescribingService.id.in_(scope.service_ids))
        )
    }
    return CountedFigures(session, scope, counted, contact, targets, recomputed)


def _correct(
    executor: Session,
    scope: Scope,
    counts: dict[tuple[str, str, str, str], int],
    recomputed: _Recomputed,
) -> None:
    """Take the cases near the period's cuts out of ``counts`` (their stored contributions)
    and put them back by ``period_bucket``."""
    months = set(scope.period.months())
    bucket = projection.period_bucket(scope.period)
    ids = sorted(_near_cuts(executor, scope))
    recomputed.case_ids.update(ids)
    # service -> entry -> n, summed over the cases before the entries are taken apart
    deltas: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        # As text, decoded here: several times faster than the driver's JSON decoding.
        for service_id, stored in executor.execute(
            select(ReportCaseFact.service_id, cast(ReportCaseFact.contributions, Text)).where(
                projection.among(executor, ReportCaseFact.case_id, chunk)
            )
        ):
            delta = deltas[service_id]
            for entry, n in orjson.loads(stored or "{}").items():
                delta[entry] -= n
        for rows in projection.load(executor, chunk):
            fact = projection.contributions(rows, bucket)
            delta = deltas[rows.service_id]
            for entry, n in fact.contributions.items():
                delta[entry] += n
            cohort = bucket(rows.received_at)
            if cohort not in months:
                continue
            if fact.contact_bucket is not None and rows.first_contact_at is not None:
                recomputed.waits["contact"].append(
                    (
                        cohort,
                        fact.contact_bucket,
                        days_between(rows.first_contact_at, rows.received_at),
                    )
                )
            if fact.attended_bucket is not None and fact.first_attended_at is not None:
                recomputed.waits["attended"].append(
                    (
                        cohort,
                        fact.attended_bucket,
                        days_between(fact.first_attended_at, rows.received_at),
                    )
                )
    for service_id, delta in deltas.items():
        for entry, n in delta.items():
            month, measure, key = entry.split(SEP, 2)
            if n and month in months:
                where = (service_id, measure, key, month)
                counts[where] = counts.get(where, 0) + n


def _near_cuts(executor: Session, scope: Scope) -> set[str]:
    """The cases in scope with an instant that counts somewhere (received, a counted event, a
    prescription, a score) in the parts of the period's first and last months outside it."""
    cuts = scope.period.cut_off()

    def inside(instant: Any) -> ColumnElement[bool]:
        return or_(*(and_(instant >= start, instant < end) for start, end in cuts))

    def of_scope(query: Select[Any], case_id: Any) -> Select[Any]:
        # Joins, not IN (cases in scope): the planner then starts from the few rows in the cuts.
        if case_id is not Case.id:
            query = query.join(Case, Case.id == case_id)
        query = query.where(Case.service_id.in_(scope.service_ids))
        if scope.team is not None:
            query = query.join(Referral, Referral.id == Case.referral_id).where(
                Referral.referring_team == scope.team
            )
        return query.distinct()

    found: set[str] = set()
    for case_id, instant, *conditions in (
        (Case.id, Case.created_at),
        (CaseEvent.case_id, CaseEvent.occurred_at, CaseEvent.type.in_(projection.COUNTED_EVENTS)),
        (Prescription.case_id, Prescription.prescribed_at),
        (WellbeingScore.case_id, WellbeingScore.measured_at),
    ):
        query = select(case_id).where(*conditions, inside(instant))
        found.update(executor.scalars(of_scope(query, case_id)))
    return found
