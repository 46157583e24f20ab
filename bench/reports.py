"""Reports benchmark: the activity report for a year over 1,000,000 referrals on PostgreSQL.

It makes a fresh database (``--database``, default ``spbridge_bench_reports``), migrates it, and
fills it with bulk SQL (``generate_series``; never the API): ``--referrals`` referrals (default
1,000,000) received evenly over ``--months`` months (default 24, from January 2024) by one
service, with their cases, case events, appointments, social prescriptions and SWEMWBS scores in
the pilot's proportions (about 95% registered, 1.2 appointments and 1.4 prescriptions a person,
one appointment in five not attended, half with a first SWEMWBS score and one in five a second,
60% completed / 30% discharged / 10% still open). The rows go in past the domain, so the
reporting read model is then filled by ``app.reports.rebuild`` (`spbridge reports rebuild`, what
an operator runs on an installation whose model is older than the code; ``--reuse`` of a kept
database migrates it and rebuilds the model only if its version is not the code's).
Then it runs the activity report
(app.reports.service.run_report, then the JSON document, as the API does) for the last twelve
months ``--runs`` times in one session and prints each time; the target (issue 7) is under 2 s.
The staff-hub report is timed once too. Then the same for a period that is not whole months
(``--partial``, default the last twelve months less their first 14 days and last 11), which the
read model answers by working out again the cases near the cuts. ``--compare`` also runs every
report through the old live SQL (tests/reports/oracle.py), with and without a team, and checks
that the figures are the same. The database is dropped at the end (unless ``--keep``), also on
an error.

    .venv/bin/python bench/reports.py [--referrals 1000000] [--months 24] [--runs 5] [--record]
        [--keep] [--reuse] [--compare]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cases.wellbeing import METRIC_SCORES  # noqa: E402
from app.db import Database, transaction  # noqa: E402
from app.migrate import upgrade_async  # noqa: E402
from app.reports import readmodel, service, version  # noqa: E402
from app.reports.definitions import ACTIVITY, STAFF_HUB, ReportDefinition  # noqa: E402
from app.reports.period import Period  # noqa: E402
from app.reports.rebuild import rebuild  # noqa: E402
from app.security.auth import Principal  # noqa: E402
from app.security.roles import Role  # noqa: E402
from tests.reports import oracle  # noqa: E402

SERVICE = "life-rooms"
START = dt.date(2024, 1, 1)

# The plan of every referral, one row each; the tables are then filled from it.
PLAN = """
CREATE UNLOGGED TABLE plan AS
SELECT g,
       gen_random_uuid()::text AS rid,
       gen_random_uuid()::text AS cid,
       received,
       (ARRAY['Crisis Resolution Team','Crisis Resolution Team','Crisis Resolution Team',
              'Community Mental Health Team','Early Intervention Team','Home Treatment Team',
              'Inpatient Ward'])[1 + floor(random() * 7)::int] AS team,
       (ARRAY['female','female','female','female','female','male','male','male','male',
              'unknown'])[1 + floor(random() * 10)::int] AS gender,
       (ARRAY['18-24','25-34','35-44','45-54','55-64','65-74','75-plus'])
           [1 + floor(random() * 7)::int] AS age_band,
       (ARRAY['self-referral','occupational-health','hr','wellbeing-team','gp','other'])
           [1 + floor(random() * 6)::int] AS source,
       (ARRAY['nhs','nhs','social-care'])[1 + floor(random() * 3)::int] AS staff_group,
       CASE WHEN random() < 0.03 THEN 'rejected' WHEN random() < 0.02 THEN 'cancelled'
            ELSE 'worked' END AS fate,
       random() AS u1, random() AS u2, random() AS u3, random() AS u4, random() AS u5
FROM (SELECT g, '{start}'::timestamptz
                + (g::float8 / {referrals}) * ('{stop}'::timestamptz - '{start}'::timestamptz)
             AS received
      FROM generate_series(1, {referrals}) g) s;
ALTER TABLE plan ADD COLUMN accepted_at timestamptz, ADD COLUMN contact_at timestamptz,
    ADD COLUMN appointments int, ADD COLUMN prescriptions int, ADD COLUMN closing text,
    ADD COLUMN closed_at timestamptz;
UPDATE plan SET
    accepted_at = CASE WHEN fate = 'worked' THEN received + interval '1 day' * (0.1 + u1) END,
    contact_at = CASE WHEN fate = 'worked' AND u2 < 0.92
                      THEN received + interval '1 day' * (u2 * 12) END,
    appointments = CASE WHEN fate = 'worked' AND u2 < 0.92
                        THEN (ARRAY[0,1,1,1,1,2,2,2])[1 + floor(u3 * 8)::int] ELSE 0 END,
    prescriptions = CASE WHEN fate = 'worked' AND u2 < 0.92
                         THEN (ARRAY[0,1,1,2,2,2,3])[1 + floor(u4 * 7)::int] ELSE 0 END,
    closing = CASE WHEN fate <> 'worked' THEN fate
                   WHEN u5 < 0.6 THEN 'completed' WHEN u5 < 0.9 THEN 'discharged'
                   ELSE 'in_progress' END;
UPDATE plan SET closed_at = coalesce(contact_at, accepted_at, received) + interval '42 days'
WHERE closing IN ('completed', 'discharged');

CREATE UNLOGGED TABLE plan_appointments AS
SELECT p.g, p.cid, p.rid, j, 'a' || j AS external_id,
       (ARRAY['face-to-face','face-to-face','telephone','group'])
           [1 + floor(random() * 4)::int] AS kind,
       (ARRAY[30,45,60])[1 + floor(random() * 3)::int] AS minutes,
       p.contact_at + interval '7 days' * (j - 1) + interval '1 hour' AS booked_at,
       random() AS u
FROM plan p, generate_series(1, p.appointments) j;
ALTER TABLE plan_appointments ADD COLUMN outcome text, ADD COLUMN outcome_at timestamptz;
UPDATE plan_appointments SET
    outcome = CASE WHEN u < 0.62 THEN 'attended' WHEN u < 0.82 THEN 'did_not_attend'
                   WHEN u < 0.98 THEN 'rescheduled' ELSE 'cancelled' END,
    outcome_at = booked_at + interval '3 days' + CASE WHEN u >= 0.82 AND u < 0.98
                 THEN interval '7 days' ELSE interval '0' END;

CREATE UNLOGGED TABLE plan_prescriptions AS
SELECT p.g, p.cid, p.rid, k, 'p' || k AS external_id,
       (ARRAY['benefits-money','learning','housing','employment-volunteering',
              'mental-wellbeing','social-connection','physical-activity','food','other'])
           [1 + floor(random() * 9)::int] AS category,
       'Provider ' || (1 + floor(random() * 40)::int) AS provider,
       p.contact_at + interval '8 days' + interval '1 hour' * k AS at
FROM plan p, generate_series(1, p.prescriptions) k;

CREATE UNLOGGED TABLE plan_scores AS
SELECT p.g, p.cid, p.rid, s AS stage_number,
       CASE WHEN s = 1 THEN 'start' ELSE 'end' END AS stage,
       7 + floor(random() * 29)::int AS raw,
       p.contact_at + interval '1 hour' + interval '30 days' * (s - 1) AS at
FROM plan p, generate_series(1, CASE WHEN p.contact_at IS NULL THEN 0
                                     WHEN p.u1 < 0.2 THEN 2 WHEN p.u1 < 0.5 THEN 1
                                     ELSE 0 END) s;
"""

FILL = """
INSERT INTO services (id, name, organisation, adapter, created_at,
                      first_contact_target_days, support_window_days)
VALUES ('life-rooms', 'The Life Rooms (bench)', 'LR001', 'local', now(), 7, 42);

INSERT INTO referrals (id, organisation, identifier_system, identifier_value, service_id,
    status, intent, priority, authored_on, nhs_number, patient_name, birth_date, gender,
    referring_team, reasons, resource, version_id, created_at, last_updated, age_band,
    referral_source, staff_group, referral_unit)
SELECT rid, 'RW4', 'https://rio.example.nhs.uk/Id/referral', g::text, 'life-rooms',
    'active', 'order', 'routine', received::text, '9000000009', 'Bench Patient', '1980-01-01',
    gender, team,
    (SELECT jsonb_agg(jsonb_build_object('domain', d, 'mapped', true))
     FROM unnest((ARRAY['mental-health-wellbeing','finance-benefits-debt','social-interaction',
                        'housing','social-isolation','wellbeing','employment-training',
                        'healthy-lifestyles'])[(1 + floor(u3 * 8)::int):(2 + floor(u3 * 8)::int
                        + floor(u4 * 2)::int)]) d),
    '{{"intent": "order"}}', 1, received, received, age_band, source, staff_group,
    CASE WHEN u5 < 0.05 THEN 'team' ELSE 'individual' END
FROM plan;

INSERT INTO cases (id, referral_id, service_id, state, business_status, task_status,
    status_reason, first_contact_at, team, last_event_seq, version_id, created_at, updated_at,
    closed_at, outputs)
SELECT cid, rid, 'life-rooms',
    CASE WHEN closing = 'in_progress' AND contact_at IS NULL THEN 'accepted' ELSE closing END,
    closing, 'in-progress',
    CASE closing WHEN 'completed' THEN (CASE WHEN u4 < 0.8 THEN 'needs-met'
                                             ELSE 'referred-on' END)
                 WHEN 'discharged' THEN (ARRAY['did-not-attend','unable-to-contact',
                     'no-longer-required','inappropriate-referral'])[1 + floor(u4 * 4)::int]
                 WHEN 'rejected' THEN 'out-of-area' END,
    contact_at, 'North', 60, 1, received, coalesce(closed_at, received), closed_at, '[]'
FROM plan;

INSERT INTO appointments (id, case_id, referral_id, external_id, status, appointment_type,
    start, minutes, attended_minutes, reschedules, booked_at, version_id, created_at, updated_at)
SELECT gen_random_uuid()::text, cid, rid, external_id,
    CASE outcome WHEN 'did_not_attend' THEN 'noshow' WHEN 'cancelled' THEN 'cancelled'
                 ELSE 'fulfilled' END,
    kind, outcome_at, minutes,
    CASE WHEN outcome IN ('attended', 'rescheduled') AND u < 0.3 THEN minutes - 10 END,
    CASE WHEN outcome = 'rescheduled' THEN 1 ELSE 0 END, booked_at, 1, booked_at, outcome_at
FROM plan_appointments;

INSERT INTO prescriptions (id, case_id, referral_id, external_id, category, provider, activity,
    status, prescribed_at, version_id, created_at, updated_at)
SELECT gen_random_uuid()::text, cid, rid, external_id, category, provider, 'An activity',
    'active', at, 1, at, at
FROM plan_prescriptions;

INSERT INTO wellbeing_scores (id, questionnaire_response_id, case_id, referral_id, instrument,
    stage, items, raw_score, metric_score, measured_at, created_at)
SELECT gen_random_uuid()::text, gen_random_uuid()::text, cid, rid, 'SWEMWBS', stage,
    '[3,3,3,3,3,3,3]', raw, ({metric_scores})[raw - 6], at, at
FROM plan_scores;
"""

# Every event, with a seq unique within its case (dense is not needed).
EVENTS = """
INSERT INTO case_events (id, case_id, seq, type, occurred_at, recorded_at, source, data,
                         resources)
SELECT gen_random_uuid()::text, cid, seq, type, occurred_at,
       occurred_at + interval '2 hours', 'advisor', data, '[]'
FROM (
    SELECT cid, 1 AS seq, 'referral.received' AS type, received AS occurred_at,
           '{}'::jsonb AS data FROM plan
    UNION ALL
    SELECT cid, 2, 'case.accepted', accepted_at, '{}' FROM plan WHERE accepted_at IS NOT NULL
    UNION ALL
    SELECT cid, 2, 'case.rejected', received + interval '2 days', '{"reason":"out-of-area"}'
    FROM plan WHERE fate = 'rejected'
    UNION ALL
    SELECT cid, 2, 'referral.cancelled', received + interval '1 day', '{}'
    FROM plan WHERE fate = 'cancelled'
    UNION ALL
    SELECT cid, 3, 'contact.attempted', contact_at, '{"outcome":"reached"}'
    FROM plan WHERE contact_at IS NOT NULL
    UNION ALL
    SELECT cid, 10 + 3 * j, 'appointment.booked', booked_at,
           jsonb_build_object('appointment_id', external_id, 'appointment_type', kind,
                              'duration_minutes', minutes)
    FROM plan_appointments
    UNION ALL
    SELECT cid, 11 + 3 * j, 'appointment.rescheduled', booked_at + interval '2 days',
           jsonb_build_object('appointment_id', external_id, 'appointment_type', kind,
                              'duration_minutes', minutes)
    FROM plan_appointments WHERE outcome = 'rescheduled'
    UNION ALL
    SELECT cid, 12 + 3 * j,
           CASE outcome WHEN 'rescheduled' THEN 'appointment.attended'
                        ELSE 'appointment.' || outcome END,
           outcome_at, jsonb_build_object('appointment_id', external_id)
    FROM plan_appointments
    UNION ALL
    SELECT cid, 30 + k, 'prescription.created', at,
           jsonb_build_object('prescription_id', external_id, 'category', category,
                              'provider', provider, 'status', 'active')
    FROM plan_prescriptions
    UNION ALL
    SELECT cid, 40 + stage_number, 'outcome.recorded', at,
           jsonb_build_object('instrument', 'SWEMWBS', 'stage', stage,
                              'items', '[3,3,3,3,3,3,3]'::jsonb)
    FROM plan_scores
    UNION ALL
    SELECT cid, 50, 'demographics.recorded', contact_at + interval '2 hours',
           jsonb_build_object('ethnicity',
               (ARRAY['White British','Mixed','Asian','Black','Other'])[1 + floor(u5 * 5)::int],
               'disability', CASE WHEN u4 < 0.3 THEN 'Yes' ELSE 'No' END)
    FROM plan WHERE contact_at IS NOT NULL AND u1 < 0.6
    UNION ALL
    SELECT cid, 60, 'case.' || closing,
           closed_at, jsonb_build_object('reason', 'needs-met')
    FROM plan WHERE closed_at IS NOT NULL
) events;
"""


def admin_url(pg: str, database: str) -> str:
    return f"postgresql://{pg}/{database}"


async def drop(pg: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url(pg, "postgres"))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def build(pg: str, name: str, referrals: int, months: int) -> dict[str, float]:
    connection = await asyncpg.connect(admin_url(pg, "postgres"))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    await upgrade_async(f"postgresql+asyncpg://{pg}/{name}")
    end = START.replace(year=START.year + months // 12)
    timings: dict[str, float] = {}
    connection = await asyncpg.connect(admin_url(pg, name))
    try:
        await connection.execute("SET work_mem = '256MB'; SET maintenance_work_mem = '1GB'")
        # Indexes are made once, after the load (the same definitions the migrations made).
        indexes = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND tablename IN ('referrals','cases','case_events','appointments','prescriptions',"
            "'wellbeing_scores') AND indexname LIKE 'ix_%'"
        )
        for row in indexes:
            await connection.execute(f'DROP INDEX "{row["indexname"]}"')
        began = time.perf_counter()
        await connection.execute("SELECT setseed(0.42)")
        start = dt.datetime.combine(START, dt.time(), tzinfo=dt.UTC)
        stop = dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC)
        # Only our own numbers and dates go into the SQL.
        await connection.execute(
            PLAN.format(start=start.isoformat(), stop=stop.isoformat(), referrals=int(referrals))
        )
        timings["plan"] = time.perf_counter() - began
        began = time.perf_counter()
        scores = ",".join(f"{METRIC_SCORES[raw]:.2f}" for raw in range(7, 36))
        await connection.execute(FILL.format(metric_scores=f"ARRAY[{scores}]"))
        timings["records"] = time.perf_counter() - began
        began = time.perf_counter()
        await connection.execute(EVENTS)
        timings["events"] = time.perf_counter() - began
        began = time.perf_counter()
        for row in indexes:
            await connection.execute(row["indexdef"])
        await connection.execute(
            "DROP TABLE plan, plan_appointments, plan_prescriptions, plan_scores"
        )
        await connection.execute("VACUUM ANALYZE")
        timings["indexes"] = time.perf_counter() - began
        counts = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM referrals) r, (SELECT count(*) FROM case_events) e, "
            "(SELECT count(*) FROM appointments) a, (SELECT count(*) FROM prescriptions) p, "
            "(SELECT count(*) FROM wellbeing_scores) w"
        )
        timings.update({f"rows_{k}": float(v) for k, v in dict(counts).items()})
    finally:
        await connection.close()
    # The rows went in by bulk SQL, past the domain: fill the read model as an operator would
    # on an installation whose model is older than the code.
    began = time.perf_counter()
    await read_model(pg, name)
    timings["read_model"] = time.perf_counter() - began
    return timings


async def read_model(pg: str, name: str, *, only_if_stale: bool = False) -> int | None:
    """Rebuild the reporting read model from every case (`spbridge reports rebuild`), then
    ANALYZE its tables; with ``only_if_stale``, only when its version is not the code's."""
    database = Database.from_url(f"postgresql+asyncpg://{pg}/{name}")
    try:
        if only_if_stale:
            async with transaction(database.read_sessions) as session:
                if (await version.state(session)).current:
                    return None
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.perf_counter() - last[0] > 30 or done == total:
                last[0] = time.perf_counter()
                print(f"  rebuilt {done:,} of {total:,} cases", flush=True)

        done = (await rebuild(database, batch=2000, progress=progress)).cases
    finally:
        await database.dispose()
    connection = await asyncpg.connect(admin_url(pg, name))
    try:
        await connection.execute("VACUUM ANALYZE report_case_facts, report_counts")
    finally:
        await connection.close()
    return done


def periods(months: int) -> tuple[Period, Period]:
    """The last twelve months of the data; and the same less their first 14 days and last 11."""
    last = START.replace(year=START.year + months // 12) - dt.timedelta(days=1)
    whole = Period(last.replace(year=last.year - 1) + dt.timedelta(days=1), last)
    return whole, Period(whole.start + dt.timedelta(days=14), whole.end - dt.timedelta(days=11))


BENCH_PRINCIPAL = Principal(client_id=None, name="bench", role=Role.REPORTING, organisation="LR001")


async def timed_report(
    database: Database,
    definition: ReportDefinition,
    period: Period,
    *,
    team: str | None = None,
    marks: list[tuple[str, float]] | None = None,
) -> tuple[float, dict[str, object]]:
    """One report as the API makes it (run_report, then the JSON document): seconds, document."""

    def progress(section: str, done: int, of: int) -> None:
        if marks is not None:
            marks.append((section, time.perf_counter()))

    began = time.perf_counter()
    async with transaction(database.write_sessions) as session:
        report = await service.run_report(
            session,
            BENCH_PRINCIPAL,
            definition,
            service_id=SERVICE,
            team=team,
            period=period,
            now=dt.datetime.now(dt.UTC),
            progress=progress,
        )
        document = service.report_document(report, suppress=False)
    return time.perf_counter() - began, document


async def measure(pg: str, name: str, months: int, runs: int) -> dict[str, list[float]]:
    database = Database.from_url(f"postgresql+asyncpg://{pg}/{name}")
    whole, partial = periods(months)
    results: dict[str, list[float]] = {}
    sections: dict[str, list[float]] = {}
    try:
        for label, period in (("", whole), ("partial ", partial)):
            for definition, times in ((ACTIVITY, runs), (STAFF_HUB, 1)):
                key = f"{label}{definition.name.value}"
                results[key] = []
                for _ in range(times):
                    marks: list[tuple[str, float]] = []
                    elapsed, document = await timed_report(
                        database, definition, period, marks=marks
                    )
                    results[key].append(elapsed)
                    sections_of: Any = document["sections"]
                    referrals = sections_of[0]["tables"][0]["rows"][0]["values"][-1]
                    print(
                        f"{key} {period.start}..{period.end}: {elapsed:.3f} s "
                        f"(referrals in the period: {referrals})",
                        flush=True,
                    )
                    if definition is ACTIVITY and not label:
                        for (section, at), (_, after) in itertools.pairwise(marks):
                            sections.setdefault(section, []).append(after - at)
    finally:
        await database.dispose()
    for section, times in sections.items():
        print(f"  {section:<16} median {statistics.median(times):.3f} s")
    results["sections"] = [statistics.median(t) for t in sections.values()]
    results["section_names"] = list(sections)  # type: ignore[list-item]
    return results


async def compare(pg: str, name: str, months: int) -> list[str]:
    """Every report from the read model and from the old live SQL (tests/reports/oracle.py):
    whole and partial periods, without a team and for one. Returns one line per comparison."""
    database = Database.from_url(f"postgresql+asyncpg://{pg}/{name}")
    lines = []
    model_load = readmodel.load
    try:
        for period in periods(months):
            for definition in (ACTIVITY, STAFF_HUB):
                for team in (None, "Inpatient Ward"):
                    readmodel.load = model_load  # type: ignore[assignment]
                    model_time, from_model = await timed_report(
                        database, definition, period, team=team
                    )
                    readmodel.load = oracle.load  # type: ignore[assignment]
                    live_time, live = await timed_report(database, definition, period, team=team)
                    same = from_model["sections"] == live["sections"]
                    line = (
                        f"{definition.name.value} {period.start}..{period.end} "
                        f"team={team or '-'}: read model {model_time:.2f} s, live SQL "
                        f"{live_time:.2f} s, {'same figures' if same else 'FIGURES DIFFER'}"
                    )
                    if not same:
                        line += ": " + ", ".join(_differences(from_model, live))
                    print(line, flush=True)
                    lines.append(line)
    finally:
        readmodel.load = model_load  # type: ignore[assignment]
        await database.dispose()
    return lines


def _differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The tables whose published values differ."""
    out = []
    for a, b in zip(first["sections"], second["sections"], strict=True):
        for t, u in zip(a["tables"], b["tables"], strict=True):
            if t != u:
                out.append(t["id"])
    return out


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    version = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "show server_version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{os.cpu_count()} x {cpu}, {memory:.0f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, PostgreSQL {version}"
    )


def append_results(text: str) -> None:
    with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as results:
        results.write(text)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg", default="postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="spbridge_bench_reports")
    parser.add_argument("--referrals", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=24, choices=(12, 24, 36))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="Keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="Reuse a kept database")
    parser.add_argument(
        "--compare", action="store_true", help="Check the figures against the old live SQL"
    )
    parser.add_argument("--record", action="store_true", help="Append to bench/RESULTS.md")
    args = parser.parse_args()
    compared: list[str] = []
    try:
        built: dict[str, float] = {}
        if args.reuse:
            # A kept database: migrate it, and rebuild the read model if its version is not
            # this code's (`spbridge reports rebuild`).
            began = time.perf_counter()
            await upgrade_async(f"postgresql+asyncpg://{args.pg}/{args.database}")
            rebuilt = await read_model(args.pg, args.database, only_if_stale=True)
            elapsed = time.perf_counter() - began
            if rebuilt is not None:
                built["read_model"] = elapsed
            print(
                f"upgraded in {elapsed:.0f} s"
                + (f" (read model rebuilt: {rebuilt:,} cases)" if rebuilt is not None else ""),
                flush=True,
            )
        else:
            began = time.perf_counter()
            built = await build(args.pg, args.database, args.referrals, args.months)
            print(
                f"built in {time.perf_counter() - began:.0f} s: "
                + ", ".join(f"{k} {v:,.0f}" for k, v in built.items()),
                flush=True,
            )
        results = await measure(args.pg, args.database, args.months, args.runs)
        if args.compare:
            compared = await compare(args.pg, args.database, args.months)
    finally:
        if not args.keep:
            await drop(args.pg, args.database)

    def spread(times: list[float]) -> str:
        return (
            f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
            f"max {max(times):.2f} s over {len(times)} runs"
        )

    whole, partial = periods(args.months)
    summary = (
        f"activity report, 12 months ({whole.start}..{whole.end}) of {args.referrals:,} "
        f"referrals over {args.months} months: {spread(results['activity'])}; staff-hub "
        f"{results['staff-hub'][0]:.2f} s. Partial period ({partial.start}..{partial.end}): "
        f"activity {spread(results['partial activity'])}; staff-hub "
        f"{results['partial staff-hub'][0]:.2f} s"
    )
    print(summary)
    if args.record:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        rows = "\n".join(
            f"| {name} | {seconds:.3f} |"
            for name, seconds in zip(results["section_names"], results["sections"], strict=True)
        )
        built_line = ", ".join(f"{k} {v:,.0f}" for k, v in built.items())
        runs = ", ".join(f"{t:.2f}" for t in results["activity"])
        partial_runs = ", ".join(f"{t:.2f}" for t in results["partial activity"])
        text = (
            f"\n## Reports (`bench/reports.py`), {stamp}\n\n"
            f"Machine: {machine()}.\n"
            f"Command: `.venv/bin/python bench/reports.py --referrals {args.referrals} "
            f"--months {args.months} --runs {args.runs}"
            f"{' --reuse' if args.reuse else ''}{' --keep' if args.keep else ''}"
            f"{' --compare' if args.compare else ''}`.\n"
            f"Load (seconds, rows): {built_line or 'reused'}.\n\n"
            f"{summary}. Runs: {runs} s; partial: {partial_runs} s.\n\n"
            "| activity section | median s |\n|---|---|\n"
            f"{rows}\n"
        )
        if compared:
            text += "\nCompared with the old live SQL:\n\n" + "".join(
                f"- {line}\n" for line in compared
            )
        append_results(text)


if __name__ == "__main__":
    asyncio.run(main())
