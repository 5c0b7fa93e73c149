"""The device self-check job: proves a worker's device works and how fast, through the engine."""

from __future__ import annotations

from typing import Any

from analysis import params as p
from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import Run

from .runs import RunProgress, run_start

SELFCHECK_PARAMS = p.ParamSchema(
    {
        "matmul_size": p.integers(16, 8192, 512, help="side of the square float32 matrices multiplied"),
        "conv_batch": p.integers(1, 512, 16, help="images per batch of the small CNN"),
        "conv_image_size": p.integers(16, 512, 112, help="image side, pixels"),
        "repeats": p.integers(1, 1000, 10, help="how many timed products and forward passes"),
    }
)
SELFCHECK_DEFAULTS = SELFCHECK_PARAMS.defaults


def selfcheck_params(**overrides: int | None) -> dict[str, int]:
    """Complete and validate self-check parameters."""
    return SELFCHECK_PARAMS.validate(overrides)


def selfcheck_run_start(*, created_by=None, inline: bool = False, **params: int | None) -> Run:
    run, _ = run_start(kind=SELFCHECK.name, params=selfcheck_params(**params), created_by=created_by, inline=inline)
    return run


def selfcheck_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.selfcheck import measure_throughput

    params = selfcheck_params(**run.params)
    progress.phase("Measuring matrix products and convolutions", total=1 + 2 * params["repeats"])
    report = measure_throughput(device=torch.device(device), progress=progress, **params)
    return report.to_dict()


SELFCHECK = register_job_kind(
    JobKind(
        name="selfcheck",
        label="Device self-check",
        queue=GPU_QUEUE,
        execute=selfcheck_run_execute,
        params=SELFCHECK_PARAMS,
        exporter=None,  # the measurements are the run's result, shown on its page and in the API
        soft_time_limit=600,
        time_limit=660,
        reuse_finished=False,  # a measurement: every run measures anew
        description="Runs matrix products and a small CNN on the worker's device and records its speed.",
    )
)
