"""`make demo`'s supervisor (unitscope.supervisor): children restarted with their log's last lines, a bounded number
of times, and stopped with everything they started."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from unitscope.supervisor import Supervisor, log_tail


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_child_that_exits_is_reported_with_its_log_and_restarted_a_bounded_number_of_times(tmp_path):
    said: list[str] = []
    supervisor = Supervisor(cwd=tmp_path, logs=tmp_path, say=said.append, max_restarts=2, window=60)
    crash = "import sys; print('loading'); print('boom: the broker folder is gone', flush=True); sys.exit(3)"
    supervisor.start("worker", [sys.executable, "-c", crash], advice="Start one yourself with `celery worker`.")
    try:
        for restarts in (1, 2):
            wait_until(lambda: not supervisor.alive("worker"))
            supervisor.check()
            assert "The worker process exited with code 3" in said[-2]
            assert "   | boom: the broker folder is gone" in said[-2]
            assert said[-1] == f"!! Restarted the worker (restart {restarts} of at most 2 within 1 minutes)."
        wait_until(lambda: not supervisor.alive("worker"))
        supervisor.check()
        assert supervisor.children["worker"].given_up
        assert said[-1] == (
            "!! The worker stopped 3 times within 1 minutes: it is not restarted again. "
            "Start one yourself with `celery worker`."
        )
        supervisor.check()  # given up: nothing more is said or started
        assert len(said) == 6 and not supervisor.alive("worker")
        assert (tmp_path / "worker.log").read_text().count("boom") == 3
    finally:
        supervisor.stop_all(timeout=5)


def test_stop_all_stops_each_child_with_its_process_group(tmp_path):
    grandchild_pid = tmp_path / "grandchild.pid"
    spawner = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"open({str(grandchild_pid)!r}, 'w').write(str(p.pid)); time.sleep(300)"
    )
    supervisor = Supervisor(cwd=tmp_path, logs=tmp_path, say=lambda line: None)
    child = supervisor.start("worker", [sys.executable, "-c", spawner])
    stubborn = supervisor.start(
        "web",
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
    )
    wait_until(lambda: grandchild_pid.exists() and grandchild_pid.read_text())
    pids = [child.process.pid, int(grandchild_pid.read_text()), stubborn.process.pid]
    assert os.getpgid(pids[1]) == child.process.pid != os.getpgid(0)  # not in the terminal's group
    started = time.monotonic()
    supervisor.stop_all(timeout=2)
    assert time.monotonic() - started < 10
    wait_until(lambda: all(gone(pid) for pid in pids), timeout=10)
    supervisor.check()  # stopping: nothing is restarted
    assert not supervisor.alive("worker") and not supervisor.alive("web")


def test_log_tail_reads_the_last_lines(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert log_tail(tmp_path / "missing.log") == ""


def test_a_killed_child_is_named_by_its_signal_and_restarted(tmp_path):
    said: list[str] = []
    supervisor = Supervisor(cwd=tmp_path, logs=tmp_path, say=said.append)
    child = supervisor.start(
        "worker", [sys.executable, "-c", "import time; print('ready.', flush=True); time.sleep(300)"]
    )
    try:
        wait_until(lambda: "ready." in (tmp_path / "worker.log").read_text())
        first = child.process.pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not supervisor.alive("worker"))
        supervisor.check()
        assert "was killed by signal 9" in said[0] and "   | ready." in said[0]
        assert supervisor.alive("worker") and child.process.pid != first
    finally:
        supervisor.stop_all(timeout=5)


def test_the_demo_starts_a_step_again_when_its_worker_was_lost(db, monkeypatch):
    from types import SimpleNamespace

    from analysis.models import Run, RunStatus
    from analysis.services import demo
    from analysis.services.runs import WORKER_LOST_PHASE

    outcomes = [
        (RunStatus.FAILED, WORKER_LOST_PHASE),
        (RunStatus.SUCCEEDED, "Done"),  # step 1: lost, then done
        (RunStatus.FAILED, "Stopped"),
    ]  # step 2: a real failure is not retried

    def run_start(*, kind, params, created_by, inline):
        status, phase = outcomes.pop(0)
        return Run.objects.create(kind=kind, params=params, params_hash="h", status=status, phase=phase), True

    steps = [SimpleNamespace(kind="selfcheck", params=dict, label=f"step {n}") for n in (1, 2)]
    monkeypatch.setattr(demo, "run_start", run_start)
    monkeypatch.setattr(demo, "demo_steps", lambda size: steps)
    events = []
    runs = demo.demo_build(
        inline=False,
        on_step=lambda event, step, run, created: events.append((event, step.label)),
        poll_interval=0,
        worker_loss_retries=2,
    )
    assert [run.status for run in runs] == [RunStatus.SUCCEEDED, RunStatus.FAILED]
    assert events == [
        ("start", "step 1"),
        ("queued", "step 1"),
        ("retry", "step 1"),
        ("queued", "step 1"),
        ("end", "step 1"),
        ("start", "step 2"),
        ("queued", "step 2"),
        ("end", "step 2"),
    ]
    assert not outcomes
