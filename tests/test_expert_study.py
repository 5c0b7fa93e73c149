"""Expert studies against the database: creation and plans, the next-task claim, judgments and revisions.

``build_study_world`` makes a tiny extraction with rendered (synthetic) grids in a few milliseconds; the
other expert test modules import it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from PIL import Image

from accounts.roles import Role
from accounts.services import user_create
from analysis.models import (
    Concept,
    Dataset,
    ExemplarKind,
    ExemplarSet,
    Layer,
    LayerExtraction,
    Network,
    Run,
    RunStatus,
    Unit,
)
from analysis.services.grids import store_grid
from annotation.expert import demo as expert_demo
from annotation.expert import selectors, services
from annotation.expert.services import StudyInputError
from annotation.models import (
    DEFAULT_INSTRUCTIONS,
    QUESTION,
    Answer,
    Assignment,
    Judgment,
    RaterKind,
    StudyPlan,
    StudyRater,
)
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db
CLASSES = ("car", "bird", "tree")


def build_study_world(*, name: str = "w", units: int = 4, classes=CLASSES, tile: int = 24) -> LayerExtraction:
    """A network layer with ``units`` units, an extraction over a dataset with ``classes`` and a rendered
    2×5 grid for every (unit, class) top-10 set (a distinct flat colour each, so distinct content hashes)."""
    run = Run.objects.create(kind="extract", params={"name": name}, params_hash=name, status=RunStatus.SUCCEEDED)
    dataset = Dataset.objects.create(name=f"{name}-data", kind="probe_world", root_dir="/nonexistent")
    concepts = {}
    for number, (concept, category) in enumerate(
        [(c, "object") for c in classes]
        + [("wheel", "part"), ("wing", "part"), ("grass", "material"), ("red-c", "color")],
        start=1,
    ):
        concepts[concept] = Concept.objects.create(
            dataset=dataset, number=number, name=concept, category=category, image_count=100 - number
        )
    network = Network.objects.create(name=f"{name}-net", source="module", input_height=64, input_width=64)
    layer = Layer.objects.create(network=network, name="conv5", order=5, units=units, out_height=4, out_width=4)
    unit_rows = [Unit.objects.create(layer=layer, index=index) for index in range(units)]
    extraction = LayerExtraction.objects.create(
        run=run,
        layer=layer,
        dataset=dataset,
        cache_key=name,
        cache_path="",
        stats_path="",
        n_images=30,
        map_height=4,
        map_width=4,
        quantile=0.005,
        k_overall=15,
        k_per_class=10,
        class_names=list(classes),
    )
    colour = 0
    for unit in unit_rows:
        for class_name in classes:
            colour += 1
            picture = Image.new("RGB", (5 * tile + 12, 2 * tile + 6), ((colour * 37) % 256, (colour * 91) % 256, 120))
            ExemplarSet.objects.create(
                extraction=extraction,
                unit=unit,
                kind=ExemplarKind.TOP_CLASS,
                object_class=concepts[class_name],
                image_indices=list(range(10)),
                scores=[1.0] * 10,
                peaks=[[1, 1]] * 10,
                grid=store_grid(picture, style=ExemplarKind.TOP_CLASS),
            )
    return extraction


def make_experts(count: int, prefix: str = "expert"):
    return [
        user_create(username=f"{prefix}{number}", password=PASSWORD, role=Role.EXPERT) for number in range(1, count + 1)
    ]


def answer_all(rater: StudyRater, answer: str = Answer.NO, concept: str = "") -> int:
    answered = 0
    while (task := services.task_next_for_rater(rater=rater)) is not None:
        services.judgment_submit(rater=rater, task=task, answer=answer, concept=concept)
        answered += 1
    return answered


@pytest.fixture
def world():
    return build_study_world()


def test_paper_plan_splits_classes_and_shares_the_overlap_class(world):
    first, second = make_experts(2)
    study = services.study_create(name="gg18", extraction=world, experts=[first, second], overlap_class="bird")
    assert study.instructions == DEFAULT_INSTRUCTIONS and QUESTION in study.instructions
    assert "at least seven out of the ten images" in study.instructions
    tasks = list(study.tasks.select_related("owner", "object_class"))
    assert len(tasks) == 4 * 3
    assert [task.object_class.name for task in tasks[:4]] == ["bird"] * 4  # the overlap class comes first
    for task in tasks:
        if task.object_class.name == "bird":
            assert task.owner is None and task.capacity == 2
        else:
            assert task.owner is not None and task.capacity == 1
    owners = {task.object_class.name: task.owner.name for task in tasks if task.owner}
    assert owners == {"car": "expert1", "tree": "expert2"}
    assert sorted(task.item for task in tasks if task.object_class.name == "car") == [
        "0/car",
        "1/car",
        "2/car",
        "3/car",
    ]
    # Each expert: their own class plus the overlap class, and nothing of the other's.
    raters = {rater.name: rater for rater in study.raters.all()}
    assert answer_all(raters["expert1"]) == 8
    assert answer_all(raters["expert2"]) == 8
    classes_of = {
        name: set(Judgment.objects.filter(rater=rater).values_list("task__object_class__name", flat=True))
        for name, rater in raters.items()
    }
    assert classes_of == {"expert1": {"bird", "car"}, "expert2": {"bird", "tree"}}
    assert selectors.rater_progress(raters["expert1"]) == selectors.Progress(8, 8)


def test_full_and_n_raters_plans_set_capacities(world):
    experts = make_experts(3)
    full = services.study_create(
        name="full", extraction=world, experts=experts, plan=StudyPlan.FULL, object_classes=["car"]
    )
    assert set(full.tasks.values_list("capacity", flat=True)) == {3} and full.tasks.count() == 4
    assert not full.tasks.filter(owner__isnull=False).exists() and full.overlap_class is None
    pair = services.study_create(
        name="pairs",
        extraction=world,
        experts=experts,
        plan=StudyPlan.N_RATERS,
        raters_per_task=2,
        object_classes=["car", "tree"],
        units=[0, 2],
    )
    assert pair.tasks.count() == 4 and set(pair.tasks.values_list("capacity", flat=True)) == {2}
    raters = list(pair.raters.order_by("name"))
    assert answer_all(raters[0]) == 4 and answer_all(raters[1]) == 4
    assert answer_all(raters[2]) == 0  # every task already has its two raters
    assert selectors.rater_progress(raters[2]) == selectors.Progress(0, 0)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"experts": []}, "at least one expert"),
        ({"object_classes": ["car", "horse"]}, "horse: not an object class"),
        ({"overlap_class": "tree", "object_classes": ["car", "bird"]}, "overlap class 'tree'"),
        ({"plan": StudyPlan.N_RATERS, "raters_per_task": 3}, "between 1 and the number of experts"),
        ({"units": [99]}, "No top-10 exemplar sets"),
        ({"name": "  "}, "needs a name"),
    ],
)
def test_study_create_rejects_bad_input(world, overrides, message):
    experts = make_experts(2)
    arguments = {"name": "bad", "extraction": world, "experts": experts, **overrides}
    with pytest.raises(StudyInputError, match=message):
        services.study_create(**arguments)


def test_study_create_needs_experts_rendered_grids_and_a_free_name(world, make_user):
    researcher = make_user("rita", "researcher")
    with pytest.raises(StudyInputError, match="not an expert"):
        services.study_create(name="s", extraction=world, experts=[researcher])
    experts = make_experts(1)
    services.study_create(name="s", extraction=world, experts=experts)
    with pytest.raises(StudyInputError, match="already exists"):
        services.study_create(name="s", extraction=world, experts=experts)
    ExemplarSet.objects.filter(unit__index=1, object_class__name="car").update(grid=None)
    with pytest.raises(StudyInputError, match="not rendered"):
        services.study_create(name="t", extraction=world, experts=experts)


def test_the_next_task_is_the_held_one_until_answered(world):
    (expert,) = make_experts(1)
    study = services.study_create(name="s", extraction=world, experts=[expert], object_classes=["car"])
    rater = study.raters.get()
    first = services.task_next_for_rater(rater=rater)
    assert services.task_next_for_rater(rater=rater) == first
    assert Assignment.objects.filter(rater=rater).count() == 1
    services.judgment_submit(rater=rater, task=first, answer=Answer.PART, concept="  front   wheel ")
    second = services.task_next_for_rater(rater=rater)
    assert second != first and second.position == first.position + 1
    judgment = Judgment.objects.get(task=first)
    assert judgment.concept == "front wheel" and judgment.grid == first.exemplar_set.grid
    assert Assignment.objects.get(task=first).completed_at == judgment.submitted_at


def test_a_rater_can_hold_one_open_assignment_only(world):
    """The database refuses a second unanswered assignment (the constraint the SQL claim relies on)."""
    (expert,) = make_experts(1)
    study = services.study_create(name="s", extraction=world, experts=[expert], object_classes=["car"])
    rater = study.raters.get()
    held = services.task_next_for_rater(rater=rater)
    other = study.tasks.exclude(pk=held.pk).first()
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(task=other, rater=rater)
    services.judgment_submit(rater=rater, task=held, answer=Answer.NO)
    Assignment.objects.create(task=other, rater=rater)  # once answered, the next may be held


def test_a_claim_that_collides_runs_again_and_leaves_the_callers_transaction_usable(world, monkeypatch):
    """Two claims of one rater at once: the loser's insert fails on the constraint and it runs again (PostgreSQL's
    one-statement claim); inside a caller's transaction a savepoint keeps that transaction alive."""
    from annotation import claims

    if not claims.claims_in_sql():
        pytest.skip("the one-statement claim is PostgreSQL's; other databases take the ORM path")
    (expert,) = make_experts(1)
    study = services.study_create(name="s", extraction=world, experts=[expert], object_classes=["car"])
    rater = study.raters.get()
    statement, calls = claims._task_claim_statement, []

    def collide_once(rater_):
        calls.append(rater_.pk)
        if len(calls) == 1:
            statement(rater_)  # the twin request wins the claim …
            raise IntegrityError("one_open_assignment_per_rater")  # … and this one's insert is refused
        return statement(rater_)

    monkeypatch.setattr(claims, "_task_claim_statement", collide_once)
    with transaction.atomic():
        task = services.task_next_for_rater(rater=rater)
        assert Assignment.objects.filter(rater=rater).count() == 1  # the transaction still answers
    assert len(calls) == 2 and task == Assignment.objects.get(rater=rater).task
    assert task.assigned_count == 1 and task.position == study.tasks.order_by("position").first().position


def _hours_after_claim(rater: StudyRater, hours: float):
    """The moment ``hours`` after the rater took the task they hold: passed as ``now=``, as if they walked away."""
    return Assignment.objects.get(rater=rater, completed_at__isnull=True).assigned_at + timedelta(hours=hours)


@pytest.mark.parametrize("claim_hours, hours_away, released", [(24, 25, True), (24, 23, False), (0, 1000, False)])
def test_a_task_left_unanswered_goes_back_to_the_pool_when_nothing_else_is_free(
    world, claim_hours, hours_away, released
):
    walker, worker = make_experts(2)
    study = services.study_create(
        name="s",
        extraction=world,
        experts=[walker, worker],
        plan=StudyPlan.N_RATERS,
        raters_per_task=1,
        object_classes=["car"],
        units=[0],
        claim_hours=claim_hours,
    )
    away, busy = study.raters.get(user=walker), study.raters.get(user=worker)
    task = services.task_next_for_rater(rater=away)  # the study's only task
    later = _hours_after_claim(away, hours_away)
    taken = services.task_next_for_rater(rater=busy, now=later)
    if not released:
        assert taken is None and Assignment.objects.get(task=task).rater == away
        return
    assert taken == task and Assignment.objects.get(task=task).rater == busy
    task.refresh_from_db()
    assert task.assigned_count == 1  # the place was freed, then taken: never over-filled
    assert services.task_next_for_rater(rater=away) is None
    assert not services.task_reclaim(rater=away, task=task)  # its only place is taken
    services.judgment_submit(rater=busy, task=task, answer=Answer.NO)
    with pytest.raises(StudyInputError, match="not assigned to you"):
        services.judgment_submit(rater=away, task=task, answer=Answer.NO)


def test_a_task_that_went_back_to_the_pool_is_taken_back_while_its_place_is_free(world):
    walker, other = make_experts(2)
    study = services.study_create(
        name="s",
        extraction=world,
        experts=[walker, other],
        plan=StudyPlan.N_RATERS,
        raters_per_task=1,
        object_classes=["car"],
        units=[0, 1],
    )
    away = study.raters.get(user=walker)
    first = services.task_next_for_rater(rater=away)
    later = _hours_after_claim(away, 30)
    assert services.stale_claims_release(study=study, now=later) == 1
    assert not Assignment.objects.filter(rater=away).exists()
    assert services.stale_claims_release(study=study, now=later) == 0  # released once
    assert services.task_reclaim(rater=away, task=first)
    services.judgment_submit(rater=away, task=first, answer=Answer.NO)
    first.refresh_from_db()
    assert first.assigned_count == 1 and Judgment.objects.filter(task=first, rater=away).count() == 1


def test_answers_are_validated(world):
    (expert,) = make_experts(1)
    study = services.study_create(name="s", extraction=world, experts=[expert], object_classes=["car"])
    rater = study.raters.get()
    task = services.task_next_for_rater(rater=rater)
    for answer in (Answer.PART, Answer.BACKGROUND, Answer.OTHER):
        with pytest.raises(StudyInputError, match="Name the concept"):
            services.judgment_submit(rater=rater, task=task, answer=answer, concept="   ")
    with pytest.raises(StudyInputError, match="at most 100"):
        services.judgment_submit(rater=rater, task=task, answer=Answer.PART, concept="x" * 101)
    with pytest.raises(StudyInputError, match="Unknown answer"):
        services.judgment_submit(rater=rater, task=task, answer="maybe")
    not_held = study.tasks.exclude(pk=task.pk).first()
    with pytest.raises(StudyInputError, match="not assigned to you"):
        services.judgment_submit(rater=rater, task=not_held, answer=Answer.NO)
    assert not Judgment.objects.exists()
    # A "no" drops any name typed; control characters never reach the database.
    judgment = services.judgment_submit(rater=rater, task=task, answer=Answer.NO, concept="ignored")
    assert judgment.concept == ""
    assert services.concept_clean("a\x00b\tc\n") == "a b c"


def test_a_revision_is_a_new_row_and_the_old_one_stays(world):
    (expert,) = make_experts(1)
    study = services.study_create(name="s", extraction=world, experts=[expert], object_classes=["car"])
    rater = study.raters.get()
    task = services.task_next_for_rater(rater=rater)
    first = services.judgment_submit(rater=rater, task=task, answer=Answer.NO)
    assert services.judgment_submit(rater=rater, task=task, answer=Answer.NO) == first  # double Enter
    second = services.judgment_submit(rater=rater, task=task, answer=Answer.PART, concept="wheel")
    third = services.judgment_submit(rater=rater, task=task, answer=Answer.PART, concept="tyre")
    assert Judgment.objects.filter(task=task).count() == 3
    first.refresh_from_db()
    assert (first.answer, first.concept) == (Answer.NO, "")
    assert second.revision_of == first and third.revision_of == second
    assert list(Judgment.objects.current().filter(task=task)) == [third]
    answers = selectors.rater_answers(rater)
    assert [(judgment.pk, judgment.version) for judgment in answers] == [(third.pk, 3)]
    assert selectors.rater_progress(rater).done == 1
    # The database refuses a second first judgment, and a second revision of one judgment.
    with pytest.raises(IntegrityError), transaction.atomic():
        Judgment.objects.create(task=task, rater=rater, answer=Answer.NO, submitted_at=first.submitted_at)
    with pytest.raises(IntegrityError), transaction.atomic():
        Judgment.objects.create(
            task=task, rater=rater, answer=Answer.NO, submitted_at=first.submitted_at, revision_of=first
        )


def test_shown_tokens_time_a_judgment_and_reject_other_tasks(world):
    (expert,) = make_experts(1)
    study = services.study_create(name="s", extraction=world, experts=[expert], object_classes=["car"])
    rater = study.raters.get()
    task = services.task_next_for_rater(rater=rater)
    token = services.task_shown_token(task=task, rater=rater, now=1_700_000_000.0)
    shown = services.task_shown_at(token=token, task=task, rater=rater)
    assert shown.timestamp() == 1_700_000_000.0
    other = study.tasks.exclude(pk=task.pk).first()
    assert services.task_shown_at(token=token, task=other, rater=rater) is None
    assert services.task_shown_at(token=token + "x", task=task, rater=rater) is None
    from datetime import timedelta

    judgment = services.judgment_submit(
        rater=rater, task=task, answer=Answer.NO, started_at=shown, submitted_at=shown + timedelta(seconds=4.25)
    )
    assert judgment.seconds == 4.25 and judgment.started_at == shown


def test_suggestions_come_from_the_study_then_the_dataset(world):
    (expert,) = make_experts(1)
    study = services.study_create(name="s", extraction=world, experts=[expert], object_classes=["car"])
    rater = study.raters.get()
    task = services.task_next_for_rater(rater=rater)
    services.judgment_submit(rater=rater, task=task, answer=Answer.OTHER, concept="shiny <b>rim</b>")
    suggestions = selectors.concept_suggestions(study)
    assert suggestions[0] == "shiny <b>rim</b>"
    assert {"wheel", "wing", "grass", "red", "car"} <= set(suggestions)
    assert "red-c" not in suggestions


@pytest.mark.parametrize("suggest_given_names", [True, False])
def test_a_study_of_independent_raters_suggests_each_only_their_own_names(world, suggest_given_names):
    first, second = make_experts(2)
    study = services.study_create(
        name="s",
        extraction=world,
        experts=[first, second],
        plan="full",
        object_classes=["car"],
        suggest_given_names=suggest_given_names,
    )
    raters = {rater.user_id: rater for rater in study.raters.all()}
    for user, (count, name) in ((first, (2, "rim")), (second, (1, "hub"))):
        rater = raters[user.pk]
        for _ in range(count):
            task = services.task_next_for_rater(rater=rater)
            services.judgment_submit(rater=rater, task=task, answer=Answer.PART, concept=name)
    offered = {user: selectors.concept_suggestions(study, rater=raters[user.pk]) for user in (first, second)}
    if suggest_given_names:  # everybody's names, most used first, for everyone
        assert offered[first][:2] == offered[second][:2] == ["rim", "hub"]
    else:  # one's own only: the other expert's answers cannot nudge theirs
        assert offered[first][0] == "rim" and "hub" not in offered[first]
        assert offered[second][0] == "hub" and "rim" not in offered[second]
    assert {"wheel", "wing"} <= set(offered[first]) & set(offered[second])


def test_demo_expert_study_is_idempotent(monkeypatch, world, settings, tmp_path):
    settings.UNITSCOPE_DATA_DIR = tmp_path
    world.layer.network.name = "demo-net"
    world.layer.network.save()
    fake_truth = {}

    def truth(study):
        fake_truth.update({task.pk: (Answer.NO, "") for task in study.tasks.all()})
        return fake_truth

    monkeypatch.setattr("annotation.expert.simulation.study_ground_truth", truth)
    result = expert_demo.demo_expert_study_ensure(dataset=world.dataset.name)
    assert result["created"] and set(result["credentials"]) == {"expert1", "expert2"}
    study = services.Study.objects.get(name="demo-conv5")
    assert study.plan == StudyPlan.PAPER and study.overlap_class.name == "car" and study.tasks.count() == 12
    assert study.raters.filter(kind=RaterKind.SIMULATED).count() == 2
    assert Judgment.objects.filter(simulated=True).count() == 24
    again = expert_demo.demo_expert_study_ensure(dataset=world.dataset.name)
    assert not again["created"] and again["credentials"] == result["credentials"]
    assert again["simulated"]["judgments_created"] == 0 and Judgment.objects.count() == 24
    stored = (tmp_path / "demo-credentials.txt").read_text()
    assert f"expert1={result['credentials']['expert1']}" in stored
    from django.contrib.auth import authenticate

    assert authenticate(username="expert2", password=result["credentials"]["expert2"]) is not None
