"""Reading an import file (NDJSON): which lines belong to which referral.

Two kinds of line, one JSON object each::

    {"received_at": "2022-09-05T09:12:00Z", "resource": {ServiceRequest or transaction Bundle}}
    {"referral": {"system": "...", "value": "..."}, "event": {"type": "...", "occurred_at": ...}}

A referral is named by its ServiceRequest's identifier (the first with a system and a value, as
intake takes it); its events name it the same way and may come anywhere in the file, in any
order. The first pass keeps only where each line is (file, offset, line number), not the lines,
so a file of a million events is grouped in little memory; the lines are read again, a referral
at a time, when it is loaded. Nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

Key = tuple[str, str]


@dataclass(frozen=True)
class Refusal:
    """A line not taken: where, which element, why. Never a value from the line."""

    file: str
    line: int
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class Place:
    file: int  # index into Grouped.files
    offset: int
    line: int


@dataclass
class Group:
    """One referral's lines: its own (if the file has it) and its events'."""

    key: Key
    referral: Place | None = None
    events: list[Place] = field(default_factory=list)
    refusal: Refusal | None = None  # a line of it already refused when reading


@dataclass
class Grouped:
    files: list[Path]
    groups: list[Group]  # in the order each referral first appears
    refusals: list[Refusal]  # lines that name no referral at all
    lines: int
    events: int


def service_request_of(resource: Any) -> dict[str, Any] | None:
    """The ServiceRequest a referral line carries: the resource, or a Bundle's entry."""
    if not isinstance(resource, dict):
        return None
    if resource.get("resourceType") == "ServiceRequest":
        return resource
    if resource.get("resourceType") == "Bundle":
        for entry in resource.get("entry") or []:
            inner = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(inner, dict) and inner.get("resourceType") == "ServiceRequest":
                return inner
    return None


def referral_key(service_request: dict[str, Any]) -> Key | None:
    for identifier in service_request.get("identifier") or []:
        if isinstance(identifier, dict):
            system, value = identifier.get("system"), identifier.get("value")
            if isinstance(system, str) and isinstance(value, str) and system and value:
                return system, value
    return None


class LineError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def parse_line(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        raise LineError("(line)", "not a JSON object on one line") from None
    if not isinstance(data, dict):
        raise LineError("(line)", "not a JSON object on one line")
    return data


def key_of(data: dict[str, Any]) -> tuple[Key, bool]:
    """The referral a line belongs to, and whether it is the referral's own line."""
    if "event" in data:
        named = data.get("referral")
        if not isinstance(named, dict):
            raise LineError("referral", "an event line names its referral: {system, value}")
        system, value = named.get("system"), named.get("value")
        if not (isinstance(system, str) and isinstance(value, str) and system and value):
            raise LineError("referral", "an event line names its referral: {system, value}")
        return (system, value), False
    if "resource" in data:
        service_request = service_request_of(data["resource"])
        if service_request is None:
            raise LineError(
                "resource", "a referral line carries a ServiceRequest or a transaction Bundle"
            )
        key = referral_key(service_request)
        if key is None:
            raise LineError(
                "ServiceRequest.identifier",
                "identifier (the referrer's own referral id, with system and value) is required",
            )
        return key, True
    raise LineError("(line)", "a line is a referral (received_at, resource) or an event")


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    with path.open("rb") as handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            yield number, offset, raw
            offset += len(raw)


def group(paths: list[Path]) -> Grouped:
    """Every line of ``paths`` placed with its referral (one pass, nothing kept but places)."""
    by_key: dict[Key, Group] = {}
    refusals: list[Refusal] = []
    lines = events = 0
    for index, path in enumerate(paths):
        name = path.name
        for number, offset, raw in _lines(path):
            if not raw.strip():
                continue
            lines += 1
            try:
                data = parse_line(raw)
                key, own = key_of(data)
            except LineError as error:
                refusals.append(Refusal(name, number, error.field, error.reason))
                continue
            held = by_key.get(key)
            if held is None:
                held = by_key[key] = Group(key)
            place = Place(index, offset, number)
            if own:
                if held.referral is not None and held.refusal is None:
                    held.refusal = Refusal(
                        name,
                        number,
                        "ServiceRequest.identifier",
                        "a second referral line with the identifier of an earlier line",
                    )
                held.referral = held.referral or place
            else:
                events += 1
                held.events.append(place)
    return Grouped(list(paths), list(by_key.values()), refusals, lines, events)


class Reader:
    """Reads placed lines back (one open handle per file)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._handles = [path.open("rb") for path in paths]

    def read(self, place: Place) -> dict[str, Any]:
        handle = self._handles[place.file]
        handle.seek(place.offset)
        return parse_line(handle.readline())

    def name(self, place: Place) -> str:
        return self.paths[place.file].name

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
