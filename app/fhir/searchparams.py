"""The search parameters of every resource type we serve: one table per type.

The table is the one statement of what a search may say. It drives:
- the parsing of a search (:func:`parse_search`): names, modifiers and chains, result parameters,
  lenient handling of what we do not support (ignored and reported) or strict with
  ``Prefer: handling=strict`` (400);
- the SQL (``app.cases.search`` has one condition builder per parameter and checks at import that
  it has one for every parameter here, and none besides);
- the CapabilityStatement (``app.metadata``: searchParam, searchInclude, searchRevInclude);
- the OpenAPI document (:func:`openapi_parameters`, on every search route).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.db import utc_in_range
from app.errors import BadRequest, Issue

HL7_SEARCH_PARAMETER = "http://hl7.org/fhir/SearchParameter/"
DEFAULT_COUNT = 20
MAX_COUNT = 100


@dataclass(frozen=True)
class SearchParam:
    """One search parameter of one resource type."""

    name: str
    type: str  # FHIR search parameter type: token, reference, date, string
    documentation: str
    # The HL7 SearchParameter it is (its canonical URL), when it is a standard one.
    definition: str | None = None
    # Modifiers taken besides none (``patient:identifier``), and chained parameters of the
    # target (``patient.identifier``).
    modifiers: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()
    # Whether _sort may name it (only what we index).
    sortable: bool = False


def _standard(resource_type: str, name: str) -> str:
    base = name.lstrip("_")
    owner = "Resource" if name.startswith("_") else resource_type
    return f"{HL7_SEARCH_PARAMETER}{owner}-{base.replace('_', '')}"


NHS_NUMBER_VALUE = (
    "the NHS number as https://fhir.nhs.uk/Id/nhs-number|<number> or the number alone"
)


def _id(resource_type: str) -> SearchParam:
    return SearchParam(
        "_id", "token", "The logical id (comma: any of)", _standard(resource_type, "_id")
    )


def _last_updated(resource_type: str, what: str) -> SearchParam:
    return SearchParam(
        "_lastUpdated",
        "date",
        f"When {what} last changed, with a prefix (eq, gt, ge, lt, le; repeat for a range)",
        _standard(resource_type, "_lastUpdated"),
        sortable=True,
    )


def _patient(resource_type: str, name: str = "patient") -> SearchParam:
    return SearchParam(
        name,
        "reference",
        f"The patient: Patient/<id>, or {NHS_NUMBER_VALUE}; {name}:identifier and "
        f"{name}.identifier take {NHS_NUMBER_VALUE}",
        _standard(resource_type, name),
        modifiers=("identifier",),
        chains=("identifier",),
    )


def _based_on(resource_type: str) -> SearchParam:
    return SearchParam(
        "based-on",
        "reference",
        "ServiceRequest/<referral id>: what was made for that referral (comma: any of)",
        _standard(resource_type, "based-on"),
    )


@dataclass(frozen=True)
class ResourceSearch:
    """What a search of one resource type may say."""

    resource_type: str
    parameters: tuple[SearchParam, ...]
    # _include and _revinclude values we follow, with what each brings.
    includes: dict[str, str] = field(default_factory=dict)
    revincludes: dict[str, str] = field(default_factory=dict)
    documentation: str = ""

    def parameter(self, name: str) -> SearchParam | None:
        return next((p for p in self.parameters if p.name == name), None)


SEARCHES: dict[str, ResourceSearch] = {
    "ServiceRequest": ResourceSearch(
        "ServiceRequest",
        (
            _id("ServiceRequest"),
            SearchParam(
                "identifier",
                "token",
                "The referrer's identifier for the referral, system|value or value",
                _standard("ServiceRequest", "identifier"),
            ),
            _patient("ServiceRequest"),
            _patient("ServiceRequest", "subject"),
            SearchParam(
                "status",
                "token",
                "active, revoked, completed (comma: any of); social prescriptions: draft, "
                "active, completed, revoked",
                _standard("ServiceRequest", "status"),
                sortable=True,
            ),
            SearchParam(
                "performer",
                "reference",
                "HealthcareService/<service id>, or the service id: the service referred to",
                _standard("ServiceRequest", "performer"),
            ),
            _based_on("ServiceRequest"),
            _last_updated("ServiceRequest", "the referral"),
        ),
        includes={
            "ServiceRequest:patient": "the referral's Patient",
            "ServiceRequest:subject": "the referral's Patient",
        },
        revincludes={
            "Task:focus": "the Task that shows where each referral stands",
            "Task:based-on": "the Task that shows where each referral stands",
        },
        documentation="Without based-on a search finds referrals; with based-on it finds the "
        "social prescriptions made for those referrals (and takes only patient, subject, status, "
        "_id and _lastUpdated besides).",
    ),
    "Task": ResourceSearch(
        "Task",
        (
            _id("Task"),
            SearchParam(
                "status",
                "token",
                "requested, accepted, in-progress, on-hold, completed, failed, cancelled, "
                "rejected (comma: any of)",
                _standard("Task", "status"),
                sortable=True,
            ),
            SearchParam(
                "business-status",
                "token",
                "Our businessStatus code (https://fhir.spbridge.org/CodeSystem/"
                "task-business-status|code, or the code alone)",
                _standard("Task", "business-status"),
            ),
            _last_updated("Task", "the Task"),
            SearchParam(
                "authored-on",
                "date",
                "When the referral was received, with a prefix",
                _standard("Task", "authored-on"),
                sortable=True,
            ),
            _patient("Task"),
            _patient("Task", "subject"),
            SearchParam(
                "owner",
                "reference",
                "HealthcareService/<service id>, or the service id: the service doing the work",
                _standard("Task", "owner"),
            ),
            SearchParam(
                "requester",
                "reference",
                "Organization/<ODS code>, or the ODS code: the referring organisation; "
                "requester:identifier takes https://fhir.nhs.uk/Id/ods-organization-code|<code>",
                _standard("Task", "requester"),
                modifiers=("identifier",),
            ),
            SearchParam(
                "focus",
                "reference",
                "ServiceRequest/<referral id> (comma: any of)",
                _standard("Task", "focus"),
            ),
            SearchParam(
                "based-on",
                "reference",
                "ServiceRequest/<referral id> (comma: any of)",
                _standard("Task", "based-on"),
            ),
        ),
        includes={
            "Task:focus": "the referral (ServiceRequest)",
            "Task:based-on": "the referral (ServiceRequest)",
            "Task:patient": "the Patient",
            "Task:output": "what the case produced: Appointments, social prescriptions, "
            "SWEMWBS answers and scores",
        },
    ),
    "Patient": ResourceSearch(
        "Patient",
        (
            _id("Patient"),
            SearchParam(
                "identifier",
                "token",
                f"The NHS number: {NHS_NUMBER_VALUE}",
                _standard("Patient", "identifier"),
            ),
            _last_updated("Patient", "the Patient"),
        ),
        documentation="One Patient per referral: what that referral said of the person.",
    ),
    "Appointment": ResourceSearch(
        "Appointment",
        (
            _id("Appointment"),
            _based_on("Appointment"),
            _patient("Appointment"),
            SearchParam(
                "status",
                "token",
                "booked, fulfilled, noshow, cancelled (comma: any of)",
                _standard("Appointment", "status"),
                sortable=True,
            ),
            SearchParam(
                "date",
                "date",
                "When the appointment starts, with a prefix",
                _standard("Appointment", "date"),
                sortable=True,
            ),
            _last_updated("Appointment", "the appointment"),
        ),
    ),
    "Observation": ResourceSearch(
        "Observation",
        (
            _id("Observation"),
            _based_on("Observation"),
            _patient("Observation"),
            _patient("Observation", "subject"),
            SearchParam(
                "date",
                "date",
                "When the score was measured, with a prefix",
                _standard("Observation", "date"),
                sortable=True,
            ),
            _last_updated("Observation", "the score"),
        ),
    ),
    "QuestionnaireResponse": ResourceSearch(
        "QuestionnaireResponse",
        (
            _id("QuestionnaireResponse"),
            _based_on("QuestionnaireResponse"),
            _patient("QuestionnaireResponse"),
            _patient("QuestionnaireResponse", "subject"),
            SearchParam(
                "authored",
                "date",
                "When the answers were given, with a prefix",
                _standard("QuestionnaireResponse", "authored"),
                sortable=True,
            ),
            _last_updated("QuestionnaireResponse", "the answers"),
        ),
    ),
}

# Parameters every search takes besides its own (result parameters), with what they do.
RESULT_PARAMETERS: dict[str, str] = {
    "_count": f"Page size, 0 to {MAX_COUNT} (default {DEFAULT_COUNT}); 0 gives the total only",
    "_sort": "Comma-separated sortable parameters, '-' before one for descending",
    "_elements": "Comma-separated top-level elements to return (the entries are SUBSETTED)",
    "_summary": "count (the total only), false or data (whole resources)",
    "_total": "none, estimate or accurate (default accurate)",
    "_include": "What to include with the matches (repeatable)",
    "_revinclude": "What to include that refers to the matches (repeatable)",
    "_format": "json, application/json or application/fhir+json (nothing else is served)",
    "_pretty": "Accepted and ignored",
    "_cursor": "The position of the next page (from a next link)",
}
_SUMMARIES = ("count", "false", "data")
_FORMATS = ("json", "application/json", "application/fhir+json")
_TOTALS = ("none", "estimate", "accurate")
# Element names (_elements): FHIR element names are letters and digits.
_ELEMENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@dataclass(frozen=True)
class Criterion:
    """One search parameter as given: its declaration, modifier or chain, and each value (a
    repeated parameter gives several criteria: all must hold; a comma separates alternatives)."""

    parameter: SearchParam
    modifier: str | None
    chain: str | None
    values: tuple[str, ...]
    position: int  # among the query's parameter names, from 1 (errors name it, never the value)

    @property
    def name(self) -> str:
        return self.parameter.name


@dataclass(frozen=True)
class SortKey:
    name: str
    descending: bool


@dataclass
class Search:
    """A search as parsed: criteria, result parameters, and what was ignored (lenient)."""

    resource_type: str
    criteria: list[Criterion]
    count: int = DEFAULT_COUNT
    sort: list[SortKey] = field(default_factory=list)
    elements: tuple[str, ...] | None = None
    summary_count: bool = False
    total: str = "accurate"
    includes: list[str] = field(default_factory=list)
    revincludes: list[str] = field(default_factory=list)
    cursor: list[Any] | None = None
    cursor_token: str | None = None
    ignored: list[Issue] = field(default_factory=list)
    # The parameters as the search was carried out (the self and next links say these, not
    # what was ignored: FHIR search, the self link).
    used: list[tuple[str, str]] = field(default_factory=list)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.criteria)

    def values(self, name: str) -> list[str]:
        return [v for c in self.criteria if c.name == name for v in c.values]


def _name_parts(name: str) -> tuple[str, str | None, str | None]:
    if ":" in name:
        base, _, modifier = name.partition(":")
        return base, modifier, None
    if "." in name:
        base, _, chain = name.partition(".")
        return base, None, chain
    return name, None, None


class _Handling:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.ignored: list[Issue] = []

    def unsupported(self, position: int, what: str, expression: str | None = None) -> None:
        """A parameter or value we do not support: 400 when strict, else ignored and said."""
        text = f"Parameter {position} of the query (counting names in the order given) {what}"
        if self.strict:
            raise BadRequest(text, issue_code="not-supported", expression=expression)
        self.ignored.append(
            Issue(
                "not-supported",
                f"{text}: ignored",
                expression,
                severity="warning",
                details="search-ignored",
            )
        )


def _count(values: list[str]) -> int:
    try:
        count = int(values[-1])
    except ValueError:
        raise BadRequest("_count must be a whole number", expression="_count") from None
    if count < 0:
        raise BadRequest("_count must not be negative", expression="_count")
    return min(count, MAX_COUNT)


def _element_name(value: str) -> bool:
    return bool(value) and len(value) <= 64 and set(value) <= _ELEMENT_CHARS


def parse_search(
    resource_type: str,
    items: Sequence[tuple[str, str]],
    *,
    strict: bool,
    only: Iterable[str] | None = None,
) -> Search:
    """The search ``items`` (name, value pairs, in order) ask for; ``only`` narrows the
    parameters taken (a mode of the search that takes fewer). Errors and ignored parameters are
    located by position among the query's names, never quoting a name or value (they are the
    client's)."""
    table = SEARCHES[resource_type]
    allowed = set(only) if only is not None else None
    handling = _Handling(strict)
    search = Search(resource_type, [])
    names = list(dict.fromkeys(name for name, _ in items))
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        grouped.setdefault(name, []).append(value)
    for position, name in enumerate(names, 1):
        values = grouped[name]
        if name in RESULT_PARAMETERS:
            _result_parameter(search, table, name, values, position, handling)
            continue
        base, modifier, chain = _name_parts(name)
        parameter = table.parameter(base)
        if (
            parameter is None
            or (modifier is not None and modifier not in parameter.modifiers)
            or (chain is not None and chain not in parameter.chains)
        ):
            handling.unsupported(position, "is not a search parameter of this resource type")
            continue
        if allowed is not None and base not in allowed:
            raise BadRequest(
                f"Parameter {position} of the query cannot be used with this search "
                f"({table.documentation})",
                issue_code="not-supported",
            )
        for value in values:
            if value == "":
                continue  # an empty parameter is no condition (FHIR search)
            search.criteria.append(
                Criterion(parameter, modifier, chain, tuple(value.split(",")), position)
            )
            search.used.append((name, value))
    search.ignored = handling.ignored
    search.used += _result_used(search, set(grouped))
    return search


def _result_used(search: Search, given: set[str]) -> list[tuple[str, str]]:
    used: list[tuple[str, str]] = []
    if "_count" in given:
        used.append(("_count", str(search.count)))
    if search.sort:
        used.append(
            ("_sort", ",".join(("-" if k.descending else "") + k.name for k in search.sort))
        )
    if search.elements is not None:
        used.append(("_elements", ",".join(search.elements)))
    if search.summary_count:
        used.append(("_summary", "count"))
    if "_total" in given:
        used.append(("_total", search.total))
    used += [("_include", value) for value in search.includes]
    used += [("_revinclude", value) for value in search.revincludes]
    return used


def _result_parameter(
    search: Search,
    table: ResourceSearch,
    name: str,
    values: list[str],
    position: int,
    handling: _Handling,
) -> None:
    if name == "_count":
        search.count = _count(values)
    elif name == "_cursor":
        search.cursor = decode_cursor(values[-1]) if values[-1] else None
        search.cursor_token = values[-1] or None
    elif name == "_sort":
        for part in ",".join(values).split(","):
            if not part:
                continue
            key = part.removeprefix("-")
            declared = table.parameter(key)
            if declared is None or not declared.sortable:
                handling.unsupported(position, "names a parameter this server cannot sort by")
                continue
            search.sort.append(SortKey(key, part.startswith("-")))
    elif name == "_elements":
        wanted = [v for v in ",".join(values).split(",") if v]
        if not all(_element_name(v) for v in wanted):
            raise BadRequest("_elements takes element names", expression="_elements")
        search.elements = tuple(dict.fromkeys(wanted))
    elif name == "_summary":
        value = values[-1]
        if value not in _SUMMARIES:
            handling.unsupported(
                position,
                f"asks for a summary this server does not make "
                f"(supported: {', '.join(_SUMMARIES)})",
            )
        search.summary_count = value == "count"
    elif name == "_total":
        value = values[-1]
        if value not in _TOTALS:
            raise BadRequest(f"_total must be one of {', '.join(_TOTALS)}", expression="_total")
        search.total = value
    elif name in ("_include", "_revinclude"):
        known = table.includes if name == "_include" else table.revincludes
        chosen = search.includes if name == "_include" else search.revincludes
        for value in values:
            if value in known:
                if value not in chosen:
                    chosen.append(value)
            else:
                handling.unsupported(position, f"names an {name[1:]} this server does not follow")
    # _format is checked before any search (406 for what we do not serve); _pretty is ignored.


_DATE_PREFIXES = ("eq", "gt", "lt", "ge", "le")
SEARCH_EARLIEST = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
SEARCH_LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def date_range(value: str, name: str) -> tuple[str, dt.datetime, dt.datetime]:
    """A date parameter (``ge2026-01-01``) as its prefix and the range its value stands for, to
    the precision given: [first instant, first instant after) (FHIR search, dates)."""
    prefix = value[:2] if value[:2].isalpha() else "eq"
    text = value[2:] if value[:2].isalpha() else value
    if prefix not in _DATE_PREFIXES:
        raise BadRequest(
            f"{name} takes the prefixes {', '.join(_DATE_PREFIXES)}",
            issue_code="not-supported",
            expression=name,
        )
    step: dt.timedelta | None = None
    try:
        if len(text) == 4:
            lower = dt.datetime(int(text), 1, 1, tzinfo=dt.UTC)
        elif len(text) == 7 and text[4] == "-":
            lower = dt.datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=dt.UTC)
        elif len(text) == 10:
            lower = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
            step = dt.timedelta(days=1)
        else:
            lower = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if lower.tzinfo is None:
                lower = lower.replace(tzinfo=dt.UTC)
            # To the precision given: seconds, or the fraction of a second written.
            fraction = text.partition(".")[2]
            digits = len(fraction) - len(fraction.lstrip("0123456789"))
            step = (
                dt.timedelta(microseconds=10 ** (6 - min(digits, 6)))
                if digits
                else dt.timedelta(seconds=1)
            )
    except ValueError:
        raise BadRequest(f"{name} must be a FHIR date or dateTime", expression=name) from None
    try:
        # A bound is only compared (lt2999 is a fair way to say "any"), so its range is wider
        # than that of instants the bridge holds, and clear of the year 9999.
        lower = utc_in_range(lower, SEARCH_EARLIEST, SEARCH_LATEST)
    except ValueError as refused:
        raise BadRequest(f"{name} {refused}", expression=name) from None
    if step is not None:
        upper = lower + step
    elif len(text) == 4:
        upper = lower.replace(year=lower.year + 1)
    else:
        upper = (lower + dt.timedelta(days=32)).replace(day=1)
    return prefix, lower, upper


def encode_cursor(values: Sequence[Any]) -> str:
    """The position after a row, from its sort values and id (an opaque token for next links)."""
    plain = [v.isoformat() if isinstance(v, dt.datetime) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps(plain)).decode()


def decode_cursor(token: str) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest("_cursor is not one this server issued", expression="_cursor") from None
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise BadRequest("_cursor is not one this server issued", expression="_cursor")
    return values


def openapi_parameters(
    resource_type: str, only: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """The OpenAPI query parameters of a search of ``resource_type``, from its table."""
    table = SEARCHES[resource_type]
    documented: list[dict[str, Any]] = []
    for parameter in table.parameters:
        if only is not None and parameter.name not in set(only):
            continue
        names = [
            parameter.name,
            *(f"{parameter.name}:{m}" for m in parameter.modifiers),
            *(f"{parameter.name}.{c}" for c in parameter.chains),
        ]
        for name in names:
            schema: dict[str, Any] = {"type": "string"}
            if parameter.type == "date":
                documented.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "description": parameter.documentation,
                        "schema": {"type": "array", "items": schema},
                        "style": "form",
                        "explode": True,
                    }
                )
                continue
            documented.append(
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "description": parameter.documentation,
                    "schema": schema,
                }
            )
    for name, description in RESULT_PARAMETERS.items():
        # What lenient handling ignores (and says) is no enum here: any value is answered.
        schema = {"type": "string"}
        if name == "_count":
            schema = {"type": "integer", "minimum": 0}
        elif name == "_total":
            schema = {"type": "string", "enum": list(_TOTALS)}
        elif name == "_format":
            schema = {"type": "string", "enum": sorted(_FORMATS)}
        elif name in ("_include", "_revinclude"):
            followed = table.includes if name == "_include" else table.revincludes
            if not followed:
                continue
            description += f": {', '.join(followed)}"
        documented.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": schema,
            }
        )
    return documented
