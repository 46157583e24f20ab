"""The sections reports are made of. Each runs one or a few grouped queries (app.reports.queries)
and lays the results out as tables of months and a total. Both report definitions
(app.reports.definitions) are lists of these.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Integer, and_, case, cast, distinct, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases.models import Appointment, Case, CaseEvent, Prescription, Referral, WellbeingScore
from app.cases.wellbeing import MEANINGFUL_CHANGE
from app.directory.models import SocialPrescribingService
from app.fhir.codes import FHIR_DATA_DIR
from app.reports.projection import EVENT_ROWS, SEP
from app.reports.queries import (
    DURATION_BANDS,
    Scope,
    duration_band,
    grouped,
    month_key,
    percentiles,
)
from app.reports.readmodel import (
    ReadModel,
    pairs_in,
    people_once,
    wait_percentiles,
    within_target,
)
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
# The equality and diversity items of demographics.recorded (app.cases.schemas), in order.
EDI_ITEMS = (
    ("ethnicity", "Ethnicity"),
    ("sex", "Sex"),
    ("gender_identity", "Gender identity"),
    ("sexual_orientation", "Sexual orientation"),
    ("disability", "Disability"),
    ("religion", "Religion or belief"),
    ("age_band", "Age band (as the person gave it)"),
    ("carer", "Carer"),
    ("armed_forces", "Armed forces community"),
    ("first_language", "First language"),
)
UNITS = (("individual", "Individuals"), ("team", "Teams"))
TOP_PROVIDERS = 10
# A SWEMWBS change counts as none below half a hundredth (metric scores have two decimals).
_TOLERANCE = 0.005


@lru_cache(maxsize=16)
def code_labels(name: str) -> tuple[tuple[str, str], ...]:
    """(code, display) of a CodeSystem in fhir/, in its order."""
    document = orjson.loads((FHIR_DATA_DIR / f"CodeSystem-{name}.json").read_bytes())
    return tuple((c["code"], c["display"]) for c in document["concept"])


@dataclass
class Facts:
    """What several sections of one report share, asked for once."""

    session: AsyncSession
    scope: Scope
    months: tuple[str, ...]
    # The read model's counters for the period (app.reports.readmodel); None: live queries.
    model: ReadModel | None = field(default=None)
    _referrals: Row | None = field(default=None)

    @property
    def columns(self) -> tuple[str, ...]:
        return columns_of(self.months)

    async def referrals(self) -> Row:
        """Referrals received, by month (the base of most percentages)."""
        if self._referrals is None:
            counts = await _referrals_by(self, None)
            self._referrals = count_row(TOTAL, "All referrals", self.months, counts.get(TOTAL, {}))
        return self._referrals


SectionBuilder = Callable[[Facts], Awaitable[Section]]


# --- helpers -----------------------------------------------------------------------------------


def _nested(rows: Iterable[Any]) -> dict[str, dict[str, int]]:
    """(month, key, count) rows as {key: {month: count}}."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for month, key, count in rows:
        by_month = out[key if key is not None else NOT_RECORDED]
        m = month_key(month)
        by_month[m] = by_month.get(m, 0) + int(count)
    return out


def _with_unrecorded(
    labels: Sequence[tuple[str, str]], counts: Mapping[str, Mapping[str, int]]
) -> list[tuple[str, str]]:
    """The known codes, then any other value found (as itself), then 'not recorded'."""
    known = {code for code, _ in labels}
    others = sorted(k for k in counts if k not in known and k != NOT_RECORDED)
    return [*labels, *((k, k) for k in others), (NOT_RECORDED, NOT_RECORDED_LABEL)]


_REFERRAL_MEASURES = {
    None: "referrals",
    "referring_team": "team",
    "gender": "gender",
    "age_band": "age_band",
    "referral_unit": "unit",
    "referral_source": "source",
    "staff_group": "staff_group",
}


async def _referrals_by(facts: Facts, column: Any) -> dict[str, dict[str, int]]:
    """Referrals received in the period by month and by ``column`` (None: all, as TOTAL)."""
    if facts.model is not None:
        measure = _REFERRAL_MEASURES[None if column is None else column.key]
        return {
            (TOTAL if column is None else key or NOT_RECORDED): dict(by_month)
            for key, by_month in facts.model.measure(measure).items()
        }
    scope = facts.scope
    month = scope.month(Referral.created_at).label("month")
    key = (column if column is not None else literal(TOTAL)).label("key")
    query = (
        select(month, key, func.count())
        .where(*scope.referrals())
        .group_by(month, *([column] if column is not None else []))
    )
    return _nested(await grouped(facts.session, query))


# --- activity ----------------------------------------------------------------------------------

_EVENT_ROWS = EVENT_ROWS


async def _event_counts(facts: Facts) -> dict[str, dict[str, int]]:
    """Events by type and month of occurred_at (one query for every event-count figure)."""
    if facts.model is not None:
        return {key: dict(by_month) for key, by_month in facts.model.measure("event").items()}
    scope = facts.scope
    month = scope.month(CaseEvent.occurred_at).label("month")
    query = (
        scope.events(*(t for t, _ in _EVENT_ROWS))
        .add_columns(month, CaseEvent.type, func.count())
        .group_by(month, CaseEvent.type)
    )
    return _nested(await grouped(facts.session, query))


async def activity(facts: Facts) -> Section:
    events = await _event_counts(facts)
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
    counts = await _referrals_by(facts, Referral.referring_team)
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


async def _reason_counts(facts: Facts) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Referrals with each reason domain, by month; and referrals with any mapped domain."""
    if facts.model is not None:
        by_reason = {k: dict(v) for k, v in facts.model.measure("reason").items()}
        return by_reason, dict(facts.model.measure("reason_any").get("", {}))
    scope = facts.scope
    domain: Any
    if scope.postgresql:
        element = func.jsonb_array_elements(Referral.reasons).table_valued("value").alias("reason")
        domain = element.c.value.op("->>")("domain")
    else:
        element = func.json_each(Referral.reasons).table_valued("value").alias("reason")
        domain = func.json_extract(element.c.value, "$.domain")
    pairs = (
        select(
            Referral.id.label("id"),
            scope.month(Referral.created_at).label("month"),
            domain.label("domain"),
        )
        .select_from(Referral)
        .join(element, literal(True))
        .where(*scope.referrals(), domain.is_not(None))
        .distinct()
        .subquery()
    )
    by_domain = _nested(
        await grouped(
            facts.session,
            select(pairs.c.month, pairs.c.domain, func.count()).group_by(
                pairs.c.month, pairs.c.domain
            ),
        )
    )
    with_any = _nested(
        await grouped(
            facts.session,
            select(pairs.c.month, literal(TOTAL), func.count(distinct(pairs.c.id))).group_by(
                pairs.c.month
            ),
        )
    ).get(TOTAL, {})
    return by_domain, with_any


async def reasons(facts: Facts) -> Section:
    by_domain, with_any = await _reason_counts(facts)
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
    scope = facts.scope
    month = scope.month(Case.created_at).label("month")
    query = (
        select(month, Case.state, Case.status_reason, func.count())
        .where(*scope.cases())
        .group_by(month, Case.state, Case.status_reason)
    )
    found: list[Any]
    if facts.model is not None:
        found = [
            (month, state, reason or None, n)
            for (state, reason), month, n in facts.model.split("state")
        ]
    else:
        found = await grouped(facts.session, query)
    by_state: dict[str, dict[str, int]] = defaultdict(dict)
    by_reason: dict[str, dict[str, int]] = defaultdict(dict)
    for raw_month, state, reason, count in found:
        m = month_key(raw_month)
        group = "active" if state in ACTIVE_STATES else state
        by_state[group][m] = by_state[group].get(m, 0) + int(count)
        if state == "discharged":
            key = reason or NOT_RECORDED
            by_reason[key][m] = by_reason[key].get(m, 0) + int(count)
    everyone = await facts.referrals()
    status = Table(
        id="case-status",
        title="Case status now, by month of referral",
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
    return Section("case-status", "Case status", (status, discharge))


async def appointments(facts: Facts) -> Section:
    events = await _event_counts(facts)
    kinds = [(t, label) for t, label in _EVENT_ROWS if t.startswith("appointment.")]
    outcomes = Table(
        id="appointments",
        title="Appointments",
        unit="count",
        columns=facts.columns,
        rows=tuple(
            count_row(t.removeprefix("appointment."), label, facts.months, events.get(t, {}))
            for t, label in kinds
        ),
        columns_add_up=True,
        chart=True,
        description="Each by the month it happened: scheduled when booked, the others when "
        "attended, missed, cancelled or moved.",
    )
    scope = facts.scope
    month = scope.month(CaseEvent.occurred_at).label("month")
    minutes = func.coalesce(Appointment.attended_minutes, Appointment.minutes)
    band = duration_band(minutes).label("band")
    query = (
        scope.events("appointment.attended")
        .join(
            Appointment,
            and_(
                Appointment.case_id == CaseEvent.case_id,
                Appointment.external_id == scope.json_text(CaseEvent.data, "appointment_id"),
            ),
        )
        .add_columns(month, Appointment.appointment_type, band, func.count())
        .group_by(month, Appointment.appointment_type, band)
    )
    by_type: dict[str, dict[str, int]] = defaultdict(dict)
    by_band: dict[str, dict[str, int]] = defaultdict(dict)
    if facts.model is not None:
        by_type.update({k: dict(v) for k, v in facts.model.measure("attended_type").items()})
        for band_index, by_month in facts.model.measure("attended_band").items():
            by_band[DURATION_BANDS[int(band_index)]] = dict(by_month)
    else:
        for raw_month, kind, band_index, count in await grouped(facts.session, query):
            m = month_key(raw_month)
            by_type[kind][m] = by_type[kind].get(m, 0) + int(count)
            key = DURATION_BANDS[int(band_index)]
            by_band[key][m] = by_band[key].get(m, 0) + int(count)
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
        title="Attended appointments by length (15-minute bands)",
        unit="count",
        columns=facts.columns,
        rows=(
            *(count_row(b, b, facts.months, by_band.get(b, {})) for b in DURATION_BANDS),
            attended,
        ),
        columns_add_up=True,
        total_row=True,
        description="Minutes spent when the attended event gives them, else the minutes booked.",
    )
    return Section("appointments", "Appointments", (outcomes, types, durations))


async def prescriptions(facts: Facts) -> Section:
    scope = facts.scope
    month = scope.month(Prescription.prescribed_at).label("month")
    where = [*scope.during(Prescription.prescribed_at), *scope.case_of_scope(Prescription.case_id)]
    if facts.model is not None:
        by_category, people_by_category, people_totals, prescribed, prescribed_total = (
            _prescription_counts(facts.model)
        )
    else:
        (
            by_category,
            people_by_category,
            people_totals,
            prescribed,
            prescribed_total,
        ) = await _prescription_counts_live(facts, where, month)
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
        count_row(k, label, facts.months, people_by_category.get(k, {}), people_totals.get(k, 0))
        for k, label in labels
    ]
    everyone = count_row("any", "People prescribed", facts.months, prescribed, prescribed_total)
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
    providers = await _providers(facts, where, month)
    return Section(
        "prescriptions",
        "Social prescriptions",
        (counts, people_table, share, mean, *providers),
        notes=(
            "Prescriptions count in the month they were made (prescription.created), with "
            "their category and provider as they stand now.",
        ),
    )


_PrescriptionCounts = tuple[
    dict[str, dict[str, int]], dict[str, dict[str, int]], dict[str, int], dict[str, int], int
]


def _prescription_counts(model: ReadModel) -> _PrescriptionCounts:
    """As _prescription_counts_live, from the read model."""
    by_category = {k: dict(v) for k, v in model.measure("rx_category").items()}
    by_previous: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for key, by_month in model.measure("rx_people").items():
        category, previous = key.split(SEP)
        by_previous[category][previous] = by_month
    people_by_category: dict[str, dict[str, int]] = {}
    people_totals: dict[str, int] = {}
    for category, counts in by_previous.items():
        people_by_category[category], people_totals[category] = people_once(
            counts, model.first_month
        )
    prescribed, prescribed_total = people_once(model.measure("rx_people_any"), model.first_month)
    return by_category, people_by_category, people_totals, prescribed, prescribed_total


async def _prescription_counts_live(
    facts: Facts, where: list[Any], month: Any
) -> _PrescriptionCounts:
    """Prescriptions by category and month; people prescribed by category and month, by
    category over the period, by month, and over the period."""
    session = facts.session
    people = func.count(distinct(Prescription.case_id))
    by_category: dict[str, dict[str, int]] = defaultdict(dict)
    people_by_category: dict[str, dict[str, int]] = defaultdict(dict)
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
    prescribed: dict[str, int] = {}
    for raw_month, persons in await grouped(
        session, select(month, people).where(*where).group_by(month)
    ):
        prescribed[month_key(raw_month)] = int(persons)
    prescribed_total = int(await session.scalar(select(people).where(*where)) or 0)
    return by_category, people_by_category, people_totals, prescribed, prescribed_total


async def _providers(facts: Facts, where: list[Any], month: Any) -> tuple[Table, Table]:
    if facts.model is not None:
        by_provider = {k: dict(v) for k, v in facts.model.measure("rx_provider").items()}
    else:
        by_provider = _nested(
            await grouped(
                facts.session,
                select(month, Prescription.provider, func.count())
                .where(*where)
                .group_by(month, Prescription.provider),
            )
        )
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
    scope = facts.scope
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
                order_by=(WellbeingScore.measured_at.desc(), WellbeingScore.created_at.desc()),
            )
            .label("last_rank"),
            func.count().over(partition_by=WellbeingScore.case_id).label("n"),
        )
        .where(
            WellbeingScore.instrument == "SWEMWBS",
            *scope.during(WellbeingScore.measured_at),
            *scope.case_of_scope(WellbeingScore.case_id),
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
    month = scope.month(pairs.c.last_at).label("month")

    def flag(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    query = select(
        month,
        func.count(),
        func.sum(change),
        flag(change > _TOLERANCE),
        flag(change < -_TOLERANCE),
        flag(and_(change <= _TOLERANCE, change >= -_TOLERANCE)),
        flag(change >= MEANINGFUL_CHANGE - _TOLERANCE),
        flag(change <= -MEANINGFUL_CHANGE + _TOLERANCE),
    ).group_by(month)
    names = ("pairs", "increased", "decreased", "unchanged", "improved", "declined")
    counts: dict[str, dict[str, int]] = {name: {} for name in names}
    sums: dict[str, float] = {}
    if facts.model is not None:
        model = facts.model
        for name in names:
            for bounds, m, n in model.split(f"wb_{name}"):
                if pairs_in(bounds, model):
                    counts[name][m] = counts[name].get(m, 0) + n
        hundredths: dict[str, int] = defaultdict(int)
        for bounds, m, n in model.split("wb_change"):
            if pairs_in(bounds, model):
                hundredths[m] += n
        sums = {m: hundredths[m] / 100 for m in counts["pairs"]}
    else:
        for raw_month, n, total_change, *flags in await grouped(facts.session, query):
            m = month_key(raw_month)
            counts["pairs"][m] = int(n)
            sums[m] = float(total_change or 0.0)
            for name, value in zip(names[1:], flags, strict=True):
                counts[name][m] = int(value or 0)
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
    genders = await _referrals_by(facts, Referral.gender)
    ages = await _referrals_by(facts, Referral.age_band)
    everyone = await facts.referrals()
    tables: list[Table] = []
    for table_id, title, labels, counts in (
        ("gender", "Gender (as referred)", GENDERS, genders),
        ("age-band", "Age band on the day of referral", AGE_BANDS, ages),
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
                    Row(TOTAL, "All referrals", everyone.cells),
                ),
                columns_add_up=True,
                total_row=True,
                chart=True,
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
    scope = facts.scope
    if scope.postgresql:
        items = func.jsonb_each_text(CaseEvent.data).table_valued("key", "value").alias("item")
    else:
        items = func.json_each(CaseEvent.data).table_valued("key", "value").alias("item")
    latest = (
        select(
            scope.month(Case.created_at).label("month"),
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
            *scope.cases(),
            items.c.key.in_([key for key, _ in EDI_ITEMS]),
        )
        .subquery()
    )
    rows: list[Any]
    if facts.model is not None:
        rows = [(m, key, value, n) for (key, value), m, n in facts.model.split("edi")]
    else:
        rows = await grouped(
            facts.session,
            select(latest.c.month, latest.c.key, latest.c.value, func.count())
            .where(latest.c.rank == 1)
            .group_by(latest.c.month, latest.c.key, latest.c.value),
        )
    values: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for raw_month, key, value, count in rows:
        m = month_key(raw_month)
        values[key][str(value)][m] = values[key][str(value)].get(m, 0) + int(count)
    people = {m: int(c.value or 0) for m, c in zip(facts.months, everyone.cells, strict=False)}
    tables: list[Table] = []
    recorded_rows: list[Row] = []
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
                    *(count_row(v, v, facts.months, answers[v]) for v in order),
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
    scope = facts.scope
    session = facts.session
    month = scope.month(Case.created_at).label("month")
    to_contact = select(
        month, scope.days_between(Case.first_contact_at, Case.created_at).label("value")
    ).where(*scope.cases(), Case.first_contact_at.is_not(None))
    first_attended = (
        select(
            CaseEvent.case_id.label("case_id"),
            func.min(CaseEvent.occurred_at).label("at"),
        )
        .where(
            CaseEvent.type == "appointment.attended",
            # An appointment is never attended before its referral is received.
            CaseEvent.occurred_at >= scope.period.starts_at,
        )
        .group_by(CaseEvent.case_id)
        .subquery()
    )
    to_attended = (
        select(month, scope.days_between(first_attended.c.at, Case.created_at).label("value"))
        .join(first_attended, first_attended.c.case_id == Case.id)
        .where(*scope.cases())
    )
    if facts.model is not None:
        contact = await wait_percentiles(session, facts.model, "contact")
        attended = await wait_percentiles(session, facts.model, "attended_wait")
    else:
        contact = await percentiles(session, scope, to_contact)
        attended = await percentiles(session, scope, to_attended)

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
    within = case(
        (
            and_(
                Case.first_contact_at.is_not(None),
                scope.days_between(Case.first_contact_at, Case.created_at)
                <= cast(SocialPrescribingService.first_contact_target_days, Integer),
            ),
            1,
        ),
        else_=0,
    )
    if facts.model is not None:
        eligible = dict(facts.model.measure("eligible").get("", {}))
        on_time = await within_target(session, facts.model)
    else:
        rows = await grouped(
            session,
            select(month, func.count(), func.sum(within))
            .join(SocialPrescribingService, SocialPrescribingService.id == Case.service_id)
            .where(*scope.cases(), Case.state.not_in(("rejected", "cancelled")))
            .group_by(month),
        )
        eligible = {month_key(m): int(n) for m, n, _ in rows}
        on_time = {month_key(m): int(w or 0) for m, _, w in rows}
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
    units = await _referrals_by(facts, Referral.referral_unit)
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
    counts = await _referrals_by(facts, Referral.referral_source)
    return await _breakdown_from_counts(
        facts,
        "referral-sources",
        "Referrals by source",
        "source",
        code_labels("referral-source"),
        counts,
    )


async def staff_groups(facts: Facts) -> Section:
    counts = await _referrals_by(facts, Referral.staff_group)
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
    scope = facts.scope
    since = scope.period.starts_at
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

    month = scope.month(Case.created_at).label("month")
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
        .where(*scope.cases())
        .group_by(month)
    )
    names = (
        ("assessed", "Assessed (at least one attended appointment)"),
        ("signposted", "Signposted (at least one social prescription)"),
        ("referred-onward", "Referred onward (case completed: referred on)"),
        ("monitored", "Monitored after assessment (seen again or wellbeing reviewed)"),
        ("treatment-elsewhere", "Accessing treatment elsewhere (discharged: no longer required)"),
    )
    counts: dict[str, dict[str, int]] = {key: {} for key, _ in names}
    if facts.model is not None:
        start = facts.model.first_month
        for (flag_name, threshold), m, n in facts.model.split("assess"):
            if threshold == "" or threshold >= start:
                counts[flag_name][m] = counts[flag_name].get(m, 0) + n
    else:
        for raw_month, *values in await grouped(facts.session, query):
            for (key, _), value in zip(names, values, strict=True):
                counts[key][month_key(raw_month)] = int(value or 0)
    everyone = await facts.referrals()
    table = Table(
        id="assessment",
        title="Assessment and what followed, by month of referral",
        unit="count",
        columns=facts.columns,
        rows=tuple(count_row(k, label, facts.months, counts[k]) for k, label in names),
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
