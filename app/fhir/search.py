"""FHIR search plumbing shared by every resource: parameters, paging, searchset Bundles."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from app.db import utc_in_range
from app.errors import BadRequest

DEFAULT_COUNT = 20
MAX_COUNT = 100
# Parameters every search takes besides its own.
COMMON_PARAMETERS = frozenset({"_count", "_cursor", "_format"})
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")
SEARCH_EARLIEST = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
SEARCH_LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Page:
    count: int
    cursor: tuple[dt.datetime, str] | None


def check_parameters(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """400 for a parameter not in ``allowed``, located by its position among the parameters'
    names (from 1, in the order given), never by its name: that is the client's (T7)."""
    names = list(dict.fromkeys(params))
    supported = allowed | COMMON_PARAMETERS
    unknown = [position for position, name in enumerate(names, 1) if name not in supported]
    if unknown:
        raise BadRequest(
            f"Parameter {unknown[0]} of the query (counting names in the order given) is a "
            "search parameter this server does not support; supported: "
            + ", ".join(sorted(supported)),
            issue_code="not-supported",
        )


def page_of(params: Mapping[str, str]) -> Page:
    count = DEFAULT_COUNT
    if "_count" in params:
        try:
            count = int(params["_count"])
        except ValueError:
            raise BadRequest("_count must be a whole number", expression="_count") from None
        if count < 0:
            raise BadRequest("_count must not be negative", expression="_count")
        count = min(count, MAX_COUNT)
    cursor = None
    if params.get("_cursor"):
        try:
            raw = base64.urlsafe_b64decode(params["_cursor"].encode()).decode()
            stamp, _, ident = raw.partition("|")
            cursor = (dt.datetime.fromisoformat(stamp), ident)
            if cursor[0].tzinfo is None or not ident:
                raise ValueError
            cursor = (utc_in_range(cursor[0], SEARCH_EARLIEST, SEARCH_LATEST), ident)
        except ValueError:
            raise BadRequest(
                "_cursor is not one this server issued", expression="_cursor"
            ) from None
    return Page(count, cursor)


def encode_cursor(created_at: dt.datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{ident}".encode()).decode()


def token(value: str) -> tuple[str | None, str]:
    """A token parameter 'system|code' (or just 'code')."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system or None, code
    return None, value


def date_bound(value: str, name: str) -> tuple[str, dt.datetime]:
    """A date parameter like 'ge2026-01-01' as (prefix, instant)."""
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    try:
        if len(text) == 4:
            instant = dt.datetime(int(text), 1, 1, tzinfo=dt.UTC)
        elif len(text) == 7:
            instant = dt.datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=dt.UTC)
        else:
            instant = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if instant.tzinfo is None:
                instant = instant.replace(tzinfo=dt.UTC)
    except ValueError:
        raise BadRequest(f"{name} must be a FHIR date or dateTime", expression=name) from None
    try:
        # A bound only needs comparing (lt2999 is a fair way to say "any"), so its range is
        # wider than that of instants the bridge holds; still clear of the year 9999, past which
        # a day or a year more (audit date precision) overflows.
        instant = utc_in_range(instant, SEARCH_EARLIEST, SEARCH_LATEST)
    except ValueError as refused:
        raise BadRequest(f"{name} {refused}", expression=name) from None
    if prefix == "ne":
        raise BadRequest(
            f"{name} does not support the 'ne' prefix", issue_code="not-supported", expression=name
        )
    return prefix, instant


def searchset(
    base_url: str,
    resource_type: str,
    query: Sequence[tuple[str, str]],
    resources: list[dict[str, Any]],
    total: int,
    next_cursor: str | None,
) -> dict[str, Any]:
    own = [(k, v) for k, v in query if k != "_cursor"]
    links = [{"relation": "self", "url": f"{base_url}/{resource_type}?{urlencode(query)}"}]
    if next_cursor:
        links.append(
            {
                "relation": "next",
                "url": f"{base_url}/{resource_type}?{urlencode([*own, ('_cursor', next_cursor)])}",
            }
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if resources:  # never an empty array (FHIR JSON: no empty arrays)
        bundle["entry"] = [
            {
                "fullUrl": f"{base_url}/{resource_type}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ]
    return bundle


# The tag of an entry a search returns with fewer elements than it has (_elements).
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
# What _elements always keeps: the elements R4 requires of each type we serve.
REQUIRED_ELEMENTS: dict[str, tuple[str, ...]] = {
    "ServiceRequest": ("status", "intent", "subject"),
    "Task": ("status", "intent"),
    "Patient": (),
    "Appointment": ("status", "participant"),
    "Observation": ("status", "code"),
    "QuestionnaireResponse": ("status",),
}


def _local_references(node: Any) -> bool:
    """Whether ``node`` holds a reference to a contained resource (``#id``)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            reference = item.get("reference")
            if isinstance(reference, str) and reference.startswith("#"):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def subsetted(resource: dict[str, Any], elements: Sequence[str]) -> dict[str, Any]:
    """``resource`` with only ``elements`` (and id, meta and what R4 requires), tagged SUBSETTED."""
    keep = {"resourceType", "id", "meta", *elements}
    keep.update(REQUIRED_ELEMENTS.get(str(resource.get("resourceType")), ()))
    out = {k: v for k, v in resource.items() if k in keep}
    if "contained" in resource and _local_references(out):
        out["contained"] = resource["contained"]  # what a kept #reference points at
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    out["meta"] = meta
    return out


def search_bundle(
    base_url: str,
    resource_type: str,
    used: Sequence[tuple[str, str]],
    matches: Sequence[dict[str, Any]],
    included: Sequence[dict[str, Any]],
    total: int | None,
    next_cursor: str | None,
    *,
    cursor: str | None = None,
    elements: Sequence[str] | None = None,
    outcome: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A searchset Bundle: the matches (subsetted for _elements), what _include / _revinclude
    brought, and an OperationOutcome entry (search.mode outcome) saying what was ignored. The
    links carry the parameters ``used`` (what was ignored is not part of the search)."""
    own = list(used)
    this_page = [*own, ("_cursor", cursor)] if cursor else own
    links = [{"relation": "self", "url": f"{base_url}/{resource_type}?{urlencode(this_page)}"}]
    if next_cursor:
        links.append(
            {
                "relation": "next",
                "url": f"{base_url}/{resource_type}?{urlencode([*own, ('_cursor', next_cursor)])}",
            }
        )
    entries: list[dict[str, Any]] = []
    for resource in matches:
        shown = subsetted(resource, elements) if elements is not None else resource
        entries.append(
            {
                "fullUrl": f"{base_url}/{resource['resourceType']}/{resource['id']}",
                "resource": shown,
                "search": {"mode": "match"},
            }
        )
    for resource in included:
        entries.append(
            {
                "fullUrl": f"{base_url}/{resource['resourceType']}/{resource['id']}",
                "resource": resource,
                "search": {"mode": "include"},
            }
        )
    if outcome is not None:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": outcome,
                "search": {"mode": "outcome"},
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle
