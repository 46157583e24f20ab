"""What the sections of a report read: its figures by month, in the shapes below.

app.reports.readmodel gives them for any period from the read model (the counters that
app.reports.projection keeps, the one place a figure is computed); the sections
(app.reports.sections) only lay them out. Keys are codes as recorded, '' for "not recorded";
months are 'YYYY-MM' (UTC) within the report's period.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

ByMonth = dict[str, int]
ByKey = dict[str, ByMonth]
# {month or TOTAL: (how many values, {fraction: percentile})}
Percentiles = dict[str, tuple[int, dict[float, float]]]
Wait = Literal["contact", "attended"]


@dataclass(frozen=True)
class PrescriptionCounts:
    by_category: ByKey
    # People prescribed in each category: by month, and over the period (once each).
    people_by_category: ByKey
    people_totals: dict[str, int]
    # People prescribed anything: by month, and over the period.
    people: ByMonth
    people_total: int


@dataclass(frozen=True)
class WellbeingPairs:
    """SWEMWBS matched pairs by the month of their last score: how many ("pairs") and how many
    increased, decreased, unchanged, improved, declined; and the sum of their changes."""

    counts: dict[str, ByMonth]
    sums: dict[str, float]


class Figures(Protocol):
    async def referrals(self) -> ByMonth:
        """Referrals received, by month."""
        ...

    async def referrals_by(self, attribute: str) -> ByKey:
        """Referrals received by ``attribute`` (team, gender, age_band, unit, source,
        staff_group) and month."""
        ...

    async def events(self) -> ByKey:
        """Events of each counted type (app.reports.projection.EVENT_ROWS) by the month they
        happened."""
        ...

    async def reasons(self) -> tuple[ByKey, ByMonth]:
        """Referrals with each reason domain; referrals with any domain."""
        ...

    async def states(self) -> list[tuple[str, str, str, int]]:
        """(month received, state now, status reason, how many)."""
        ...

    async def slots(self) -> ByKey:
        """Appointments by the month they fall in (their booked time): attended,
        did_not_attend, cancelled, rescheduled (moved; the new time counts again) or booked
        (still to come). Together: the appointments scheduled in the month."""
        ...

    async def registered(self) -> ByMonth:
        """People registered (case accepted), by the month their referral was received."""
        ...

    async def registered_by(self, attribute: str) -> ByKey:
        """People registered by ``attribute`` (gender, age_band) and month received."""
        ...

    async def registered_states(self) -> list[tuple[str, str, str, int]]:
        """(month received, state now, status reason, how many) of the people registered."""
        ...

    async def attended(self) -> tuple[ByKey, ByKey]:
        """Attended appointments by type and by length band (app.reports.projection
        .DURATION_BANDS), by the month attended."""
        ...

    async def prescriptions(self) -> PrescriptionCounts: ...

    async def providers(self) -> ByKey:
        """Social prescriptions by provider and month made."""
        ...

    async def wellbeing(self) -> WellbeingPairs: ...

    async def equality(self) -> dict[str, ByKey]:
        """People by each equality item's latest answer (item -> answer -> month received)."""
        ...

    async def waits(self, wait: Wait) -> Percentiles:
        """Median and 90th percentile of the days from referral to first contact or to the
        first attended appointment, by month received and in total."""
        ...

    async def first_contact_target(self) -> tuple[ByMonth, ByMonth]:
        """Referrals not rejected or cancelled; those first contacted within their service's
        target. By month received."""
        ...

    async def assessment(self) -> ByKey:
        """The staff-hub flags (assessed, signposted, referred-onward, monitored,
        treatment-elsewhere) by month received."""
        ...
