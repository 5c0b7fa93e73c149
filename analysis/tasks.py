"""Celery tasks: one thin adapter per job kind, named ``analysis.<kind>``, with the kind's time limits.

Each receives a run id only and calls the job system's executor, which claims the run and always
writes a final state. Only a database that is briefly unreachable is retried.
"""

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import InterfaceError, OperationalError

from analysis.jobs import JobKind, job_kinds
from analysis.services.runs import run_execute
from analysis.services.workers import WorkerMonitor


def _define_run_task(kind: JobKind):
    @shared_task(
        bind=True, name=kind.task_name, soft_time_limit=kind.soft_time_limit, time_limit=kind.time_limit, max_retries=3
    )
    def run_task(self, run_id: int) -> None:
        try:
            run_execute(run_id=run_id)
        except (OperationalError, InterfaceError) as error:
            raise self.retry(exc=error, countdown=5) from error

    return run_task


RUN_TASKS = {kind.name: _define_run_task(kind) for kind in job_kinds()}


_monitors: list[WorkerMonitor] = []


@worker_ready.connect
def _start_heartbeat(sender, **kwargs) -> None:
    """A worker that is ready announces itself, then keeps beating (and reconciling runs: runs left "running" by
    dead worker processes are failed, queued runs whose message is gone are sent again) from a thread."""
    monitor = WorkerMonitor(
        hostname=sender.hostname,
        queues=sorted(sender.app.amqp.queues.consume_from),
        interval=settings.UNITSCOPE_WORKER_HEARTBEAT_SECONDS,
    )
    monitor.start()
    _monitors.append(monitor)


@worker_shutdown.connect
def _stop_heartbeat(**kwargs) -> None:
    while _monitors:
        _monitors.pop().stop()
