"""Validation benchmark: app/fhir/validation.py on the resources the bridge takes and gives.

For each resource (the example referral as a client sends it, the Task, an Appointment, the
SWEMWBS Observation and QuestionnaireResponse, and the referral transaction Bundle, from
fhir/examples/), in one process:

- the first call, which loads fhir/r4/ (once per process) and compiles the resource type's
  schema (once per type);
- then ``--runs`` calls (default 5000) of ``validate_resource`` alone, and of
  ``validate_resource`` with ``check_reference_targets``, each timed on its own: wall time
  (``perf_counter_ns``) and the thread's CPU time (``thread_time_ns``), in microseconds. On a
  shared machine the wall time's tail is other processes' (preemption); the CPU time's is ours.

Target (issue 16): validating a typical ServiceRequest costs under 1 ms. No database, no network.

    .venv/bin/python bench/validation.py [--runs 5000] [--record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.fhir.validation import check_reference_targets, validate_resource  # noqa: E402

EXAMPLES = ROOT / "fhir" / "examples"
RESOURCES = [
    ("ServiceRequest (referral)", "ServiceRequest-social-prescribing-referral.json"),
    ("Task", "Task-referral-in-progress.json"),
    ("Appointment", "Appointment-booked.json"),
    ("Observation (SWEMWBS)", "Observation-swemwbs.json"),
    ("QuestionnaireResponse", "QuestionnaireResponse-swemwbs.json"),
    ("Bundle (transaction)", "Bundle-transaction-referral.json"),
]
TARGET_US = 1000.0


def timings(call: Callable[[], Any], runs: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(runs):
        began, began_cpu = time.perf_counter_ns(), time.thread_time_ns()
        call()
        cpu.append((time.thread_time_ns() - began_cpu) / 1000)
        wall.append((time.perf_counter_ns() - began) / 1000)
    return wall, cpu


def both(resource: dict[str, Any]) -> None:
    validate_resource(resource)
    check_reference_targets(resource)


def p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1]


def row(
    name: str, size: int, first_ms: str, spent: tuple[list[float], list[float]], checks: str
) -> str:
    wall, cpu = spent
    return (
        f"| {name} | {checks} | {size} | {first_ms} | {statistics.median(wall):.0f} "
        f"| {p99(wall):.0f} | {statistics.median(cpu):.0f} | {p99(cpu):.0f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--record", action="store_true", help="Append to bench/RESULTS.md")
    args = parser.parse_args()

    lines = [
        "| resource | checks | JSON bytes | first call (ms) | wall median (µs) | wall p99 (µs) "
        "| CPU median (µs) | CPU p99 (µs) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    referral_median = None
    began = time.perf_counter()
    for name, file in RESOURCES:
        raw = (EXAMPLES / file).read_bytes()
        resource = orjson.loads(raw)
        first = time.perf_counter()
        issues = validate_resource(resource)
        first_ms = (time.perf_counter() - first) * 1000
        if issues:
            print(f"{file}: not valid R4: {issues}", file=sys.stderr)
            return 1
        alone = timings(lambda r=resource: validate_resource(r), args.runs)
        with_references = timings(lambda r=resource: both(r), args.runs)
        lines.append(row(name, len(raw), f"{first_ms:.0f}", alone, "schema + rules"))
        lines.append(row(name, len(raw), "", with_references, "+ reference targets"))
        if referral_median is None:
            referral_median = statistics.median(alone[0])
    total = time.perf_counter() - began

    assert referral_median is not None
    verdict = "met" if referral_median < TARGET_US else "NOT met"
    summary = [
        "",
        f"- Target: validating the referral (ServiceRequest) under 1 ms: **{verdict}** "
        f"(wall median {referral_median:.0f} µs)",
        f"- Whole run {total:.1f} s for {args.runs} runs per row; the first call of each row "
        "includes compiling its type's schema (and, on the first row, loading fhir/r4/).",
    ]
    print("\n".join(lines + summary))
    if args.record:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        header = [
            "",
            f"## Validation (`bench/validation.py`), {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"- Command: `.venv/bin/python bench/validation.py --runs {args.runs} --record`",
            f"- Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load average before the run {load}; commit {commit}",
            "- One process, one thread; each call timed on its own; no database or network",
            "",
        ]
        with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as out:
            out.write("\n".join(header + lines + summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
