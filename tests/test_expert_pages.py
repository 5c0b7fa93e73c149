"""Study pages through the test client: who may open what, the annotation flow, reports and export."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from django.urls import reverse

from annotation.expert import services
from annotation.models import Answer, Assignment, Judgment, Study, StudyPlan
from tests.test_expert_study import build_study_world, make_experts

pytestmark = pytest.mark.django_db
ANON, RESEARCHER, EXPERT, CROWD = "anonymous", "researcher", "expert", "crowd"


@pytest.fixture
def study(db):
    world = build_study_world(units=3)
    experts = make_experts(2)
    return services.study_create(name="pages", extraction=world, experts=experts, overlap_class="car")


def expert_client(client, study, name="expert1"):
    client.force_login(study.raters.get(name=name).user)
    return client


@pytest.mark.parametrize("role", [ANON, RESEARCHER, EXPERT, CROWD])
@pytest.mark.parametrize(
    "name,needs_task,allowed",
    [
        ("annotation:expert_home", False, EXPERT),
        ("annotation:expert_next", False, EXPERT),
        ("annotation:my_answers", False, EXPERT),
        ("annotation:annotate", True, EXPERT),
        ("annotation:study_list", False, RESEARCHER),
        ("annotation:study_create", False, RESEARCHER),
        ("annotation:study_detail", False, RESEARCHER),
        ("annotation:study_report", False, RESEARCHER),
        ("annotation:study_export", False, RESEARCHER),
    ],
)
def test_page_access_by_role(client, make_user, study, role, name, needs_task, allowed):
    if role == EXPERT:
        user = study.raters.get(name="expert1").user
    elif role != ANON:
        user = make_user(f"user-{role}", role)
    if role != ANON:
        client.force_login(user)
    task = services.task_next_for_rater(rater=study.raters.get(name="expert1"))
    args = (
        [study.pk] if name not in ("annotation:expert_home", "annotation:study_list", "annotation:study_create") else []
    )
    if needs_task:
        args.append(task.pk)
    response = client.get(reverse(name, args=args))
    if role == allowed:
        assert response.status_code in (200, 302)
        if response.status_code == 302:  # "next" sends the expert to their task
            assert response["Location"] == reverse("annotation:annotate", args=[study.pk, task.pk])
    elif role == ANON:
        assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:login"))
    else:
        assert response.status_code == 403


def test_experts_reach_only_their_studies_and_tasks(client, study, make_user):
    outsider = make_experts(1, prefix="other")[0]
    client.force_login(outsider)
    assert client.get(reverse("annotation:expert_next", args=[study.pk])).status_code == 404
    assert client.get(reverse("annotation:my_answers", args=[study.pk])).status_code == 404
    expert_client(client, study, "expert2")
    held_by_first = services.task_next_for_rater(rater=study.raters.get(name="expert1"))
    owned_by_first = study.tasks.filter(owner__name="expert1").first()
    for task in (held_by_first, owned_by_first):
        url = reverse("annotation:annotate", args=[study.pk, task.pk])
        assert client.get(url).status_code == 404
        assert client.post(url, {"answer": "no"}).status_code == 404
    assert not Judgment.objects.exists()


def test_annotation_flow_with_revision(client, study):
    expert_client(client, study)
    home = client.get(reverse("annotation:expert_home"))
    assert b"pages" in home.content and b"0 / 6" in home.content and b"Start" in home.content
    response = client.get(reverse("annotation:expert_next", args=[study.pk]))
    task_url = response["Location"]
    page = client.get(task_url)
    text = page.content.decode()
    assert "Do the highlighted areas in the images systematically cover the same concept, and if so, which?" in text
    assert "at least seven out of the ten images" in text and "At least 7 of the 10 images" in text
    for key, label in zip("12345", ["Yes – semantic part", "Yes – background", "Yes – other", "No", "Not sure"]):
        assert f"<kbd>{key}</kbd> {label}" in text
    task = study.tasks.get(pk=int(task_url.rstrip("/").split("/")[-1]))
    grid = task.exemplar_set.grid
    scale = 1180 // grid.width
    assert f'width="{grid.width * scale}" height="{grid.height * scale}"' in text and "pixelated" in text
    assert grid.url in text and 'list="concept-names"' in text and '<option value="wheel">' in text
    assert "js/annotate.js" in text and 'maxlength="100"' in text
    shown = page.context["form"].initial["shown"]

    # A yes without a name is refused and nothing is stored.
    refused = client.post(task_url, {"answer": "part", "concept": "  ", "shown": shown})
    assert refused.status_code == 200 and b"Name the concept" in refused.content
    assert not Judgment.objects.exists()
    answered = client.post(task_url, {"answer": "part", "concept": " <script>alert(1)</script> ", "shown": shown})
    assert answered.status_code == 302 and answered["Location"] == reverse("annotation:expert_next", args=[study.pk])
    first = Judgment.objects.get()
    assert first.concept == "<script>alert(1)</script>" and first.seconds is not None and first.seconds >= 0

    answers = client.get(reverse("annotation:my_answers", args=[study.pk])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in answers and "<script>alert(1)" not in answers
    assert "data-autofocus" in answers
    next_page = client.get(client.get(reverse("annotation:expert_next", args=[study.pk]))["Location"]).content.decode()
    assert '<option value="&lt;script&gt;alert(1)&lt;/script&gt;">' in next_page and "1 / 6" in next_page

    # Revising: the page shows the current answer; saving adds a row that points at it.
    revise = client.get(task_url)
    assert b"Revise task" in revise.content and b'value="part"' in revise.content
    revised = client.post(task_url, {"answer": "no", "concept": "", "shown": revise.context["form"].initial["shown"]})
    assert revised["Location"] == reverse("annotation:my_answers", args=[study.pk])
    assert Judgment.objects.count() == 2
    latest = Judgment.objects.current().get()
    assert latest.revision_of == first and latest.answer == Answer.NO
    first.refresh_from_db()
    assert first.answer == Answer.PART
    assert b"revised (2)" in client.get(reverse("annotation:my_answers", args=[study.pk])).content


def test_an_expert_with_nothing_left_is_told_so(client, study):
    expert_client(client, study)
    rater = study.raters.get(name="expert1")
    while (task := services.task_next_for_rater(rater=rater)) is not None:
        services.judgment_submit(rater=rater, task=task, answer=Answer.NO)
    response = client.get(reverse("annotation:expert_next", args=[study.pk]))
    assert response.status_code == 200 and b"No task left for you" in response.content
    assert b"Done" in client.get(reverse("annotation:expert_home")).content


def test_researcher_creates_a_study_from_the_form(researcher_client, db):
    world = build_study_world(name="form", units=2)
    experts = make_experts(2)
    page = researcher_client.get(reverse("annotation:study_create"))
    assert page.status_code == 200 and b"form-net / conv5" in page.content and b"expert1" in page.content
    assert b"Do the highlighted areas" in page.content
    data = {
        "name": "From the form",
        "extraction": world.pk,
        "object_classes": ["car", "bird"],
        "experts": [expert.pk for expert in experts],
        "plan": StudyPlan.PAPER,
        "overlap_class": "bird",
        "raters_per_task": 2,
        "units": "0-1",
        "instructions": "Look closely.",
        "seed": 3,
        "claim_hours": 12,
    }
    response = researcher_client.post(reverse("annotation:study_create"), data)
    study = Study.objects.get(name="From the form")
    assert response.status_code == 302 and response["Location"] == study.get_absolute_url()
    assert study.tasks.count() == 4 and study.overlap_class.name == "bird" and study.instructions == "Look closely."
    assert study.suggest_given_names is False  # the box was not ticked in this post (a browser sends it when ticked)
    assert study.claim_hours == 12
    bad = researcher_client.post(reverse("annotation:study_create"), {**data, "name": "Other", "units": "9-x"})
    assert bad.status_code == 200 and b"not a unit index" in bad.content
    again = researcher_client.post(reverse("annotation:study_create"), data)
    assert again.status_code == 200 and b"already exists" in again.content
    listing = researcher_client.get(reverse("annotation:study_list"))
    assert b"From the form" in listing.content and b'aria-current="page">Studies' in listing.content


def test_an_expert_of_an_independent_study_is_offered_only_their_own_names(client, db):
    world = build_study_world(units=3)
    study = services.study_create(
        name="blind",
        extraction=world,
        experts=make_experts(2),
        plan=StudyPlan.FULL,
        object_classes=["car"],
        suggest_given_names=False,
    )
    other = study.raters.get(name="expert2")
    services.judgment_submit(
        rater=other, task=services.task_next_for_rater(rater=other), answer=Answer.PART, concept="hubcap"
    )
    expert = expert_client(client, study)
    page = expert.get(expert.get(reverse("annotation:expert_next", args=[study.pk]))["Location"])
    assert page.status_code == 200 and b"your own earlier names" in page.content
    assert b"hubcap" not in page.content and b'<option value="wheel">' in page.content


@pytest.mark.parametrize("taken_meanwhile", [False, True])
def test_an_answer_to_a_task_that_went_back_to_the_pool_is_saved_while_its_place_is_free(client, db, taken_meanwhile):
    world = build_study_world(units=2)
    study = services.study_create(
        name="pool",
        extraction=world,
        experts=make_experts(2),
        plan=StudyPlan.N_RATERS,
        raters_per_task=1,
        object_classes=["car"],
        units=[0],
    )
    expert = expert_client(client, study)
    url = expert.get(reverse("annotation:expert_next", args=[study.pk]))["Location"]
    page = expert.get(url)
    shown = re.search(rb'name="shown" value="([^"]*)"', page.content).group(1).decode()
    away = study.raters.get(name="expert1")
    later = Assignment.objects.get(rater=away).assigned_at + timedelta(hours=25)
    # What the next expert's request does when all is taken, a day and an hour after expert1 took the task:
    assert services.stale_claims_release(study=study, now=later) == 1
    if taken_meanwhile:
        assert services.task_next_for_rater(rater=study.raters.get(name="expert2")) is not None
    response = expert.post(url, {"answer": Answer.NO, "shown": shown})
    saved = Judgment.objects.filter(rater=away).exists()
    if taken_meanwhile:
        assert response.status_code == 409 and not saved
        assert b"went to someone else" in response.content and b"not saved" in response.content
    else:
        assert response.status_code == 302 and saved
    assert expert.post(url, {"answer": Answer.NO}).status_code in ((404,) if taken_meanwhile else (302,))  # no token


def test_detail_report_and_export_show_progress_agreement_and_provenance(researcher_client, study):
    raters = {rater.name: rater for rater in study.raters.all()}
    for name, answers in (
        ("expert1", [Answer.PART, Answer.NO, Answer.OTHER]),
        ("expert2", [Answer.PART, Answer.NO, Answer.NOT_SURE]),
    ):
        for answer in answers:
            task = services.task_next_for_rater(rater=raters[name])
            services.judgment_submit(rater=raters[name], task=task, answer=answer, concept="wheel")
    detail = researcher_client.get(reverse("annotation:study_detail", args=[study.pk])).content.decode()
    assert "expert1" in detail and "3 / 6" in detail and "Progress per annotator" in detail

    report = researcher_client.get(reverse("annotation:study_report", args=[study.pk]))
    text = report.content.decode()
    agreement = report.context["agreement"]
    # The three overlap (car) tasks, both answered: the headline counts all five answers (GG'18's 79%), so
    # three items, two agreeing; the variant rejects "not sure" and keeps two items, both agreeing.
    assert agreement["n_items"] == 3 and agreement["percent_agreement"]["value"] == pytest.approx(2 / 3)
    assert agreement["alternative"]["n_items"] == 2
    assert agreement["alternative"]["percent_agreement"]["value"] == 1.0
    assert "All five answers (GG'18)" in text and "Variant: “not sure” rejected" in text
    assert "Cohen" in text and "Fleiss" in text and "Krippendorff" in text and "<svg" in text
    assert "GG'18 Fig. 9" in text and "average" in text
    distribution = report.context["distribution"]
    car = next(row for row in distribution["classes"] if row["class"] == "car")
    assert car["kept"] == 3 and car["rejected"] == 0
    # part/part, no/no, other/not sure: "not sure" is rejected, so the third unit counts as "other".
    assert car["shares"] == pytest.approx({"part": 1 / 3, "background": 0, "other": 1 / 3, "no": 1 / 3})

    export = researcher_client.get(reverse("annotation:study_export", args=[study.pk]))
    rows = list(csv.DictReader(io.StringIO(export.content.decode())))
    assert len(rows) == 6 and {row["rater"] for row in rows} == {"expert1", "expert2"}
    assert all(row["grid_sha256"] and row["submitted_at"] and row["item"] for row in rows)


def test_simulated_raters_are_shown_as_such_and_left_out_unless_asked(researcher_client, study):
    truth = {task.pk: (Answer.NO, "") for task in study.tasks.all()}
    services.simulated_raters_run(study=study, raters=2, error_rate=0.0, truth=truth)
    detail = researcher_client.get(reverse("annotation:study_detail", args=[study.pk])).content.decode()
    assert "simulated-1" in detail and "rater-simulated" in detail and "left out of reports unless asked" in detail
    default = researcher_client.get(reverse("annotation:study_report", args=[study.pk]))
    assert default.context["agreement"]["n_items"] == 0 and b"Simulated raters are left out" in default.content
    included = researcher_client.get(reverse("annotation:study_report", args=[study.pk]) + "?simulated=only")
    assert included.context["agreement"]["n_items"] == 9
    assert included.context["agreement"]["percent_agreement"]["value"] == 1.0
    assert b"Simulated raters are included" in included.content
