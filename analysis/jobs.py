"""The registry of job kinds: which queue each uses, its time limits, and the service that executes it.

A kind's executor is a service function ``execute(*, run, progress, device) -> dict`` returning the
run's result summary (JSON). The Celery task of a kind is a thin adapter named ``analysis.<kind>``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class JobKind:
    name: str
    label: str
    queue: str
    execute: Callable[..., dict[str, Any]]
    soft_time_limit: int
    time_limit: int
    # A finished run with identical parameters is reused instead of recomputed.
    reuse_finished: bool = True
    description: str = ""

    @property
    def task_name(self) -> str:
        return f"analysis.{self.name}"


_JOB_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> JobKind:
    if kind.name in _JOB_KINDS and _JOB_KINDS[kind.name] != kind:
        raise ValueError(f"job kind {kind.name!r} registered twice")
    _JOB_KINDS[kind.name] = kind
    return kind


def job_kind(name: str) -> JobKind:
    _load_kinds()
    return _JOB_KINDS[name]


def job_kinds() -> list[JobKind]:
    _load_kinds()
    return sorted(_JOB_KINDS.values(), key=lambda kind: kind.label)


def _load_kinds() -> None:
    # Kinds register themselves where their executors live (services modules).
    from . import services  # noqa: F401
