"""A real Celery worker process executes a job end to end through the configured broker
(Redis in CI, the embedded filesystem broker by default)."""

import time

import pytest

from analysis.models import RunStatus
from analysis.services.selfcheck import selfcheck_run_start

pytestmark = pytest.mark.worker


def wait_until_final(run, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if not run.is_active:
            return run
        time.sleep(0.25)
    pytest.fail(f"run {run.pk} still {run.status} after {timeout} s")


def test_worker_executes_a_selfcheck_through_the_broker(celery_worker_process, settings):
    run = selfcheck_run_start(matmul_size=64, conv_batch=2, conv_image_size=32, repeats=3)
    assert run.status == RunStatus.QUEUED
    run = wait_until_final(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.worker and run.worker != ""
    assert run.result["conv_images_per_second"] > 0
    # The other process, not this one, did the work: its worker name is recorded.
    assert celery_worker_process.poll() is None
