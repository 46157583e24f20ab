"""The sections reports are made of. Each reads its figures (app.reports.figures: counted once,
by app.reports.projection) and lays them out as tables of months and a total. Both report
definitions (app.reports.definitions) are lists of these.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from app.cases.wellbeing import MEANINGFUL_CHANGE
from app.fhir.codes import FHIR_DATA_DIR
from app.fhir.equality import equality_items
from app.reports.figures import ByKey, Figures
from app.reports.projection import DURATION_BANDS, EDI_ITEMS, EVENT_ROWS
from app.reports.tables import (
    TOTAL,
    Cell,
    Row,
    Section,
    Table,
    columns_of,
    count_row,
    percent_row,
    percent_table,
)

NOT_RECORDED = "not-recorded"
NOT_RECORDED_LABEL = "Not recorded"
ACTIVE_STATES = ("received", "accepted", "in_progress", "on_hold")
STATUS_GROUPS = (
    ("active", "Active"),
    ("completed", "Complete"),
    ("discharged", "Discharged"),
    ("rejected", "Rejected by the service"),
    ("cancelled", "Cancelled by the referrer"),
)
SLOT_OUTCOMES = (
    ("attended", "Attended"),
    ("did_not_attend", "Did not attend (DNA)"),
    ("cancelled", "Cancelled"),
    ("rescheduled", "Rescheduled"),
    ("booked", "Still booked"),
)
GENDERS = (("female", "Female"), ("male", "Male"), ("other", "Other"), ("unknown", "Unknown"))
AGE_BANDS = (
    ("under-18", "Under 18"),
    ("18-24", "18-24"),
    ("25-34", "25-34"),
    ("35-44", "35-44"),
    ("45-54", "45-54"),
    ("55-64", "55-64"),
    ("65-74", "65-74"),
    ("75-plus", "75 and over"),
)
UNITS = (("individual", "Individuals"), ("team", "Teams"))
TOP_PROVIDERS = 10


@lru_cache(maxsize=16)
def code_labels(name: str) -> tuple[tuple[str, str], ...]:
    """(code, display) of a CodeSystem in fhir/, in its order."""
    document = orjson.loads((FHIR_DATA_DIR / f"CodeSystem-{name}.json").read_bytes())
    return tuple((c["code"], c["display"]) for c in document["concept"])


@dataclass
class Facts:
    """What the sections of one report share: its months and its figures."""

    figures: Figures
    months: tuple[str, ...]
    _referrals: Row | None = field(default=None)

    @property
    def columns(self) -> tuple[str, ...]:
        return columns_of(self.months)

    async def referrals(self) -> Row:
        """Referrals received, by month (the base of most percentages)."""
        if self._referrals is None:
            counts = await self.figures.referrals()
            self._referrals = count_row(TOTAL, "All referrals", self.months, counts)
        return self._referrals


SectionBuilder = Callable[[Facts], Awaitable[Section]]


# --- helpers -----------------------------------------------------------------------------------


def _recorded(counts: ByKey) -> ByKey:
    """Figures by code, with '' (nothing recorded) as NOT_RECORDED."""
    out: ByKey = defaultdict(dict)
    for key, by_month in counts.items():
        merged = out[key or NOT_RECORDED]
        for month, n in by_month.items():
            merged[month] = merged.get(month, 0) + n
    return out


def _with_unrecorded(
    labels: Sequence[tuple[str, str]], counts: Mapping[str, Mapping[str, int]]
) -> list[tuple[str, str]]:
    """The known codes, then any other value found (as itself), then 'not recorded'."""
    known = {code for code, _ in labels}
    others = sorted(k for k in counts if k not in known and k != NOT_RECORDED)
    return [*labels, *((k, k) for k in others), (NOT_RECORDED, NOT_RECORDED_LABEL)]


async def _referrals_by(facts: Facts, attribute: str) -> ByKey:
    """Referrals received in the period by month and by ``attribute``."""
    return _recorded(await facts.figures.referrals_by(attribute))


# --- activity ----------------------------------------------------------------------------------


async def activity(facts: Facts) -> Section:
    events = await facts.figures.events()
    referrals = await facts.referrals()
    rows = [
        Row("referrals", "Referrals", referrals.cells),
        count_row("registrations", "Registrations", facts.months, events.get("case.accepted", {})),
        count_row(
            "attended",
            "Attended appointments",
            facts.months,
            events.get("appointment.attended", {}),
        ),
        count_row(
            "prescriptions",
            "Social prescriptions",
            facts.months,
            events.get("prescription.created", {}),
        ),
    ]
    table = Table(
        id="activity",
        title="Activity",
        unit="count",
        columns=facts.columns,
        rows=tuple(rows),
        columns_add_up=True,
        chart=True,
        description="Referrals by the month received; registrations, attended appointments "
        "and social prescriptions by the month they happened.",
    )
    return Section("activity", "Activity by month", (table,))


async def referring_teams(facts: Facts) -> Section:
    counts = await _referrals_by(facts, "team")
    totals = {key: sum(by_month.values()) for key, by_month in counts.items()}
    labels = [
        (key, key)
        for key in sorted((k for k in counts if k != NOT_RECORDED), key=lambda k: (-totals[k], k))
    ]
    return await _breakdown_from_counts(
        facts, "referring-teams", "Referrals by referring team", "referring team", labels, counts
    )


async def _breakdown_from_counts(
    facts: Facts,
    section_id: str,
    title: str,
    row_title: str,
    labels: Sequence[tuple[str, str]],
    counts: Mapping[str, Mapping[str, int]],
    notes: tuple[str, ...] = (),
) -> Section:
    everyone = await facts.referrals()
    rows = _with_unrecorded(labels, counts)
    table = Table(
        id=f"{section_id}-count",
        title=f"Referrals by {row_title}",
        unit="count",
        columns=facts.columns,
        rows=(
            *(count_row(k, label, facts.months, counts.get(k, {})) for k, label in rows),
            Row(TOTAL, "All referrals", everyone.cells),
        ),
        columns_add_up=True,
        total_row=True,
        chart=True,
    )
    share = percent_table(
        f"{section_id}-percent", f"Referrals by {row_title} (% of referrals)", table, everyone
    )
    return Section(section_id, title, (table, share), notes)


async def reasons(facts: Facts) -> Section:
    by_domain, with_any = await facts.figures.reasons()
    everyone = await facts.referrals()
    labels = list(code_labels("reason-for-referral"))
    unmapped = {
        m: int(cell.value or 0) - with_any.get(m, 0)
        for m, cell in zip(facts.months, everyone.cells, strict=False)
    }
    rows = [count_row(code, label, facts.months, by_domain.get(code, {})) for code, label in labels]
    rows.append(
        count_row("no-mapped-reason", "No reason in the 22 domains", facts.months, unmapped)
    )
    counts = Table(
        id="reasons-count",
        title="Referrals with each reason for referral",
        unit="count",
        columns=facts.columns,
        rows=tuple(rows),
        columns_add_up=True,
        description="A referral may give several reasons: the rows do not add up.",
    )
    share = percent_table(
        "reasons-percent",
        "Reasons for referral (% of referrals with each domain)",
        counts,
        everyone,
        chart=True,
    )
    return Section("reasons", "Reasons for referral", (counts, share))


async def case_status(facts: Facts) -> Section:
    by_state: ByKey = defaultdict(dict)
    by_reason: ByKey = defaultdict(dict)
    for m, state, reason, count in await facts.figures.states():
        group = "active" if state in ACTIVE_STATES else state
        by_state[group][m] = by_state[group].get(m, 0) + int(count)
        if state == "discharged":
            key = reason or NOT_RECORDED
            by_reason[key][m] = by_reason[key].get(m, 0) + int(count)
    everyone = await facts.referrals()
    status = Table(
        id="case-status",
        title="Case status now, referrals received (by month of referral)",
        unit="count",
        columns=facts.columns,
        rows=(
            *(count_row(k, label, facts.months, by_state.get(k, {})) for k, label in STATUS_GROUPS),
            Row(TOTAL, "All referrals", everyone.cells),
        ),
        columns_add_up=True,
        total_row=True,
        chart=True,
        description="Active: received, accepted, in progress or on hold.",
    )
    reasons_known = [*code_labels("discharge-reason"), ("consent-withdrawn", "Consent withdrawn")]
    discharged = count_row(TOTAL, "All discharged", facts.months, by_state.get("discharged", {}))
    discharge = Table(
        id="discharge-reasons",
        title="Discharge reasons, by month of referral",
        unit="count",
        columns=facts.columns,
        rows=(
            *(
                count_row(k, label, facts.months, by_reason.get(k, {}))
                for k, label in _with_unrecorded(reasons_known, by_reason)
            ),
            discharged,
        ),
        columns_add_up=True,
        total_row=True,
    )
    by_registered: ByKey = defaultdict(dict)
    for m, state, _reason, count in await facts.figures.registered_states():
        group = "active" if state in ACTIVE_STATES else state
        by_registered[group][m] = by_registered[group].get(m, 0) + int(count)
    registered = await facts.figures.registered()
    status_registered = Table(
        id="case-status-registered",
        title="Case status now, people registered (by month of referral)",
        unit="count",
        columns=facts.columns,
        rows=(
            *(
                count_row(k, label, facts.months, by_registered.get(k, {}))
                for k, label in STATUS_GROUPS
            ),
            count_row(TOTAL, "All people registered", facts.months, registered),
        ),
        columns_add_up=True,
        total_row=True,
        description="The evaluation's cohort: people whose referral was registered (case "
        "accepted); a referral never registered is not among them.",
    )
    return Section("case-status", "Case status", (status, status_registered, discharge))


async def appointments(facts: Facts) -> Section:
    events = await facts.figures.events()
    kinds = [(t, label) for t, label in EVENT_ROWS if t.startswith("appointment.")]
    outcomes = Table(
        id="appointments",
        title="Appointment events, by the month each happened (scheduled: month booked)",
        unit="count",
        columns=facts.columns,
        rows=tuple(
            count_row(t.removeprefix("appointment."), label, facts.months, events.get(t, {}))
            for t, label in kinds
        ),
        columns_add_up=True,
        chart=True,
        description="Each event by the month it happened: scheduled by the month booked (the "
        "booking month), the others when attended, missed, cancelled or moved. The "
        "evaluation's count is the next table, by the month the appointment falls in.",
    )
    slots = await facts.figures.slots()
    held = Table(
        id="appointments-by-month-held",
        title="Appointments by the month they fall in",
        unit="count",
        columns=facts.columns,
        rows=(
            *(count_row(k, label, facts.months, slots.get(k, {})) for k, label in SLOT_OUTCOMES),
            count_row(
                TOTAL,
                "Appointments scheduled",
                facts.months,
                {
                    m: sum(slots.get(k, {}).get(m, 0) for k, _label in SLOT_OUTCOMES)
                    for m in facts.months
                },
            ),
        ),
        columns_add_up=True,
        total_row=True,
        chart=True,
        description="Each booked time by the month it falls in, with how it ended: scheduled = "
        "attended + did not attend + cancelled + rescheduled (+ still booked). A moved "
        "appointment counts as rescheduled at its old time and again at its new one.",
    )
    by_type, by_band = await facts.figures.attended()
    attended = count_row(
        TOTAL, "All attended", facts.months, events.get("appointment.attended", {})
    )
    types = Table(
        id="attended-by-type",
        title="Attended appointments by type",
        unit="count",
        columns=facts.columns,
        rows=(
            *(
                count_row(k, label, facts.months, by_type.get(k, {}))
                for k, label in code_labels("appointment-type")
            ),
            attended,
        ),
        columns_add_up=True,
        total_row=True,
        chart=True,
    )
    durations = Table(
        id="attended-by-duration",
        title="Attended appointments by length (15-minute bands; length not recorded)",
        unit="count",
        columns=facts.columns,
        rows=(
            *(count_row(b, b, facts.months, by_band.get(b, {})) for b in DURATION_BANDS),
            attended,
        ),
        columns_add_up=True,
        total_row=True,
        description="Minutes spent, as the attended event gives them; an attendance without "
        "them is in 'length not recorded' (the minutes booked are a plan, not a length).",
    )
    return Section("appointments", "Appointments", (held, outcomes, types, durations))


async def prescriptions(facts: Facts) -> Section:
    found = await facts.figures.prescriptions()
    by_category, people_by_category = found.by_category, found.people_by_category
    labels = code_labels("prescription-category")

    counts = Table(
        id="prescriptions-by-category",
        title="Social prescriptions by category",
        unit="count",
        columns=facts.columns,
        rows=(
            *(count_row(k, label, facts.months, by_category.get(k, {})) for k, label in labels),
            count_row(
                TOTAL,
                "All social prescriptions",
                facts.months,
                {m: sum(by_category[k].get(m, 0) for k in by_category) for m in facts.months},
            ),
        ),
        columns_add_up=True,
        total_row=True,
        chart=True,
    )
    people_rows = [
        count_row(
            k, label, facts.months, people_by_category.get(k, {}), found.people_totals.get(k, 0)
        )
        for k, label in labels
    ]
    everyone = count_row("any", "People prescribed", facts.months, found.people, found.people_total)
    people_table = Table(
        id="people-by-category",
        title="People prescribed, by category",
        unit="count",
        columns=facts.columns,
        rows=(*people_rows, everyone),
        description="One person may be prescribed in several categories and months: neither "
        "rows nor months add up.",
    )
    share = Table(
        id="people-by-category-percent",
        title="Social prescriptions by category (% of people prescribed)",
        unit="percent",
        columns=facts.columns,
        rows=tuple(percent_row(r.key, r.label, r, everyone) for r in people_rows),
        percent_of="people-by-category",
    )
    all_prescriptions = counts.rows[-1]
    mean = Table(
        id="prescriptions-per-person",
        title="Mean social prescriptions per person prescribed",
        unit="mean",
        columns=facts.columns,
        rows=(
            Row(
                "mean",
                "Mean per person",
                tuple(
                    Cell(
                        int(total.value or 0) / int(persons.value or 0) if persons.value else None,
                        base=int(persons.value or 0),
                    )
                    for total, persons in zip(all_prescriptions.cells, everyone.cells, strict=True)
                ),
            ),
        ),
    )
    providers = await _providers(facts)
    return Section(
        "prescriptions",
        "Social prescriptions",
        (counts, people_table, share, mean, *providers),
        notes=(
            "Prescriptions count in the month they were made (prescription.created), with "
            "their category and provider as they stand now.",
        ),
    )


async def _providers(facts: Facts) -> tuple[Table, Table]:
    by_provider = await facts.figures.providers()
    totals = {k: sum(v.values()) for k, v in by_provider.items()}
    top = sorted(totals, key=lambda k: (-totals[k], k))[:TOP_PROVIDERS]
    rest: dict[str, int] = defaultdict(int)
    for provider, by_month in by_provider.items():
        if provider not in top:
            for m, n in by_month.items():
                rest[m] += n
    all_by_month = {m: sum(v.get(m, 0) for v in by_provider.values()) for m in facts.months}
    everyone = count_row(TOTAL, "All social prescriptions", facts.months, all_by_month)
    rows = [count_row(p, p, facts.months, by_provider[p]) for p in top]
    if rest:
        rows.append(count_row("other-providers", "Other providers", facts.months, rest))
    counts = Table(
        id="providers",
        title=f"Top {TOP_PROVIDERS} providers",
        unit="count",
        columns=facts.columns,
        rows=(*rows, everyone),
        columns_add_up=True,
        total_row=True,
    )
    share = percent_table(
        "providers-percent",
        "Top providers (% of social prescriptions)",
        counts,
        everyone,
        chart=True,
    )
    return counts, share


async def wellbeing(facts: Facts) -> Section:
    """SWEMWBS matched pairs: each person's first and last score measured in the period."""
    names = ("pairs", "increased", "decreased", "unchanged", "improved", "declined")
    found = await facts.figures.wellbeing()
    counts, sums = found.counts, found.sums
    labels = {
        "pairs": "Matched pairs (people with a first and a last score)",
        "increased": "Score increased",
        "decreased": "Score decreased",
        "unchanged": "Score unchanged",
        "improved": f"Meaningful improvement (+{MEANINGFUL_CHANGE:g} or more)",
        "declined": f"Meaningful decline (-{MEANINGFUL_CHANGE:g} or more)",
    }
    rows = {name: count_row(name, labels[name], facts.months, counts[name]) for name in names}
    count_table = Table(
        id="swemwbs-pairs",
        title="SWEMWBS matched pairs",
        unit="count",
        columns=facts.columns,
        rows=tuple(rows.values()),
        columns_add_up=True,
        description="A pair counts in the month of its last score.",
    )
    pairs_row = rows["pairs"]
    share = Table(
        id="swemwbs-pairs-percent",
        title="SWEMWBS change (% of matched pairs)",
        unit="percent",
        columns=facts.columns,
        rows=tuple(percent_row(k, labels[k], rows[k], pairs_row) for k in names[1:]),
        percent_of="swemwbs-pairs",
        chart=True,
    )
    total_sum = sum(sums.values())
    mean_cells = [
        Cell(
            sums[m] / counts["pairs"][m] if counts["pairs"].get(m) else None,
            base=counts["pairs"].get(m, 0),
        )
        for m in facts.months
    ]
    pairs_total = sum(counts["pairs"].values())
    mean_cells.append(Cell(total_sum / pairs_total if pairs_total else None, base=pairs_total))
    mean = Table(
        id="swemwbs-mean-change",
        title="SWEMWBS mean change (metric points)",
        unit="mean",
        columns=facts.columns,
        rows=(Row("mean-change", "Mean change, last minus first", tuple(mean_cells)),),
    )
    return Section(
        "wellbeing",
        "Wellbeing (SWEMWBS)",
        (count_table, share, mean),
        notes=(
            "Only scores measured within the period are paired; a person with one score has no "
            "pair. Metric scores from the published SWEMWBS conversion table.",
        ),
    )


async def demographics(facts: Facts) -> Section:
    genders = await _referrals_by(facts, "gender")
    ages = await _referrals_by(facts, "age_band")
    everyone = await facts.referrals()
    registered = await facts.figures.registered()
    people = count_row(TOTAL, "All people registered", facts.months, registered)
    tables: list[Table] = []
    for table_id, title, labels, counts, total in (
        ("gender", "Gender (as referred), referrals received", GENDERS, genders, everyone),
        (
            "gender-registered",
            "Gender (as referred), people registered",
            GENDERS,
            _recorded(await facts.figures.registered_by("gender")),
            people,
        ),
        (
            "age-band",
            "Age band on the day of referral, referrals received",
            AGE_BANDS,
            ages,
            everyone,
        ),
        (
            "age-band-registered",
            "Age band on the day of referral, people registered",
            AGE_BANDS,
            _recorded(await facts.figures.registered_by("age_band")),
            people,
        ),
    ):
        rows = _with_unrecorded(labels, counts)
        tables.append(
            Table(
                id=table_id,
                title=title,
                unit="count",
                columns=facts.columns,
                rows=(
                    *(count_row(k, label, facts.months, counts.get(k, {})) for k, label in rows),
                    Row(TOTAL, total.label, total.cells),
                ),
                columns_add_up=True,
                total_row=True,
                chart=not table_id.endswith("-registered"),
            )
        )
    tables += await _equality_items(facts, everyone)
    return Section(
        "demographics",
        "Demographics",
        tuple(tables),
        notes=(
            "Equality and diversity items are what each person chose to give "
            "(demographics.recorded; the latest answer for each item).",
        ),
    )


async def _equality_items(facts: Facts, everyone: Row) -> list[Table]:
    values = await facts.figures.equality()
    people = {m: int(c.value or 0) for m, c in zip(facts.months, everyone.cells, strict=False)}
    tables: list[Table] = []
    recorded_rows: list[Row] = []
    displays = {item.key: item for item in equality_items()}
    for key, label in EDI_ITEMS:
        answers = values.get(key, {})
        recorded = {
            m: sum(by_month.get(m, 0) for by_month in answers.values()) for m in facts.months
        }
        unrecorded = {m: people.get(m, 0) - recorded[m] for m in facts.months}
        order = sorted(answers, key=lambda v: (-sum(answers[v].values()), v))
        tables.append(
            Table(
                id=f"edi-{key.replace('_', '-')}",
                title=label,
                unit="count",
                columns=facts.columns,
                rows=(
                    *(
                        count_row(v, displays[key].display(v), facts.months, answers[v])
                        for v in order
                    ),
                    count_row(NOT_RECORDED, NOT_RECORDED_LABEL, facts.months, unrecorded),
                    Row(TOTAL, "All referrals", everyone.cells),
                ),
                columns_add_up=True,
                total_row=True,
            )
        )
        recorded_rows.append(count_row(key, label, facts.months, recorded))
    counts = Table(
        id="edi-recorded-count",
        title="People for whom each equality item is recorded",
        unit="count",
        columns=facts.columns,
        rows=tuple(recorded_rows),
        columns_add_up=True,
    )
    share = percent_table(
        "edi-recorded",
        "Equality items recorded (% of people referred)",
        counts,
        everyone,
        chart=True,
    )
    return [counts, share, *tables]


async def waiting(facts: Facts) -> Section:
    """Days from referral (received) to first contact and to first attended appointment."""
    contact = await facts.figures.waits("contact")
    attended = await facts.figures.waits("attended")

    def statistic_row(key: str, label: str, found: Mapping[str, Any], fraction: float) -> Row:
        cells = []
        for column in facts.columns:
            n, values = found.get(column, (0, {}))
            cells.append(Cell(values.get(fraction), base=n))
        return Row(key, label, tuple(cells))

    days = Table(
        id="waiting-days",
        title="Days waited",
        unit="days",
        columns=facts.columns,
        rows=(
            statistic_row("contact-median", "Referral to first contact: median", contact, 0.5),
            statistic_row(
                "contact-p90", "Referral to first contact: 90th percentile", contact, 0.9
            ),
            statistic_row(
                "attended-median", "Referral to first attended appointment: median", attended, 0.5
            ),
            statistic_row(
                "attended-p90",
                "Referral to first attended appointment: 90th percentile",
                attended,
                0.9,
            ),
        ),
        description="Only people contacted (or seen) so far; by the month the referral was "
        "received.",
    )
    eligible, on_time = await facts.figures.first_contact_target()
    base = count_row("eligible", "Referrals (not rejected or cancelled)", facts.months, eligible)
    hit = count_row("within-target", "First contacted within target", facts.months, on_time)
    counts = Table(
        id="first-contact-target-count",
        title="First contacted within the service's target",
        unit="count",
        columns=facts.columns,
        rows=(hit, base),
        columns_add_up=True,
    )
    share = Table(
        id="first-contact-target",
        title="First contacted within the service's target (%)",
        unit="percent",
        columns=facts.columns,
        rows=(percent_row("within-target", "Within target", hit, base),),
        percent_of="first-contact-target-count",
        chart=True,
    )
    return Section(
        "waiting",
        "Waiting",
        (days, counts, share),
        notes=(
            "The target is each service's first_contact_target_days (7 unless set). Referrals "
            "rejected or cancelled are left out of the target figure.",
        ),
    )


# --- the staff mental-health hub monitoring dataset ---------------------------------------------


async def staff_referrals(facts: Facts) -> Section:
    units = await _referrals_by(facts, "unit")
    everyone = await facts.referrals()
    table = Table(
        id="staff-referrals",
        title="Referrals: individuals and teams",
        unit="count",
        columns=facts.columns,
        rows=(
            *(count_row(k, label, facts.months, units.get(k, {})) for k, label in UNITS),
            Row(TOTAL, "All referrals", everyone.cells),
        ),
        columns_add_up=True,
        total_row=True,
        chart=True,
    )
    return Section("referrals", "Referrals", (table,))


async def referral_sources(facts: Facts) -> Section:
    counts = await _referrals_by(facts, "source")
    return await _breakdown_from_counts(
        facts,
        "referral-sources",
        "Referrals by source",
        "source",
        code_labels("referral-source"),
        counts,
    )


async def staff_groups(facts: Facts) -> Section:
    counts = await _referrals_by(facts, "staff_group")
    return await _breakdown_from_counts(
        facts,
        "staff-groups",
        "Referrals by staff group",
        "staff group",
        code_labels("staff-group"),
        counts,
    )


async def assessment(facts: Facts) -> Section:
    """Assessed (an attended appointment) and what followed, by month of referral."""
    names = (
        ("assessed", "Assessed (at least one attended appointment)"),
        ("signposted", "Signposted (at least one social prescription)"),
        ("referred-onward", "Referred onward (case completed: referred on)"),
        ("monitored", "Monitored after assessment (seen again or wellbeing reviewed)"),
        ("treatment-elsewhere", "Accessing treatment elsewhere (discharged: no longer required)"),
    )
    counts = await facts.figures.assessment()
    everyone = await facts.referrals()
    table = Table(
        id="assessment",
        title="Assessment and what followed, by month of referral",
        unit="count",
        columns=facts.columns,
        rows=tuple(count_row(k, label, facts.months, counts.get(k, {})) for k, label in names),
        columns_add_up=True,
        chart=True,
        description="A person may be in several rows.",
    )
    share = percent_table(
        "assessment-percent", "Assessment and what followed (% of referrals)", table, everyone
    )
    return Section(
        "assessment",
        "Assessment and outcomes",
        (table, share),
        notes=(
            "The case-event vocabulary has no item for treatment already under way elsewhere; "
            "a person found to be in treatment elsewhere is discharged as no longer requiring "
            "the service, and is counted so here.",
        ),
    )
