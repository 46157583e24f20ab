"""The ``local`` platform adapter: the bridge itself holds the case.

Pathway advisors work the case through the bridge's own case-event API, so there is no
platform to send anything to.
"""

from __future__ import annotations

from adapters.base import AdapterConfig, PlatformAdapter


class LocalAdapter(PlatformAdapter):
    name = "local"
    config_model = AdapterConfig
    delivers = False
