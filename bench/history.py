"""Import benchmark: `spbridge import` of a pilot-like history (issue 18 part 1).

It writes an NDJSON file of ``--referrals`` referrals (default 160, the Halton pilot's count)
received over six months from September 2022, from five referring teams (68% from one crisis
team), each with the events of its case in the pilot's proportions: accepted, a contact, one or
two appointments (attended, did not attend, rescheduled or cancelled), social prescriptions, a
SWEMWBS measurement for some, and a closing event for most; about 6.25 events a referral (the
pilot's ~1,000 events for 160 referrals). The lines of a referral are shuffled among their
neighbours, so the import must place them. Then it makes a fresh database (``--backend sqlite``:
a file in a temporary folder; ``postgresql``: database ``--database`` on ``--pg``), migrates it,
registers the service, and times ``app.imports.service.run_import`` (what `spbridge import` runs)
over the file, then a second run of the same file (a no-op: every referral held already).
Targets: 160 referrals / 1,000 events on SQLite under 5 s; 100,000 referrals / 1,000,000 events
(``--referrals 100000 --events-per-referral 10``) on PostgreSQL under 15 minutes.

    .venv/bin/python bench/history.py [--backend sqlite|postgresql] [--referrals 160]
        [--events-per-referral 6.25] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app.models  # noqa: E402, F401
from app.config import Settings  # noqa: E402
from app.db import Database, transaction  # noqa: E402
from app.directory.models import SocialPrescribingService  # noqa: E402
from app.imports.service import Options, loading_processes, run_import  # noqa: E402
from app.migrate import upgrade_async  # noqa: E402
from bench import common  # noqa: E402

SERVICE = "life-rooms"
SYSTEM = "https://rio.example-trust.nhs.uk/Id/referral"
START = dt.datetime(2022, 9, 1, 9, tzinfo=dt.UTC)
TEAMS = (
    ("Halton Crisis Resolution Team", 68),
    ("Halton Community Mental Health Team", 12),
    ("Halton Early Intervention Team", 8),
    ("Halton Primary Care Mental Health", 7),
    ("Halton Older People's Team", 5),
)
REASONS = ("finance-benefits-debt", "social-isolation", "housing", "mental-health-wellbeing")


def nhs_number(seed: int) -> str:
    base = 900000000 + seed * 7
    while True:
        digits = [int(c) for c in f"{base:09d}"]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        check = 0 if check == 11 else check
        if check != 10:
            return f"{base:09d}{check}"
        base += 1


def stamp(at: dt.datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def referral(index: int, received: dt.datetime, team: str, rng: random.Random) -> dict[str, Any]:
    number = nhs_number(index)
    return {
        "resourceType": "ServiceRequest",
        "contained": [
            {
                "resourceType": "Patient",
                "id": "patient",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": number}],
                "name": [{"family": f"Person{index}", "given": ["Pat"]}],
                "gender": rng.choice(("male", "female", "female", "unknown")),
                "birthDate": f"{rng.randint(1940, 2004)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            },
            {
                "resourceType": "Consent",
                "id": "consent",
                "status": "active",
                "scope": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "patient-privacy",
                        }
                    ]
                },
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": "#patient"},
                "dateTime": stamp(received),
                "provision": {"type": "permit"},
            },
        ],
        "identifier": [{"system": SYSTEM, "value": f"PILOT-{index:07d}"}],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "871731000000106"}]},
        "subject": {
            "reference": "#patient",
            "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": number},
        },
        "authoredOn": stamp(received),
        "requester": {
            "type": "Organization",
            "identifier": {
                "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                "value": "RW4",
            },
            "display": team,
        },
        "performer": [{"reference": f"HealthcareService/{SERVICE}"}],
        "reasonCode": [
            {
                "coding": [
                    {
                        "system": "https://fhir.spbridge.org/CodeSystem/reason-for-referral",
                        "code": code,
                    }
                ]
            }
            for code in rng.sample(REASONS, rng.randint(1, 2))
        ],
        "supportingInfo": [{"reference": "#consent"}],
    }


def case_events(
    index: int, received: dt.datetime, per_referral: float, rng: random.Random
) -> list[dict[str, Any]]:
    """The events of one case, in time order, about ``per_referral`` of them on average."""
    at = received
    events: list[dict[str, Any]] = []

    def add(event_type: str, hours: float, **data: Any) -> None:
        nonlocal at
        at = at + dt.timedelta(hours=hours)
        events.append({"type": event_type, "occurred_at": stamp(at), **data})

    add("case.accepted", rng.uniform(2, 30))
    add("contact.attempted", rng.uniform(2, 48), outcome="reached", method="telephone")
    appointments = 0
    # Appointments and prescriptions until the case has its share of events.
    budget = max(3, round(rng.gauss(per_referral, 1.5))) - 3
    while budget > 1:
        appointments += 1
        name = f"a{appointments}"
        start = at + dt.timedelta(days=rng.randint(3, 14))
        add(
            "appointment.booked",
            1,
            appointment_id=name,
            start=stamp(start),
            appointment_type=rng.choice(("face-to-face", "telephone", "group")),
            duration_minutes=rng.choice((30, 45, 60)),
        )
        outcome = rng.choices(("attended", "dna", "cancelled"), (116, 39, 3))[0]
        at = start
        if outcome == "attended":
            add(
                "appointment.attended",
                1,
                appointment_id=name,
                duration_minutes=rng.choice((30, 50, 70)),
            )
            budget -= 2
            if budget > 0:
                add(
                    "prescription.created",
                    1,
                    prescription_id=f"p{appointments}",
                    category=rng.choice(("benefits-money", "housing", "social-connection")),
                    provider="Citizens Advice Halton",
                    activity="Benefits check",
                    status="active",
                )
                budget -= 1
            if budget > 0 and appointments == 1:
                add(
                    "outcome.recorded",
                    1,
                    stage="start",
                    items=[rng.randint(1, 5) for _ in range(7)],
                )
                budget -= 1
        elif outcome == "dna":
            add("appointment.did_not_attend", 1, appointment_id=name)
            budget -= 2
        else:
            add("appointment.cancelled", 1, appointment_id=name, cancelled_by="patient")
            budget -= 2
    if budget >= 1 or rng.random() < 0.8:
        if rng.random() < 0.6:
            add("case.completed", 24, reason="needs-met")
        else:
            add("case.discharged", 24, reason="unable-to-contact")
    return events


def history(referrals: int, per_referral: float, seed: int = 18) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    span = dt.timedelta(days=181).total_seconds()
    weights = [weight for _, weight in TEAMS]
    pending: list[dict[str, Any]] = []
    for index in range(referrals):
        received = START + dt.timedelta(seconds=int(span * index / max(referrals, 1)))
        team = rng.choices([name for name, _ in TEAMS], weights)[0]
        key = {"system": SYSTEM, "value": f"PILOT-{index:07d}"}
        lines = [{"received_at": stamp(received), "resource": referral(index, received, team, rng)}]
        lines += [
            {"referral": key, "event": event}
            for event in case_events(index, received, per_referral, rng)
        ]
        pending.extend(lines)
        if len(pending) > 40:  # a referral's lines mixed with its neighbours'
            rng.shuffle(pending)
            yield from pending
            pending = []
    rng.shuffle(pending)
    yield from pending


def write(path: Path, referrals: int, per_referral: float) -> tuple[int, int]:
    lines = events = 0
    with path.open("wb") as out:
        for line in history(referrals, per_referral):
            out.write(orjson.dumps(line) + b"\n")
            lines += 1
            events += "event" in line
    return lines, events


def machine() -> str:
    seen = common.machine()
    return (
        f"{seen['nproc']} x {seen['cpu']}, {seen['memory']}, {seen['os']}, Python "
        f"{seen['python']}; load average before the run {seen['load']} (the machine is shared "
        "with other work)"
    )


async def fresh_database(backend: str, pg: str, name: str, folder: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    await common.recreate_database(pg, name)
    return common.sqlalchemy_url(pg, name)


def _cpu() -> float:
    """CPU time of this process and its finished children (a large import's loaders)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg", default="postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="spbridge_bench_history")
    parser.add_argument("--referrals", type=int, default=160)
    parser.add_argument("--events-per-referral", type=float, default=6.25)
    parser.add_argument("--record", action="store_true", help="Append to bench/RESULTS.md")
    args = parser.parse_args()
    before = machine()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        path = folder / "history.ndjson"
        started = time.monotonic()
        lines, events = write(path, args.referrals, args.events_per_referral)
        print(f"wrote {lines} lines ({events} events) in {time.monotonic() - started:.1f} s")
        url = await fresh_database(args.backend, args.pg, args.database, folder)
        try:
            await upgrade_async(url)
            settings = Settings(database_url=url, public_base_url="http://bench")
            database = Database.from_url(url)
            try:
                async with transaction(database.write_sessions) as session:
                    session.add(
                        SocialPrescribingService(
                            id=SERVICE, name="The Life Rooms", organisation="LR001", adapter="local"
                        )
                    )
                cpu = _cpu()
                first = await run_import(database, [path], settings, Options(name=path.name))
                first_cpu = _cpu() - cpu
                processes = loading_processes(settings, args.backend, args.referrals)
                print(
                    f"import: {first.seconds:.2f} s, {first.created} referrals made, "
                    f"{first.events} events applied, {first.refused} refused; "
                    f"CPU of this process {first_cpu:.2f} s"
                )
                for refusal in first.refusals[:5]:
                    print("  refused:", refusal)
                second = await run_import(database, [path], settings, Options(name=path.name))
                print(
                    f"re-run: {second.seconds:.2f} s, {second.created} made, "
                    f"{second.events} events applied (a no-op)"
                )
            finally:
                await database.dispose()
        finally:
            if args.backend == "postgresql":
                await common.pg_admin(
                    args.pg, f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'
                )
    commit = common.git_head()
    loading = (
        f"{processes} loading process(es), {settings.import_concurrency} referrals at once in each"
        if args.backend == "postgresql"
        else "one referral at a time"
    )
    text = (
        f"\n## Import of history, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"- Command: `.venv/bin/python bench/history.py --backend {args.backend} "
        f"--referrals {args.referrals} --events-per-referral {args.events_per_referral}`\n"
        f"- Machine: {before}\n- Commit: {commit}\n"
        f"- File: {lines} lines, {args.referrals} referrals, {events} events\n"
        f"- Import ({args.backend}): **{first.seconds:.2f} s** ({first.created} referrals made, "
        f"{first.events} events applied, {first.refused} refused; "
        f"{first.events / max(first.seconds, 1e-9):.0f} events/s; CPU time of the importing "
        f"processes {first_cpu:.2f} s, the database's own work not included; {loading})\n"
        f"- Re-run of the same file (no-op): {second.seconds:.2f} s\n"
    )
    print(text)
    if args.record:
        common.record(text.lstrip("\n"))


if __name__ == "__main__":
    asyncio.run(main())
