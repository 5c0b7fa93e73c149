"""Network Dissection speed on a generated probe world, measured in one run on this machine (issue 5).

Two ratios, no Django database (the engine only, as the dissection runs call it):

1. dissection ÷ forward pass. The forward pass runs the demo network architecture (random seeded weights)
   over every image and captures conv3–conv5, rounded to float16 as the activation cache holds them. The
   dissection of those three layers is what the three dissection runs do after that: read the cached maps,
   decode the Broden masks, upsample (anchored) to mask resolution, threshold and tally. The thresholds
   come from the extraction, which computes the exact quantile beside its forward pass (measured by
   ``bench_extraction``); the time with the exact 0.995 quantile recomputed here is printed too.
   Target: ≤ 1.0.
2. ours ÷ reference on conv5, from the cached maps and decoded masks in memory to the counts: ours is the
   path the dissection runs take (only the upsampled pixels that can pass the threshold are computed,
   :mod:`analysis.engine.dissection_sparse`), the reference upsamples every map and runs the
   straightforward per-image, per-unit loop of ``benchmarks/dissection_reference.py``. Every count must be
   identical (also to the dense vectorised ``DissectionTally.add``, whose time is printed for reference).
   Target: ≥ 10× faster.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.engine.broden import BrodenReader
from analysis.engine.demo_network import build_demo_network
from analysis.engine.dissection import DissectionTally
from analysis.engine.dissection_data import (
    TallyView,
    iter_label_batches,
    label_category_table,
    tally_cached_maps,
    thresholds_of_cached_maps,
)
from analysis.engine.dissection_sparse import AnchoredUpsample, tally_add_sparse
from analysis.engine.networks import capture_forward, normalize_images
from analysis.engine.probe_world import generate_probe_world
from analysis.engine.receptive_field import receptive_fields
from benchmarks.dissection_reference import reference_tally

N_IMAGES, SIZE, BATCH = 600, 112, 64
LAYERS = ["conv3", "conv4", "conv5"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
COUNTS = ("intersection", "activation_cat", "truth", "activation", "category_images", "label_images")


def main(threads: int | None = None) -> None:
    """``threads``: torch threads for both the forward pass and the dissection (default ``BENCH_THREADS`` or 1:
    on a shared machine, OpenMP threads that contend with other processes make small operations many times
    slower and the ratio meaningless; with one thread each side gets one core)."""
    import os

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads or os.environ.get("BENCH_THREADS", 1)))
    try:
        _run()
    finally:  # other benchmarks run in the same process (python -m benchmarks)
        torch.set_num_threads(previous)


def _run() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world"
        generate_probe_world(root, n_images=N_IMAGES, seed=0, size=SIZE)
        reader = BrodenReader(root)
        rows = list(reader.rows())
        images = torch.from_numpy(np.stack([reader.load_image(row) for row in rows])).permute(0, 3, 1, 2)
        model = build_demo_network(7, seed=0).eval()
        geometry = receptive_fields(model, (SIZE, SIZE), "cpu", layers=LAYERS)
        categories = list(reader.index_categories)
        label_category = label_category_table({n: reader.primary_category(n) for n in reader.labels}, categories)

        @torch.no_grad()
        def forward() -> dict[str, np.ndarray]:
            maps: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
            for start in range(0, N_IMAGES, BATCH):
                out = capture_forward(model, normalize_images(images[start : start + BATCH], MEAN, STD), LAYERS)
                for name in LAYERS:
                    maps[name].append(out[name].to(torch.float16).numpy())
            return {name: np.concatenate(parts) for name, parts in maps.items()}

        forward()  # warm-up
        started = time.perf_counter()
        cache = forward()
        forward_seconds = time.perf_counter() - started

        def upsampler(name) -> AnchoredUpsample:
            g = geometry[name]
            return AnchoredUpsample(rf_stride=g.stride, rf_offset=g.offset, input_size=(SIZE, SIZE))

        def layer_thresholds(name: str) -> torch.Tensor:
            return thresholds_of_cached_maps(cache[name], [None], quantile=0.995, batch_size=BATCH)[0]

        def dissect_layer(name: str, thresholds: torch.Tensor) -> DissectionTally:
            tally = DissectionTally(thresholds, label_category, len(categories))
            tally_cached_maps(
                cache[name], [TallyView(tally)], reader=reader, rows=rows, upsample=upsampler(name), batch_size=BATCH
            )
            return tally

        started = time.perf_counter()
        thresholds_by_layer = {name: layer_thresholds(name) for name in LAYERS}
        quantile_seconds = time.perf_counter() - started
        dissect_layer("conv5", thresholds_by_layer["conv5"])  # warm-up
        started = time.perf_counter()
        tallies = {name: dissect_layer(name, thresholds_by_layer[name]) for name in LAYERS}
        dissection_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for _ in iter_label_batches(reader, rows, list(range(N_IMAGES)), batch_size=BATCH, prefetch=False):
            pass
        masks_seconds = time.perf_counter() - started

        # conv5, maps and masks in memory -> counts: ours, the dense engine tally, the straightforward loop.
        tally = tallies["conv5"]
        thresholds = tally.thresholds
        maps = torch.from_numpy(cache["conv5"].astype(np.float32))
        size = (rows[0].sh, rows[0].sw)
        upsample = upsampler("conv5")
        batches = [
            (first, stop, labels)
            for first, stop, labels in iter_label_batches(
                reader, rows, list(range(N_IMAGES)), batch_size=BATCH, prefetch=False
            )
        ]

        def ours() -> DissectionTally:
            fast = DissectionTally(thresholds, label_category, len(categories))
            for first, stop, labels in batches:
                tally_add_sparse(fast, maps[first:stop], labels, upsample)
            return fast

        def dense() -> DissectionTally:
            full = DissectionTally(thresholds, label_category, len(categories))
            for first, stop, labels in batches:
                full.add(upsample(maps[first:stop], size), labels)
            return full

        def timed(fn):
            fn()  # warm-up
            started = time.perf_counter()
            out = fn()
            return time.perf_counter() - started, out

        ours_seconds, fast = timed(ours)
        dense_seconds, full = timed(dense)
        depth = max(labels.pixel.shape[1] for _, _, labels in batches)
        pixel = np.zeros((N_IMAGES, depth, *size), dtype=np.int64)
        pairs = []
        for first, stop, labels in batches:
            pixel[first:stop, : labels.pixel.shape[1]] = labels.pixel.numpy()
            pairs += [(first + int(i), int(label)) for i, label in labels.image.tolist()]
        started = time.perf_counter()
        upsampled = upsample(maps, size).numpy()
        reference = reference_tally(
            upsampled, thresholds.numpy(), pixel, pairs, label_category.numpy(), len(categories)
        )
        reference_seconds = time.perf_counter() - started
        identical = all(
            np.array_equal(getattr(t, name).numpy(), reference[name]) for t in (fast, full, tally) for name in COUNTS
        )

    units = sum(cache[name].shape[1] for name in LAYERS)
    print(
        f"{N_IMAGES} probe-world images at {SIZE} px, masks {size[0]}×{size[1]}, {len(label_category) - 1} labels "
        f"in {len(categories)} categories; demo architecture (seeded random weights), {torch.get_num_threads()} "
        f"thread(s)"
    )
    for name in LAYERS:
        result = tallies[name].result()
        print(
            f"  {name}: {result.summary().n_detectors} detectors, {result.summary().n_unique_detectors} unique "
            f"concepts (random weights)"
        )
    print(f"forward pass, conv3–conv5 captured:              {forward_seconds:7.2f} s")
    print(
        f"dissection runs of conv3–conv5 ({units} units):    {dissection_seconds:7.2f} s  "
        f"(cached maps, masks, anchored upsampling, tally; decoding the masks alone takes "
        f"{masks_seconds:.2f} s per layer)"
    )
    print(
        f"ratio dissection / forward:                       {dissection_seconds / forward_seconds:7.2f}  (target ≤ 1.0)"
    )
    print(
        f"  with the exact 0.995 quantile recomputed here:  {(dissection_seconds + quantile_seconds):7.2f} s, "
        f"ratio {(dissection_seconds + quantile_seconds) / forward_seconds:.2f}"
    )
    print(f"conv5 maps -> counts, ours (sparse upsampling):   {ours_seconds:7.3f} s")
    print(f"conv5 maps -> counts, dense engine tally:         {dense_seconds:7.3f} s  (all pixels upsampled)")
    print(f"conv5 maps -> counts, reference (per image, unit):{reference_seconds:7.3f} s")
    print(
        f"ratio ours / reference:                           {ours_seconds / reference_seconds:7.4f}  "
        f"({reference_seconds / ours_seconds:.0f}× faster; target ≥ 10×)"
    )
    print(f"tallies identical (ours = dense = reference = run pipeline): {identical}")
    if not identical:
        raise SystemExit("the vectorised tally differs from the reference")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
