"""Sharded extraction: what the shards and their merge cost beside one pass, and that they leave the same bits.

On a generated probe world (1,000 images, 112 px) with the demo network's conv3–conv5, measured in this run:

* the plain forward pass, and one extraction pass (statistics and the float16 cache) over every image;
* the same extraction cut into ``SHARDS`` image ranges on batch boundaries, as ``extract --shards`` cuts it: each
  range's pass writes its own cache file and saves its statistics (``torch.save``), as an ``extract_shard`` run
  does; run one after another here, so their sum is the work a cluster shares;
* the merge, as the extraction run does it: each shard's statistics loaded and folded in
  (:meth:`LayerStatistics.merge`), its maps copied into the one cache (:func:`copy_cache_rows`).

Run: ``python -m benchmarks bench_shard_merge``. Printed: seconds and ratios to the forward pass, the merge's
copy rate, and whether the merged cache and saved statistics equal the single pass's bit for bit. Torch threads:
``BENCH_THREADS`` or 1; the load average is printed beside the figures; no timed assertion.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from analysis.engine.broden import BrodenReader
from analysis.engine.demo_network import build_demo_network
from analysis.engine.extraction import (
    LayerStatistics,
    batch_aligned_bounds,
    copy_cache_rows,
    extract_statistics,
    fold_statistics,
)
from analysis.engine.networks import capture_forward, normalize_images
from analysis.engine.probe_world import generate_probe_world

N_IMAGES, SIZE, BATCH, SHARDS = 1000, 112, 50, 4
LAYERS = ["conv3", "conv4", "conv5"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _same_state(left, right) -> bool:
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same_state(left[key], right[key]) for key in left)
    if isinstance(left, torch.Tensor):
        return left.dtype == right.dtype and torch.equal(left, right)
    return left == right


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", 1)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate_probe_world(folder / "world", n_images=N_IMAGES, seed=0, size=SIZE)
        reader = BrodenReader(folder / "world")
        images = torch.from_numpy(np.stack([reader.load_image(row) for row in reader.rows()])).permute(0, 3, 1, 2)
        classes = torch.arange(N_IMAGES) % 7
        model = build_demo_network(7, seed=0).eval()

        def batches(start: int, stop: int):
            for first in range(start, stop, BATCH):
                last = min(first + BATCH, stop)
                yield images[first:last], torch.arange(first, last), classes[first:last]

        @torch.no_grad()
        def forward(batch):
            out = capture_forward(model, normalize_images(batch, MEAN, STD), LAYERS)
            return {name: value.half().float() for name, value in out.items()}

        with torch.no_grad():
            shapes = {name: tuple(t.shape[1:]) for name, t in forward(images[:1]).items()}

        def caches(name: str, rows: int) -> dict[str, np.memmap]:
            return {
                layer: np.memmap(folder / f"{name}-{layer}.f16", dtype=np.float16, mode="w+", shape=(rows, *shape))
                for layer, shape in shapes.items()
            }

        def extract(start: int, stop: int, cache: dict[str, np.memmap]):
            return extract_statistics(
                forward,
                batches(start, stop),
                LAYERS,
                total_images=N_IMAGES,
                num_classes=7,
                device="cpu",
                cache=cache,
                cache_row_offset=start,
            )

        with torch.no_grad():
            for batch, _, _ in batches(0, BATCH):  # warm-up
                forward(batch)
            started = time.perf_counter()
            for batch, _, _ in batches(0, N_IMAGES):
                capture_forward(model, normalize_images(batch, MEAN, STD), LAYERS)
            forward_seconds = time.perf_counter() - started

        single_cache = caches("single", N_IMAGES)
        started = time.perf_counter()
        single = extract(0, N_IMAGES, single_cache)
        single_seconds = time.perf_counter() - started

        bounds = batch_aligned_bounds(N_IMAGES, BATCH, SHARDS)
        started = time.perf_counter()
        for k in range(SHARDS):
            shard_cache = caches(f"shard{k}", bounds[k + 1] - bounds[k])
            states = extract(bounds[k], bounds[k + 1], shard_cache)
            for cache in shard_cache.values():
                cache.flush()
            torch.save({name: stats.to_state() for name, stats in states.items()}, folder / f"shard{k}.pt")
            del shard_cache
        shards_seconds = time.perf_counter() - started

        merged_cache = caches("merged", N_IMAGES)
        started = time.perf_counter()
        merged: dict[str, LayerStatistics] = {}
        for k in range(SHARDS):
            fold_statistics(merged, torch.load(folder / f"shard{k}.pt", weights_only=True), device="cpu")
            for name, shape in shapes.items():
                source = np.memmap(
                    folder / f"shard{k}-{name}.f16",
                    dtype=np.float16,
                    mode="r",
                    shape=(bounds[k + 1] - bounds[k], *shape),
                )
                copy_cache_rows(source, merged_cache[name], row_offset=bounds[k])
        for cache in merged_cache.values():
            cache.flush()
        merge_seconds = time.perf_counter() - started

        identical = all(
            np.array_equal(merged_cache[name], single_cache[name])
            and _same_state(merged[name].to_state(), single[name].to_state())
            for name in LAYERS
        )
        cache_mb = sum(cache.nbytes for cache in single_cache.values()) / 2**20
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(
            f"{N_IMAGES} images of {SIZE} px, layers {', '.join(LAYERS)}, batch {BATCH}, {SHARDS} shards, "
            f"{torch.get_num_threads()} threads, load {load}"
        )
        print(f"plain forward {forward_seconds:.2f} s; one extraction pass {single_seconds:.2f} s")
        print(
            f"{SHARDS} shards {shards_seconds:.2f} s in all ({shards_seconds / single_seconds:.2f}x one pass); "
            f"merge {merge_seconds:.2f} s = {merge_seconds / forward_seconds:.2f}x the forward pass "
            f"({cache_mb:.0f} MiB of maps copied, {cache_mb / merge_seconds:.0f} MiB/s)"
        )
        print(f"merged cache and statistics equal one pass bit for bit: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
