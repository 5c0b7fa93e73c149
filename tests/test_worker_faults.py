"""Faults with real worker processes, on the embedded default (and on Redis, but for the half-written file): a
half-written message in the queue folder, a worker
killed (SIGKILL) while runs wait and while one runs, and a worker started after the runs were queued.

Each ends with every run finished or failed with a readable message, the worker alive (no crash loop), and the
"no worker" warning shown on the pages and in the API while no worker was alive. Runs are small self-checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from django.urls import reverse

from analysis.models import Run, RunStatus, WorkerHeartbeat
from analysis.selectors import worker_argv
from analysis.services.selfcheck import selfcheck_run_start
from tests.conftest import PROJECT_DIR, _database_url_for_subprocess
from unitscope.broker import decode_task_message, message_queue

pytestmark = pytest.mark.worker

NO_WORKER = "No worker is running for the gpu queue"
# The worker beats every second and runs older than 2 s without a message are sent again; the pages call a queue
# dead after 2 s without a heartbeat (the test process's settings, below).
WORKER_ENV = {"UNITSCOPE_WORKER_HEARTBEAT_SECONDS": "1", "UNITSCOPE_ORPHAN_AFTER_SECONDS": "2"}


@pytest.fixture
def fast_liveness(settings):
    settings.UNITSCOPE_WORKER_ALIVE_SECONDS = 2
    settings.UNITSCOPE_ORPHAN_AFTER_SECONDS = 2


@pytest.fixture
def broker_folder(clean_broker):
    """The queue folder of the embedded broker (a half-written file is a fault of that broker only)."""
    from unitscope.celery import app

    if not app.conf.broker_url.startswith("filesystem"):
        pytest.skip(
            "a half-written message file is a fault of the embedded filesystem broker; CI runs this file again on it"
        )
    folder = Path(app.conf.broker_transport_options["data_folder_in"])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Worker:
    """A real ``celery worker`` in its own process group, as `make demo` starts it."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        env = dict(
            os.environ,
            DATABASE_URL=_database_url_for_subprocess(),
            DJANGO_SETTINGS_MODULE="unitscope.settings.test",
            **WORKER_ENV,
        )
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                worker_argv("default,gpu", node=f"fault-{uuid.uuid4().hex[:8]}@%h"),  # as `make demo` starts it
                cwd=PROJECT_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while "ready." not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the Celery worker did not start:\n{self.log[-3000:]}")
            time.sleep(0.1)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            # The leader only, as `make demo` stops it: a pool process killed from outside can die holding the
            # pool's queue lock and hang the leader's warm shutdown (seen on a loaded machine).
            self.process.send_signal(signal.SIGTERM)
            try:
                # A warm shutdown joins the heartbeat thread for up to 30 s (its last write may wait on SQLite's lock
                # on a loaded machine) before the row goes: give it more than that before killing.
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.kill()

    def assert_healthy(self) -> None:
        """Alive, and never through a consumer crash (Celery then logs an unrecoverable error and restarts it)."""
        assert self.process.poll() is None, self.log[-3000:]
        assert "Unrecoverable error" not in self.log and "consumer: Connection to broker lost" not in self.log, (
            self.log[-3000:]
        )


def wait_final(runs: list[Run], timeout: float = 180) -> list[Run]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in runs:
            run.refresh_from_db()
        if not any(run.is_active for run in runs):
            return runs
        time.sleep(0.2)
    pytest.fail("still active: " + ", ".join(f"{run.pk} {run.status} {run.phase!r}" for run in runs if run.is_active))


def wait_for(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def selfcheck(repeats: int, matmul_size: int = 64) -> Run:
    return selfcheck_run_start(matmul_size=matmul_size, conv_batch=2, conv_image_size=32, repeats=repeats)


def drop_message(run: Run) -> None:
    """Lose a run's message, as a broker restarted without its messages (or a worker killed after taking it) does."""
    from unitscope.celery import app

    def names_run(raw: bytes) -> bool:
        decoded = decode_task_message(json.loads(raw))
        return decoded is not None and decoded[1] == [run.pk]

    dropped = 0
    if app.conf.broker_url.startswith("filesystem"):
        folder = Path(app.conf.broker_transport_options["data_folder_in"])
        for name in os.listdir(folder):
            if message_queue(name) and names_run((folder / name).read_bytes()):
                (folder / name).unlink()
                dropped += 1
    else:  # Redis: the queue is a list
        with app.connection_for_write() as connection:
            client = connection.default_channel.client
            for raw in client.lrange(run.queue, 0, -1):
                if names_run(raw):
                    dropped += client.lrem(run.queue, 1, raw)
    assert dropped == 1


def assert_warned(client, run: Run) -> None:
    """The Runs page, the run's page and the overview say that no worker runs, and so does the API."""
    for url in (
        reverse("analysis:run_list"),
        reverse("analysis:run_detail", args=[run.pk]),
        reverse("analysis:dashboard"),
    ):
        assert NO_WORKER in client.get(url).content.decode(), url
    data = client.get(reverse("api:run-detail", args=[run.pk])).json()
    assert data["worker_state"] == "no_worker" and data["worker_message"].startswith(NO_WORKER)


def assert_not_warned(client) -> None:
    assert NO_WORKER not in client.get(reverse("analysis:run_list")).content.decode()


def test_a_half_written_message_is_set_aside_and_the_worker_keeps_working(
    transactional_db, broker_folder, tmp_path, fast_liveness
):
    partial = broker_folder / f"0_{uuid.uuid4()}.gpu.msg"
    partial.write_bytes(b'{"body": "W1s0Ml0sIHt9LCB7fV0=", "content-encoding": "utf-')
    worker = Worker(tmp_path / "worker.log")
    try:
        runs = [selfcheck(2), selfcheck(3)]
        wait_final(runs)
        assert [run.status for run in runs] == [RunStatus.SUCCEEDED, RunStatus.SUCCEEDED], [r.error for r in runs]
        assert not partial.exists()
        assert (broker_folder.parent / "corrupt" / partial.name).exists()
        assert "could not be read" in worker.log and partial.name in worker.log
        worker.assert_healthy()
    finally:
        worker.stop()


def test_runs_queued_before_any_worker_say_so_then_run_when_one_starts(
    transactional_db, clean_broker, tmp_path, researcher_client, fast_liveness
):
    runs = [selfcheck(2), selfcheck(3)]
    time.sleep(2.5)  # past the start-up grace: nobody has announced a worker
    assert_warned(researcher_client, runs[0])
    worker = Worker(tmp_path / "worker.log")
    try:
        wait_final(runs)
        assert [run.status for run in runs] == [RunStatus.SUCCEEDED, RunStatus.SUCCEEDED], [r.error for r in runs]
        assert_not_warned(researcher_client)
        assert WorkerHeartbeat.objects.filter(pid=worker.process.pid).exists()
        worker.assert_healthy()
    finally:
        worker.stop()
    # A worker that stops cleanly takes its heartbeat with it: the site knows at once.
    assert not WorkerHeartbeat.objects.filter(pid=worker.process.pid).exists(), worker.log[-3000:]


def test_a_worker_killed_while_a_run_runs_and_others_wait(
    transactional_db, clean_broker, tmp_path, researcher_client, fast_liveness
):
    worker = Worker(tmp_path / "worker-1.log")
    try:
        caught = None
        for attempt in range(4):  # a self-check may finish before we see it running: try a longer one
            running = selfcheck(200 * (attempt + 1), matmul_size=128)
            waiting, lost = selfcheck(4 + attempt * 10), selfcheck(5 + attempt * 10)
            wait_for(lambda: Run.objects.get(pk=running.pk).status != RunStatus.QUEUED, what="the first run to start")
            if Run.objects.get(pk=running.pk).status == RunStatus.RUNNING:
                worker.kill()
                caught = running
                break
            wait_final([running, waiting, lost])
        assert caught is not None, "the self-checks finished before the worker could be killed"
    finally:
        worker.kill()
    running = caught
    # The killed worker took no waiting message with it (one runs at a time), but a message can be lost so: drop one.
    drop_message(lost)
    time.sleep(2.5)  # its heartbeat grows old
    assert_warned(researcher_client, waiting)
    running.refresh_from_db()
    assert running.status == RunStatus.FAILED and "stopped before it finished" in running.error

    worker = Worker(tmp_path / "worker-2.log")
    try:
        wait_final([waiting, lost])
        assert waiting.status == RunStatus.SUCCEEDED, waiting.error
        assert lost.status == RunStatus.SUCCEEDED, lost.error
        assert lost.requeue_count == 1 and waiting.requeue_count == 0
        running.refresh_from_db()
        assert running.status == RunStatus.FAILED  # the killed run never comes back
        assert_not_warned(researcher_client)
        worker.assert_healthy()
    finally:
        worker.stop()
