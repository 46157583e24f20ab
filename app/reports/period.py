"""What one report covers: a period of days and the services (and referring team) in scope.

Time rules (issue 7), applied by app.reports.projection:
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
from dataclasses import dataclass

DAY = dt.timedelta(days=1)


def month_start(instant: dt.datetime) -> dt.datetime:
    utc = instant.astimezone(dt.UTC)
    return dt.datetime(utc.year, utc.month, 1, tzinfo=dt.UTC)


def next_month(start: dt.datetime) -> dt.datetime:
    """The first instant of the month after the one ``start`` begins."""
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


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

    def cut_off(self) -> tuple[tuple[dt.datetime, dt.datetime], ...]:
        """The parts of its first and last months outside the period: none for whole months."""
        parts = []
        first = month_start(self.starts_at)
        if first < self.starts_at:
            parts.append((first, self.starts_at))
        last = month_start(self.ends_at)
        if last < self.ends_at:
            parts.append((self.ends_at, next_month(last)))
        return tuple(parts)


@dataclass(frozen=True)
class Scope:
    """What one report covers: these services' referrals (a referring team's only, if given),
    in the period."""

    service_ids: tuple[str, ...]
    period: Period
    team: str | None
