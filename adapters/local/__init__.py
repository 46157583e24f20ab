"""The ``local`` platform adapter: the bridge itself holds the case.

Pathway advisors work the case through the bridge's own case-event API, so there is no
platform to send anything to.
"""

from __future__ import annotations

import httpx

from adapters.base import AdapterConfig, Outbound, Outcome, PlatformAdapter, ReferralAmendment


class LocalAdapter(PlatformAdapter):
    name = "local"
    config_model = AdapterConfig
    delivers = False

    async def update_case(
        self, http: httpx.AsyncClient, amendment: ReferralAmendment, outbound: Outbound
    ) -> Outcome:
        # The bridge itself holds the case: the amended referral is already all there is.
        return Outcome(response_excerpt="local: the bridge holds the case; nothing to send")
