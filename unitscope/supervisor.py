"""Child processes that `make demo` starts and watches: restarted when they exit, stopped together.

Each child runs in its own session (so its process group is its pid, and a Ctrl-C in the terminal reaches
only the supervisor, which then stops the groups in order), logs to ``<logs>/<name>.log``, and is watched
by :meth:`Supervisor.check`. A child that exits is reported with the last lines of its log and started
again, at most ``max_restarts`` times within ``window`` seconds; after that it is left stopped, and the
supervisor says so once, plainly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file (empty when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``pid`` leads (gone already: nothing to do)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Child:
    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    exits: deque = field(default_factory=deque)  # monotonic times of recent exits
    given_up: bool = False
    # Said when the child is left stopped (after the restart budget is spent).
    advice: str = ""


class Supervisor:
    def __init__(
        self,
        *,
        cwd: Path,
        logs: Path,
        say: Callable[[str], None],
        env: dict[str, str] | None = None,
        max_restarts: int = 5,
        window: float = 600.0,
        tail_lines: int = 15,
    ):
        self.cwd = cwd
        self.logs = logs
        self.say = say
        self.env = env
        self.max_restarts = max_restarts
        self.window = window
        self.tail_lines = tail_lines
        self.children: dict[str, Child] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, name: str, command: list[str], *, advice: str = "") -> Child:
        child = Child(name=name, command=command, log_path=self.logs / f"{name}.log", advice=advice)
        with self._lock:
            self.children[name] = child
            self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        if self._stopping.is_set():
            return
        with open(child.log_path, "a") as log:
            child.process = subprocess.Popen(
                child.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self, name: str) -> bool:
        child = self.children[name]
        return child.process is not None and child.process.poll() is None

    def check(self) -> None:
        """Notice children that exited: report, and restart them within the budget."""
        with self._lock:
            if self._stopping.is_set():
                return
            for child in self.children.values():
                if child.given_up or child.process is None or child.process.poll() is None:
                    continue
                code = child.process.returncode
                kill_group(child.process.pid)  # what it left behind (a pool's children) goes with it
                now = time.monotonic()
                child.exits.append(now)
                while child.exits and now - child.exits[0] > self.window:
                    child.exits.popleft()
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                tail = log_tail(child.log_path, self.tail_lines)
                self.say(
                    f"\n!! The {child.name} process {how}. Last lines of {child.log_path}:\n"
                    + "\n".join(f"   | {line}" for line in tail.splitlines())
                )
                if len(child.exits) > self.max_restarts:
                    child.given_up = True
                    self.say(
                        f"!! The {child.name} stopped {len(child.exits)} times within {self.window / 60:.0f} "
                        f"minutes: it is not restarted again. {child.advice}".rstrip()
                    )
                    continue
                self._spawn(child)
                self.say(
                    f"!! Restarted the {child.name} (restart {len(child.exits)} of at most {self.max_restarts} "
                    f"within {self.window / 60:.0f} minutes)."
                )

    def watch(self, interval: float = 1.0) -> None:
        """Check every ``interval`` seconds from a daemon thread, until :meth:`stop_all`."""

        def loop():
            while not self._stopping.wait(interval):
                self.check()

        self._thread = threading.Thread(target=loop, name="demo-supervisor", daemon=True)
        self._thread.start()

    def stop_all(self, timeout: float = 15.0) -> None:
        """Stop every child: SIGTERM to the process it started, then SIGKILL to its whole process group after
        ``timeout`` seconds. The SIGTERM goes to the leader only: a Celery worker stops its own pool, and a pool
        process killed from outside can die holding the pool's queue lock, hanging the leader's shutdown."""
        self._stopping.set()
        with self._lock:
            processes = [child.process for child in self.children.values() if child.process is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            kill_group(process.pid, signal.SIGKILL)  # the group's stragglers, and a leader that did not stop
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
