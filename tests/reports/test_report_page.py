"""The report page a manager reads at a glance (issue 18 part 4), in headless Chromium (Debian's
`chromium`, driven by Playwright, JavaScript off as the page's policy has it): at 1280 px the
month tables fit or scroll inside their box with the row labels and the Total always in view,
rows with nothing in the period are folded away behind a toggle, each monthly series has a small
chart beside its total; printed on A4 the folded rows stay out and the tables do not scroll.
Screenshots: test-artifacts/report-1280.png, report-a4.png, and report.pdf."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright

from app.imports.service import Options, run_import
from tests.conftest import ROOT, Bridge
from tests.imports.lines import write
from tests.imports.test_import_reports import history

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
# A year, as a commissioner asks for it: the months holding data (Sep-Nov) among empty ones.
YEAR = {"from": "2022-01-01", "to": "2022-12-31"}

GEOMETRY = """(id) => {
  const box = document.getElementById(id).querySelector('.scroll');
  const row = box.querySelector('tbody tr:not(.zero)');
  const label = row.querySelector('th.label').getBoundingClientRect();
  const total = row.querySelector('td.total').getBoundingClientRect();
  const frame = box.getBoundingClientRect();
  return {
    pageScroll: document.documentElement.scrollWidth,
    pageWidth: document.documentElement.clientWidth,
    boxScroll: box.scrollWidth, boxWidth: box.clientWidth,
    frameLeft: frame.left, frameRight: frame.right,
    labelLeft: label.left, labelRight: label.right,
    totalLeft: total.left, totalRight: total.right,
  };
}"""


async def _shown(page: Page, selector: str) -> int:
    rows = await page.locator(selector).all()
    return sum([await row.is_visible() for row in rows])


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not at /usr/bin/chromium")
async def test_the_report_page_at_1280_and_on_a4(app: Any, bridge: Bridge, tmp_path: Path) -> None:
    await bridge.service()
    path = write(tmp_path / "pilot.ndjson", history())
    await run_import(app.state.database, [path], app.state.settings, Options())
    reporting = await bridge.key("reporting", "LR001")
    response = await bridge.http.get(
        "/api/v1/reports/activity",
        params={**YEAR, "format": "html"},
        headers=reporting,
    )
    assert response.status_code == 200, response.text
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"]
        )
        try:
            context = await browser.new_context(
                java_script_enabled=False, viewport={"width": 1280, "height": 900}
            )
            page = await context.new_page()
            await page.set_content(response.text)

            # Twelve months and the Total: the page itself never scrolls sideways; a table
            # wider than its box scrolls inside it with its labels and Total in view.
            for table_id in ("activity", "appointments-by-month-held", "reasons-count"):
                at_start = await page.evaluate(GEOMETRY, table_id)
                assert at_start["pageScroll"] <= at_start["pageWidth"] == 1280, at_start
                assert at_start["labelLeft"] >= at_start["frameLeft"] - 1, at_start
                assert at_start["totalRight"] <= at_start["frameRight"] + 1, at_start
                assert at_start["totalLeft"] < at_start["frameRight"], at_start
            wide = await page.evaluate(GEOMETRY, "activity")
            if wide["boxScroll"] > wide["boxWidth"]:
                await page.locator("#activity .scroll").evaluate(
                    "(box) => { box.scrollLeft = box.scrollWidth / 2; }"
                )
                middle = await page.evaluate(GEOMETRY, "activity")
                assert middle["labelLeft"] >= middle["frameLeft"] - 1, middle
                assert middle["totalRight"] <= middle["frameRight"] + 1, middle

            # Rows with nothing in the period are folded; the toggle shows them.
            reasons = "#reasons-count tr.zero"
            assert await page.locator(reasons).count() == 20  # 22 domains and 'none', 3 with data
            assert await _shown(page, reasons) == 0
            assert await _shown(page, "#reasons-count tbody tr") == 3  # no total: several a person
            await page.locator("label[for='show-zero-reasons-count']").click()
            assert await _shown(page, reasons) == 20
            await page.locator("label[for='show-zero-reasons-count']").click()

            # A small chart of each monthly series beside its total.
            labels = await page.locator("#activity tbody th.label").all_inner_texts()
            assert len(labels) == 4, labels
            assert await page.locator("#activity td.total svg.spark").count() == 4
            bars = page.locator("#activity tbody tr").first.locator("svg.spark rect")
            assert await bars.count() == 3  # referrals in Sep, Oct and Nov

            await page.screenshot(path=str(ARTIFACTS / "report-1280.png"), full_page=True)
            await page.locator("div#activity").screenshot(
                path=str(ARTIFACTS / "report-1280-activity.png")
            )
            await page.locator("#reasons-count").screenshot(
                path=str(ARTIFACTS / "report-1280-reasons.png")
            )

            # Printed on A4 (landscape, as the page asks): nothing sticks or scrolls, folded
            # rows stay out and say so.
            await page.emulate_media(media="print")
            await page.set_viewport_size({"width": 1123, "height": 794})
            assert await _shown(page, reasons) == 0
            assert await page.locator("#reasons-count p.fold-note").is_visible()
            assert not await page.locator("#reasons-count label.fold").is_visible()
            printed = await page.evaluate(GEOMETRY, "activity")
            assert printed["boxScroll"] <= printed["boxWidth"] + 1, printed
            await page.screenshot(path=str(ARTIFACTS / "report-a4.png"), full_page=True)
            await page.locator("#appointments-by-month-held").screenshot(
                path=str(ARTIFACTS / "report-a4-appointments.png")
            )
            pdf = await page.pdf(
                path=str(ARTIFACTS / "report.pdf"), format="A4", prefer_css_page_size=True
            )
            assert pdf.startswith(b"%PDF")
            await context.close()
        finally:
            await browser.close()
