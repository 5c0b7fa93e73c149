"""In Debian's Chromium: a worker does a forced-choice study (issue 17) end to end from the own link, on a phone
(390 × 844, taps) and on a desktop (1280 × 800, keys 1/2) — practice with feedback, then real trials with the
references beside (desktop) or around (phone) the two queries — and an MTurk worker's result goes back to
turkSubmitTo, practice included; a Prolific worker gets the completion code after a session."""

from __future__ import annotations

import threading
from http.server import HTTPServer
from urllib.parse import urlencode

import pytest
from playwright.sync_api import expect

from analysis.models import LayerExtraction
from annotation.crowd.adapters import session_completion_code
from annotation.crowd.forced_choice_plan import forced_choice_study_create
from annotation.models import CrowdAssignment, CrowdAssignmentState, CrowdWorker, HitRole
from tests.web.test_browser_crowd import PHONE, Recorder, fits_the_screen, loaded_width

pytestmark = [pytest.mark.browser]
DESKTOP = {"width": 1280, "height": 800}


def study_for(run, name, **kwargs):
    extraction = LayerExtraction.objects.get(run=run, layer__name="conv5")
    return forced_choice_study_create(
        name=name,
        extractions=[extraction],
        units=range(6),
        conditions=["natural", "overlay"],
        trials_per_unit=2,
        reference_count=4,
        query_ranks=(5, 9),
        practice_trials=2,
        catch_rate=0.0,
        assignments_per_hit=2,
        seed=1,
        hits_per_session=50,
        proxy=False,
        **kwargs,
    )


def do_practice(page, tap: bool):
    for number in (1, 2):
        expect(page.get_by_role("heading", name=f"Practice trial {number} of 2")).to_be_visible()
        query = page.locator("label[for=answer-1]")
        query.tap() if tap else query.click()
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_role("status")).to_contain_text("makes the unit respond strongly")
        page.locator("#next-link").click()


@pytest.mark.parametrize("viewport", ["phone", "desktop"])
def test_a_worker_practises_and_does_forced_choice_trials(browser, live_server, tiny_layer_with_grids, viewport):
    phone = viewport == "phone"
    study = study_for(tiny_layer_with_grids, f"fc-{viewport}")
    options = (
        dict(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2) if phone else dict(viewport=DESKTOP)
    )
    context = browser.new_context(**options)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/crowd/s/{study.token}/")
    page.get_by_role("button", name="Start").click()
    do_practice(page, tap=phone)
    for number in range(1, 4):
        expect(page.get_by_role("heading", name=f"HIT {number}")).to_be_visible()
        strong, weak = page.locator(".fc-strong img"), page.locator(".fc-weak img")
        queries = page.locator(".fc-query img")
        expect(queries).to_have_count(2)
        for image in (strong, weak, queries.nth(0), queries.nth(1)):
            assert loaded_width(image) > 0
        assert fits_the_screen(page)
        boxes = [locator.bounding_box() for locator in (strong, page.locator(".fc-queries"), weak)]
        if phone:  # strong above the queries, weak below
            assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]
            assert all(box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] for box in boxes)
            page.locator(f"label[for=answer-{1 + number % 2}]").tap()
        else:  # weak left, queries in the middle, strong right
            assert boxes[2]["x"] < boxes[1]["x"] < boxes[0]["x"]
            page.keyboard.press(str(1 + number % 2))
            expect(page.locator(f"#answer-{1 + number % 2}")).to_be_checked()
        if number == 1:
            page.locator("label[for=confidence-3]").click()
        page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="HIT 4")).to_be_visible()
    worker = CrowdWorker.objects.get(study=study)
    assert worker.qualified is True and worker.qualification_attempts.get().passed is True
    done = list(
        CrowdAssignment.objects.filter(worker=worker, state=CrowdAssignmentState.SUBMITTED).order_by("submitted_at")
    )
    assert [a.answer for a in done] == ["2", "1", "2"] and done[0].confidence == 3 and done[1].confidence is None
    assert all(
        a.client_ms is not None and a.seconds is not None and a.condition in ("natural", "overlay") for a in done
    )
    context.close()


def test_an_mturk_worker_practises_and_the_result_goes_to_turk_submit_to(browser, live_server, tiny_layer_with_grids):
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.posts = []
    try:
        submit_to = f"http://127.0.0.1:{server.server_port}"
        study = study_for(tiny_layer_with_grids, "fc-turk", external_submit_hosts=f"127.0.0.1:{server.server_port}")
        page = browser.new_context(viewport=PHONE).new_page()
        page.set_default_timeout(20_000)
        page.goto(
            f"{live_server.url}/crowd/s/{study.token}/mturk/?"
            + urlencode({"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "HIT-1"})
        )
        expect(page.get_by_text("This is a preview")).to_be_visible()
        assert page.locator("form[method=post]").count() == 0
        expect(page.locator("#answer-1")).to_be_disabled()
        page.goto(
            f"{live_server.url}/crowd/s/{study.token}/mturk/?"
            + urlencode({"assignmentId": "ASSIGN-9", "hitId": "HIT-1", "workerId": "AW9", "turkSubmitTo": submit_to})
        )
        do_practice(page, tap=False)
        page.locator("label[for=answer-2]").click()
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_role("heading", name="Received")).to_be_visible()
        fields = Recorder.posts[0][1]
        assert Recorder.posts[0][0] == "/mturk/externalSubmit" and fields["assignmentId"] == "ASSIGN-9"
        assignment = CrowdAssignment.objects.get(hit__role=HitRole.TASK)
        assert assignment.state == CrowdAssignmentState.SUBMITTED and assignment.answer == "2"
        assert assignment.external_assignment_id == "ASSIGN-9"
    finally:
        server.shutdown()


def test_a_prolific_worker_practises_does_a_session_and_gets_the_completion_code(
    browser, live_server, tiny_layer_with_grids
):
    study = study_for(tiny_layer_with_grids, "fc-prolific")
    study.hits_per_session = 2
    study.save()
    page = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True).new_page()
    page.set_default_timeout(20_000)
    page.goto(
        f"{live_server.url}/crowd/s/{study.token}/prolific/?"
        + urlencode({"PROLIFIC_PID": "P-1", "STUDY_ID": "S-1", "SESSION_ID": "SESSION-1"})
    )
    do_practice(page, tap=True)
    for number in (1, 2):
        expect(page.get_by_role("heading", name=f"HIT {number}")).to_be_visible()
        page.locator("label[for=answer-1]").tap()
        page.get_by_role("button", name="Submit").click()
    # Each Prolific session earns its own code (issue 20), shown only after the session's HITs.
    expect(page.locator("#completion-code")).to_have_text(session_completion_code(study, "SESSION-1"))
    done = CrowdAssignment.objects.filter(worker__external_id="P-1", state=CrowdAssignmentState.SUBMITTED)
    assert done.count() == 2 and set(done.values_list("external_session", flat=True)) == {"SESSION-1"}
