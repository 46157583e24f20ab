"""Building import files (NDJSON) for the tests: referral lines and event lines."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import referral_resource

SYSTEM = "https://rio.example-trust.nhs.uk/Id/referral"


def at(text: str) -> str:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).isoformat()


def referral_line(
    value: str, received: str, service: str = "life-rooms", **overrides: Any
) -> dict[str, Any]:
    resource = referral_resource(service, **overrides)
    resource["identifier"] = [{"system": SYSTEM, "value": value}]
    resource["authoredOn"] = at(received)
    for contained in resource["contained"]:
        if contained["resourceType"] == "Consent":
            contained["dateTime"] = at(received)
    return {"received_at": at(received), "resource": resource}


def event_line(value: str, event_type: str, occurred: str, **data: Any) -> dict[str, Any]:
    return {
        "referral": {"system": SYSTEM, "value": value},
        "event": {"type": event_type, "occurred_at": at(occurred), **data},
    }


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(copy.deepcopy(line)) + b"\n" for line in lines))
    return path
