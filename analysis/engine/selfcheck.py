"""Device self-check: measure what a device really does on the two kinds of work UnitScope runs.

A dense matrix product (the arithmetic of probes and rotations) and the forward pass of a small
convolutional network (the arithmetic of extraction). Results are checked against a float64
reference so that a device that is fast but wrong is reported as wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ThroughputReport:
    device: str
    device_name: str
    torch_version: str
    threads: int
    matmul_size: int
    matmul_gflops: float
    matmul_max_relative_error: float
    conv_batch: int
    conv_image_size: int
    conv_images_per_second: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _probe_cnn(channels: int = 3) -> torch.nn.Sequential:
    """A five-layer conv stack of the demo network's shape, so its speed predicts extraction speed."""
    layers: list[torch.nn.Module] = []
    widths = [channels, 32, 64, 96, 96, 96]
    for index, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU()]
        if index in (0, 1, 4):
            layers.append(torch.nn.MaxPool2d(2))
    return torch.nn.Sequential(*layers)


@torch.no_grad()
def measure_throughput(
    *,
    device: torch.device,
    matmul_size: int = 512,
    conv_batch: int = 16,
    conv_image_size: int = 112,
    repeats: int = 10,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> ThroughputReport:
    """Time ``repeats`` float32 matrix products of ``matmul_size``² and ``repeats`` forward passes of a
    five-layer CNN on ``conv_batch`` images of ``conv_image_size``² on ``device``.

    Progress is reported in steps: one warm-up, ``repeats`` products, ``repeats`` forwards.
    """
    if repeats < 1 or matmul_size < 1 or conv_batch < 1 or conv_image_size < 8:
        raise ValueError("repeats, matmul_size and conv_batch must be positive, conv_image_size at least 8")
    total_steps = 1 + 2 * repeats
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps)

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(matmul_size, matmul_size, generator=generator).to(device)
    b = torch.randn(matmul_size, matmul_size, generator=generator).to(device)
    torch.manual_seed(seed)
    network = _probe_cnn().to(device).eval()
    images = torch.rand(conv_batch, 3, conv_image_size, conv_image_size, generator=generator).to(device)

    product = a @ b  # warm-up (allocations, kernel selection)
    network(images)
    _synchronise(device)
    step()
    reference = a.double() @ b.double()
    max_relative_error = float(((product.double() - reference).abs().max() / reference.abs().max()).item())

    matmul_started = time.perf_counter()
    for _ in range(repeats):
        a @ b
        _synchronise(device)
        step()
    matmul_seconds = time.perf_counter() - matmul_started

    conv_started = time.perf_counter()
    for _ in range(repeats):
        network(images)
        _synchronise(device)
        step()
    conv_seconds = time.perf_counter() - conv_started

    return ThroughputReport(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        matmul_size=matmul_size,
        matmul_gflops=2.0 * matmul_size**3 * repeats / matmul_seconds / 1e9,
        matmul_max_relative_error=max_relative_error,
        conv_batch=conv_batch,
        conv_image_size=conv_image_size,
        conv_images_per_second=conv_batch * repeats / conv_seconds,
        seconds=time.perf_counter() - started,
    )
