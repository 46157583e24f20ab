"""The API documentation pages work with no network beyond the bridge itself: Swagger UI (/docs)
and ReDoc (/redoc) load their scripts from the app (fastapi-offline), not from a CDN that a
trust's network may block. Headless Chromium (Debian's `chromium`, driven by Playwright) opens
each page with every request that is not to 127.0.0.1 aborted, and checks that every operation
of the OpenAPI document is rendered and that nothing was asked of anywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Route, async_playwright

from app.config import Settings
from app.main import create_app
from tests.journey.test_journey_page import CHROMIUM, CHROMIUM_ARGS
from tests.support.elemental_platform import serve

METHODS = ("get", "put", "post", "patch", "delete")
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def operations(document: dict[str, Any]) -> list[str]:
    return [
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method in METHODS
    ]


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Chromium is not installed at /usr/bin/chromium (Debian package `chromium`)",
)
async def test_docs_and_redoc_render_every_operation_with_the_network_blocked(
    tmp_path: Path,
) -> None:
    application = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/docs.db"))
    expected = operations(application.openapi())
    assert len(expected) > 50
    blocked: list[str] = []

    async def loopback_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    async with serve(application) as base_url, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            await context.route("**/*", loopback_only)
            page = await context.new_page()

            response = await page.goto(f"{base_url}/docs")
            assert response is not None and response.status == 200
            # Swagger UI: one block per operation, each carrying its operationId.
            blocks = page.locator(".opblock")
            await blocks.first.wait_for(timeout=30_000)
            assert await blocks.count() == len(expected)
            shown = await page.locator(".opblock").evaluate_all("blocks => blocks.map(b => b.id)")
            # Swagger UI ids read "operations-<tag>-<operationId>".
            assert sorted({i.rsplit("-", 1)[-1] for i in shown}) == sorted(expected)
            assert "Social Prescribing Referral Bridge" in await page.locator(".title").inner_text()

            response = await page.goto(f"{base_url}/redoc")
            assert response is not None and response.status == 200
            # ReDoc: one section per operation, named by its operationId.
            sections = page.locator('[data-section-id^="operation/"]')
            await sections.first.wait_for(timeout=60_000)
            ids = await sections.evaluate_all(
                "sections => sections.map(s => s.getAttribute('data-section-id'))"
            )
            assert sorted({i.removeprefix("operation/") for i in ids}) == sorted(expected)
            await context.close()
        finally:
            await browser.close()
    # All they asked of elsewhere: ReDoc's "powered by" logo in its sidebar (decorative; blocked,
    # it leaves an empty corner and nothing else).
    assert set(blocked) <= {REDOC_LOGO}, f"the pages asked for more than the bridge: {blocked}"
