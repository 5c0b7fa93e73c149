"""Worker heartbeats, "no worker is running" on the pages and in the API, and runs whose message was lost.

No worker process here: heartbeat rows and broker messages are written directly (the worker tests in
test_worker_faults.py drive the same through real workers).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from analysis import selectors
from analysis.models import Run, RunStatus, WorkerHeartbeat
from analysis.services.runs import ORPHAN_REQUEUED_PHASE, run_ids_waiting_in_broker, run_recover_orphans, runs_reconcile
from analysis.services.workers import WorkerMonitor, worker_heartbeat_record, worker_heartbeat_remove
from tests.conftest import broker_purge


def queued_run(*, queue: str = "gpu", age: float = 0.0, kind: str = "selfcheck") -> Run:
    run = Run.objects.create(
        kind=kind, params={"repeats": 1}, params_hash="x", queue=queue, phase="Waiting for a worker"
    )
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(seconds=age))
    run.refresh_from_db()
    return run


def beat(hostname: str, queues: list[str], *, age: float = 0.0) -> None:
    worker_heartbeat_record(hostname=hostname, queues=queues, pid=4242)
    WorkerHeartbeat.objects.filter(hostname=hostname).update(last_seen=timezone.now() - timedelta(seconds=age))


@pytest.mark.django_db
def test_queue_liveness_follows_the_heartbeats(settings):
    settings.UNITSCOPE_WORKER_ALIVE_SECONDS = 30
    assert not selectors.queue_liveness("gpu").alive
    beat("a@host", ["default", "gpu"], age=5)
    beat("b@host", ["gpu"], age=100)
    gpu = selectors.queue_liveness("gpu")
    assert gpu.alive and gpu.workers == ("a@host",)
    beat("a@host", ["default", "gpu"], age=40)
    gpu = selectors.queue_liveness("gpu")
    assert not gpu.alive and gpu.workers == ()
    assert gpu.last_seen == WorkerHeartbeat.objects.get(hostname="a@host").last_seen
    worker_heartbeat_remove(hostname="a@host", pid=4242)
    assert not WorkerHeartbeat.objects.filter(hostname="a@host").exists()
    beat("b@host", ["gpu"], age=8 * 24 * 3600)
    beat("c@host", ["gpu"])  # a week later, the long-gone worker is forgotten
    assert list(WorkerHeartbeat.objects.values_list("hostname", flat=True)) == ["c@host"]
    assert selectors.queue_liveness("default").last_seen is None


@pytest.mark.django_db
def test_a_queued_run_says_no_worker_after_the_start_up_grace_or_at_once_when_its_worker_stopped(settings):
    settings.UNITSCOPE_WORKER_ALIVE_SECONDS = 30
    settings.UNITSCOPE_WORKER_COMMAND = "systemctl start unitscope-worker@{queue}"
    young, old = queued_run(age=2), queued_run(age=60)
    assert selectors.run_worker_state(young).state == "waiting"  # a worker may still be starting
    state = selectors.run_worker_state(old)
    assert state.state == "no_worker"
    assert state.message == (
        "No worker is running for the gpu queue — start one with `systemctl start unitscope-worker@gpu`."
    )
    beat("a@host", ["gpu"], age=1)
    assert selectors.run_worker_state(old).state == "waiting"
    beat("a@host", ["gpu"], age=31)  # it stopped beating: no grace any more
    state = selectors.run_worker_state(young)
    assert state.state == "no_worker" and "one was last seen" in state.message
    Run.objects.filter(pk=young.pk).update(status=RunStatus.RUNNING)
    young.refresh_from_db()
    assert selectors.run_worker_state(young).state == "running"


@pytest.mark.django_db
def test_the_default_worker_command_is_this_installations_celery(settings):
    settings.UNITSCOPE_WORKER_COMMAND = ""
    command = selectors.worker_start_command("gpu")
    assert command.endswith(" -m celery -A unitscope worker -Q gpu -c 1 --loglevel INFO")
    assert "python" in command


@pytest.mark.django_db
def test_runs_page_run_page_overview_and_api_say_that_no_worker_is_running(researcher_client, settings):
    settings.UNITSCOPE_WORKER_ALIVE_SECONDS = 30
    settings.UNITSCOPE_ORPHAN_AFTER_SECONDS = 3600  # this test is about the words, not about lost messages
    run = queued_run(age=45)
    expected = "No worker is running for the gpu queue"
    command = selectors.worker_start_command("gpu")
    for url in (
        reverse("analysis:run_list"),
        reverse("analysis:run_detail", args=[run.pk]),
        reverse("analysis:run_status", args=[run.pk]),
        reverse("analysis:dashboard"),
    ):
        page = researcher_client.get(url).content.decode()
        assert expected in page, url
        assert command in page.replace("&#x27;", "'"), url
    api = researcher_client.get(reverse("api:run-detail", args=[run.pk])).json()
    assert api["worker_state"] == "no_worker" and api["worker_message"].startswith(expected)
    listed = researcher_client.get(reverse("api:run-list")).json()["results"]
    assert [item["worker_state"] for item in listed] == ["no_worker"]

    beat("demo@host", ["default", "gpu"])  # a worker comes up: the warning goes
    for url in (
        reverse("analysis:run_list"),
        reverse("analysis:run_detail", args=[run.pk]),
        reverse("analysis:dashboard"),
    ):
        page = researcher_client.get(url).content.decode()
        assert expected not in page and "Waiting for a worker" in page, url
    assert researcher_client.get(reverse("api:run-detail", args=[run.pk])).json()["worker_state"] == "waiting"


@pytest.mark.django_db
def test_a_run_whose_message_is_lost_is_sent_again_once_then_failed_with_the_reason(settings, clean_broker):
    settings.UNITSCOPE_ORPHAN_AFTER_SECONDS = 60
    lost = queued_run(age=120)
    assert run_ids_waiting_in_broker("gpu") == set()
    assert run_recover_orphans() == {"requeued": 1, "failed": 0}
    lost.refresh_from_db()
    assert lost.status == RunStatus.QUEUED and lost.requeue_count == 1 and lost.phase == ORPHAN_REQUEUED_PHASE
    assert run_ids_waiting_in_broker("gpu") == {lost.pk}
    # While its message waits, nothing happens, however long.
    assert run_recover_orphans(now=timezone.now() + timedelta(hours=2)) == {"requeued": 0, "failed": 0}
    young = queued_run(age=5)
    broker_purge()  # lost again
    assert run_recover_orphans(now=timezone.now() + timedelta(seconds=30)) == {"requeued": 0, "failed": 0}
    counts = run_recover_orphans(now=timezone.now() + timedelta(seconds=90))
    lost.refresh_from_db()
    assert counts == {"requeued": 1, "failed": 1}  # young's turn came: sent once; lost failed
    assert lost.status == RunStatus.FAILED and lost.finished_at is not None
    assert "lost twice" in lost.error and "Start it again" in lost.error
    young.refresh_from_db()
    assert young.requeue_count == 1 and young.status == RunStatus.QUEUED


@pytest.mark.django_db
def test_a_duplicate_message_never_runs_a_job_twice(settings, clean_broker):
    """Sending again is safe because the claim is a conditional UPDATE: the second task finds no queued run."""
    from analysis.services.runs import run_execute

    calls = []

    def execute(*, run, progress, device):
        calls.append(run.pk)
        return {"ok": True}

    run = queued_run(age=0, kind="selfcheck")
    run_execute(run_id=run.pk, execute=execute)
    run_execute(run_id=run.pk, execute=execute)
    run.refresh_from_db()
    assert calls == [run.pk] and run.status == RunStatus.SUCCEEDED


@pytest.mark.django_db
def test_the_worker_monitor_beats_reconciles_and_removes_its_row_when_stopped(settings, clean_broker):
    settings.UNITSCOPE_ORPHAN_AFTER_SECONDS = 60
    lost = queued_run(age=120)
    monitor = WorkerMonitor(hostname="m@host", queues=["default", "gpu"], interval=3600)
    monitor.beat()
    row = WorkerHeartbeat.objects.get(hostname="m@host")
    assert row.queue_list == ["default", "gpu"] and row.pid == monitor.pid
    lost.refresh_from_db()
    assert lost.requeue_count == 1  # the beat ran the job system's checks
    monitor.stop()
    assert not WorkerHeartbeat.objects.filter(hostname="m@host").exists()


@pytest.mark.django_db
def test_reconcile_is_quiet_when_every_message_is_there(settings, clean_broker):
    from analysis.jobs import job_kind
    from analysis.services.runs import run_enqueue

    settings.UNITSCOPE_ORPHAN_AFTER_SECONDS = 1
    run = queued_run(age=30)
    run_enqueue(run=run, kind_spec=job_kind("selfcheck"))
    runs_reconcile()
    run.refresh_from_db()
    assert run.requeue_count == 0 and run.status == RunStatus.QUEUED
