"""Running a report: whose services, which period, then each section of the definition in turn,
all in the caller's transaction (it drains the report queue first). Never commits."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import EARLIEST_INSTANT, INSTANT_RANGE, LATEST_INSTANT
from app.directory.models import SocialPrescribingService
from app.errors import BusinessRuleViolation, NotFound
from app.reports import projection, readmodel, version
from app.reports.definitions import ReportDefinition
from app.reports.disclosure import disclose
from app.reports.period import Period, Scope
from app.reports.sections import Facts
from app.reports.tables import Report, Section, month_label, published_grid
from app.security.auth import Principal

# A report covers at most three years: 37 month columns are already more than a page holds.
MAX_PERIOD_DAYS = 3 * 366
# PostgreSQL: room for the report's sorts and hashes in memory (this transaction only).
_REPORT_WORK_MEM = "64MB"
REPORT_NOTES = (
    "Referrals count in the month the bridge received them; every other figure in the month "
    "its event happened (occurred_at), whenever it was recorded. Months are UTC calendar months.",
)

Progress = Callable[[str, int, int], None]  # (section title, done, of)

log = logging.getLogger("spbridge.reports")


def default_period(today: dt.date) -> Period:
    """The twelve months to ``today``: from the first day of the month eleven months back."""
    year, month = today.year, today.month - 11
    if month < 1:
        year, month = year - 1, month + 12
    return Period(dt.date(year, month, 1), today)


def period_of(start: dt.date | None, end: dt.date | None, today: dt.date) -> Period:
    """The period asked for (defaults: the twelve months to today), or a 422 saying why not."""
    for name, day in (("from", start), ("to", end)):
        if day is not None and not EARLIEST_INSTANT.date() <= day < LATEST_INSTANT.date():
            raise BusinessRuleViolation(f"'{name}' {INSTANT_RANGE}", expression=name)
    if start is None and end is None:
        return default_period(today)
    if end is None:
        end = today
    if start is None:
        start = default_period(end).start
    if start > end:
        raise BusinessRuleViolation("'from' is after 'to'", expression="from")
    if (end - start).days >= MAX_PERIOD_DAYS:
        raise BusinessRuleViolation(
            f"A report covers at most {MAX_PERIOD_DAYS} days; ask for a shorter period",
            expression="to",
        )
    return Period(start, end)


async def report_services(
    session: AsyncSession, principal: Principal, service_id: str | None
) -> list[SocialPrescribingService]:
    """The services a report may cover: those the caller's organisation runs (an admin without
    an organisation: every service). A named service that is not among them is 404."""
    query = select(SocialPrescribingService).order_by(SocialPrescribingService.id)
    if not principal.sees_everything:
        query = query.where(SocialPrescribingService.organisation == principal.organisation)
    if service_id is not None:
        query = query.where(SocialPrescribingService.id == service_id)
    services = list(await session.scalars(query))
    if service_id is not None and not services:
        raise NotFound("No such service is known here", expression="service")
    return services


async def run_report(
    session: AsyncSession,
    principal: Principal,
    definition: ReportDefinition,
    *,
    service_id: str | None,
    team: str | None,
    period: Period,
    now: dt.datetime,
    progress: Progress | None = None,
) -> Report:
    services = await report_services(session, principal, service_id)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        await session.execute(text(f"SET LOCAL work_mem = '{_REPORT_WORK_MEM}'"))
        # Report queries are many and short: compiling them (JIT) costs more than it saves.
        await session.execute(text("SET LOCAL jit = off"))
    scope = Scope(service_ids=tuple(s.id for s in services), period=period, team=team)
    notes: tuple[str, ...] = REPORT_NOTES
    state = await version.state(session)
    if not state.newer:
        # Take every case written so far into the counters first (the writes only queued
        # them), in this transaction, so the report is exact as of now.
        await session.run_sync(lambda sync: projection.drain(sync, wait=True))
    stale = state.note()
    if stale is not None:
        # The report still answers (app.reports.version says why), and says so.
        log.warning("report from a stale read model: %s", stale)
        notes = (*notes, stale)
    figures = await readmodel.load(session, scope)
    facts = Facts(figures, period.months())
    built: list[Section] = []
    for done, builder in enumerate(definition.sections):
        if progress is not None:
            progress(builder.__name__, done, len(definition.sections))
        built.append(await builder(facts))
    if progress is not None:
        progress("done", len(definition.sections), len(definition.sections))
    return Report(
        definition=definition.name.value,
        title=definition.title,
        services=tuple((s.id, s.name) for s in services),
        team=team,
        start=period.start,
        end=period.end,
        months=period.months(),
        generated_at=now,
        sections=tuple(built),
        notes=notes,
    )


def report_document(report: Report, *, suppress: bool) -> dict[str, Any]:
    """The report as JSON (the ReportDocument schema): with ``suppress``, every section's
    tables under disclosure control (app.reports.disclosure)."""
    sections = []
    for section in report.sections:
        grids = (
            disclose(section.tables)
            if suppress
            else {t.id: published_grid(t) for t in section.tables}
        )
        sections.append(
            {
                "id": section.id,
                "title": section.title,
                "notes": list(section.notes),
                "tables": [
                    {
                        "id": table.id,
                        "title": table.title,
                        "unit": table.unit,
                        "description": table.description,
                        "chart": table.chart,
                        "columns": list(table.columns),
                        "column_labels": [month_label(c) for c in table.columns],
                        "rows": [
                            {"key": row.key, "label": row.label, "values": values}
                            for row, values in zip(table.rows, grids[table.id], strict=True)
                        ],
                    }
                    for table in section.tables
                ],
            }
        )
    return {
        "report": report.definition,
        "title": report.title,
        "services": [{"id": i, "name": n} for i, n in report.services],
        "team": report.team,
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "months": list(report.months),
        "suppressed": suppress,
        "generated_at": report.generated_at.isoformat(),
        "notes": list(report.notes),
        "sections": sections,
    }
