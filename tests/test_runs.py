"""The Run lifecycle: created before enqueueing, claimed exclusively, progress visible, final states."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from analysis.jobs import job_kind
from analysis.models import Run, RunStatus
from analysis.services.runs import (
    RunCancelled,
    RunInputError,
    RunProgress,
    params_hash,
    run_cancel,
    run_claim,
    run_execute,
    run_fail_stale,
    run_start,
)
from analysis.services.selfcheck import selfcheck_params

SMALL = {"matmul_size": 32, "conv_batch": 2, "conv_image_size": 16, "repeats": 2}


def test_params_hash_ignores_key_order():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


@pytest.mark.django_db
def test_run_row_exists_before_the_task_is_sent(django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr(
        "analysis.services.runs.current_app.send_task",
        lambda name, args, queue: sent.append((name, args, queue, Run.objects.get(pk=args[0]).status)),
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run, created = run_start(kind="selfcheck", params=selfcheck_params(**SMALL))
    assert created and run.status == RunStatus.QUEUED and not sent
    for callback in callbacks:
        callback()
    assert sent == [("analysis.selfcheck", [run.pk], "gpu", RunStatus.QUEUED)]


@pytest.mark.django_db
def test_inline_run_succeeds_with_device_timings_and_full_progress():
    run, _ = run_start(kind="selfcheck", params=selfcheck_params(**SMALL), inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.device == "cpu" or run.device.startswith("cuda")
    assert run.started_at <= run.finished_at
    assert run.progress_total == 1 + 2 * SMALL["repeats"] and run.progress_done == run.progress_total
    assert run.result["matmul_gflops"] > 0 and run.result["conv_images_per_second"] > 0
    assert run.result["matmul_max_relative_error"] < 1e-4


@pytest.mark.django_db
def test_failure_leaves_a_readable_error():
    run = Run.objects.create(kind="selfcheck", params={}, params_hash="x")

    def broken(**kwargs):
        raise ValueError("the weights file has 3 channels, the network expects 1")

    run_execute(run_id=run.pk, execute=broken)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == "ValueError: the weights file has 3 channels, the network expects 1"
    assert "Traceback" in run.error_detail and run.finished_at is not None


@pytest.mark.django_db
def test_user_error_fails_fast_with_its_message():
    run = Run.objects.create(kind="selfcheck", params={}, params_hash="x")

    def bad_input(**kwargs):
        raise RunInputError("No dataset named 'broden2'.")

    run_execute(run_id=run.pk, execute=bad_input)
    run.refresh_from_db()
    assert (run.status, run.error, run.error_detail) == (RunStatus.FAILED, "No dataset named 'broden2'.", "")


@pytest.mark.django_db
def test_progress_updates_are_visible_while_running():
    run = Run.objects.create(kind="selfcheck", params={}, params_hash="x")
    seen = []

    def execute(*, run, progress, device):
        progress.phase("Counting", total=4)
        for done in range(1, 5):
            progress.min_interval = 0  # write every step for the test
            progress(done, 4)
            seen.append(Run.objects.values_list("status", "phase", "progress_done", "progress_total").get(pk=run.pk))
        return {"counted": 4}

    run_execute(run_id=run.pk, execute=execute)
    assert seen == [("running", "Counting", step, 4) for step in range(1, 5)]
    assert Run.objects.get(pk=run.pk).result == {"counted": 4}


@pytest.mark.django_db
def test_cancelling_a_running_run_stops_it_at_the_next_report():
    run = Run.objects.create(kind="selfcheck", params={}, params_hash="x")
    reached = []

    def execute(*, run, progress, device):
        progress(1, 10)
        run_cancel(run=run)
        reached.append(1)
        progress(10, 10)  # the next report notices
        reached.append(2)
        return {}

    run_execute(run_id=run.pk, execute=execute)
    run.refresh_from_db()
    assert reached == [1] and run.status == RunStatus.CANCELLED and run.finished_at is not None


@pytest.mark.django_db
def test_a_cancelled_queued_run_is_never_executed():
    run = Run.objects.create(kind="selfcheck", params={}, params_hash="x")
    assert run_cancel(run=run)
    run_execute(run_id=run.pk, execute=lambda **kwargs: pytest.fail("executed a cancelled run"))
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED
    assert not run_cancel(run=run)


@pytest.mark.django_db
def test_progress_raises_when_the_run_is_no_longer_running():
    run = Run.objects.create(kind="selfcheck", params={}, params_hash="x", status=RunStatus.CANCELLED)
    with pytest.raises(RunCancelled):
        RunProgress(run.pk)(1, 2)


@pytest.mark.django_db
def test_identical_active_run_is_reused_but_measurements_are_not():
    first, created = run_start(kind="selfcheck", params=selfcheck_params(**SMALL))
    again, created_again = run_start(kind="selfcheck", params=selfcheck_params(**SMALL))
    assert created and not created_again and again.pk == first.pk
    Run.objects.filter(pk=first.pk).update(status=RunStatus.SUCCEEDED)
    third, created_third = run_start(kind="selfcheck", params=selfcheck_params(**SMALL))
    assert created_third and third.pk != first.pk  # self-checks measure anew


@pytest.mark.django_db
def test_stale_running_run_is_marked_failed():
    limit = job_kind("selfcheck").time_limit
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    old = now - timedelta(seconds=limit + 120)
    stale = Run.objects.create(
        kind="selfcheck", params={}, params_hash="x", status=RunStatus.RUNNING, started_at=old, heartbeat_at=old
    )
    fresh = Run.objects.create(
        kind="selfcheck",
        params={},
        params_hash="y",
        status=RunStatus.RUNNING,
        started_at=now,
        heartbeat_at=now - timedelta(seconds=limit + 60),
    )  # just in time
    assert run_fail_stale(now=now) == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == RunStatus.FAILED and "stopped reporting" in stale.error
    assert fresh.status == RunStatus.RUNNING


@pytest.mark.django_db(transaction=True)
def test_claim_is_exclusive_under_concurrency():
    """Eight threads, each on its own database connection, claim the same runs at once: one wins each."""
    runs = [Run.objects.create(kind="selfcheck", params={}, params_hash=str(i)) for i in range(5)]
    results: dict[int, list[bool]] = {run.pk: [] for run in runs}
    lock = threading.Lock()

    def contender(run_id: int, barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            won = run_claim(run_id=run_id)
            with lock:
                results[run_id].append(won)
        finally:
            connection.close()

    for run in runs:
        barrier = threading.Barrier(8)
        threads = [threading.Thread(target=contender, args=(run.pk, barrier)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(sorted(wins) == [False] * 7 + [True] for wins in results.values()), results
    assert set(Run.objects.values_list("status", flat=True)) == {RunStatus.RUNNING}
