"""The registry of job kinds: per kind its queue, time limits, parameter schema, executor and exporter.

A kind is declared once, beside its executor in its services module (``register_job_kind(JobKind(...))``);
:class:`analysis.apps.AnalysisConfig.ready` imports the services, so the registry is complete once Django is
set up. Everything else derives from it: the Celery tasks (``analysis.<kind>``), the parameter check of
:func:`~analysis.services.runs.run_start`, exports, the run pages, the API's startable kinds and its
documentation. This module imports nothing of the project, so models and services may import it freely.

A kind's executor is a service function ``execute(*, run, progress, device) -> dict`` returning the run's
result summary (JSON); its exporter ``export(run, out_dir) -> list[Path]`` writes the run's plain files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.params import ParamSchema

GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"


class RunInputError(Exception):
    """An expected user error (bad parameters, missing input). Fails the run at once with this message;
    ``field`` names the parameter at fault where there is one (the API reports it under that name)."""

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field

    @property
    def errors(self) -> dict[str, str]:
        """Parameter → message (empty when no parameter is at fault)."""
        return {self.field: str(self)} if self.field else {}


@dataclass(frozen=True)
class JobKind:
    """One kind of job. ``exporter`` is ``None`` for a kind whose result is its summary alone (a self-check's
    measurements, a registered dataset); ``api_startable`` is false for kinds the API does not start (shards,
    started by their dissection; imports, which read server paths)."""

    name: str
    label: str
    queue: str
    execute: Callable[..., dict[str, Any]]
    params: ParamSchema
    exporter: Callable[[Any, Path], list[Path]] | None
    soft_time_limit: int
    time_limit: int
    description: str
    # A finished run with identical parameters is reused instead of recomputed.
    reuse_finished: bool = True
    api_startable: bool = True

    def __post_init__(self):
        if not 0 < self.soft_time_limit < self.time_limit:
            raise ValueError(f"job kind {self.name!r}: the soft time limit must lie below the hard one")

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
    """The kind called ``name``; KeyError for a name no kind has."""
    if not _JOB_KINDS:
        raise LookupError("the job registry is empty: Django is not set up (AnalysisConfig.ready fills it)")
    return _JOB_KINDS[name]


def job_kinds() -> list[JobKind]:
    """Every registered kind, by label."""
    return sorted(_JOB_KINDS.values(), key=lambda kind: kind.label)


def longest_time_limit() -> int:
    """The largest hard time limit of any kind, in seconds (the broker's redelivery delay must exceed it)."""
    return max(kind.time_limit for kind in _JOB_KINDS.values())
