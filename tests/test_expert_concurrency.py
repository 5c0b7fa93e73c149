"""Twenty simultaneous next-task requests never hand out one task beyond the plan's overlap.

Each request is a real GET of the expert's "next task" page from its own thread, hence its own database
connection, released together by a barrier. Runs on the configured database: SQLite locally (IMMEDIATE
transactions), PostgreSQL in CI (``SELECT … FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from annotation.expert.services import study_create
from annotation.models import Assignment, StudyPlan, StudyTask
from tests.test_expert_study import build_study_world, make_experts

pytestmark = pytest.mark.django_db(transaction=True)
REQUESTS = 20


def fire(clients: list[Client], url: str) -> list[str]:
    """GET ``url`` with every client at once; return where each was sent (task URL or the done page)."""
    barrier = threading.Barrier(len(clients))
    outcomes: list[str | None] = [None] * len(clients)
    errors: list[BaseException] = []

    def request(position: int, client: Client) -> None:
        try:
            barrier.wait()
            response = client.get(url)
            outcomes[position] = response["Location"] if response.status_code == 302 else f"{response.status_code}"
        except BaseException as error:  # any failure must fail the test, not vanish with the thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=request, args=(position, client)) for position, client in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return outcomes


def logged_in(users) -> list[Client]:
    clients = []
    for user in users:
        client = Client()
        client.force_login(user)
        clients.append(client)
    return clients


@pytest.mark.parametrize("per_task", [1, 2])
def test_twenty_experts_at_once_never_share_a_task_beyond_the_overlap(per_task):
    world = build_study_world(name=f"c{per_task}", units=5)  # 15 tasks: fewer than the requests when per_task=1
    experts = make_experts(REQUESTS)
    study = study_create(
        name=f"race-{per_task}", extraction=world, experts=experts, plan=StudyPlan.N_RATERS, raters_per_task=per_task
    )
    outcomes = fire(logged_in(experts), reverse("annotation:expert_next", args=[study.pk]))

    handed = [outcome for outcome in outcomes if "/tasks/" in outcome]
    assert all(outcome in handed or outcome == "200" for outcome in outcomes), outcomes  # 200: "no task left"
    per_task_count = Counter(handed)
    assert max(per_task_count.values()) <= per_task, per_task_count
    assert len(handed) == min(REQUESTS, 15 * per_task)
    assignments = Counter(Assignment.objects.filter(task__study=study).values_list("task_id", flat=True))
    assert sum(assignments.values()) == len(handed) and max(assignments.values()) <= per_task
    for task in StudyTask.objects.filter(study=study):
        assert task.assigned_count == assignments.get(task.pk, 0) <= task.capacity
    # Each expert holds at most one task, and was sent to the one they hold.
    for expert, outcome in zip(experts, outcomes):
        held = list(Assignment.objects.filter(rater__user=expert).values_list("task_id", flat=True))
        assert len(held) == (1 if "/tasks/" in outcome else 0)
        if held:
            assert outcome.endswith(f"/tasks/{held[0]}/")


def test_one_expert_asking_twenty_times_at_once_holds_one_task():
    world = build_study_world(name="same", units=3)
    (expert,) = make_experts(1)
    study = study_create(name="same", extraction=world, experts=[expert], plan=StudyPlan.FULL)
    client = Client()
    client.force_login(expert)
    outcomes = fire(
        [client] * 1 + [_clone(client) for _ in range(REQUESTS - 1)], reverse("annotation:expert_next", args=[study.pk])
    )
    assert len(set(outcomes)) == 1 and "/tasks/" in outcomes[0], outcomes
    assert Assignment.objects.filter(task__study=study).count() == 1


def _clone(client: Client) -> Client:
    """Another client on the same session (another browser tab)."""
    other = Client()
    other.cookies = client.cookies
    return other
