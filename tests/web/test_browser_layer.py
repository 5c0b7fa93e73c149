"""In Debian's Chromium: a researcher filters and pages a layer's units; thumbnails keep their place."""

import os
import re
from pathlib import Path

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD
from tests.web.test_layer_units import DEAD, SATURATED, dissected  # noqa: F401 (a fixture)

pytestmark = pytest.mark.browser


def test_researcher_filters_and_pages_a_layer(page: Page, live_server, researcher, dissected):
    page.set_default_timeout(20_000)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("rita")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(live_server.url + reverse("analysis:layer_detail", args=["seeded", "conv5"]))
    table = page.locator("table.unit-table")
    expect(table.locator("tbody tr")).to_have_count(50)
    boxes = [table.locator("img.grid-thumb").nth(i).bounding_box() for i in range(3)]
    assert all(box and box["width"] == 300 and box["height"] > 100 for box in boxes)  # sized before loading
    if os.environ.get("UNITSCOPE_SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(os.environ["UNITSCOPE_SCREENSHOT_DIR"]) / "layer.png"), full_page=True)

    page.get_by_label("Status").select_option("dead")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"status=dead"))
    rows = table.locator("tbody tr")
    expect(rows.filter(has_text=f"unit {DEAD}")).to_contain_text("dead")
    expect(rows.filter(has_text=f"unit {SATURATED}")).to_contain_text("no label")
    expect(page.get_by_role("status").filter(has_text="units match")).to_be_visible()

    page.get_by_role("link", name="clear").click()
    page.get_by_role("navigation", name="Pages of units").get_by_role("link", name="Next ›").click()
    expect(page).to_have_url(re.compile(r"page=2"))
    expect(page.get_by_text("Page 2 of 3")).to_be_visible()
    expect(table.locator("tbody tr").first).to_contain_text("unit")
