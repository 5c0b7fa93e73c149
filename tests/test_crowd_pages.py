"""Crowd pages through HTTP: validation HITs are blind (HTML, URLs, image names), each worker has their own
order; the MTurk ExternalQuestion hand-off (preview cannot submit, the result is posted to turkSubmitTo with
assignmentId); Prolific completion codes only after a submission; researcher pages."""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse

from annotation.crowd import hits as crowd_hits
from annotation.crowd import services
from annotation.crowd.adapters import visit_dumps
from annotation.models import (
    MTURK_PREVIEW_ASSIGNMENT,
    CrowdAssignment,
    CrowdAssignmentState,
    CrowdTaskKind,
    CrowdWorker,
    HitRole,
    LabelOrigin,
)
from tests.test_crowd_study import add_gold, build_crowd_world, enter, validation_study

pytestmark = pytest.mark.django_db
ORIGIN_WORDS = (
    "dissect",
    "control",
    "human",
    "origin",
    "canonical",
    "netdissect",
    "iou",
    "detector_label",
    *LabelOrigin.values,
)


class Links(HTMLParser):
    """Every URL a page names (href, src, action) and its forms (method, action, hidden fields)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.forms: list[dict] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("href", "src", "action"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "form":
            self.forms.append(
                {"method": (attrs.get("method") or "get").lower(), "action": attrs.get("action"), "fields": {}}
            )
        if tag == "input" and self.forms and attrs.get("type") == "hidden":
            self.forms[-1]["fields"][attrs.get("name")] = attrs.get("value")


def parse(html: str) -> Links:
    links = Links()
    links.feed(html)
    return links


def assert_no_origin(text: str, where: str) -> None:
    lowered = re.sub(r'"X-CSRFToken": "[^"]+"', "", text).lower()  # a random token may spell anything short
    for word in ORIGIN_WORDS:
        assert word not in lowered, f"{where} reveals {word!r}"


def full_validation_study(name="blind", units=3):
    """A validation study whose units have all three kinds of label (after a description study)."""
    extractions = build_crowd_world(name=name, units=units)
    describe = crowd_hits.crowd_study_create(
        name=f"{name}-describe",
        kind=CrowdTaskKind.DESCRIPTION,
        extractions=extractions,
        gold_count=0,
        qualification_required=False,
    )
    for number in range(3):
        worker = enter(describe, number)
        while (assignment := services.hit_next_for_worker(worker=worker)) is not None:
            services.assignment_submit(
                assignment=assignment, description=f"pattern {assignment.hit.unit.index}", confidence=3
            )
    study = crowd_hits.crowd_study_create(
        name=name,
        kind=CrowdTaskKind.VALIDATION,
        extractions=extractions,
        gold_count=0,
        gold_rate=0.0,
        qualification_required=False,
    )
    assert {hit.label_origin for hit in study.hits.all()} == set(LabelOrigin.values)
    return study


def walk(client: Client, first_url: str) -> list[dict]:
    """Follow a worker through every HIT (answering yes), recording each visited URL and task page."""
    pages, url, visited = [], first_url, []
    for _ in range(200):
        response = client.get(url)
        visited.append(url)
        if response.status_code == 302:
            url = response["Location"]
            continue
        html = response.content.decode()
        if "/a/" not in url:
            return pages
        pages.append({"url": url, "html": html, "visited": list(visited)})
        posted = client.post(url, {"answer": "yes"})
        assert posted.status_code == 302
        url = posted["Location"]
    raise AssertionError("the worker never finished")


def test_validation_hits_are_blind_in_html_urls_and_image_names(settings):
    study = full_validation_study()
    client = Client()
    start = client.get(reverse("annotation:crowd_entry", args=[study.token]))
    assert start.status_code == 200
    assert_no_origin(start.content.decode(), "the start page")
    entered = client.post(reverse("annotation:crowd_entry", args=[study.token]))
    pages = walk(client, entered["Location"])
    assert len(pages) == study.hits.count() == 12  # 3 units × (3 comparison labels + 1 selection-round HIT)
    worker = CrowdWorker.objects.get(study=study)
    by_token = {a.token: a for a in CrowdAssignment.objects.filter(worker=worker).select_related("hit__grid")}
    normalised_by_unit: dict[int, dict[str, str]] = {}
    for page in pages:
        token = page["url"].rstrip("/").split("/")[-1]
        hit = by_token[token].hit
        html = page["html"]
        assert f"“{hit.label}”" in html
        links = parse(html)
        for url in links.urls + page["visited"]:
            assert_no_origin(url, f"URL {url}")
        # The only image of the HIT is its assignment's own picture URL (never the grid's shared media URL).
        assert [src for src in links.images if "/crowd/" in src or src.startswith(settings.MEDIA_URL)] == [
            reverse("annotation:crowd_image", args=[worker.code, token])
        ]
        assert hit.grid.url not in html
        assert_no_origin(html.replace(f"“{hit.label}”", ""), f"the page of a {hit.label_origin} label")
        # Pages of one unit differ only by the label (and tokens): nothing else tells the origins apart.
        same = html.replace(f"“{hit.label}”", "LABEL").replace(token, "TOKEN").replace(worker.code, "CODE")
        same = re.sub(r'"X-CSRFToken": "[^"]+"', "", same)
        same = re.sub(r"<h1>HIT \d+</h1>", "", same)
        normalised_by_unit.setdefault(hit.unit_id, {})[hit.label_origin] = same
    for unit_pages in normalised_by_unit.values():
        assert len(unit_pages) == 3 and len(set(unit_pages.values())) == 1


def test_two_workers_see_the_labels_in_different_orders():
    study = full_validation_study(name="orders", units=4)
    sequences = []
    for _ in range(2):
        client = Client()
        entered = client.post(reverse("annotation:crowd_entry", args=[study.token]))
        pages = walk(client, entered["Location"])
        sequences.append([re.search(r"“([^”]*)”", page["html"])[1] for page in pages])
    assert sorted(sequences[0]) == sorted(sequences[1]) and sequences[0] != sequences[1]


# -- MTurk ---------------------------------------------------------------------------------------------------


def mturk_url(study, **params) -> str:
    return reverse("annotation:crowd_entry_adapter", args=[study.token, "mturk"]) + "?" + urlencode(params)


def test_mturk_preview_shows_the_task_but_cannot_submit():
    study = validation_study("preview", units=2)
    client = Client()
    response = client.get(
        mturk_url(
            study, assignmentId=MTURK_PREVIEW_ASSIGNMENT, hitId="H1", turkSubmitTo="https://workersandbox.mturk.com"
        )
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "preview" in html.lower() and "cannot be submitted" in html
    links = parse(html)
    assert [form for form in links.forms if form["method"] == "post"] == []  # nothing to submit
    assert "disabled" in html and len(links.images) == 1
    assert not CrowdWorker.objects.exists() and not CrowdAssignment.objects.exists()
    assert client.post(mturk_url(study, assignmentId=MTURK_PREVIEW_ASSIGNMENT)).status_code == 400


def test_mturk_submission_posts_the_assignment_id_to_turk_submit_to():
    study = validation_study("turk", units=2)
    client = Client()
    entry = mturk_url(
        study,
        assignmentId="ASSIGN-1",
        hitId="HIT-9",
        workerId="AWORKER",
        turkSubmitTo="https://workersandbox.mturk.com",
    )
    response = client.get(entry, follow=True)
    task_url = response.redirect_chain[-1][0]
    assert "/a/" in task_url and response.status_code == 200
    assignment = CrowdAssignment.objects.get()
    assert (assignment.external_assignment_id, assignment.external_hit_id, assignment.submit_to) == (
        "ASSIGN-1",
        "HIT-9",
        "https://workersandbox.mturk.com",
    )
    assert client.get(entry)["Location"].endswith(f"/a/{assignment.token}/")  # re-entry: the same HIT
    after = client.post(task_url, {"answer": "no"}, follow=True)
    forms = [form for form in parse(after.content.decode()).forms if form["method"] == "post"]
    assert len(forms) == 1
    assert forms[0]["action"] == "https://workersandbox.mturk.com/mturk/externalSubmit"
    assert forms[0]["fields"]["assignmentId"] == "ASSIGN-1" and forms[0]["fields"]["answer"] == "no"
    assignment.refresh_from_db()
    assert assignment.state == CrowdAssignmentState.SUBMITTED
    # One UnitScope HIT per MTurk assignment: asking again within it gives no second HIT; without the platform's
    # context there is no HIT at all.
    worker = CrowdWorker.objects.get()
    visit = visit_dumps(
        worker,
        {
            "external_assignment_id": "ASSIGN-1",
            "external_hit_id": "HIT-9",
            "submit_to": "https://workersandbox.mturk.com",
        },
    )
    assert client.get(reverse("annotation:crowd_next", args=[visit])).status_code == 200
    # The worker's own code is never a platform worker's credential (it was handed to whoever typed the id).
    assert client.get(reverse("annotation:crowd_next", args=[worker.code])).status_code == 404
    assert CrowdAssignment.objects.count() == 1


def test_mturk_turk_submit_to_must_be_an_allowed_host_and_qualification_keeps_the_assignment():
    study = validation_study("turkq", units=2)
    bad = Client().get(
        mturk_url(study, assignmentId="A", hitId="H", workerId="W", turkSubmitTo="https://evil.example.com")
    )
    assert bad.status_code == 400 and not CrowdAssignment.objects.exists()
    add_gold(study, 4, answer="yes", role=HitRole.QUALIFICATION)
    study.qualification_required, study.qualification_size, study.qualification_pass_rate = True, 4, 1.0
    study.external_submit_hosts = "www.mturk.com localhost:8123"
    study.save()
    client = Client()
    response = client.get(
        mturk_url(study, assignmentId="A2", hitId="H2", workerId="W2", turkSubmitTo="http://localhost:8123"),
        follow=True,
    )
    qualification_url = response.redirect_chain[-1][0]
    # The visit's credential in the URL carries the assignment through the test (never the worker's code).
    assert "/qualification/" in qualification_url and CrowdWorker.objects.get().code not in qualification_url
    tokens = re.findall(r'name="q-([0-9a-f]+)"', response.content.decode())
    assert len(set(tokens)) == 4
    passed = client.post(qualification_url, {f"q-{token}": "yes" for token in tokens}, follow=True)
    result = passed.content.decode()
    assert "Qualification: 4 of 4 right" in result and result.count("qualification-feedback") == 4
    start = re.search(r'href="([^"]+)">Start the HITs</a>', result).group(1).replace("&amp;", "&")
    assert start.startswith(qualification_url.split("qualification/")[0])  # the same visit goes on
    begun = client.get(start, follow=True)
    assert "/a/" in begun.redirect_chain[-1][0]
    assignment = CrowdAssignment.objects.get()
    assert assignment.external_assignment_id == "A2" and assignment.submit_to == "http://localhost:8123"


# -- Prolific -------------------------------------------------------------------------------------------------


def test_prolific_completion_code_appears_only_after_a_submission():
    study = validation_study("prolific", units=2, hits_per_session=2)
    code = study.completion_code
    client = Client()
    url = reverse("annotation:crowd_entry_adapter", args=[study.token, "prolific"])
    assert client.get(url + "?PROLIFIC_PID=P1").status_code == 400
    response = client.get(
        url + "?" + urlencode({"PROLIFIC_PID": "P1", "STUDY_ID": "S", "SESSION_ID": "X1"}), follow=True
    )
    seen = [response.content.decode()]
    task_url = response.redirect_chain[-1][0]
    assert "/a/" in task_url
    response = client.post(task_url, {"answer": "yes"}, follow=True)
    seen.append(response.content.decode())
    second_task = response.redirect_chain[-1][0]
    assert "/a/" in second_task and second_task != task_url
    assert all(code not in html for html in seen)  # the code is earned, not given before
    done = client.post(second_task, {"answer": "no"}, follow=True)
    assert code in done.content.decode() and "completion code" in done.content.decode()
    assert f"cc={code}" in done.content.decode()
    assert CrowdAssignment.objects.filter(external_session="X1", state=CrowdAssignmentState.SUBMITTED).count() == 2


def test_prolific_without_any_submission_gets_no_code():
    study = validation_study("prolific-closed", units=1)
    crowd_hits.study_open_set(study=study, is_open=False)
    response = Client().get(
        reverse("annotation:crowd_entry_adapter", args=[study.token, "prolific"])
        + "?"
        + urlencode({"PROLIFIC_PID": "P2", "STUDY_ID": "S", "SESSION_ID": "X2"}),
        follow=True,
    )
    assert response.status_code == 200 and study.completion_code not in response.content.decode()
    assert "No more HITs" in response.content.decode()


# -- gold feedback, crowd accounts, researcher pages ------------------------------------------------------------


def test_gold_feedback_is_shown_at_once(make_user):
    study = validation_study("goldpage", units=1, gold_rate=0.9)
    add_gold(study, 3, answer="no")
    user = make_user("cora", "crowd")
    client = Client()
    client.force_login(user)
    home = client.get(reverse("annotation:crowd_home"))
    assert study.token in home.content.decode()
    response = client.get(reverse("annotation:crowd_entry", args=[study.token]), follow=True)
    worker = CrowdWorker.objects.get(user=user)
    assert worker.external_id == f"user-{user.pk}"
    for _ in range(5):
        task_url = response.redirect_chain[-1][0]
        token = task_url.rstrip("/").split("/")[-1]
        assignment = CrowdAssignment.objects.get(token=token)
        response = client.post(task_url, {"answer": "yes"}, follow=True)
        if assignment.hit.role == HitRole.GOLD:
            html = response.content.decode()
            assert "Not quite" in html and "explained" in html and "check question" in html
            return
        assert "/a/" in response.redirect_chain[-1][0]
    raise AssertionError("no gold item in five HITs at a rate of 0.9")


def test_researcher_pages(researcher_client, researcher):
    study = validation_study("pages", units=2, assignments_per_hit=1, created_by=researcher)
    worker = enter(study, 1)
    done = []
    while (assignment := services.hit_next_for_worker(worker=worker)) is not None:
        services.assignment_submit(assignment=assignment, answer="yes")
        done.append(assignment)
    for name in ("crowd_study_list",):
        assert researcher_client.get(reverse(f"annotation:{name}")).status_code == 200
    detail = researcher_client.get(reverse("annotation:crowd_study_detail", args=[study.pk])).content.decode()
    assert "Network Dissection label" in detail and f"/crowd/s/{study.token}/mturk/" in detail
    assert "PROLIFIC_PID={{%PROLIFIC_PID%}}" in detail
    workers = researcher_client.get(reverse("annotation:crowd_workers", args=[study.pk])).content.decode()
    assert "w1" in workers
    review_url = reverse("annotation:crowd_review", args=[study.pk])
    assert researcher_client.get(review_url).status_code == 200
    response = researcher_client.post(
        review_url, {"assignments": f"{done[0].pk}", "decision": "reject", "reason": "too fast"}
    )
    assert response.status_code == 302
    done[0].refresh_from_db()
    assert done[0].state == CrowdAssignmentState.REJECTED and done[0].reason == "too fast"
    researcher_client.post(
        reverse("annotation:crowd_workers", args=[study.pk]),
        {"form": "bonus", "worker": worker.pk, "amount_cents": 30, "reason": "thanks"},
    )
    researcher_client.post(
        reverse("annotation:crowd_workers", args=[study.pk]),
        {"form": "block", "worker": worker.pk, "action": "block", "reason": "spam"},
    )
    worker.refresh_from_db()
    assert worker.blocked and worker.bonuses.get().amount_cents == 30
    create = researcher_client.get(reverse("annotation:crowd_study_create"))
    assert create.status_code == 200 and "pages-net / conv5" in create.content.decode()


@pytest.mark.parametrize(
    "back", ["//evil.example/steal", "https://evil.example/", "http:/\\evil.example", "javascript:alert(1)", "", None]
)
def test_the_review_page_goes_back_only_within_the_site(researcher_client, researcher, back):
    study = validation_study("back", units=1, assignments_per_hit=1, created_by=researcher)
    review_url = reverse("annotation:crowd_review", args=[study.pk])
    form = {"assignments": "", "decision": "approve", **({"back": back} if back is not None else {})}
    response = researcher_client.post(review_url, form)
    assert response.status_code == 302 and response["Location"] == review_url
    same_site = f"{review_url}?state=rejected"
    assert researcher_client.post(review_url, {**form, "back": same_site})["Location"] == same_site


def test_an_mturk_worker_with_two_accepted_hits_gets_one_unitscope_hit_each():
    study = validation_study("two-turk", units=2)
    client = Client()
    urls = [
        client.get(
            mturk_url(study, assignmentId=f"A{n}", hitId="H", workerId="SAME", turkSubmitTo="https://www.mturk.com"),
            follow=True,
        ).redirect_chain[-1][0]
        for n in (1, 2)
    ]
    assert urls[0] != urls[1]
    held = {a.external_assignment_id: a.hit_id for a in CrowdAssignment.objects.all()}
    assert set(held) == {"A1", "A2"} and held["A1"] != held["A2"]


def test_a_researcher_creates_a_crowd_study_from_the_page(researcher_client):
    (extraction,) = build_crowd_world(name="form", units=2)
    response = researcher_client.post(
        reverse("annotation:crowd_study_create"),
        {
            "name": "From the page",
            "kind": "description",
            "extractions": [extraction.pk],
            "units": "",
            "assignments_per_hit": 3,
            "gold_rate": 0,
            "lease_seconds": 600,
            "overlap_rule": "fixed",
            "purity_mass": 0.3,
            "external_submit_hosts": "www.mturk.com",
            "seed": 0,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    from annotation.models import CrowdStudy

    study = CrowdStudy.objects.get(name="From the page")
    assert response["Location"] == study.get_absolute_url()
    assert study.kind == "description" and study.hits.count() == 2 and not study.qualification_required
    again = researcher_client.post(
        reverse("annotation:crowd_study_create"),
        {
            "name": "From the page",
            "kind": "description",
            "extractions": [extraction.pk],
            "assignments_per_hit": 3,
            "gold_rate": 0,
            "lease_seconds": 600,
            "overlap_rule": "fixed",
            "purity_mass": 0.3,
            "external_submit_hosts": "www.mturk.com",
            "seed": 0,
        },
    )
    assert again.status_code == 200 and "already exists" in again.content.decode()


def test_qualification_feedback_question_by_question_and_a_second_try():
    study = validation_study("feedback", units=2)
    golds = add_gold(study, 4, answer="yes", role=HitRole.QUALIFICATION)
    study.qualification_required, study.qualification_size, study.qualification_pass_rate = True, 2, 1.0
    study.save()
    client = Client()
    url = reverse("annotation:crowd_qualification", kwargs={"code": enter(study, 1).code})
    page = client.get(url).content.decode()
    tokens = list(dict.fromkeys(re.findall(r'name="q-([0-9a-f]+)"', page)))
    assert len(tokens) == 2
    result = client.post(url, {f"q-{tokens[0]}": "yes", f"q-{tokens[1]}": "no"}, follow=True).content.decode()
    assert "Qualification: 1 of 2 right" in result and "Try again" in result
    wrong = result[result.index('id="feedback-2"') :]
    assert "Your answer: <strong>no</strong> · the right answer: <strong>yes</strong>" in wrong
    explanation = next(hit.gold_explanation for hit in golds if hit.token == tokens[1])
    assert explanation and explanation in wrong
    right = result[result.index('id="feedback-1"') : result.index('id="feedback-2"')]
    assert "badge-ok" in right and "the right answer" not in right
    again = client.get(url).content.decode()
    assert "This is your last try." in again and "Question 1" in again


def test_a_required_qualification_without_questions_says_so_instead_of_looping():
    study = validation_study("noqual", units=1)
    study.qualification_required = True
    study.save()
    worker = enter(study, 1)
    response = Client().get(reverse("annotation:crowd_next", args=[worker.code]), follow=True)
    assert response.status_code == 200 and "not available" in response.content.decode()
    assert len(response.redirect_chain) == 1 and not CrowdAssignment.objects.exists()


def test_a_description_study_qualifies_workers_with_descriptions(monkeypatch):
    (extraction,) = build_crowd_world(name="descq", units=6)
    # The pixel truth: "wheel" under the peak of every image of every unit (so every unit's answer is known).
    monkeypatch.setattr(
        crowd_hits, "peak_concepts", lambda extraction, sets: {s.unit_id: [{"wheel"}] * 15 for s in sets}
    )
    study = crowd_hits.crowd_study_create(
        name="descq",
        kind=CrowdTaskKind.DESCRIPTION,
        extractions=[extraction],
        gold_count=2,
        qualification_size=2,
        qualification_pass_rate=0.5,
    )
    questions = list(study.hits.filter(role=HitRole.QUALIFICATION))
    assert len(questions) == 4 and {hit.kind for hit in questions} == {CrowdTaskKind.DESCRIPTION}
    assert {hit.gold_answer for hit in questions} == {"wheel"} and study.qualification_required
    assert {hit.kind for hit in study.hits.filter(role=HitRole.GOLD)} == {CrowdTaskKind.DESCRIPTION}
    client = Client()
    url = reverse("annotation:crowd_qualification", kwargs={"code": enter(study, 1).code})
    page = client.get(url).content.decode()
    assert "Describe these 2 sets of images" in page and 'type="radio"' not in page
    tokens = list(dict.fromkeys(re.findall(r'name="q-([0-9a-f]+)"', page)))
    assert len(tokens) == 2
    result = client.post(url, {f"q-{tokens[0]}": "Wheels", f"q-{tokens[1]}": "a cloud"}, follow=True)
    html = result.content.decode()
    assert "Qualification: 1 of 2 right" in html and "Start the HITs" in html  # half is enough here
    wrong = html[html.index('id="feedback-2"') :]
    assert "Your answer: <strong>a cloud</strong> · the right answer: <strong>wheel</strong>" in wrong
    assert "Most highlighted patches show: wheel." in wrong


# -- purity studies qualify workers with counts (issue 21 item 5) ----------------------------------------------


def synthetic_part_points():
    """Marked points of 40 images: wheels in 12, wings in 6, heads in 4, one other part each in 18, and a point on
    no part in every image."""
    from annotation.crowd.truth import MarkedPoint

    parts = ["wheel"] * 12 + ["wing"] * 6 + ["head"] * 4 + [f"part {n}" for n in range(18)]
    return [MarkedPoint(image, 0.4, 0.6, part) for image, part in enumerate(parts)] + [
        MarkedPoint(image, 0.1, 0.1, "") for image in range(40)
    ]


@pytest.fixture
def purity_study(monkeypatch):
    """A purity study planned by ``crowd_study_create`` over a tiny world, its task HITs and the dataset's part
    masks and images stood in for (the world has no activation cache or dataset files)."""
    import numpy as np

    (extraction,) = build_crowd_world(name="purq", units=3)
    monkeypatch.setattr(
        crowd_hits,
        "_purity_specs",
        lambda extraction, sets, mass, max_shown: [
            crowd_hits.HitSpec(
                kind=CrowdTaskKind.PURITY,
                unit_id=s.unit_id,
                extraction_id=extraction.pk,
                grid_id=s.grid_id,
                purity_k=15,
                purity_shown=10,
            )
            for s in sets
        ],
    )
    monkeypatch.setattr(crowd_hits, "part_points", lambda root, rng: synthetic_part_points())

    class Images:
        def __init__(self, dataset):
            pass

        def __getitem__(self, index):
            return np.full((24, 24, 3), (index * 5) % 256, dtype=np.uint8)

    monkeypatch.setattr(crowd_hits, "DatasetImageCache", Images)
    return crowd_hits.crowd_study_create(
        name="purq", kind=CrowdTaskKind.PURITY, extractions=[extraction], qualification_size=3
    )


def test_count_questions_have_known_counts_by_construction():
    import numpy as np

    points = synthetic_part_points()
    image_part = {(p.image, p.y, p.x): p.part for p in points}
    images_of = Counter(p.part for p in points)
    for target, seed in ((8, 0), (3, 1), (10, 2), (2, 3)):
        part, marked = crowd_hits.count_question_points(
            points, target=target, shown=10, rng=np.random.default_rng(seed)
        )
        assert len(marked) == 10 and len({p.image for p in marked}) == 10
        assert sum(p.part == part for p in marked) == target and part and images_of[part] >= target
        others = [p.part for p in marked if p.part not in ("", part)]
        assert all(others.count(name) <= max((target - 1) // 2, 1) for name in others)  # the part is clearly "most"
        assert all(image_part[(p.image, p.y, p.x)] == p.part for p in marked)
    # Never more alike than any part allows (12 wheels at most), never a question of fewer than two alike.
    part, marked = crowd_hits.count_question_points(points, target=15, shown=15, rng=np.random.default_rng(4))
    assert part == "wheel" and sum(p.part == "wheel" for p in marked) == 12
    assert crowd_hits.count_question_points([points[-1]], target=5, shown=10, rng=np.random.default_rng(5)) is None


def test_a_purity_study_qualifies_workers_with_count_questions(purity_study, researcher_client):
    study = purity_study
    questions = list(study.hits.filter(role=HitRole.QUALIFICATION).select_related("grid"))
    assert study.qualification_required and len(questions) == 6
    assert not study.hits.filter(role=HitRole.GOLD).exists()  # no unit's count is known: no gold items
    knowns = []
    for hit in questions:
        assert hit.kind == CrowdTaskKind.PURITY and hit.unit_id is None and hit.grid.style == "purity"
        assert hit.purity_shown == 10 == len(set(hit.source["images"])) and hit.source["tolerance"] == 1
        known = int(hit.gold_answer)
        assert known == sum(part == hit.source["part"] for part in hit.source["parts"])
        shows = "All 10 marked patches show" if known == 10 else f"{known} of the 10 marked patches show"
        assert f"{shows} {hit.source['part']}" in hit.gold_explanation
        knowns.append(known)
    assert sorted(knowns) == [2, 3, 5, 7, 8, 10]  # spread: 80%, 30%, 100%, 50%, 20%, 70% of ten
    listed = researcher_client.get(reverse("annotation:crowd_study_detail", args=[study.pk]), {"role": "qualification"})
    assert listed.status_code == 200 and len(listed.context["hit_rows"]) == 6  # the researcher's list shows them
    from annotation.crowd.truth import gold_check

    hit = questions[0]
    known = int(hit.gold_answer)
    assert gold_check(hit, {"count": known}) and gold_check(hit, {"count": known - 1 if known else 1})
    assert not gold_check(hit, {"count": known + 2 if known <= 8 else known - 2})


def test_purity_qualification_page_asks_counts_and_gives_feedback_per_question(purity_study):
    client = Client()
    url = reverse("annotation:crowd_qualification", kwargs={"code": enter(purity_study, 1).code})
    page = client.get(url).content.decode()
    assert "Count in these 3 sets of images" in page and 'type="radio"' not in page
    tokens = list(dict.fromkeys(re.findall(r'name="q-([0-9a-f]+)"', page)))
    assert len(tokens) == 3 and page.count('type="number"') == 3 and 'max="10"' in page
    known = {hit.token: int(hit.gold_answer) for hit in purity_study.hits.filter(token__in=tokens)}
    # Malformed counts (a word, more than the images shown) are refused, not scored.
    refused = client.post(url, {f"q-{tokens[0]}": "seven", f"q-{tokens[1]}": "11", f"q-{tokens[2]}": "3"})
    assert refused.status_code == 200 and "Answer every question (2 left)." in refused.content.decode()
    wrong = known[tokens[1]] + 2 if known[tokens[1]] <= 8 else known[tokens[1]] - 2
    given = {tokens[0]: min(known[tokens[0]] + 1, 10), tokens[1]: wrong, tokens[2]: known[tokens[2]]}
    html = client.post(url, {f"q-{token}": str(count) for token, count in given.items()}, follow=True)
    html = html.content.decode()
    assert "Qualification: 2 of 3 right" in html  # 2 of 3 is below the 75% needed
    blocks = [html[html.index(f'id="feedback-{n}"') :] for n in (1, 2, 3)]
    blocks = [block[: block.index("</section>")] for block in blocks]
    for block, token in zip(blocks, tokens):
        low, high = max(known[token] - 1, 0), min(known[token] + 1, 10)
        assert (
            f"Your count: <strong>{given[token]}</strong> · the known count: <strong>{known[token]}</strong> "
            f"(any count from {low} to {high} is right)"
        ) in block
        assert "marked patches show" in block  # the explanation
    assert "badge-ok" in blocks[0] and "badge-warn" in blocks[1] and "badge-ok" in blocks[2]
