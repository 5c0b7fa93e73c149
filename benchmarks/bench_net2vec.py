"""Net2Vec probe training speed, measured in one run on this machine (issue 5, part 3). Engine only, no database.

1. Segmentation probes (§3.1.2 + §3.2.2 top-F) of one concept on binary unit masks shaped like a demo run's
   (128 units on ~1% of pixels, 64 images × 128 sampled pixels per minibatch, 30 epochs): ours — the full probe,
   then every top-F probe batched as one linear map with the analytic gradient of eq. 4 — against the
   straightforward trainer kept in ``benchmarks/net2vec_reference.py`` (one probe at a time, autograd). Both on raw
   0/1 inputs (``standardize=False``) so they compute the same SGD; the largest weight difference is printed.
2. Image classifiers (§3.2): every concept's full and top-F classifiers trained at once by
   ``fit_concept_classifiers`` against the same function called concept by concept (the same work: 40 concepts,
   30 epochs of balanced minibatches of 64 images each); and whether a second run repeats the first exactly.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.engine.net2vec import (
    ClassifierConfig,
    ProbeConfig,
    concept_alpha,
    fit_concept_classifiers,
    fit_concept_probes,
)
from benchmarks.net2vec_reference import reference_fit

UNITS, PIXELS, TOP_F = 128, 600 * 128, (1, 2, 4, 8, 16)
IMAGES, CONCEPTS, CLASSIFIER_TOP_F = 2400, 40, (1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 80, 100, 128)


def main(threads: int | None = None) -> None:
    """``threads``: torch threads (default ``BENCH_THREADS`` or 1; see ``bench_dissection``)."""
    import os

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads or os.environ.get("BENCH_THREADS", 1)))
    try:
        _run()
    finally:
        torch.set_num_threads(previous)


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _run() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.rand(PIXELS, UNITS, generator=gen) < 0.01
    logit = features[:, :6].float() @ torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0, 0.5]) - 2.0
    target = torch.rand(PIXELS, generator=gen) < torch.sigmoid(logit)
    config = ProbeConfig(epochs=30, lr=1.0, batch_pixels=64 * 128, top_f=TOP_F, standardize=False)
    ours_seconds, ours = _timed(lambda: fit_concept_probes(features, target, config=config))
    reference_seconds, reference = _timed(
        lambda: reference_fit(features, target, alpha=concept_alpha(target), config=config)
    )
    difference = max(
        [float((ours.full.weight - reference[0].weight).abs().max())]
        + [float((ours.top[f].weight - reference[f].weight).abs().max()) for f in TOP_F]
    )
    same_units = all(ours.top[f].units.tolist() == reference[f].units.tolist() for f in TOP_F)

    pooled = torch.rand(IMAGES, UNITS, generator=gen) * torch.linspace(0.1, 5.0, UNITS)
    mix = torch.randn(UNITS, CONCEPTS, generator=gen)
    targets = (pooled - pooled.mean(0)) / pooled.std(0) @ mix + torch.randn(IMAGES, CONCEPTS, generator=gen) > 4.0
    classifier_config = ClassifierConfig(epochs=30)
    together_seconds, together = _timed(
        lambda: fit_concept_classifiers(pooled, targets, config=classifier_config, top_f=CLASSIFIER_TOP_F)
    )

    def one_by_one():
        return [
            fit_concept_classifiers(pooled, targets[:, [c]], config=classifier_config, top_f=CLASSIFIER_TOP_F)
            for c in range(CONCEPTS)
        ]

    apart_seconds, _ = _timed(one_by_one)
    again = fit_concept_classifiers(pooled, targets, config=classifier_config, top_f=CLASSIFIER_TOP_F)
    print(f"{torch.get_num_threads()} thread(s)")
    print(f"segmentation probes, 1 concept ({PIXELS} pixels × {UNITS} units, full + top-F {list(TOP_F)}, 30 epochs):")
    print(f"  ours (batched, analytic gradient): {ours_seconds:7.2f} s")
    print(f"  reference (one probe at a time):   {reference_seconds:7.2f} s")
    print(
        f"  ratio ours / reference:            {ours_seconds / reference_seconds:7.3f}  "
        f"({reference_seconds / ours_seconds:.1f}× faster); same top-F units: {same_units}; "
        f"largest weight difference {difference:.2e}"
    )
    print(f"image classifiers, {CONCEPTS} concepts × (1 + {len(CLASSIFIER_TOP_F)} top-F) on {IMAGES} images:")
    print(f"  all concepts at once:   {together_seconds:7.2f} s")
    print(f"  concept by concept:     {apart_seconds:7.2f} s")
    print(
        f"  ratio at once / apart:  {together_seconds / apart_seconds:7.3f}  "
        f"({apart_seconds / together_seconds:.1f}× faster); repeatable: "
        f"{torch.equal(again.full.weight, together.full.weight)}"
    )
    if not same_units or difference > 1e-3:
        raise SystemExit("the batched segmentation trainer differs from the reference")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
