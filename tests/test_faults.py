"""Faults: a Celery worker killed during a dissection, PostgreSQL restarted while experts and crowd workers submit,
and double submits (double clicks, retries).

The PostgreSQL test starts its own throwaway cluster (``benchmarks.loadkit.ThrowawayPostgres``: initdb into a
temporary directory, a free loopback port) and restarts only that one; the site runs under gunicorn against it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from django.urls import reverse

from benchmarks.loadkit import HIDDEN_SHOWN, Server, Session, ThrowawayPostgres, django_env, location, setup_world
from tests.conftest import PROJECT_DIR, _database_url_for_subprocess, celery_worker_command

# -- a worker killed during a dissection ----------------------------------------------------------------------


def start_worker(log_path: Path) -> subprocess.Popen:
    """A real Celery worker in its own process group (so that the whole group can be killed at once)."""
    env = dict(
        os.environ, DATABASE_URL=_database_url_for_subprocess(), DJANGO_SETTINGS_MODULE="unitscope.settings.test"
    )
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            celery_worker_command(f"fault-{time.monotonic_ns()}@%h"),
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while "ready." not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"the Celery worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    return process


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.mark.worker
def test_killed_worker_leaves_a_failed_run_never_a_half_written_success(
    transactional_db, clean_broker, tiny_layer, tmp_path, researcher_client
):
    from analysis.models import LayerDissection, Run, RunStatus, UnitDissection
    from analysis.services.dissection import dissection_run_start

    worker = start_worker(tmp_path / "worker-1.log")
    try:
        caught = None
        for seed in range(3):  # a dissection this small may finish before we see it running: try again
            run = dissection_run_start(
                network="seeded", dataset="tiny", layer="conv5", baseline="shuffled", shuffle_seed=seed, batch_size=1
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = Run.objects.filter(pk=run.pk).values_list("status", flat=True).get()
                if status != RunStatus.QUEUED:
                    break
                time.sleep(0.01)
            if status == RunStatus.RUNNING:
                kill_group(worker)
                caught = run
                break
        assert caught is not None, "the dissections finished before the worker could be killed"
    finally:
        if worker.poll() is None:
            kill_group(worker)
    run = Run.objects.get(pk=caught.pk)
    assert run.status == RunStatus.RUNNING  # nobody could write a final state
    # SIGKILL reaches the pool's child asynchronously: wait until the process that claimed the run has died.
    from analysis.services.runs import worker_gone

    deadline = time.monotonic() + 30
    while not worker_gone(run.worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The run's status panel (polled by its page) notices that the worker process is gone.
    panel = researcher_client.get(reverse("analysis:run_status", args=[run.pk]))
    assert panel.status_code == 200 and b"failed" in panel.content.lower()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and run.finished_at is not None
    assert "stopped before it finished" in run.error and "were not saved" in run.error
    assert run.result == {}
    assert not LayerDissection.objects.filter(run=run, complete=True).exists()
    assert not UnitDissection.objects.filter(dissection__run=run).exists()
    # A new worker handed the killed task again (as a broker redelivers an unacknowledged one) never brings the run
    # back: wait until it has executed that task, rather than for a while.
    from celery import current_app

    from analysis.jobs import job_kind

    log_path = tmp_path / "worker-2.log"
    worker = start_worker(log_path)
    try:
        kind = job_kind(run.kind)
        redelivered = current_app.send_task(kind.task_name, args=[run.pk], queue=kind.queue)
        deadline = time.monotonic() + 120
        while f"[{redelivered.id}] succeeded" not in log_path.read_text():
            assert time.monotonic() < deadline, f"the redelivered task never ran:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.05)
        run.refresh_from_db()
        assert run.status == RunStatus.FAILED
        assert not LayerDissection.objects.filter(run=run, complete=True).exists()
    finally:
        kill_group(worker)


# -- PostgreSQL restarted while people submit --------------------------------------------------------------------


class Log:
    def __init__(self):
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.retry_after: set[str] = set()
        self.succeeded: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.errors: list[str] = []
        self.submits = 0


def retrying(log: Log, call, *, deadline: float):
    """Send until the answer is not a clean "try again" (503, or the connection refused); bounded by time."""
    while True:
        try:
            status, headers, body = call()
        except OSError:
            status, headers, body = 0, {}, b""
        with log.lock:
            log.statuses[status] += 1
            if status == 503:
                log.retry_after.add(headers.get("Retry-After", ""))
        if status not in (0, 503) or time.monotonic() > deadline:
            return status, headers, body
        time.sleep(0.2)


def expert_loop(base: str, username: str, study: int, rounds: int, log: Log, deadline: float) -> None:
    session = Session(base, timeout=20)
    try:
        retrying(log, lambda: session.get("/login/"), deadline=deadline)
        status, _, _ = retrying(
            log,
            lambda: session.post("/login/", {"username": username, "password": "load-test-password-9"}),
            deadline=deadline,
        )
        assert status == 302, status
        for _ in range(rounds):
            status, headers, _ = retrying(log, lambda: session.get(f"/expert/studies/{study}/next/"), deadline=deadline)
            if status != 302:
                return
            task_url = location(headers)
            _, _, page = retrying(log, lambda: session.get(task_url), deadline=deadline)
            shown = HIDDEN_SHOWN.search(page)
            data = {"answer": "no", "shown": shown.group(1).decode() if shown else ""}
            # A double click: the same answer twice, at once.
            results = []
            twins = [
                threading.Thread(
                    target=lambda: results.append(
                        retrying(log, lambda: session.post(task_url, data), deadline=deadline)[0]
                    )
                )
                for _ in range(2)
            ]
            for twin in twins:
                twin.start()
            for twin in twins:
                twin.join()
            with log.lock:
                log.submits += 1
                if any(status == 302 for status in results):
                    log.succeeded["expert"].append((username, task_url))
                if any(status not in (302,) for status in results):
                    log.errors.append(f"{username} {task_url}: {results}")
    except Exception as error:
        with log.lock:
            log.errors.append(f"{username}: {type(error).__name__}: {error}")


def crowd_loop(base: str, token: str, number: int, rounds: int, log: Log, deadline: float) -> None:
    session = Session(base, timeout=20)
    try:
        retrying(log, lambda: session.get(f"/crowd/s/{token}/"), deadline=deadline)
        status, headers, _ = retrying(log, lambda: session.post(f"/crowd/s/{token}/", {}), deadline=deadline)
        next_url = location(headers)
        assert status == 302 and "/crowd/w/" in next_url, status
        for _ in range(rounds):
            status, headers, _ = retrying(log, lambda: session.get(next_url), deadline=deadline)
            if status != 302 or "/a/" not in location(headers):
                return
            task_url = location(headers)
            retrying(log, lambda: session.get(task_url), deadline=deadline)
            first = retrying(log, lambda: session.post(task_url, {"answer": "yes"}), deadline=deadline)[0]
            again = retrying(log, lambda: session.post(task_url, {"answer": "yes"}), deadline=deadline)[0]  # a retry
            with log.lock:
                log.submits += 1
                if first == 302 and again == 302:
                    log.succeeded["crowd"].append((str(number), task_url))
                else:
                    log.errors.append(f"crowd {number} {task_url}: {first}, {again}")
    except Exception as error:
        with log.lock:
            log.errors.append(f"crowd {number}: {type(error).__name__}: {error}")


@pytest.mark.worker
def test_postgres_restart_while_experts_and_crowd_submit(tmp_path):
    people, rounds = 3, 6
    with ThrowawayPostgres() as pg:
        env = django_env(pg.create_database("faults"), tmp_path / "data", CONN_MAX_AGE="60")
        world = setup_world(env, experts=people, crowd=people, tasks_per_expert=rounds, hits_per_worker=rounds)
        with Server(env, workers=2, threads=4, log=tmp_path / "gunicorn.log") as server:
            log = Log()
            deadline = time.monotonic() + 150
            clients = [
                threading.Thread(target=expert_loop, args=(server.base, name, world["study"], rounds, log, deadline))
                for name in world["experts"]
            ]
            clients += [
                threading.Thread(
                    target=crowd_loop, args=(server.base, world["crowd_token"], number, rounds, log, deadline)
                )
                for number in range(people)
            ]
            for client in clients:
                client.start()
            while log.submits < people and time.monotonic() < deadline:  # some answers are in: now restart
                time.sleep(0.05)
            before = log.submits
            pg.stop()
            time.sleep(2.0)  # the clients keep submitting into the outage
            during = log.statuses.copy()
            pg.start()
            for client in clients:
                client.join(timeout=180)
            assert not any(client.is_alive() for client in clients)
            after = Session(server.base).get("/login/")[0]
            server_log = (tmp_path / "gunicorn.log").read_text()
        judgments = pg.query(
            "faults",
            "SELECT r.name, t.id FROM annotation_judgment j JOIN annotation_studyrater r "
            "ON r.id = j.rater_id JOIN annotation_studytask t ON t.id = j.task_id",
        )
        crowd_rows = pg.query(
            "faults", "SELECT worker_id, hit_id FROM annotation_crowdassignment WHERE state = 'submitted'"
        )
    assert not log.errors, log.errors
    assert before < people * rounds * 2, "the restart came after the work was done"
    # During the outage requests failed cleanly: 503 with Retry-After (or the connection refused), no other 5xx.
    assert during[503] >= 1, during
    assert log.retry_after == {"5"}
    assert not any(status >= 500 and status != 503 for status in log.statuses), log.statuses
    assert after == 200, server_log[-2000:]
    # Nothing lost, nothing doubled: every answer confirmed to a client is exactly one row, and there are no others.
    assert len(log.succeeded["expert"]) == people * rounds and len(log.succeeded["crowd"]) == people * rounds
    per_expert_task = Counter(judgments)
    assert len(judgments) == people * rounds and max(per_expert_task.values()) == 1
    expected = Counter(name for name, _ in log.succeeded["expert"])
    assert Counter(name for name, _ in judgments) == expected
    assert len(crowd_rows) == people * rounds and len(set(crowd_rows)) == len(crowd_rows)


# -- double submits ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_double_submits_are_idempotent(client, researcher):
    from annotation.crowd import services as crowd_services
    from annotation.expert import services
    from annotation.models import CrowdAssignment, Judgment
    from tests.test_api import IMPORT_CSV, token_client
    from tests.test_crowd_study import enter, validation_study
    from tests.test_expert_study import build_study_world, make_experts

    study = services.study_create(
        name="twice", extraction=build_study_world(units=1), experts=make_experts(1), plan="full"
    )
    rater = study.raters.get()
    client.force_login(rater.user)
    task = services.task_next_for_rater(rater=rater)
    url = reverse("annotation:annotate", args=[study.pk, task.pk])
    shown = services.task_shown_token(task=task, rater=rater)
    responses = [client.post(url, {"answer": "part", "concept": "wheel", "shown": shown}) for _ in range(3)]
    assert all(response.status_code == 302 for response in responses)
    assert Judgment.objects.filter(rater=rater).count() == 1  # a double Enter adds nothing
    client.post(url, {"answer": "no", "shown": shown})
    client.post(url, {"answer": "no", "shown": shown})
    assert Judgment.objects.filter(rater=rater).count() == 2  # one revision, once

    crowd = validation_study(name="twice", units=1)
    worker = enter(crowd, 1)
    assignment = crowd_services.hit_next_for_worker(worker=worker)
    task_url = reverse("annotation:crowd_task", args=[worker.code, assignment.token])
    client.logout()
    statuses = [client.post(task_url, {"answer": "yes"}).status_code for _ in range(3)]
    assert statuses == [302, 302, 302]
    assignment.refresh_from_db()
    assert assignment.state == "submitted" and assignment.answer == "yes"
    assert CrowdAssignment.objects.filter(worker=worker).count() == 1
    # A later, different answer cannot overwrite the submitted one.
    client.post(task_url, {"answer": "no"})
    assignment.refresh_from_db()
    assert assignment.answer == "yes"

    api = token_client(researcher)
    first = api.post(reverse("api:judgment-import"), {"study": "retried", "csv": IMPORT_CSV}, format="json").json()
    again = api.post(reverse("api:judgment-import"), {"study": "retried", "csv": IMPORT_CSV}, format="json").json()
    assert (first["created"], again["created"], again["unchanged"]) == (6, 0, 6)
    assert Judgment.objects.filter(task__study__name="retried").count() == 6
