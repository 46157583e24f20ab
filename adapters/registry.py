"""The explicit list of adapters this build knows, by name."""

from __future__ import annotations

from adapters.bars import BarsAdapter
from adapters.base import Adapter, AdapterKind
from adapters.elemental import ElementalAdapter
from adapters.fhir_push import FhirPushAdapter
from adapters.local import LocalAdapter
from adapters.simulator import SimulatorAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    adapter.name: adapter
    for adapter in (
        LocalAdapter,
        ElementalAdapter,
        SimulatorAdapter,
        FhirPushAdapter,
        BarsAdapter,
    )
}


class UnknownAdapter(KeyError):
    pass


def adapter_class(name: str) -> type[Adapter]:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise UnknownAdapter(name) from None


def names(kind: AdapterKind) -> list[str]:
    return sorted(name for name, adapter in ADAPTERS.items() if adapter.kind is kind)
