"""The ``local`` platform adapter: the bridge itself holds the case.

Pathway advisors work the case through the bridge's own case-event API, so there is no
platform to send anything to.
"""

from __future__ import annotations

from adapters.base import Adapter, AdapterConfig, AdapterKind


class LocalAdapter(Adapter):
    name = "local"
    kind = AdapterKind.PLATFORM
    config_model = AdapterConfig
    delivers = False
