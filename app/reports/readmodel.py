"""Reading the reporting read model (app.reports.models, kept by app.reports.projection) for one
report: its counters for the period's months in one query, and exact percentiles of the waits
from the counters down to an hour bucket, then from the few fact rows in it.

The counters are by calendar month, so they serve periods of whole months, the current month
included up to now (what reports are asked for; app.reports.service falls back to the live
queries for any other period).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.states import FUTURE_TOLERANCE
from app.directory.models import SocialPrescribingService
from app.reports.models import ReportCaseFact, ReportCount
from app.reports.projection import SEP, month_of
from app.reports.queries import Period, Scope, grouped
from app.reports.tables import TOTAL

# measure -> key -> month -> n
Counted = dict[str, dict[str, dict[str, int]]]


def serves(period: Period, now: dt.datetime) -> bool:
    """Whether the counters answer for this period exactly: it starts on the first of a month
    and ends on the last day of one, or later than anything can have happened yet (the domain
    refuses events from further ahead than FUTURE_TOLERANCE), as the default period does."""
    if period.start.day != 1:
        return False
    return period.ends_at.day == 1 or period.ends_at > now + FUTURE_TOLERANCE


@dataclass
class ReadModel:
    scope: Scope
    counted: Counted

    @property
    def first_month(self) -> str:
        return self.scope.period.months()[0]

    @property
    def last_month(self) -> str:
        return self.scope.period.months()[-1]

    def measure(self, name: str) -> dict[str, dict[str, int]]:
        return self.counted.get(name, {})

    def split(self, name: str) -> list[tuple[list[str], str, int]]:
        """(key parts, month, n) of every counter of a measure."""
        return [
            (key.split(SEP), month, n)
            for key, by_month in self.measure(name).items()
            for month, n in by_month.items()
        ]


async def load(session: AsyncSession, scope: Scope) -> ReadModel:
    months = scope.period.months()
    query = (
        select(ReportCount.measure, ReportCount.key, ReportCount.month, func.sum(ReportCount.n))
        .where(
            ReportCount.service_id.in_(scope.service_ids),
            ReportCount.month >= months[0],
            ReportCount.month <= months[-1],
        )
        .group_by(ReportCount.measure, ReportCount.key, ReportCount.month)
    )
    if scope.team is not None:
        query = query.where(ReportCount.team == scope.team)
    counted: Counted = defaultdict(lambda: defaultdict(dict))
    for measure, key, month, n in await grouped(session, query):
        if n:
            counted[measure][key][month] = int(n)
    return ReadModel(scope, counted)


async def within_target(session: AsyncSession, model: ReadModel) -> dict[str, int]:
    """Cases not rejected or cancelled, first contacted within their service's target, by
    month received."""
    scope = model.scope
    months = scope.period.months()
    query = (
        select(
            ReportCount.month,
            ReportCount.key,
            SocialPrescribingService.first_contact_target_days,
            func.sum(ReportCount.n),
        )
        .join(SocialPrescribingService, SocialPrescribingService.id == ReportCount.service_id)
        .where(
            ReportCount.service_id.in_(scope.service_ids),
            ReportCount.measure == "contact",
            ReportCount.month >= months[0],
            ReportCount.month <= months[-1],
        )
        .group_by(
            ReportCount.month,
            ReportCount.key,
            SocialPrescribingService.first_contact_target_days,
        )
    )
    if scope.team is not None:
        query = query.where(ReportCount.team == scope.team)
    out: dict[str, int] = defaultdict(int)
    for month, key, target, n in await grouped(session, query):
        bucket, eligible = key.split(SEP)
        if eligible == "1" and int(bucket) <= 24 * int(target):
            out[month] += int(n)
    return out


async def wait_percentiles(
    session: AsyncSession,
    model: ReadModel,
    measure: str,
    fractions: Sequence[float] = (0.5, 0.9),
) -> dict[str, tuple[int, dict[float, float]]]:
    """Percentiles of a wait (``contact`` or ``attended_wait``) by month received and in
    total, as app.reports.queries.percentiles computes them over the same values."""
    scope = model.scope
    if measure == "contact":
        bucket_column = ReportCaseFact.contact_bucket
        value = scope.days_between(ReportCaseFact.first_contact_at, ReportCaseFact.received_at)
    else:
        bucket_column = ReportCaseFact.attended_bucket
        value = scope.days_between(ReportCaseFact.first_attended_at, ReportCaseFact.received_at)
    # bucket counts by column (month or TOTAL)
    buckets: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for key, by_month in model.measure(measure).items():
        bucket = int(key.split(SEP)[0])
        for month, n in by_month.items():
            buckets[month][bucket] += n
            buckets[TOTAL][bucket] += n
    # which rank of which bucket each percentile needs
    wanted: dict[str, dict[int, tuple[int, int]]] = {}
    for column, counts in buckets.items():
        n = sum(counts.values())
        if n <= 0:
            continue
        ranks: set[int] = set()
        for fraction in fractions:
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
        wanted[column] = located
    if not wanted:
        return {}
    conditions = []
    for column, located in wanted.items():
        for bucket in {b for b, _ in located.values()}:
            if column == TOTAL:
                start, end = scope.period.starts_at, scope.period.ends_at
            else:
                year, number = int(column[:4]), int(column[5:7])
                start = scope.period.starts_at.replace(year=year, month=number, day=1)
                year, number = (year + 1, 1) if number == 12 else (year, number + 1)
                end = start.replace(year=year, month=number)
            conditions.append(
                and_(
                    bucket_column == bucket,
                    ReportCaseFact.received_at >= start,
                    ReportCaseFact.received_at < end,
                )
            )
    query = select(ReportCaseFact.received_at, bucket_column, value.label("value")).where(
        ReportCaseFact.service_id.in_(scope.service_ids), or_(*conditions)
    )
    if scope.team is not None:
        query = query.where(ReportCaseFact.team == scope.team)
    values: dict[tuple[str, int], list[float]] = defaultdict(list)
    for received_at, bucket, found in await grouped(session, query):
        if found is None:
            continue
        values[(month_of(received_at), int(bucket))].append(float(found))
        values[(TOTAL, int(bucket))].append(float(found))
    out: dict[str, tuple[int, dict[float, float]]] = {}
    for column, located in wanted.items():
        n = sum(buckets[column].values())
        at: dict[int, float] = {}
        for rank, (bucket, index) in located.items():
            in_bucket = sorted(values[(column, bucket)])
            at[rank] = in_bucket[index]
        results: dict[float, float] = {}
        for fraction in fractions:
            position = (n - 1) * fraction
            low = (n - 1) * round(fraction * 100) // 100
            lower = at[low]
            upper = at.get(low + 1, lower)
            results[fraction] = lower + (position - low) * (upper - lower)
        out[column] = (n, results)
    return out


def pairs_in(bounds: Sequence[str], model: ReadModel) -> bool:
    """Whether a SWEMWBS pair keyed (lo, first, hi) is the pair of a report of these months."""
    lo, first, hi = bounds
    start, end = model.first_month, model.last_month
    return (lo == "" or lo < start) and first >= start and (hi == "" or hi > end)


def people_once(by_key: Mapping[str, Mapping[str, int]], start: str) -> tuple[dict[str, int], int]:
    """People by month, and over all the months once each, from counters keyed by the month of
    the person's previous prescription ('' for none)."""
    by_month: dict[str, int] = defaultdict(int)
    total = 0
    for previous, months in by_key.items():
        for month, n in months.items():
            by_month[month] += n
            if previous == "" or previous < start:
                total += n
    return dict(by_month), total
