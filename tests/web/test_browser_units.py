"""In Debian's Chromium: a researcher opens a unit and sees its grids, every image loaded."""

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser


def test_researcher_opens_a_unit_and_sees_its_grids(page: Page, live_server, researcher, tiny_layer_with_grids):
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("rita")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Networks").click()
    page.get_by_role("link", name="seeded").click()
    page.get_by_role("link", name="conv5", exact=True).click()
    page.get_by_role("link", name="by max activation").click()
    expect(page).to_have_url(__import__("re").compile(r"sort=max"))
    page.locator("table.table tbody tr").first.get_by_role("link").first.click()
    expect(page).to_have_url(__import__("re").compile(r"/units/\d+/"))
    expect(page.get_by_role("heading", name="Top 10 per object class")).to_be_visible()
    images = page.locator("img.grid-image")
    expect(images.first).to_be_visible()
    assert images.count() >= 3  # top 15, deciles, at least one class
    for index in range(images.count()):
        images.nth(index).scroll_into_view_if_needed()
        loaded = images.nth(index).evaluate("img => img.complete && img.naturalWidth > 0")
        assert loaded, f"grid image {index} did not load"
    page.screenshot(
        path=str(__import__("pathlib").Path(__import__("os").environ["UNITSCOPE_DATA_DIR"]) / "unit.png"),
        full_page=True,
    )
