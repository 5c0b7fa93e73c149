"""In Debian's Chromium: an expert annotates five tasks with the keyboard alone, revises one, and the
researcher's report follows."""

import re
import time

import pytest
from playwright.sync_api import Page, expect

from accounts.roles import Role
from accounts.services import user_create
from annotation.expert import services
from annotation.models import Answer, Judgment
from tests.conftest import PASSWORD
from tests.test_expert_study import build_study_world

pytestmark = [pytest.mark.browser]

# The colleague's answers on the five overlap (car) tasks, in task order.
COLLEAGUE = [
    (Answer.PART, "wheel"),
    (Answer.NO, ""),
    (Answer.BACKGROUND, "grass"),
    (Answer.OTHER, "white"),
    (Answer.NO, ""),
]
# The expert's keystrokes for the same five tasks: key, then the name typed for a yes.
KEYSTROKES = [("1", "wheel"), ("4", None), ("2", "grass"), ("3", "white"), ("5", None)]


@pytest.fixture
def expert_study(transactional_db):
    world = build_study_world(name="browser", units=5, classes=("car", "bird"), tile=56)
    ed = user_create(username="ed", password=PASSWORD, role=Role.EXPERT)
    colleague = user_create(username="cleo", password=PASSWORD, role=Role.EXPERT)
    user_create(username="rita", password=PASSWORD, role=Role.RESEARCHER)
    study = services.study_create(name="Browser study", extraction=world, experts=[ed, colleague], overlap_class="car")
    rater = study.raters.get(name="cleo")
    for answer, concept in COLLEAGUE:
        services.judgment_submit(
            rater=rater, task=services.task_next_for_rater(rater=rater), answer=answer, concept=concept
        )
    return study


def log_in_with_keyboard(page: Page, url: str, username: str) -> None:
    page.goto(f"{url}/login/")
    expect(page.get_by_label("Username")).to_be_focused()  # the field has autofocus
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")


def report_text(page: Page, url: str, study_pk: int) -> str:
    page.goto(f"{url}/research/studies/{study_pk}/report/")
    return page.locator("#agreement").inner_text()


def wait_until_decoded(page: Page, selector: str, timeout: float = 20.0) -> None:
    """Wait until the image at ``selector`` is served and decoded. Polled from here: ``page.wait_for_function``
    polls by evaluating its string inside the page, which the site's CSP (no 'unsafe-eval') refuses whenever the
    first check is not already true."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"document.querySelector({selector!r})?.naturalWidth > 0"):
        assert time.monotonic() < deadline, f"{selector} was never decoded"
        time.sleep(0.05)


def test_expert_annotates_with_the_keyboard_and_the_report_follows(page: Page, live_server, browser, expert_study):
    page.set_default_timeout(20_000)
    researcher = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    researcher.set_default_timeout(20_000)
    researcher.goto(f"{live_server.url}/login/")
    researcher.get_by_label("Username").fill("rita")
    researcher.get_by_label("Password").fill(PASSWORD)
    researcher.get_by_role("button", name="Log in").click()
    expect(researcher.get_by_role("heading", name="Overview")).to_be_visible()
    assert "No item has answers from two raters yet" in report_text(researcher, live_server.url, expert_study.pk)

    page.set_viewport_size({"width": 1280, "height": 800})
    log_in_with_keyboard(page, live_server.url, "ed")
    expect(page.get_by_role("heading", name="My studies")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("Browser study"))).to_contain_text("0 / 10")
    for _ in range(30):  # Tab to the study's "Start" link, as a keyboard user would
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Start":
            break
    else:
        pytest.fail("Tab never reached the Start link")
    page.keyboard.press("Enter")

    for number, (key, name) in enumerate(KEYSTROKES, start=1):
        expect(page.get_by_role("heading", level=1)).to_contain_text(f"Task {number}")
        expect(page.get_by_role("heading", level=1)).to_contain_text("car")
        expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", str(number - 1))
        grid = page.get_by_role("img", name=re.compile("ten images of class car"))
        expect(grid).to_be_visible()
        wait_until_decoded(page, ".annotate-grid img")
        page.keyboard.press(key)
        expect(page.locator("input[name=answer]:nth-of-type(1)").nth(int(key) - 1)).to_be_checked()
        if name is not None:
            concept = page.get_by_label(re.compile("Concept name"))
            expect(concept).to_be_focused()
            expect(concept).to_have_value("")  # the digit was not typed into the field
            page.keyboard.type(name)
        page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Task 6")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "5")

    assert Judgment.objects.filter(rater__name="ed").count() == 5
    seconds = list(Judgment.objects.filter(rater__name="ed").values_list("seconds", flat=True))
    assert all(value is not None and value >= 0 for value in seconds)
    text = report_text(researcher, live_server.url, expert_study.pk)
    assert "5 items answered by two or more of 2 raters" in text  # all five answers count, "not sure" too (GG'18)

    # Revise the latest answer ("not sure") to "no", keyboard only: M, Enter on the focused Revise link, 4, Enter.
    page.keyboard.press("m")
    expect(page.get_by_role("heading", level=1)).to_contain_text("My answers")
    first_revise = page.get_by_role("link", name=re.compile("^Revise")).first
    expect(first_revise).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Revise task 5")
    expect(page.get_by_label(re.compile("Not sure"))).to_be_checked()
    page.keyboard.press("4")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("My answers")
    expect(page.get_by_role("status")).to_contain_text("answer revised")
    expect(page.get_by_role("row", name=re.compile(r"^5 "))).to_contain_text("revised (2)")

    revised = Judgment.objects.current().get(rater__name="ed", task__position=4)
    assert revised.answer == Answer.NO and revised.revision_of.answer == Answer.NOT_SURE
    text = report_text(researcher, live_server.url, expert_study.pk)
    assert "5 items answered by two or more of 2 raters" in text
    percent = researcher.get_by_role("row", name=re.compile("Percent agreement"))
    expect(percent).to_contain_text("1.000")
