"""FHIR conformance of what the bridge gives out, checked around every test (like the audit trail).

Every FHIR resource a test receives from the bridge (the test client's answers under ``/fhir``)
and every FHIR body the bridge pushes (what a ``Receiver`` or the test FHIR server was sent by
the bridge) is checked with app/fhir/validation.py: HL7's R4 schema and FHIR's rules
(``validate_resource``) and the reference target types R4 allows (``check_reference_targets``).

The switch is ``SPBRIDGE_TEST_FHIR_CONFORMANCE``:

- ``report`` (the default): problems are collected and summed up at the end of the run (the
  terminal summary, and test-artifacts/fhir-conformance.json); a reference to a target type R4
  does not allow for its element fails the test (issue 15 made every one legal), the rest do not;
- ``strict``: a test during which the bridge gave out a resource with a problem fails, naming
  the resource and the elements;
- ``off``: nothing is checked.

A test that makes the bridge give out invalid FHIR on purpose is marked ``fhir_unchecked``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import Issue
from app.fhir.validation import check_reference_targets, resource_types, validate_resource

MODE = os.environ.get("SPBRIDGE_TEST_FHIR_CONFORMANCE", "report").strip().lower() or "report"
if MODE not in ("report", "strict", "off"):
    raise ValueError("SPBRIDGE_TEST_FHIR_CONFORMANCE must be report, strict or off")
REPORT_FILE = Path(__file__).resolve().parents[2] / "test-artifacts" / "fhir-conformance.json"


@dataclass(frozen=True)
class Finding:
    test: str
    source: str  # "served GET /fhir/Task/{id}", "pushed PUT Task/{id}", …
    resource_type: str  # of the resource the element is in (a Bundle entry's, a contained one's)
    element: str  # from that resource, without array positions (``ServiceRequest.requester``)
    issue: Issue

    @classmethod
    def of(cls, test: str, source: str, resource: dict[str, Any], issue: Issue) -> Finding:
        resource_type, element = _innermost(resource, issue.expression or "")
        return cls(test, source, resource_type, element, issue)

    @property
    def kind(self) -> str:
        """The problem without the element (so findings group by what is wrong)."""
        text = self.issue.diagnostics
        if self.issue.expression and text.startswith(self.issue.expression):
            text = text[len(self.issue.expression) :].strip()
        return text


_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _innermost(resource: dict[str, Any], expression: str) -> tuple[str, str]:
    """The resource an expression ends in (``Bundle.entry[3].resource.requester`` is a
    ServiceRequest's ``requester``) and the element from there, without array positions."""
    resource_type = str(resource.get("resourceType"))
    element = resource_type
    node: Any = resource
    rest = expression[len(resource_type) :] if expression.startswith(resource_type) else ""
    for name, index in _PART.findall(rest):
        if index:
            position = int(index)
            node = node[position] if isinstance(node, list) and position < len(node) else None
        else:
            node = node.get(name) if isinstance(node, dict) else None
            element += f".{name}"
        if isinstance(node, dict) and isinstance(node.get("resourceType"), str):
            resource_type = element = node["resourceType"]
    return resource_type, element


def fhir_resources(body: Any) -> Iterator[dict[str, Any]]:
    """The FHIR resources in a JSON body: the body itself, or the outermost ones inside it."""
    known = resource_types()
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("resourceType") in known:
                yield node
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def problems(resource: dict[str, Any]) -> list[Issue]:
    return validate_resource(resource) + reference_target_problems(resource)


def reference_target_problems(resource: dict[str, Any]) -> list[Issue]:
    return [
        Issue(issue.code, issue.diagnostics + REFERENCE_TARGET_MARK, issue.expression)
        for issue in check_reference_targets(resource)
    ]


# Marks a reference-target finding: enforced in every mode but off.
REFERENCE_TARGET_MARK = " [reference target, enforced]"


def enforced(found: list[Finding]) -> list[Finding]:
    """The findings that fail a test: all in strict mode; reference target types in report."""
    if MODE == "strict":
        return found
    return [f for f in found if f.issue.diagnostics.endswith(REFERENCE_TARGET_MARK)]


@dataclass
class ConformanceRecorder:
    """What one test saw the bridge give out, and whether it was conformant FHIR."""

    test: str
    seen: list[tuple[str, Any]] = field(default_factory=list)
    # Called at the end of the test for bodies gathered elsewhere (the test FHIR server's journal).
    sources: list[Callable[[], list[tuple[str, Any]]]] = field(default_factory=list)

    def saw(self, source: str, body: Any) -> None:
        self.seen.append((source, body))

    def findings(self) -> tuple[int, list[Finding]]:
        bodies = list(self.seen)
        for source in self.sources:
            bodies.extend(source())
        checked = 0
        found: list[Finding] = []
        for where, body in bodies:
            for resource in fhir_resources(body):
                checked += 1
                found.extend(
                    Finding.of(self.test, where, resource, issue) for issue in problems(resource)
                )
        return checked, found


@dataclass
class ConformanceReport:
    """Every test's findings, summed up at the end of the run."""

    resources_checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    def add(self, checked: int, findings: list[Finding]) -> None:
        self.resources_checked += checked
        self.findings.extend(findings)

    def grouped(self) -> list[tuple[str, str, str, int, int]]:
        """(resource type, element, problem, findings, tests), most frequent first."""
        counts: Counter[tuple[str, str, str]] = Counter()
        tests: dict[tuple[str, str, str], set[str]] = {}
        for finding in self.findings:
            key = (finding.resource_type, finding.element, finding.kind)
            counts[key] += 1
            tests.setdefault(key, set()).add(finding.test)
        return [
            (*key, count, len(tests[key]))
            for key, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        ]

    def lines(self) -> list[str]:
        if MODE == "off":
            return ["FHIR conformance: not checked (SPBRIDGE_TEST_FHIR_CONFORMANCE=off)"]
        head = (
            f"FHIR conformance ({MODE}): {self.resources_checked} resources the bridge gave out "
            f"were checked against the R4 schema and reference targets; "
            f"{len(self.findings)} problems"
        )
        rows = [
            f"  {count:5d} in {tests:3d} tests  {element}: {kind}"
            for _type, element, kind, count, tests in self.grouped()
        ]
        return [head, *rows]

    def write(self) -> None:
        REPORT_FILE.parent.mkdir(exist_ok=True)
        REPORT_FILE.write_text(
            json.dumps(
                {
                    "mode": MODE,
                    "resources_checked": self.resources_checked,
                    "problems": [
                        {"resource_type": t, "element": e, "problem": k, "count": c, "tests": n}
                        for t, e, k, c, n in self.grouped()
                    ],
                    "examples": [
                        {
                            "test": f.test,
                            "source": f.source,
                            "expression": f.issue.expression,
                            "problem": f.issue.diagnostics,
                        }
                        for f in self._first_of_each()
                    ],
                },
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )

    def _first_of_each(self) -> list[Finding]:
        first: dict[tuple[str, str, str], Finding] = {}
        for finding in self.findings:
            first.setdefault((finding.resource_type, finding.element, finding.kind), finding)
        return list(first.values())


REPORT = ConformanceReport()
_current: ConformanceRecorder | None = None


def current() -> ConformanceRecorder | None:
    """The recorder of the test running now (None when checks are off or outside a test)."""
    return _current


def start(test: str) -> ConformanceRecorder | None:
    global _current
    _current = ConformanceRecorder(test) if MODE != "off" else None
    return _current


def finish(recorder: ConformanceRecorder | None) -> list[Finding]:
    """Check what the test saw; the findings go to the run's report and are returned."""
    global _current
    _current = None
    if recorder is None:
        return []
    checked, found = recorder.findings()
    REPORT.add(checked, found)
    return found


def failure_message(found: list[Finding]) -> str:
    lines = [f"the bridge gave out FHIR that is not valid R4 ({len(found)} problems):"]
    lines.extend(f"  {f.source}: {f.issue.diagnostics}" for f in found[:20])
    return "\n".join(lines)
