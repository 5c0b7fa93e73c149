"""Fifty simultaneous workers asking for HITs with N = 3: no HIT gets more than 3 distinct workers, nobody gets a
HIT twice, and the places add up.

Each worker is a real HTTP client (its own thread, hence its own database connection) on its personal link,
released together by a barrier. Runs on the configured database, as the expert claim's test: SQLite by default
(IMMEDIATE transactions), PostgreSQL with ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/unitscope``
(``SELECT … FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from annotation.crowd import services
from annotation.models import CrowdAdapter, CrowdAssignment, CrowdAssignmentState, Hit, HitRole
from tests.test_crowd_study import validation_study

pytestmark = pytest.mark.django_db(transaction=True)
WORKERS = 50
N = 3


def run_together(count: int, work) -> list:
    """Run ``work(position)`` in ``count`` threads released at once; re-raise any failure."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def target(position: int) -> None:
        try:
            barrier.wait()
            results[position] = work(position)
        except BaseException as error:  # any failure must fail the test, not vanish with the thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(position,)) for position in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[:3]
    return results


def check_places(study) -> Counter:
    pairs = list(CrowdAssignment.objects.filter(hit__study=study).values_list("hit_id", "worker_id"))
    assert len(pairs) == len(set(pairs))  # nobody twice on one HIT
    live = Counter(
        hit
        for hit, _ in CrowdAssignment.objects.filter(hit__study=study)
        .exclude(state__in=[CrowdAssignmentState.RETURNED, CrowdAssignmentState.REJECTED])
        .values_list("hit_id", "worker_id")
    )
    for hit in Hit.objects.filter(study=study, role=HitRole.TASK):
        assert hit.assigned_count == live.get(hit.pk, 0) <= N
    return live


def test_fifty_workers_asking_at_once_never_overfill_a_hit():
    study = validation_study("race", units=5, assignments_per_hit=N)  # 10 HITs, 30 places for 50 workers
    workers = [
        services.worker_enter(study=study, adapter=CrowdAdapter.LINK, external_id=f"w{n}")[0] for n in range(WORKERS)
    ]
    clients = [Client() for _ in workers]

    def ask(position: int) -> str:
        response = clients[position].get(reverse("annotation:crowd_next", args=[workers[position].code]))
        return response["Location"] if response.status_code == 302 else str(response.status_code)

    first = run_together(WORKERS, ask)
    handed = [outcome for outcome in first if "/a/" in outcome]
    assert len(handed) == 30 and all(outcome in handed or outcome == "200" for outcome in first), first
    live = check_places(study)
    assert sum(live.values()) == 30 and set(live.values()) == {N}
    # Asking again at once: everyone holding a HIT gets the same one back; nobody gets a second.
    assert run_together(WORKERS, ask) == first
    check_places(study)


def test_fifty_workers_answering_as_fast_as_they_can_fill_each_hit_with_three_distinct_workers():
    study = validation_study("flood", units=10, assignments_per_hit=N)  # 20 HITs, 60 places
    workers = [
        services.worker_enter(study=study, adapter=CrowdAdapter.LINK, external_id=f"w{n}")[0] for n in range(WORKERS)
    ]

    def work(position: int) -> list[int]:
        client, code = Client(), workers[position].code
        done = []
        while True:
            response = client.get(reverse("annotation:crowd_next", args=[code]))
            if response.status_code != 302:
                assert response.status_code == 200
                return done
            task_url = response["Location"]
            answered = client.post(task_url, {"answer": "yes" if position % 2 else "no"})
            assert answered.status_code == 302, answered.content[:500]
            done.append(task_url)

    results = run_together(WORKERS, work)
    assert sum(len(done) for done in results) == 60
    live = check_places(study)
    assert set(live.values()) == {N} and len(live) == 20
    assert CrowdAssignment.objects.filter(hit__study=study, state=CrowdAssignmentState.SUBMITTED).count() == 60
