"""What a FHIR server's CapabilityStatement says about the ways ``fhir_push`` can write to it.

Three ways, best first:

- ``transaction``: one transaction Bundle per update, each entry a conditional update on the
  resource's business identifier (``PUT Type?identifier=system|value``), references between the
  entries by ``urn:uuid``. Needs the system interaction ``transaction`` and ``conditionalUpdate``
  for every type written.
- ``conditional``: one conditional update per resource, in order. Needs ``conditionalUpdate``.
- ``update``: ``PUT Type/{the bridge's id}``, which creates only on a server that allows update
  as create (``updateCreate``). What the adapter did before it read capabilities.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

WriteMode = Literal["transaction", "conditional", "update"]
MODES: tuple[WriteMode, ...] = ("transaction", "conditional", "update")
# What the bridge writes to a referrer's server.
WRITTEN_TYPES = ("Task", "Appointment", "ServiceRequest", "QuestionnaireResponse", "Observation")


class NotACapabilityStatement(ValueError):
    """The server's /metadata answer is not a CapabilityStatement with a server rest entry."""


def _codes(entries: Any) -> set[str]:
    if not isinstance(entries, list):
        return set()
    return {e["code"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("code"), str)}


def supported_modes(
    statement: Any, resource_types: Iterable[str] = WRITTEN_TYPES
) -> list[WriteMode]:
    """The write modes the statement says work for every one of ``resource_types``, best first."""
    if not isinstance(statement, Mapping) or statement.get("resourceType") != "CapabilityStatement":
        raise NotACapabilityStatement("the answer is not a CapabilityStatement")
    rests = statement.get("rest")
    server = (
        next(
            (r for r in rests or [] if isinstance(r, Mapping) and r.get("mode") == "server"),
            None,
        )
        if isinstance(rests, list)
        else None
    )
    if server is None:
        raise NotACapabilityStatement("the CapabilityStatement has no rest entry for a server")
    by_type = {r.get("type"): r for r in server.get("resource") or [] if isinstance(r, Mapping)}
    wanted = [by_type.get(t) for t in resource_types]
    if any(r is None for r in wanted):
        return []
    resources: list[Mapping[str, Any]] = [r for r in wanted if r is not None]
    conditional = all(
        r.get("conditionalUpdate") is True and "update" in _codes(r.get("interaction"))
        for r in resources
    )
    update_create = all(
        r.get("updateCreate") is True and "update" in _codes(r.get("interaction"))
        for r in resources
    )
    modes: list[WriteMode] = []
    if conditional and "transaction" in _codes(server.get("interaction")):
        modes.append("transaction")
    if conditional:
        modes.append("conditional")
    if update_create:
        modes.append("update")
    return modes
