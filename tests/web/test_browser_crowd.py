"""In Debian's Chromium on a phone-sized screen: a crowd worker takes the qualification test and does three HITs
through an own link; an MTurk worker's result is posted to turkSubmitTo with its assignmentId."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import pytest
from playwright.sync_api import Page, expect

from annotation.models import CrowdAssignment, CrowdAssignmentState, CrowdWorker, HitRole
from tests.test_crowd_study import add_gold, validation_study

pytestmark = [pytest.mark.browser]
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def crowd_study(transactional_db):
    study = validation_study("phone", units=3, tile=40)
    add_gold(study, 4, answer="yes", role=HitRole.QUALIFICATION)
    study.qualification_required, study.qualification_size = True, 4
    study.save()
    return study


def loaded_width(image) -> int:
    """The image's natural width once it has loaded (waits for the load: a visible heading does not mean that)."""
    return image.evaluate(
        "img => img.complete ? img.naturalWidth : new Promise(resolve => { "
        "img.addEventListener('load', () => resolve(img.naturalWidth), {once: true}); "
        "img.addEventListener('error', () => resolve(0), {once: true}); })"
    )


def fits_the_screen(page: Page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_a_worker_on_a_phone_qualifies_and_does_three_hits(browser, live_server, crowd_study):
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/crowd/s/{crowd_study.token}/")
    expect(page.get_by_role("heading", name="Short visual tasks")).to_be_visible()
    assert fits_the_screen(page)
    page.get_by_role("button", name="Start").tap()

    expect(page.get_by_role("heading", name="Qualification")).to_be_visible()
    questions = page.locator(".crowd-question-card")
    expect(questions).to_have_count(4)
    page.get_by_role("button", name="Submit answers").tap()  # nothing chosen: the browser asks for answers
    expect(page.get_by_role("heading", name="Qualification")).to_be_visible()
    for index in range(4):
        card = questions.nth(index)
        card.scroll_into_view_if_needed()
        assert loaded_width(card.locator("img")) > 0
        card.get_by_text("Yes", exact=True).tap()
    assert fits_the_screen(page)
    page.get_by_role("button", name="Submit answers").tap()
    expect(page.get_by_role("heading", name="Qualification: 4 of 4 right")).to_be_visible()  # feedback per question
    expect(page.locator(".qualification-feedback")).to_have_count(4)
    assert fits_the_screen(page)
    page.get_by_role("link", name="Start the HITs").tap()

    for number in range(1, 4):
        expect(page.get_by_role("heading", name=f"HIT {number}")).to_be_visible()
        image = page.locator(".crowd-grid img")
        assert loaded_width(image) > 0
        box = image.bounding_box()
        assert box["width"] <= PHONE["width"] and box["x"] >= 0  # the grid fits the phone
        assert fits_the_screen(page)
        label = page.locator(".crowd-label").inner_text()
        assert "“" in label and label.endswith("”")
        page.locator("label[for=answer-no]" if number == 2 else "label[for=answer-yes]").tap()
        page.get_by_role("button", name="Submit").tap()
    expect(page.get_by_role("heading", name="HIT 4")).to_be_visible()
    worker = CrowdWorker.objects.get(study=crowd_study)
    assert worker.qualified is True and worker.qualification_attempts.get().correct == 4
    done = list(
        CrowdAssignment.objects.filter(worker=worker, state=CrowdAssignmentState.SUBMITTED).order_by("submitted_at")
    )
    assert [a.answer for a in done] == ["yes", "no", "yes"]
    assert all(a.seconds is not None and a.seconds >= 0 for a in done)
    page.screenshot(path=str(Path(os.environ["UNITSCOPE_DATA_DIR"]) / "crowd-phone.png"), full_page=True)
    context.close()


class Recorder(BaseHTTPRequestHandler):
    """A stand-in for MTurk's externalSubmit: records each POST."""

    posts: list[tuple[str, dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        Recorder.posts.append((self.path, {key: values[0] for key, values in parse_qs(body).items()}))
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<h1>Received</h1>")

    def log_message(self, *args):
        pass


def test_an_mturk_worker_result_is_posted_to_turk_submit_to(browser, live_server, transactional_db):
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.posts = []
    try:
        submit_to = f"http://127.0.0.1:{server.server_port}"
        study = validation_study("turk-browser", units=2, external_submit_hosts=f"127.0.0.1:{server.server_port}")
        page = browser.new_context(viewport=PHONE).new_page()
        page.set_default_timeout(20_000)
        page.goto(
            f"{live_server.url}/crowd/s/{study.token}/mturk/?"
            + urlencode({"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "HIT-1"})
        )
        expect(page.get_by_text("This is a preview")).to_be_visible()
        assert page.locator("form[method=post]").count() == 0
        expect(page.get_by_role("button", name="Yes")).to_be_disabled()
        page.goto(
            f"{live_server.url}/crowd/s/{study.token}/mturk/?"
            + urlencode({"assignmentId": "ASSIGN-77", "hitId": "HIT-1", "workerId": "AW1", "turkSubmitTo": submit_to})
        )
        page.locator("label[for=answer-yes]").click()
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_role("heading", name="Received")).to_be_visible()  # the form went to turkSubmitTo
        assert Recorder.posts and Recorder.posts[0][0] == "/mturk/externalSubmit"
        fields = Recorder.posts[0][1]
        assert fields["assignmentId"] == "ASSIGN-77" and fields["answer"] == "yes" and fields["hitId"] == "HIT-1"
        assert CrowdAssignment.objects.get().state == CrowdAssignmentState.SUBMITTED
    finally:
        server.shutdown()


def test_a_pasted_description_is_flagged(browser, live_server, transactional_db):
    from annotation.crowd import hits as crowd_hits
    from annotation.crowd.selectors import crowd_worker_rows
    from tests.test_crowd_study import build_crowd_world

    extractions = build_crowd_world(name="paste", units=2, tile=30)
    study = crowd_hits.crowd_study_create(
        name="paste",
        kind="description",
        extractions=extractions,
        gold_count=0,
        gold_rate=0.0,
        qualification_required=False,
    )
    page = browser.new_context(viewport=PHONE).new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/crowd/s/{study.token}/")
    page.get_by_role("button", name="Start").click()
    field = page.get_by_label("Your description")
    field.fill("wheels")  # typed
    page.locator("label[for=confidence-4]").click()
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="HIT 2")).to_be_visible()
    field = page.get_by_label("Your description")
    field.evaluate("el => el.dispatchEvent(new ClipboardEvent('paste', {bubbles: true}))")
    field.fill("a wheel of a car, round and black")
    page.locator("label[for=confidence-5]").click()
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="No more HITs right now")).to_be_visible()
    answers = list(CrowdAssignment.objects.order_by("submitted_at").values_list("description", "confidence", "pasted"))
    assert answers == [("wheels", 4, False), ("a wheel of a car, round and black", 5, True)]
    (row,) = crowd_worker_rows(study)
    assert row["pasted"] == 1 and any(signal.startswith("pasted") for signal in row["signals"])
