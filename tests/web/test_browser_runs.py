"""In Debian's Chromium: a researcher logs in, starts a job, and watches its progress bar reach 100%."""

import re

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.worker]


def test_researcher_starts_a_selfcheck_and_watches_it_finish(
    page: Page, live_server, researcher, celery_worker_process
):
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("rita")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Self-check").click()
    page.get_by_label("Matrix size").fill("256")
    page.get_by_label("Repeats").fill("60")
    page.get_by_role("button", name="Start self-check").click()

    expect(page).to_have_url(re.compile(r"/research/runs/\d+/$"))
    bar = page.get_by_role("progressbar")
    expect(bar).to_be_visible()
    seen_values = set()
    for _ in range(240):  # the page polls every second; record what the bar shows on the way
        seen_values.add(int(bar.get_attribute("aria-valuenow")))
        if 100 in seen_values:
            break
        page.wait_for_timeout(250)
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=60_000)
    expect(page.locator(".status")).to_have_text("Succeeded")
    expect(page.get_by_role("rowheader", name="Conv images per second")).to_be_visible()
    # The runs list shows it finished too.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Runs").click()
    expect(page.locator("tbody tr").first.locator(".status")).to_have_text("Succeeded")
