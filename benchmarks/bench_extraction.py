"""Extraction ÷ plain forward time, and grids rendered per second, on a generated probe world.

Both measured in this run on this machine. The extraction side does everything the extraction run
does per batch (forward with capture, float16 rounding, top-k overall and per class, exact quantile,
per-image scores, the float16 cache write); the plain side only runs the network forward.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from analysis.engine.broden import BrodenReader
from analysis.engine.demo_network import build_demo_network
from analysis.engine.extraction import extract_statistics
from analysis.engine.networks import capture_forward, normalize_images
from analysis.engine.probe_world import generate_probe_world
from analysis.engine.receptive_field import receptive_fields
from analysis.engine.rendering import render_activation_grid, render_threshold_grid
from analysis.engine.upsample import upsample_anchored

N_IMAGES, SIZE, BATCH, REPEATS = 1000, 112, 64, 2
LAYERS = ["conv3", "conv4", "conv5"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world"
        generate_probe_world(root, n_images=N_IMAGES, seed=0, size=SIZE)
        reader = BrodenReader(root)
        images = torch.from_numpy(np.stack([reader.load_image(row) for row in reader.rows()])).permute(0, 3, 1, 2)
        classes = torch.arange(N_IMAGES) % 7
        model = build_demo_network(7, seed=0).eval()
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

        def batches():
            for start in range(0, N_IMAGES, BATCH):
                stop = min(start + BATCH, N_IMAGES)
                yield images[start:stop], torch.arange(start, stop), classes[start:stop]

        @torch.no_grad()
        def plain_forward():
            for batch, _, _ in batches():
                capture_forward(model, normalize_images(batch, mean, std), LAYERS)

        @torch.no_grad()
        def forward(batch):
            out = capture_forward(model, normalize_images(batch, mean, std), LAYERS)
            return {name: value.half().float() for name, value in out.items()}

        caches = {
            name: np.memmap(Path(tmp) / f"{name}.f16", dtype=np.float16, mode="w+", shape=(N_IMAGES, 128, 13, 13))
            for name in LAYERS
        }
        plain_forward()  # warm-up
        forward_times, extraction_times = [], []
        for _ in range(REPEATS):  # interleaved, best of each: robust to other load on the machine
            started = time.perf_counter()
            plain_forward()
            forward_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            stats = extract_statistics(
                forward, batches(), LAYERS, total_images=N_IMAGES, num_classes=7, device="cpu", cache=caches
            )
            extraction_times.append(time.perf_counter() - started)
        forward_seconds, extraction_seconds = min(forward_times), min(extraction_times)
        print(
            f"{N_IMAGES} images of {SIZE} px, layers {', '.join(LAYERS)}, batch {BATCH}, "
            f"{torch.get_num_threads()} threads"
        )
        print(
            f"plain forward {forward_seconds:.2f} s, extraction {extraction_seconds:.2f} s: "
            f"extraction / forward = {extraction_seconds / forward_seconds:.2f} (target <= 1.3)"
        )

        # Grids: the grid run's per-grid work (gather 10 images and maps, anchored upsampling, drawing, PNG),
        # on one core; the worker's other core is free for a second job.
        geometry = receptive_fields(model, (SIZE, SIZE), "cpu", layers=["conv5"])["conv5"]
        maps = torch.from_numpy(np.asarray(caches["conv5"], dtype=np.float32))
        top = stats["conv5"].topk.result()
        thresholds = stats["conv5"].quantile.result()
        pictures = images.permute(0, 2, 3, 1).numpy()
        n_grids = 0
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the grid run does: the tensors are tiny
        started = time.perf_counter()
        for unit in range(64):
            for style in ("activation", "threshold"):
                indices = top.images[unit, :10].tolist()
                up = upsample_anchored(
                    maps[indices, unit],
                    (SIZE, SIZE),
                    rf_stride=geometry.stride,
                    rf_offset=geometry.offset,
                    input_size=(SIZE, SIZE),
                ).numpy()
                if style == "activation":
                    grid = render_activation_grid(pictures[indices], up, vmax=float(top.scores[unit, 0]), columns=5)
                else:
                    grid = render_threshold_grid(pictures[indices], up, float(thresholds[unit]), columns=5)
                grid.save(io.BytesIO(), format="PNG", compress_level=1)
                n_grids += 1
        grid_seconds = time.perf_counter() - started
        torch.set_num_threads(threads)
        print(
            f"grids: {n_grids} grids of 10 tiles in {grid_seconds:.2f} s = {n_grids / grid_seconds:.0f} grids/s "
            f"(target >= 50)"
        )


if __name__ == "__main__":
    main()
