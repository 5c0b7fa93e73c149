"""Worker heartbeats: each Celery worker says it is alive, so the site can say when a queue has none.

A worker records a :class:`~analysis.models.WorkerHeartbeat` row when it is ready, then every
``UNITSCOPE_WORKER_HEARTBEAT_SECONDS`` from a thread of its main process (not Celery events or gossip:
those need broadcast, which the embedded broker leaves off), and deletes it when it stops cleanly. The same
thread runs the job system's checks (:func:`analysis.services.runs.runs_reconcile`): runs of dead
workers are failed and lost messages sent again while a worker is up, with nobody watching a page.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

from django.db import close_old_connections, connection
from django.utils import timezone

from analysis.models import WorkerHeartbeat

logger = logging.getLogger(__name__)


# Rows of workers not seen for this long are deleted (node names change: test workers, renamed hosts).
FORGET_AFTER = timedelta(days=7)


def worker_heartbeat_record(*, hostname: str, queues: list[str], pid: int, started_at=None) -> None:
    """Write (or refresh) the heartbeat row of worker ``hostname`` (its Celery node name); forget long-gone ones."""
    now = timezone.now()
    WorkerHeartbeat.objects.filter(last_seen__lt=now - FORGET_AFTER).delete()
    updated = WorkerHeartbeat.objects.filter(hostname=hostname, pid=pid).update(
        last_seen=now, queues=",".join(queues)[:255]
    )
    if not updated:
        WorkerHeartbeat.objects.update_or_create(
            hostname=hostname,
            defaults={"queues": ",".join(queues)[:255], "pid": pid, "started_at": started_at or now, "last_seen": now},
        )


def worker_heartbeat_remove(*, hostname: str, pid: int) -> None:
    """A worker stopping cleanly removes its row: the site knows at once that it is gone."""
    WorkerHeartbeat.objects.filter(hostname=hostname, pid=pid).delete()


class WorkerMonitor:
    """The heartbeat thread of one worker process: beat, reconcile runs, sleep ``interval`` s, repeat.

    A failed beat (the database briefly locked or restarting) is logged and tried again at the next
    interval; the thread never takes the worker down.
    """

    def __init__(self, *, hostname: str, queues: list[str], interval: float):
        self.hostname = hostname
        self.queues = queues
        self.interval = interval
        self.pid = os.getpid()
        self.started_at = timezone.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="unitscope-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        try:
            worker_heartbeat_remove(hostname=self.hostname, pid=self.pid)
        except Exception:
            logger.warning("could not remove the heartbeat of %s", self.hostname, exc_info=True)

    def beat(self) -> None:
        from analysis.services.runs import runs_reconcile

        try:
            worker_heartbeat_record(
                hostname=self.hostname, queues=self.queues, pid=self.pid, started_at=self.started_at
            )
            runs_reconcile()
        except Exception:
            logger.warning(
                "worker heartbeat of %s failed; trying again in %.0f s", self.hostname, self.interval, exc_info=True
            )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            close_old_connections()
            try:
                self.beat()
            finally:
                connection.close()  # this thread's own connection: not kept open between beats
