"""Celery tasks: one thin adapter per job kind, named ``analysis.<kind>``, with the kind's time limits.

Each receives a run id only and calls the job system's executor, which claims the run and always
writes a final state. Only a database that is briefly unreachable is retried.
"""
from celery import shared_task
from celery.signals import worker_ready
from django.db import InterfaceError, OperationalError

from analysis.jobs import JobKind, job_kinds
from analysis.services.runs import run_execute, run_fail_stale


def _define_run_task(kind: JobKind):
    @shared_task(bind=True, name=kind.task_name, soft_time_limit=kind.soft_time_limit,
                 time_limit=kind.time_limit, max_retries=3)
    def run_task(self, run_id: int) -> None:
        try:
            run_execute(run_id=run_id)
        except (OperationalError, InterfaceError) as error:
            raise self.retry(exc=error, countdown=5)

    return run_task


RUN_TASKS = {kind.name: _define_run_task(kind) for kind in job_kinds()}


@worker_ready.connect
def _fail_runs_of_dead_workers(**kwargs) -> None:
    """A worker starting up marks failed the runs left "running" by worker processes that died on this host."""
    run_fail_stale()
