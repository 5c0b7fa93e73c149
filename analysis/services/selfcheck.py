"""The device self-check job: proves a worker's device works and how fast, through the engine."""
from __future__ import annotations

from typing import Any

from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import Run

from .runs import RunInputError, RunProgress, run_start

SELFCHECK_DEFAULTS = {"matmul_size": 512, "conv_batch": 16, "conv_image_size": 112, "repeats": 10}
SELFCHECK_LIMITS = {"matmul_size": (16, 8192), "conv_batch": (1, 512), "conv_image_size": (16, 512),
                    "repeats": (1, 1000)}


def selfcheck_params(**overrides: int | None) -> dict[str, int]:
    """Complete and validate self-check parameters."""
    params = dict(SELFCHECK_DEFAULTS)
    params.update({key: value for key, value in overrides.items() if value is not None})
    for key, (low, high) in SELFCHECK_LIMITS.items():
        value = params[key]
        if not isinstance(value, int) or not low <= value <= high:
            raise RunInputError(f"{key} must be an integer from {low} to {high}, not {value!r}")
    return params


def selfcheck_run_start(*, created_by=None, inline: bool = False, **params: int | None) -> Run:
    run, _ = run_start(kind=SELFCHECK.name, params=selfcheck_params(**params), created_by=created_by,
                       inline=inline)
    return run


def selfcheck_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.selfcheck import measure_throughput

    params = selfcheck_params(**run.params)
    progress.phase("Measuring matrix products and convolutions", total=1 + 2 * params["repeats"])
    report = measure_throughput(device=torch.device(device), progress=progress, **params)
    return report.to_dict()


SELFCHECK = register_job_kind(JobKind(
    name="selfcheck",
    label="Device self-check",
    queue=GPU_QUEUE,
    execute=selfcheck_run_execute,
    soft_time_limit=600,
    time_limit=660,
    reuse_finished=False,  # a measurement: every run measures anew
    description="Runs matrix products and a small CNN on the worker's device and records its speed.",
))
