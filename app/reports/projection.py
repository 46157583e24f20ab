"""Keeps the reporting read model (app.reports.models) in step with the cases, and is the one
place a report figure is computed: ``contributions``, a pure function of one case's rows.

Every write to a case, its referral, events or records queues the case in
``report_pending_cases`` (app.cases.after_write; one insert, on no row shared with other cases,
so concurrent intakes never wait for each other and the referral stays fast). ``drain`` later
works out each queued case's contributions to the counters again from its rows and adds only the
difference to ``report_counts``, a batch at a time, so counter rows are written once per batch
rather than once per request. Reports drain everything queued first, in their own transaction, so
they are exact when produced; the background (app.worker) drains every second so the queue stays
short. A backdated event, a changed prescription or a later state lands in the right month, and
first/last are by occurred_at, whatever order things arrived in.

A contribution is keyed by the month an instant falls in (``month_of``): the counters are by
calendar month. A report of a period that is not whole months runs the same function with a
``period_bucket``, which puts instants outside the period in a bucket before or after every
month (app.reports.readmodel). ``MODEL_VERSION`` names the counting: bump it with any change to
what ``contributions`` gives, and `spbridge reports rebuild` (app.reports.rebuild) takes every
case into the model again.

Months are UTC calendar months. A referral's figures count in the month it was received (its
cohort); events, prescriptions and scores in the month they happened (app.reports.period).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import String, Text, any_, bindparam, case, cast, delete, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.cases.events import COUNTED_ROWS
from app.cases.models import (
    Appointment,
    Case,
    CaseEvent,
    Prescription,
    Referral,
    ReportPendingCase,
    WellbeingScore,
)
from app.cases.wellbeing import MEANINGFUL_CHANGE
from app.db import table_of
from app.fhir.equality import equality_items
from app.reports.models import ReportCaseFact, ReportCount
from app.reports.period import Period

# The version of the counting below: bump it whenever what ``contributions`` gives changes (a
# figure added, fixed or keyed differently), so that every process and `spbridge reports
# rebuild` know the stored model is older than the code (app.reports.version).
# 2 (issue 18): attended without a recorded length in its own band; appointments by the month
# they fall in ("slot"); the people registered as a cohort of their own ("reg_*").
MODEL_VERSION = 2

SEP = "\x1f"
# Event types counted by the month they happened, with their labels: the event registry says.
EVENT_ROWS = COUNTED_ROWS
COUNTED_EVENTS = tuple(t for t, _ in EVENT_ROWS)
_COUNTED = frozenset(COUNTED_EVENTS)
# The equality and diversity items of demographics.recorded, in order, with their labels in the
# reports: data, from fhir/Questionnaire-equality-monitoring.json (app.fhir.equality).
EDI_ITEMS = tuple((item.key, item.label) for item in equality_items())
_EDI_KEYS = frozenset(key for key, _ in EDI_ITEMS)
# Attended appointments by length: 15-minute bands (``duration_band`` gives the index), and
# last, attended with no length recorded (a planned length is not an attended length).
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
    "length not recorded",
)
NOT_RECORDED_BAND = len(DURATION_BANDS) - 1
_LOADED_EVENTS = (*COUNTED_EVENTS, "case.accepted", "demographics.recorded")
_APPOINTMENT_EVENTS = tuple(t for t in COUNTED_EVENTS if t.startswith("appointment."))
_BOOKINGS = ("appointment.booked", "appointment.rescheduled")
# A SWEMWBS change counts as none below half a hundredth (metric scores have two decimals).
CHANGE_TOLERANCE = 0.005
_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US
# Waits longer than this are bucketed by whole days (still 24 buckets a day apart).
_HOURLY_UP_TO_DAYS = 60
_BATCH = 2000
# The buckets of instants before and after a report's period (``period_bucket``): they sort
# before and after every month, as the instants do.
BEFORE = "0000-00"
AFTER = "9999-99"

Contributions = dict[str, int]
# Where an instant counts: its month, or BEFORE / AFTER a report's period.
Bucket = Callable[[dt.datetime], str]


def month_of(instant: dt.datetime) -> str:
    utc = instant.astimezone(dt.UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def period_bucket(period: Period) -> Bucket:
    """Months for instants inside ``period``, BEFORE and AFTER for the others. For a case with
    no instant in the parts of the period's first and last months outside it, this orders and
    groups its instants as ``month_of`` does as far as the period can tell (every month before
    the period is BEFORE, after it AFTER), so its contributions then are the stored ones."""
    starts_at, ends_at = period.starts_at, period.ends_at

    def bucket(instant: dt.datetime) -> str:
        if instant < starts_at:
            return BEFORE
        if instant >= ends_at:
            return AFTER
        return month_of(instant)

    return bucket


def wait_bucket(later: dt.datetime, earlier: dt.datetime) -> int:
    """A wait in whole hours, rounded up (whole days times 24 past 60 days): ordered as the waits,
    and a wait is within n days exactly when its bucket is at most 24 n."""
    micro = (later - earlier) // dt.timedelta(microseconds=1)
    hours = -(-micro // _HOUR_US)
    if hours <= _HOURLY_UP_TO_DAYS * 24:
        return hours
    return -(-micro // _DAY_US) * 24


def duration_band(minutes: int | None) -> int:
    """The index in DURATION_BANDS: 0 for 1-15 minutes, 1 for 16-30 … 8 for more than 120,
    NOT_RECORDED_BAND when no length was recorded (0 for 0 minutes, as SQL's integer division
    truncating towards zero gave)."""
    if minutes is None:
        return NOT_RECORDED_BAND
    if minutes > 120:
        return 8
    return int((minutes - 1) / 15)


def days_between(later: dt.datetime, earlier: dt.datetime) -> float:
    """A wait in days, as the reports show it."""
    return (later - earlier) / dt.timedelta(days=1)


def entry(month: str, measure: str, key: str = "") -> str:
    return f"{month}{SEP}{measure}{SEP}{key}"


# --- one case's contributions --------------------------------------------------------------------


@dataclass
class CaseRows:
    """Everything of one case the counters depend on."""

    case_id: str
    service_id: str
    received_at: dt.datetime
    state: str
    status_reason: str | None
    first_contact_at: dt.datetime | None
    team: str | None
    gender: str | None
    age_band: str | None
    unit: str | None
    source: str | None
    staff_group: str | None
    reasons: Any
    # (type, occurred_at, seq, data)
    events: list[tuple[str, dt.datetime, int, Any]]
    # external_id -> (appointment_type, minutes attended, None when not recorded)
    appointments: dict[str, tuple[str, int | None]]
    # (prescribed_at, category, provider)
    prescriptions: list[tuple[dt.datetime, str, str]]
    # (instrument, stage, measured_at, created_at, metric_score)
    scores: list[tuple[str, str, dt.datetime, dt.datetime, float]]


@dataclass
class Fact:
    contributions: Contributions
    first_attended_at: dt.datetime | None
    contact_bucket: int | None
    attended_bucket: int | None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _threshold(month: str | None, cohort: str) -> str | None:
    """A flag that holds for reports starting in ``month`` or earlier: '' when it holds for
    every report the case is in (reports start no later than its cohort month), None never."""
    if month is None:
        return None
    return "" if month >= cohort else month


def contributions(rows: CaseRows, bucket: Bucket = month_of) -> Fact:
    """What one case adds to the counters, worked out from its rows alone; each instant counts
    in its ``bucket`` (by default its month: what the counters hold)."""
    out: dict[str, int] = defaultdict(int)
    cohort = bucket(rows.received_at)

    def add(month: str, measure: str, key: str = "", n: int = 1) -> None:
        out[entry(month, measure, key)] += n

    # The referral, in the month received.
    add(cohort, "referrals")
    add(cohort, "team", _text(rows.team))
    add(cohort, "gender", _text(rows.gender))
    add(cohort, "age_band", _text(rows.age_band))
    add(cohort, "unit", _text(rows.unit))
    add(cohort, "source", _text(rows.source))
    add(cohort, "staff_group", _text(rows.staff_group))
    domains = {
        str(r["domain"])
        for r in (rows.reasons or [])
        if isinstance(r, dict) and r.get("domain") is not None
    }
    for domain in domains:
        add(cohort, "reason", domain)
    if domains:
        add(cohort, "reason_any")
    add(cohort, "state", f"{rows.state}{SEP}{_text(rows.status_reason)}")

    events = sorted(rows.events, key=lambda e: (e[1], e[2]))
    # Equality items: the latest answer to each (by occurred_at, then seq).
    latest: dict[str, str] = {}
    attended: list[dt.datetime] = []
    # Appointments by the month they fall in: each booked time ("slot") ends attended, not
    # attended, cancelled or moved (rescheduled: its new time is a slot of its own), or is
    # still booked.
    slots: dict[str, dt.datetime] = {}
    registered = False
    for kind, occurred_at, _seq, data in events:
        if kind == "case.accepted":
            registered = True
        if kind.startswith("appointment."):
            _slot(kind, occurred_at, data, slots, add, bucket)
        if kind == "demographics.recorded":
            for item, value in (data or {}).items():
                if item in _EDI_KEYS:
                    latest[item] = str(value)
            continue
        if kind not in _COUNTED:
            continue
        month = bucket(occurred_at)
        add(month, "event", kind)
        if kind == "appointment.attended":
            attended.append(occurred_at)
            found = rows.appointments.get(_text((data or {}).get("appointment_id")))
            if found is not None:
                kind_of, minutes = found
                add(month, "attended_type", kind_of)
                add(month, "attended_band", str(duration_band(minutes)))
    for item, value in latest.items():
        add(cohort, "edi", f"{item}{SEP}{value}")
    for start in slots.values():
        add(bucket(start), "slot", "booked")
    if registered:
        # The people registered (the evaluation's cohort), by the month their referral came.
        add(cohort, "registered")
        add(cohort, "reg_gender", _text(rows.gender))
        add(cohort, "reg_age_band", _text(rows.age_band))
        add(cohort, "reg_state", f"{rows.state}{SEP}{_text(rows.status_reason)}")

    # Waits, by the month received.
    contact_bucket = attended_bucket = None
    first_attended_at = None
    if rows.first_contact_at is not None:
        contact_bucket = wait_bucket(rows.first_contact_at, rows.received_at)
        eligible = rows.state not in ("rejected", "cancelled")
        add(cohort, "contact", f"{contact_bucket}{SEP}{int(eligible)}")
    if rows.state not in ("rejected", "cancelled"):
        add(cohort, "eligible")
    # Attended since the start of the month received (a report never starts later).
    seen = [at for at in attended if bucket(at) >= cohort]
    if seen:
        first_attended_at = min(seen)
        attended_bucket = wait_bucket(first_attended_at, rows.received_at)
        add(cohort, "attended_wait", str(attended_bucket))

    # The staff-hub assessment flags. Each holds for a report starting in a month up to its
    # threshold (records count from the report's start).
    attended_months = sorted((bucket(at) for at in attended), reverse=True)
    reviewed = [
        bucket(measured)
        for _instrument, stage, measured, _created, _score in rows.scores
        if stage in ("review", "end")
    ]
    prescribed = [bucket(at) for at, _category, _provider in rows.prescriptions]
    assessed = attended_months[0] if attended_months else None
    again = max(
        [*attended_months[1:2], *(sorted(reviewed)[-1:])],
        default=None,
    )
    flags: dict[str, str | None] = {
        "assessed": assessed,
        "signposted": max(prescribed, default=None),
        "monitored": min(assessed, again) if assessed is not None and again is not None else None,
    }
    for flag, flag_month in flags.items():
        threshold = _threshold(flag_month, cohort)
        if threshold is not None:
            add(cohort, "assess", f"{flag}{SEP}{threshold}")
    if rows.state == "completed" and rows.status_reason == "referred-on":
        add(cohort, "assess", f"referred-onward{SEP}")
    if rows.state == "discharged" and rows.status_reason == "no-longer-required":
        add(cohort, "assess", f"treatment-elsewhere{SEP}")

    # Social prescriptions, by the month made; people by (category, month) with the month of
    # the person's previous prescription in that category, so that people over any run of
    # months can be counted once each.
    months_by_category: dict[str, set[str]] = defaultdict(set)
    any_months: set[str] = set()
    for at, category, provider in rows.prescriptions:
        month = bucket(at)
        add(month, "rx_category", category)
        add(month, "rx_provider", provider)
        months_by_category[category].add(month)
        any_months.add(month)
    for category, months in months_by_category.items():
        previous = ""
        for month in sorted(months):
            add(month, "rx_people", f"{category}{SEP}{previous}")
            previous = month
    previous = ""
    for month in sorted(any_months):
        add(month, "rx_people_any", previous)
        previous = month

    _wellbeing(rows, add, bucket)
    return Fact(
        {k: v for k, v in out.items() if v},
        first_attended_at,
        contact_bucket,
        attended_bucket,
    )


def _instant(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value)).astimezone(dt.UTC) if value else None
    except ValueError:
        return None


def _slot(
    kind: str,
    occurred_at: dt.datetime,
    data: Any,
    slots: dict[str, dt.datetime],
    add: Any,
    bucket: Bucket,
) -> None:
    """One appointment event's part in the appointments by the month they fall in."""
    data = data or {}
    name = _text(data.get("appointment_id"))
    if kind in ("appointment.booked", "appointment.rescheduled"):
        start = _instant(data.get("start"))
        held = slots.pop(name, None)
        if kind == "appointment.rescheduled" and held is not None:
            add(bucket(held), "slot", "rescheduled")
        if start is not None:
            slots[name] = start
        return
    # Attended, did not attend, cancelled: the slot it ends (its booked time), or when it
    # happened for an appointment whose booking is not held.
    add(bucket(slots.pop(name, occurred_at)), "slot", kind.removeprefix("appointment."))


def _wellbeing(rows: CaseRows, add: Any, bucket: Bucket) -> None:
    """SWEMWBS pairs: for each run of months a report could cover, the first and last score of
    the case within it. Keyed by the months the run's start must fall after / on or before, and
    the month its end must fall before: lo, first, hi (each '' for no bound)."""
    scores = sorted(
        (s for s in rows.scores if s[0] == "SWEMWBS"),
        key=lambda s: (s[2], s[3]),
    )
    if len(scores) < 2:
        return
    months = sorted({bucket(s[2]) for s in scores})
    by_month = [bucket(s[2]) for s in scores]
    for a, first_month in enumerate(months):
        lo = months[a - 1] if a > 0 else ""
        for b in range(a, len(months)):
            last_month = months[b]
            inside = [
                s for s, m in zip(scores, by_month, strict=True) if first_month <= m <= last_month
            ]
            if len(inside) < 2:
                continue
            hi = months[b + 1] if b + 1 < len(months) else ""
            change = inside[-1][4] - inside[0][4]
            bounds = f"{lo}{SEP}{first_month}{SEP}{hi}"
            add(last_month, "wb_pairs", bounds)
            add(last_month, "wb_change", bounds, round(change * 100))
            for flag, holds in (
                ("wb_increased", change > CHANGE_TOLERANCE),
                ("wb_decreased", change < -CHANGE_TOLERANCE),
                ("wb_unchanged", -CHANGE_TOLERANCE <= change <= CHANGE_TOLERANCE),
                ("wb_improved", change >= MEANINGFUL_CHANGE - CHANGE_TOLERANCE),
                ("wb_declined", change <= -MEANINGFUL_CHANGE + CHANGE_TOLERANCE),
            ):
                if holds:
                    add(last_month, flag, bounds)


# --- loading cases and writing the difference -----------------------------------------------

Executor = Session | Connection


def among(executor: Executor, column: Any, ids: Sequence[str]) -> Any:
    """``column IN ids``; on PostgreSQL one array parameter (= ANY), which saves compiling and
    planning a parameter per id for every batch."""
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    if bind.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=ARRAY(String)))
    return column.in_(ids)


def load(executor: Executor, case_ids: Sequence[str]) -> list[CaseRows]:
    if not case_ids:
        return []
    events: dict[str, list[tuple[str, dt.datetime, int, Any]]] = defaultdict(list)
    # Of the event bodies, only what is counted: decoding every body would cost more than the
    # rest of the load. JSON comes as text, for orjson (several times faster than the driver's).
    answers = case((CaseEvent.type == "demographics.recorded", cast(CaseEvent.data, Text)))
    appointment = case(
        (CaseEvent.type.in_(_APPOINTMENT_EVENTS), CaseEvent.data["appointment_id"].as_string())
    )
    start = case((CaseEvent.type.in_(_BOOKINGS), CaseEvent.data["start"].as_string()))
    for case_id, kind, occurred_at, seq, items, appointment_id, starts in executor.execute(
        select(
            CaseEvent.case_id,
            CaseEvent.type,
            CaseEvent.occurred_at,
            CaseEvent.seq,
            answers,
            appointment,
            start,
        ).where(among(executor, CaseEvent.case_id, case_ids), CaseEvent.type.in_(_LOADED_EVENTS))
    ):
        if appointment_id is not None:
            data: Any = {"appointment_id": appointment_id, "start": starts}
        else:
            data = None if items is None else orjson.loads(items)
        events[case_id].append((kind, occurred_at, seq, data))
    appointments: dict[str, dict[str, tuple[str, int | None]]] = defaultdict(dict)
    for case_id, external_id, kind, _minutes, attended in executor.execute(
        select(
            Appointment.case_id,
            Appointment.external_id,
            Appointment.appointment_type,
            Appointment.minutes,
            Appointment.attended_minutes,
        ).where(among(executor, Appointment.case_id, case_ids))
    ):
        appointments[case_id][external_id] = (kind, attended)
    prescriptions: dict[str, list[tuple[dt.datetime, str, str]]] = defaultdict(list)
    for case_id, at, category, provider in executor.execute(
        select(
            Prescription.case_id,
            Prescription.prescribed_at,
            Prescription.category,
            Prescription.provider,
        ).where(among(executor, Prescription.case_id, case_ids))
    ):
        prescriptions[case_id].append((at, category, provider))
    scores: dict[str, list[tuple[str, str, dt.datetime, dt.datetime, float]]] = defaultdict(list)
    for case_id, instrument, stage, measured, created, metric in executor.execute(
        select(
            WellbeingScore.case_id,
            WellbeingScore.instrument,
            WellbeingScore.stage,
            WellbeingScore.measured_at,
            WellbeingScore.created_at,
            WellbeingScore.metric_score,
        ).where(among(executor, WellbeingScore.case_id, case_ids))
    ):
        scores[case_id].append((instrument, stage, measured, created, float(metric)))
    cases = executor.execute(
        select(
            Case.id,
            Case.service_id,
            Case.created_at,
            Case.state,
            Case.status_reason,
            Case.first_contact_at,
            Referral.referring_team,
            Referral.gender,
            Referral.age_band,
            Referral.referral_unit,
            Referral.referral_source,
            Referral.staff_group,
            cast(Referral.reasons, Text),
        )
        .join(Referral, Referral.id == Case.referral_id)
        .where(among(executor, Case.id, case_ids))
    )
    return [
        CaseRows(
            case_id=case_id,
            service_id=service_id,
            received_at=received_at,
            state=state,
            status_reason=status_reason,
            first_contact_at=first_contact_at,
            team=team,
            gender=gender,
            age_band=age_band,
            unit=unit,
            source=source,
            staff_group=staff_group,
            reasons=None if reasons is None else orjson.loads(reasons),
            events=events.get(case_id, []),
            appointments=appointments.get(case_id, {}),
            prescriptions=prescriptions.get(case_id, []),
            scores=scores.get(case_id, []),
        )
        for (
            case_id,
            service_id,
            received_at,
            state,
            status_reason,
            first_contact_at,
            team,
            gender,
            age_band,
            unit,
            source,
            staff_group,
            reasons,
        ) in cases
    ]


def _insert_of(executor: Executor) -> Any:
    """The dialect's INSERT, which has ON CONFLICT."""
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    return pg_insert if bind.dialect.name == "postgresql" else sqlite_insert


def _add_counts(executor: Executor, deltas: dict[tuple[str, str, str], int]) -> None:
    """Add ``deltas`` ({(service, team, entry): n}) to the counters, in key order (two
    transactions never wait for each other's rows in opposite orders)."""
    rows = []
    for (service_id, team, key), n in sorted(deltas.items()):
        if n:
            month, measure, item = key.split(SEP, 2)
            rows.append(
                {
                    "service_id": service_id,
                    "month": month,
                    "measure": measure,
                    "key": item,
                    "team": team,
                    "n": n,
                }
            )
    table = table_of(ReportCount)
    if not rows:
        return
    statement = _insert_of(executor)(table)
    statement = statement.on_conflict_do_update(
        index_elements=["service_id", "month", "measure", "key", "team"],
        set_={"n": table.c.n + statement.excluded.n},
    )
    for start in range(0, len(rows), 1000):
        executor.execute(statement, rows[start : start + 1000])


def refresh(
    executor: Executor,
    case_ids: Iterable[str],
    *,
    deltas: dict[tuple[str, str, str], int] | None = None,
) -> None:
    """Work these cases' contributions out again and add the difference to the counters
    (``deltas``: add the differences there instead, for the caller to write once)."""
    ids = sorted(set(case_ids))
    if not ids:
        return
    before: dict[str, tuple[str, str, dict[str, int]]] = {}
    for case_id, service_id, team, stored in executor.execute(
        select(
            ReportCaseFact.case_id,
            ReportCaseFact.service_id,
            ReportCaseFact.team,
            ReportCaseFact.contributions,
        ).where(among(executor, ReportCaseFact.case_id, ids))
    ):
        before[case_id] = (service_id, team, stored or {})
    pending: dict[tuple[str, str, str], int] = defaultdict(int) if deltas is None else deltas
    facts: list[dict[str, Any]] = []
    for rows in load(executor, ids):
        fact = contributions(rows)
        team = _text(rows.team)
        old_service, old_team, old = before.pop(rows.case_id, (rows.service_id, team, {}))
        for key, n in old.items():
            pending[(old_service, old_team, key)] -= int(n)
        for key, n in fact.contributions.items():
            pending[(rows.service_id, team, key)] += n
        facts.append(
            {
                "case_id": rows.case_id,
                "service_id": rows.service_id,
                "team": team,
                "received_at": rows.received_at,
                "first_contact_at": rows.first_contact_at,
                "first_attended_at": fact.first_attended_at,
                "contact_bucket": fact.contact_bucket,
                "attended_bucket": fact.attended_bucket,
                "contributions": fact.contributions,
            }
        )
    # A case no longer there (never in practice: cases are not deleted) takes its share away.
    for case_id, (service_id, team, old) in before.items():
        for key, n in old.items():
            pending[(service_id, team, key)] -= int(n)
        executor.execute(delete(ReportCaseFact).where(ReportCaseFact.case_id == case_id))
    if facts:
        table = table_of(ReportCaseFact)
        statement = _insert_of(executor)(table)
        statement = statement.on_conflict_do_update(
            index_elements=["case_id"],
            set_={name: statement.excluded[name] for name in facts[0] if name != "case_id"},
        )
        for start in range(0, len(facts), 500):
            executor.execute(statement, facts[start : start + 500])
    if deltas is None:
        _add_counts(executor, pending)


def take(executor: Executor, case_ids: Sequence[str]) -> None:
    """Take these queued cases into the read model and off the queue, in the caller's
    transaction, which must hold their queue rows (``drain`` locks them; a rebuild queues them
    itself), so no other transaction takes the same case at the same time."""
    # One upsert of the counters for the whole batch: the reason to batch.
    deltas: dict[tuple[str, str, str], int] = defaultdict(int)
    for start in range(0, len(case_ids), _BATCH):
        refresh(executor, case_ids[start : start + _BATCH], deltas=deltas)
    _add_counts(executor, deltas)
    for start in range(0, len(case_ids), 1000):
        executor.execute(
            delete(ReportPendingCase).where(
                ReportPendingCase.case_id.in_(case_ids[start : start + 1000])
            )
        )


def drain(executor: Executor, limit: int | None = None, *, wait: bool = False) -> int:
    """Take up to ``limit`` queued cases (all when None) into the read model and off the queue,
    in the caller's transaction; returns how many. On PostgreSQL the queued rows are locked:
    the background skips those another drain holds; a report (``wait``) waits for them, so
    every case queued before it started is in the counters it then reads. SQLite's write lock
    already lets one drain run at a time."""
    query = select(ReportPendingCase.case_id).order_by(ReportPendingCase.case_id)
    if limit is not None:
        query = query.limit(limit)
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    if bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=not wait)
    ids = list(executor.scalars(query))
    if ids:
        take(executor, ids)
    return len(ids)
