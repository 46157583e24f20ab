"""The explicit list of adapters this build knows, by name."""

from __future__ import annotations

from typing import Any

from adapters.base import Adapter, AdapterConfig, AdapterKind
from adapters.local import LocalAdapter

ADAPTERS: dict[str, type[Adapter]] = {adapter.name: adapter for adapter in (LocalAdapter,)}


class UnknownAdapter(KeyError):
    pass


def adapter_class(name: str) -> type[Adapter]:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise UnknownAdapter(name) from None


def names(kind: AdapterKind) -> list[str]:
    return sorted(name for name, adapter in ADAPTERS.items() if adapter.kind is kind)


def validate_config(name: str, config: dict[str, Any]) -> AdapterConfig:
    """The adapter's own config model; pydantic.ValidationError when it does not fit."""
    return adapter_class(name).config_model.model_validate(config)
