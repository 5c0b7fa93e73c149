"""The one-statement claims of ``annotation/claims.py`` and their ORM twins hand out the same tasks.

On PostgreSQL the expert next-task claim, the crowd next-HIT claim and the lease expiry run as raw SQL; every
other database runs the ORM code, which is the reference. Each test seeds one study, then plays one scripted
sequence (several raters or workers asking, answering, returning, walking away while the clock moves on) twice
over the same rows: once through the SQL, once through the ORM (``claims.claims_in_sql`` patched to False),
each inside a rolled-back savepoint, and compares the two runs claim by claim.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from annotation import claims
from annotation.crowd import services as crowd_services
from annotation.expert import services as expert_services
from annotation.models import Answer, CrowdAssignment, Hit, StudyPlan, StudyTask
from tests.test_crowd_study import enter, validation_study
from tests.test_expert_study import build_study_world, make_experts

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="the raw-SQL claims run on PostgreSQL only (CI runs there: set DATABASE_URL to a "
        "postgres:// URL); on this database both paths are the ORM code",
    ),
]


@contextmanager
def rolled_back():
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def play_twice(monkeypatch, script) -> tuple[list, list]:
    """``script()``'s log through the SQL claims, then through the ORM twins, from the same rows."""
    assert claims.claims_in_sql()
    with rolled_back():
        in_sql = script()
    with monkeypatch.context() as patch, rolled_back():
        patch.setattr(claims, "claims_in_sql", lambda: False)
        in_orm = script()
    return in_sql, in_orm


def assert_same_claims(in_sql: list, in_orm: list) -> None:
    for step, (sql, orm) in enumerate(zip(in_sql, in_orm, strict=True)):
        assert sql == orm, f"step {step}: raw SQL {sql} != ORM {orm}"


# -- experts: the next task -----------------------------------------------------------------------------------


@pytest.mark.parametrize("plan, raters_per_task", [(StudyPlan.PAPER, 2), (StudyPlan.N_RATERS, 2), (StudyPlan.FULL, 3)])
def test_expert_claims_hand_out_the_same_tasks(monkeypatch, plan, raters_per_task):
    study = expert_services.study_create(
        name="parity",
        extraction=build_study_world(units=8),
        experts=make_experts(3),
        plan=plan,
        raters_per_task=raters_per_task,
        claim_hours=24,
    )
    raters = list(study.raters.order_by("name"))
    start = timezone.now()

    def script() -> list:
        rng, log, now = random.Random(11), [], start
        for step in range(90):
            rater = rng.choice(raters)
            if step in (12, 40):  # everyone walked away from what they held: a day later it goes back to the pool
                now += timedelta(hours=25)
                log.append(("released", expert_services.stale_claims_release(study=study, now=now)))
            task = expert_services.task_next_for_rater(rater=rater, now=now)
            log.append(("claim", rater.name, None if task is None else task.pk))
            if task is not None and rng.random() < 0.6:
                judgment = expert_services.judgment_submit(rater=rater, task=task, answer=Answer.NO, submitted_at=now)
                log.append(("answer", rater.name, judgment.task_id))
        log.append(
            ("assigned", list(StudyTask.objects.filter(study=study).order_by("pk").values_list("pk", "assigned_count")))
        )
        return log

    in_sql, in_orm = play_twice(monkeypatch, script)
    assert_same_claims(in_sql, in_orm)
    claimed = [entry for entry in in_sql if entry[0] == "claim"]
    assert any(task is not None for _, _, task in claimed) and any(task is None for _, _, task in claimed)
    assert any(entry[0] == "released" and entry[1] > 0 for entry in in_sql)  # the script exercised the release


# -- crowd workers: the next HIT, leases ------------------------------------------------------------------------


@pytest.mark.parametrize("assignments_per_hit", [1, 3])
def test_crowd_claims_hand_out_the_same_hits_and_expire_the_same_leases(monkeypatch, assignments_per_hit):
    study = validation_study(units=8, assignments_per_hit=assignments_per_hit, lease_seconds=60)
    workers = [enter(study, number) for number in range(1, 6)]
    start = timezone.now()

    def script() -> list:
        rng, log, now = random.Random(5), [], start
        for step in range(120):
            worker = rng.choice(workers)
            if step in (8, 30, 70):  # the clock passes every running lease's end
                now += timedelta(seconds=61)
                log.append(("expired", crowd_services.leases_expire(study=study, now=now)))
            now += timedelta(seconds=1)
            assignment = crowd_services.hit_next_for_worker(worker=worker, now=now)
            log.append(("claim", worker.external_id, None if assignment is None else assignment.hit_id))
            if assignment is None:
                continue
            draw = rng.random()
            if draw < 0.6:
                crowd_services.assignment_submit(assignment=assignment, answer=rng.choice(["yes", "no"]), now=now)
                log.append(("answer", worker.external_id, assignment.hit_id))
            elif draw < 0.7:
                log.append(("return", worker.external_id, crowd_services.assignment_return(assignment=assignment)))
        log.append(
            ("assigned", list(Hit.objects.filter(study=study).order_by("pk").values_list("pk", "assigned_count")))
        )
        log.append(
            (
                "states",
                sorted(
                    CrowdAssignment.objects.filter(hit__study=study).values_list(
                        "worker__external_id", "hit_id", "state", "reason"
                    )
                ),
            )
        )
        return log

    in_sql, in_orm = play_twice(monkeypatch, script)
    assert_same_claims(in_sql, in_orm)
    claimed = [entry for entry in in_sql if entry[0] == "claim"]
    assert any(hit is not None for _, _, hit in claimed) and any(hit is None for _, _, hit in claimed)
    assert any(entry[0] == "expired" and entry[1] > 0 for entry in in_sql)  # the script let leases run out
