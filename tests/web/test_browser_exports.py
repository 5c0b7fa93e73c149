"""In Debian's Chromium: a researcher creates an API token on the API page, and downloads a study's report file
from the study page's exports."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser
SHOTS = os.environ.get("UNITSCOPE_SCREENSHOTS")  # a folder: save what the pages look like (for people)


def test_token_page_and_study_exports(page: Page, live_server, researcher):
    from annotation.expert import services
    from tests.test_expert_study import answer_all, build_study_world, make_experts

    study = services.study_create(
        name="browsed",
        extraction=build_study_world(units=2),
        experts=make_experts(2),
        overlap_class="car",
        created_by=researcher,
    )
    for rater in study.raters.all():
        answer_all(rater, answer="part", concept="wheel")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("rita")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API").click()
    expect(page.get_by_role("heading", name="API access")).to_be_visible()
    page.get_by_role("button", name="Create my token").click()
    key = page.locator("#token-key").inner_text()
    assert len(key) == 40 and key in page.locator("pre").inner_text()
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "api-token.png"), full_page=True)
    page.goto(f"{live_server.url}/research/studies/{study.pk}/")
    exports = page.locator("#exports")
    expect(exports.get_by_role("link", name="report.html")).to_be_visible()
    if SHOTS:
        exports.scroll_into_view_if_needed()
        page.screenshot(path=os.path.join(SHOTS, "study-exports.png"), full_page=True)
    with page.expect_download() as download_info:
        exports.get_by_role("link", name="report.html").click()
    download = download_info.value
    assert download.suggested_filename == f"study-{study.pk}-report.html"
    html = Path(download.path()).read_text(encoding="utf-8")
    assert "<svg" in html and "browsed" in html
    if SHOTS:
        copy = os.path.join(SHOTS, "report.html")
        download.save_as(copy)
        page.goto(f"file://{copy}")
        page.screenshot(path=os.path.join(SHOTS, "report-file.png"), timeout=60_000)
