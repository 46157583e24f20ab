"""FHIR R4 validation of resource dicts: HL7's R4 JSON schema, plus what the schema cannot say.

Data (fhir/r4/, see its SOURCES.md): HL7's R4 JSON schema and, read from the R4
StructureDefinitions, the target types of every Reference element, the required primitive
elements and the codes of required bindings the schema leaves out. Each resource type's schema
is compiled once (fastjsonschema), on first use.

``validate_resource`` checks a resource against:

- the schema: unknown elements, codes outside a required binding (``telecom.system``,
  ``name.use``, and those HL7's schema leaves out such as ``ServiceRequest.status``), wrong JSON
  types (an object where R4 has one, not an array), primitive formats, whole numbers in R4's
  range for the integer types. Resources held inside others (``contained``, ``Bundle.entry``,
  ``Parameters.parameter.resource``) are validated as their own type;
- FHIR's rules the schema cannot express: no empty arrays, objects or strings, no nulls
  (JSON representation §2.6.2), required primitive elements present (as a value or an
  ``_element``), days the calendar has (not 30 February), at most one type of each choice
  element (``occurrenceDateTime`` or ``occurrencePeriod``, not both), and no
  ``modifierExtension`` at all: we understand none, and a resource with a modifier extension its
  reader does not understand must be refused.

``check_reference_targets`` checks that every Reference points at a resource type R4 allows for
its element (``Observation.performer`` may not be a HealthcareService), that a literal reference
and its ``type`` agree, and that ``#id`` references resolve to a contained resource.

Every issue names the element with a FHIRPath-like expression (``Patient.telecom[0].system``,
``Bundle.entry[1].resource.subject``) and never quotes the value.
"""

from __future__ import annotations

import datetime as dt
import gzip
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import fastjsonschema
import orjson

from app.errors import Issue
from app.fhir.codes import FHIR_DATA_DIR

R4_DATA_DIR = FHIR_DATA_DIR / "r4"
SCHEMA_FILE = R4_DATA_DIR / "fhir.schema.json.gz"
ELEMENTS_FILE = R4_DATA_DIR / "elements.json"

ANY_RESOURCE = "Resource"
_INT32 = {"minimum": -(2**31), "maximum": 2**31 - 1}
# The schema's integers are "type": "number" with a pattern that JSON Schema applies to strings
# only, so 1.5 would pass as an integer.
_INTEGER_TYPES = {
    "integer": {"type": "integer", **_INT32},
    "positiveInt": {"type": "integer", **_INT32, "minimum": 1},
    "unsignedInt": {"type": "integer", **_INT32, "minimum": 0},
}
# Nested resources are validated on their own (as their own type), not through the schema's
# oneOf over every resource type, which would compile everything and report nothing useful.
_NESTED_RESOURCE = {
    "type": "object",
    "properties": {"resourceType": {"type": "string"}},
    "required": ["resourceType"],
}
_RESOURCE_LIST = "ResourceList"
_XHTML = {"type": "string"}
# The schema's patterns allow any day from 01 to 31 in any month.
_DATED = frozenset({"date", "dateTime", "instant"})
_LITERAL_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_HL7_STRUCTURE_DEFINITION = "http://hl7.org/fhir/StructureDefinition/"
_JSON_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "object": "an object",
    "array": "an array",
}


@dataclass(frozen=True)
class _Property:
    definition: str | None  # the schema definition of the element's type; None for primitives
    is_resource: bool  # holds a resource (contained, Bundle.entry.resource, …)
    dated: bool = False  # a date, dateTime or instant: its day must be one the calendar has


@dataclass
class _R4:
    definitions: dict[str, Any]
    resource_types: frozenset[str]
    reference_targets: dict[str, dict[str, tuple[str, ...]]]
    required_primitives: dict[str, tuple[str, ...]]
    required_codes: dict[str, dict[str, tuple[str, ...]]]
    # definition → its choice elements: (element, the names of its types, those names and
    # their "_" siblings: one set lookup says whether more than one could be given)
    choices: dict[str, tuple[tuple[str, tuple[str, ...], frozenset[str]], ...]]
    primitive_names: dict[str, str]  # a primitive's pattern → its name, for messages
    shapes: dict[str, dict[str, _Property]] = field(default_factory=dict)
    holding: dict[str, frozenset[str]] | None = None

    def holding_elements(self, definition: str) -> frozenset[str]:
        """The elements of this type that hold a resource, or a type that can hold one at any
        depth (``contained``, ``Bundle.entry``; never ``identifier`` or ``code``): walks for
        nested resources look at those alone."""
        if self.holding is None:
            shapes = {
                name: self.shape(name)
                for name, spec in self.definitions.items()
                if "properties" in spec
            }
            # Types holding one directly, then those holding one of those, until none is added.
            holds = {
                name for name, shape in shapes.items() if any(p.is_resource for p in shape.values())
            }
            while more := {
                name
                for name, shape in shapes.items()
                if name not in holds and any(p.definition in holds for p in shape.values())
            }:
                holds |= more
            self.holding = {
                name: frozenset(
                    key
                    for key, prop in shape.items()
                    if prop.is_resource or prop.definition in holds
                )
                for name, shape in shapes.items()
            }
        return self.holding.get(definition, frozenset())

    def shape(self, definition: str) -> dict[str, _Property]:
        """The elements of a complex type or resource: name → what it holds."""
        known = self.shapes.get(definition)
        if known is None:
            known = {}
            for name, spec in self.definitions[definition].get("properties", {}).items():
                ref = spec.get("$ref") or spec.get("items", {}).get("$ref")
                child = ref.rsplit("/", 1)[1] if isinstance(ref, str) else None
                if child == _RESOURCE_LIST:
                    known[name] = _Property(None, is_resource=True)
                elif child is not None and "properties" in self.definitions[child]:
                    known[name] = _Property(child, is_resource=False)
                else:  # a primitive
                    known[name] = _Property(None, is_resource=False, dated=child in _DATED)
            self.shapes[definition] = known
        return known


@cache
def _r4() -> _R4:
    schema = orjson.loads(gzip.decompress(SCHEMA_FILE.read_bytes()))
    elements = orjson.loads(ELEMENTS_FILE.read_bytes())
    definitions: dict[str, Any] = schema["definitions"]
    primitive_names: dict[str, str] = {}
    for name, spec in definitions.items():
        if "properties" not in spec and "pattern" in spec:
            primitive_names.setdefault(spec["pattern"], name)
    return _R4(
        definitions=definitions,
        resource_types=frozenset(schema["discriminator"]["mapping"]),
        reference_targets={
            definition: {name: tuple(types) for name, types in names.items()}
            for definition, names in elements["referenceTargets"].items()
        },
        required_primitives={
            definition: tuple(names) for definition, names in elements["requiredPrimitives"].items()
        },
        required_codes={
            definition: {name: tuple(codes) for name, codes in names.items()}
            for definition, names in elements["requiredCodes"].items()
        },
        choices={
            definition: tuple(
                (name, tuple(names), frozenset([*names, *(f"_{n}" for n in names)]))
                for name, names in groups.items()
            )
            for definition, groups in elements["choices"].items()
        },
        primitive_names=primitive_names,
    )


def resource_types() -> frozenset[str]:
    """The R4 resource type names."""
    return _r4().resource_types


def _compact(definition: dict[str, Any], integers: dict[str, Any]) -> dict[str, Any]:
    """A definition ready to compile: objects and integers tightened, descriptions left out
    (they make the generated code slow to compile)."""
    if definition.get("type") == "number" and definition.get("pattern") in integers:
        # Integer elements carry the integer's pattern inline as well as by $ref.
        return dict(integers[definition["pattern"]])
    out = {key: value for key, value in definition.items() if key != "description"}
    if "properties" in out:
        # HL7's complex types say nothing of "type", so an array or a string would pass.
        out["type"] = "object"
        out["properties"] = {
            name: _compact(spec, integers) for name, spec in out["properties"].items()
        }
    if "const" in out:
        # fastjsonschema 2.21-2.22 fails to compile "const" without detailed exceptions.
        out["enum"] = [out.pop("const")]
    return out


@cache
def _validator(resource_type: str) -> Callable[[Any], Any]:
    """The compiled schema of one resource type (only the definitions it reaches).

    Without detailed exceptions (their code holds every rule's expanded definition and takes
    seconds to compile) and without fast_fail, so one call reports every problem.
    """
    source = fastjsonschema.compile_to_code(
        _schema(resource_type), detailed_exceptions=False, fast_fail=False
    )
    return _compiled_validator(source)


def _schema(resource_type: str) -> dict[str, Any]:
    """HL7's schema of one resource type, the definitions it reaches, as we check it."""
    r4 = _r4()
    integers = {r4.definitions[name]["pattern"]: spec for name, spec in _INTEGER_TYPES.items()}
    # HL7's schema gives xhtml (Narrative.div) no type at all: a number would pass.
    patched = {**r4.definitions, _RESOURCE_LIST: _NESTED_RESOURCE, "xhtml": _XHTML}
    reached: dict[str, Any] = {}
    todo = [resource_type]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached[name] = _compact(patched[name], integers)
        for element, codes in r4.required_codes.get(name, {}).items():
            # In place of the $ref to "code" (draft 6 ignores whatever stands beside a $ref).
            properties = reached[name]["properties"]
            # A string first: a number is refused as the wrong type, not as an unknown code.
            code = {"type": "string", "enum": list(codes)}
            if properties[element].get("type") == "array":
                properties[element] = {"type": "array", "items": code}
            else:
                properties[element] = code
        todo.extend(_refs(reached[name]) - reached.keys())
    return {
        "$schema": "http://json-schema.org/draft-06/schema#",
        "$ref": f"#/definitions/{resource_type}",
        "definitions": reached,
    }


# fastjsonschema (2.22) names each array item's path for its messages as
# "….identifier[{data__identifier_x}]".format(**locals()): a dict of the validating function's
# every local, made for every item of every array, whether anything fails or not. As f-strings
# the same paths cost a fraction: the ServiceRequest check of the bench referral fell from 75 to
# 22 µs. The generated code is otherwise run as fastjsonschema.compile runs it (exec), and
# tests/fhir/test_validation_code.py checks that the rewrite still finds what it rewrites and
# that the validators answer as fastjsonschema's own would.
_FORMAT_LOCALS = re.compile(r'"([^"\\\n]*)"\.format\(\*\*locals\(\)\)')


def _with_f_strings(source: str) -> str:
    return _FORMAT_LOCALS.sub(r'f"\1"', source)


def _compiled_validator(source: str) -> Callable[[Any], Any]:
    namespace: dict[str, Any] = {}
    # The code fastjsonschema generated from HL7's schema, as its compile() runs it.
    exec(_with_f_strings(source), namespace)  # noqa: S102
    validate: Callable[[Any], Any] = namespace["validate"]
    return validate


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                found.add(ref.rsplit("/", 1)[1])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


# --- the schema ---------------------------------------------------------------------------------


# fastjsonschema's messages without detailed exceptions: "<where> must <rule …>". Only the
# location and the kind of rule are read from them; nothing of the message reaches an issue.
_MESSAGE = re.compile(r"^data(?P<path>(?:\.[A-Za-z0-9_]+|\[\d+\])*) must (?P<rule>.*)$", re.DOTALL)
_PATH_PART = re.compile(r"\.([A-Za-z0-9_]+)|\[(\d+)\]")


def _schema_issue(resource: Mapping[str, Any], root: str, message: str) -> list[Issue]:
    parsed = _MESSAGE.match(message)
    if parsed is None:
        return [Issue("invalid", f"{root} is not valid R4", root)]
    r4 = _r4()
    where = root
    node: Any = resource
    parent: Any = None
    definition: str | None = resource.get("resourceType")
    for name, index in _PATH_PART.findall(parsed["path"]):
        if index:
            where += f"[{index}]"
            node = node[int(index)] if isinstance(node, list) else None
        else:
            where += f".{name}"
            prop = r4.shape(definition).get(name) if definition else None
            definition = prop.definition if prop else None
            parent, node = node, (node.get(name) if isinstance(node, dict) else None)
    rule = parsed["rule"]
    if node is None and _paired_null(parent, parsed["path"]):
        return []  # the schema refuses [null, …] lined up with an _element array; FHIR allows it
    # An unknown element is located at its parent, never named: the name is the client's (T7).
    if (
        rule.startswith("not contain")
        and isinstance(node, dict)
        and definition
        and any(key not in r4.shape(definition) for key in node)
    ):
        return [Issue("structure", f"{where} has an element not defined in R4", where)]
    if rule.startswith("contain") and isinstance(node, dict) and definition:
        required = r4.definitions[definition].get("required", [])
        missing = [f"{where}.{key}" for key in required if key not in node]
        if missing:
            return [Issue("required", f"{path} is required", path) for path in missing]
    if rule.startswith("be one of"):
        return [Issue("code-invalid", f"{where} is not one of the codes R4 allows here", where)]
    if rule.startswith("match pattern"):
        pattern = rule.removeprefix("match pattern ")
        primitive = r4.primitive_names.get(pattern, "value")
        return [Issue("value", f"{where} is not a valid FHIR {primitive}", where)]
    if rule.startswith(("be bigger", "be smaller")):
        return [Issue("value", f"{where} is out of the range R4 allows", where)]
    if rule.startswith("be "):
        wanted = rule.removeprefix("be ").split(" ", 1)[0]
        if wanted in _JSON_TYPE_NAMES:
            return [Issue("structure", f"{where} must be {_JSON_TYPE_NAMES[wanted]}", where)]
    return [Issue("invalid", f"{where} is not valid R4", where)]


def _paired_null(parent: Any, path: str) -> bool:
    """Whether ``path`` (``….name[i]``) is a null in an array of primitives whose ``_name`` (or
    ``name``) array has something at the same place."""
    parts = _PATH_PART.findall(path)
    if len(parts) < 2 or not parts[-1][1] or not isinstance(parent, dict):
        return False
    key, index = parts[-2][0], int(parts[-1][1])
    partner = parent.get(key[1:] if key.startswith("_") else f"_{key}")
    return isinstance(partner, list) and index < len(partner) and partner[index] is not None


def _schema_issues(resource: Mapping[str, Any], root: str) -> list[Issue]:
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or resource_type not in _r4().resource_types:
        return [
            Issue("structure", f"{root}.resourceType names no R4 resource", f"{root}.resourceType")
        ]
    try:
        _validator(resource_type)(resource)
    except fastjsonschema.JsonSchemaValuesException as errors:
        messages = [error.message for error in errors.errors]
    except fastjsonschema.JsonSchemaValueException as error:
        messages = [error.message]
    else:
        return []
    # One issue per element: "yes" as a boolean fails both its type and its pattern.
    issues: dict[str | None, Issue] = {}
    for message in messages:
        for issue in _schema_issue(resource, root, message):
            issues.setdefault(issue.expression, issue)
    return list(issues.values())


# --- walking a resource with its definitions ----------------------------------------------------


@dataclass
class _Context:
    """Where references resolve: the resource's contained ids and the Bundle's fullUrls."""

    contained: dict[str, str]
    full_urls: dict[str, str]
    container: bool = False  # the next resource is contained in the one these belong to


def _root_name(resource: Mapping[str, Any], root: str | None) -> str:
    if root is not None:
        return root
    resource_type = resource.get("resourceType")
    return resource_type if isinstance(resource_type, str) else "Resource"


def _nested(resource: Mapping[str, Any], root: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """Every resource held in this one (at any depth, not below another nested one)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or resource_type not in _r4().resource_types:
        return
    r4 = _r4()
    queue: deque[tuple[Any, str, str]] = deque([(resource, resource_type, root)])
    while queue:
        node, definition, where = queue.popleft()
        shape = r4.shape(definition)
        holding = r4.holding_elements(definition)
        for key, value in node.items():
            if key not in holding:
                continue
            prop = shape[key]
            items = value if isinstance(value, list) else [value]
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    continue
                path = f"{where}.{key}[{index}]" if isinstance(value, list) else f"{where}.{key}"
                if prop.is_resource:
                    yield item, path
                elif prop.definition is not None:
                    queue.append((item, prop.definition, path))


def _rule_issues(
    resource: Mapping[str, Any],
    root: str,
    *,
    rules: bool,
    references: bool,
    context: _Context | None = None,
) -> list[Issue]:
    """One walk over the resource: FHIR's rules the schema cannot express (``rules``) and the
    reference targets (``references``); nested resources recursively."""
    r4 = _r4()
    issues: list[Issue] = []
    resource_type = resource.get("resourceType")
    definition = resource_type if resource_type in r4.resource_types else None
    here = _context_of(resource, context)
    stack: list[tuple[Mapping[str, Any], str | None, str]] = [(resource, definition, root)]
    while stack:
        node, node_definition, where = stack.pop()
        if rules and not node:
            issues.append(Issue("structure", f"{where} has no content: leave it out", where))
            continue
        shape = r4.shape(node_definition) if node_definition else {}
        if rules:
            for name in r4.required_primitives.get(node_definition or "", ()):
                if name not in node and f"_{name}" not in node:
                    issues.append(
                        Issue("required", f"{where}.{name} is required", f"{where}.{name}")
                    )
            choices = r4.choices.get(node_definition or "")
            if choices:
                issues.extend(_choice_issues(node, choices, where))
        targets = r4.reference_targets.get(node_definition or "", {}) if references else {}
        for key, value in node.items():
            prop = shape.get(key)
            dated = rules and prop is not None and prop.dated
            # Paths are made for objects and for what breaks a rule: most values are neither.
            items: list[tuple[Any, str]]
            if isinstance(value, dict):
                items = [(value, f"{where}.{key}")]
            elif isinstance(value, list):
                path = f"{where}.{key}"
                if rules:
                    issues.extend(_array_issues(node, key, value, path))
                items = [
                    (item, f"{path}[{index}]")
                    for index, item in enumerate(value)
                    if dated or isinstance(item, dict)
                ]
                if dated:
                    issues.extend(_calendar_issues(items))
            else:
                if rules and (value is None or value == ""):
                    path = f"{where}.{key}"
                    what = "null" if value is None else "empty"
                    issues.append(Issue("structure", f"{path} is {what}: leave it out", path))
                elif dated:
                    issues.extend(_calendar_issues([(value, f"{where}.{key}")]))
                continue
            for item, item_path in items:
                if not isinstance(item, dict):
                    continue
                if key in targets:
                    issues.extend(_reference_issues(item, item_path, targets[key], here))
                if prop is not None and prop.is_resource:
                    # A contained resource's "#id" references are to its container's contained.
                    nested_context = replace(here, container=True) if key == "contained" else here
                    issues.extend(
                        _rule_issues(
                            item,
                            item_path,
                            rules=rules,
                            references=references,
                            context=nested_context,
                        )
                    )
                else:
                    stack.append((item, prop.definition if prop else None, item_path))
    return issues


def _context_of(resource: Mapping[str, Any], outer: _Context | None) -> _Context:
    if outer is not None and outer.container:
        return replace(outer, container=False)
    contained = {
        f"#{item['id']}": item["resourceType"]
        for item in resource.get("contained") or []
        if isinstance(item, dict)
        and isinstance(item.get("id"), str)
        and isinstance(item.get("resourceType"), str)
    }
    if isinstance(resource.get("resourceType"), str):
        contained["#"] = resource["resourceType"]  # "#" is the container itself
    full_urls = dict(outer.full_urls) if outer else {}
    if resource.get("resourceType") == "Bundle":
        for entry in resource.get("entry") or []:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                url, held = entry.get("fullUrl"), entry["resource"].get("resourceType")
                if isinstance(url, str) and isinstance(held, str):
                    full_urls[url] = held
    return _Context(contained, full_urls)


def _calendar_issues(items: list[tuple[Any, str]]) -> list[Issue]:
    issues = []
    for value, path in items:
        if isinstance(value, str) and len(value) >= 10:
            try:
                dt.date.fromisoformat(value[:10])
            except ValueError:
                issues.append(Issue("value", f"{path} is not a day the calendar has", path))
    return issues


def _choice_issues(
    node: Mapping[str, Any],
    choices: tuple[tuple[str, tuple[str, ...], frozenset[str]], ...],
    where: str,
) -> list[Issue]:
    issues = []
    for element, names, spellings in choices:
        if len(spellings.intersection(node)) < 2:
            continue  # the usual case, in one set operation: at most one of its names
        given = [name for name in names if name in node or f"_{name}" in node]
        if len(given) > 1:
            issues.append(
                Issue(
                    "structure",
                    f"{where} gives {element}[x] as {len(given)} types "
                    f"({', '.join(given)}): give one",
                    f"{where}.{given[1]}",
                )
            )
    return issues


def _array_issues(node: Mapping[str, Any], key: str, value: list[Any], path: str) -> list[Issue]:
    if not value:
        return [Issue("structure", f"{path} is an empty array: leave it out", path)]
    issues: list[Issue] = []
    if key == "modifierExtension":
        issues.extend(
            Issue(
                "extension",
                f"{path}[{index}] is a modifier extension this server does not understand, "
                "so it cannot accept the resource",
                f"{path}[{index}]",
            )
            for index in range(len(value))
        )
    if None not in value and "" not in value:
        return issues  # the usual case, decided without a path for each item
    partner = node.get(key[1:] if key.startswith("_") else f"_{key}")
    partner_items: list[Any] = partner if isinstance(partner, list) else []
    for index, item in enumerate(value):
        if item is None:
            # [null, …] is how an array of primitives lines up with its _element array.
            if index >= len(partner_items) or partner_items[index] is None:
                item_path = f"{path}[{index}]"
                issues.append(Issue("structure", f"{item_path} is null: leave it out", item_path))
        elif item == "":
            item_path = f"{path}[{index}]"
            issues.append(Issue("structure", f"{item_path} is empty: leave it out", item_path))
    return issues


def _reference_issues(
    reference: Mapping[str, Any], where: str, allowed: tuple[str, ...], context: _Context
) -> list[Issue]:
    resource_types = _r4().resource_types
    literal = reference.get("reference")
    declared = reference.get("type")
    if isinstance(declared, str):
        declared = declared.removeprefix(_HL7_STRUCTURE_DEFINITION)
    literal_type: str | None = None
    if isinstance(literal, str):
        if literal.startswith("#"):
            literal_type = context.contained.get(literal)
            if literal_type is None:
                return [
                    Issue(
                        "not-found",
                        f"{where}.reference points at no contained resource",
                        f"{where}.reference",
                    )
                ]
        elif literal in context.full_urls:
            literal_type = context.full_urls[literal]
        elif "?" in literal:
            literal_type = literal.split("?", 1)[0].rsplit("/", 1)[-1]
        else:
            match = _LITERAL_REFERENCE.search(literal)
            literal_type = match["type"] if match else None
    if literal_type and isinstance(declared, str) and declared != literal_type:
        return [
            Issue(
                "structure",
                f"{where}.type does not match the type of {where}.reference",
                f"{where}.type",
            )
        ]
    target = literal_type or (declared if isinstance(declared, str) else None)
    if target is None or allowed == (ANY_RESOURCE,):
        return []
    if target not in resource_types:
        return [Issue("structure", f"{where} names no R4 resource type", where)]
    if target not in allowed:
        return [
            Issue(
                "structure",
                f"{where} refers to a {target}; R4 allows {', '.join(allowed)} here",
                where,
            )
        ]
    return []


# --- the API ------------------------------------------------------------------------------------


def validate_resource(
    resource: Mapping[str, Any], *, root: str | None = None, references: bool = False
) -> list[Issue]:
    """Problems with a resource as R4 (the schema and FHIR's rules, and with ``references``
    the reference targets, in the same walk as the rules); [] when it is valid.

    ``root`` names the resource in expressions (default: its resourceType), e.g.
    ``Bundle.entry[0].resource`` for a resource taken out of a Bundle.
    """
    where = _root_name(resource, root)
    schema = _schema_issues(resource, where)
    for nested, path in _nested(resource, where):
        schema.extend(_nested_schema_issues(nested, path))
    rules = _rule_issues(resource, where, rules=True, references=references)
    # A null or empty value also fails the schema: say it once, the plainer way.
    said = {issue.expression for issue in rules}
    return [issue for issue in schema if issue.expression not in said] + rules


def _nested_schema_issues(resource: Mapping[str, Any], where: str) -> list[Issue]:
    issues = _schema_issues(resource, where)
    for nested, path in _nested(resource, where):
        issues.extend(_nested_schema_issues(nested, path))
    return issues


def check_reference_targets(resource: Mapping[str, Any], *, root: str | None = None) -> list[Issue]:
    """References whose target type R4 does not allow for their element (nested resources too).

    A reference's type is that of its literal ``reference`` (``Type/id``, a URL ending in one, a
    conditional ``Type?…``, a Bundle entry's fullUrl, a ``#contained`` id), else its ``type``; a
    reference by identifier alone without ``type`` cannot be checked and passes.
    """
    return _rule_issues(resource, _root_name(resource, root), rules=False, references=True)


def reference_targets(element: str) -> tuple[str, ...]:
    """The resource types R4 allows an element to refer to, by its path (``Task.owner``,
    ``Task.output.valueReference``, ``Appointment.participant.actor``); ``("Resource",)`` means
    any. KeyError when the path names no Reference element."""
    r4 = _r4()
    root, *parts = element.split(".")
    if root not in r4.definitions or not parts:
        raise KeyError(element)
    definition = root
    for part in parts[:-1]:
        prop = r4.shape(definition).get(part)
        if prop is None or prop.definition is None:
            raise KeyError(element)
        definition = prop.definition
    return r4.reference_targets.get(definition, {})[parts[-1]]
