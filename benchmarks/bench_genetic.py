"""GA filter combinations for one part over a 128-filter layer with GG'18's settings (population 200, 100
generations), on CPU: total time through the precomputed detection matching, and the speed-up of one fitness
evaluation over recomputing AP from scratch (match boxes, sort, greedy VOC) for the same chromosomes.

The part problem is synthetic at the demo's scale: 400 object views, each with 1–3 part boxes; every filter fires
about 4 times per view (boxes after NMS); 12 filters fire near the part in different subsets of the views, the
others anywhere.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from analysis.engine.genetic import GAConfig, run_ga
from analysis.engine.part_detection import DetectionMatching, average_precision, best_ground_truth

N_FILTERS, N_VIEWS, PER_VIEW = 128, 400, 4


def synthetic_part(seed: int = 0):
    rng = np.random.default_rng(seed)
    gt_view = np.repeat(np.arange(N_VIEWS), rng.integers(1, 4, N_VIEWS))
    centre = rng.uniform(20, 90, (len(gt_view), 2))
    size = rng.uniform(12, 30, (len(gt_view), 2))
    gt = np.concatenate([centre - size / 2, centre + size / 2], 1)
    good = {f: rng.random(N_VIEWS) < rng.uniform(0.15, 0.5) for f in rng.choice(N_FILTERS, 12, replace=False)}
    boxes, scores, views, filters = [], [], [], []
    for f in range(N_FILTERS):
        for v in range(N_VIEWS):
            n = rng.poisson(PER_VIEW)
            c = rng.uniform(10, 100, (n, 2))
            s = rng.uniform(10, 35, (n, 2))
            score = rng.gamma(2.0, 1.0, n)
            if f in good and good[f][v] and n:
                k = rng.choice(np.flatnonzero(gt_view == v))
                c[0] = centre[k] + rng.normal(0, 2, 2)
                s[0] = size[k] * rng.uniform(0.85, 1.15, 2)
                score[0] += 2.0
            boxes.append(np.concatenate([c - s / 2, c + s / 2], 1))
            scores.append(score)
            views += [v] * n
            filters += [f] * n
    return (
        torch.tensor(np.concatenate(boxes)),
        torch.tensor(np.concatenate(scores)),
        torch.tensor(views),
        np.array(filters),
        torch.tensor(gt),
        torch.tensor(gt_view),
    )


def main() -> None:
    boxes, scores, views, filters, gt, gt_view = synthetic_part()
    print(f"{N_FILTERS} filters, {N_VIEWS} views, {len(gt)} part boxes, {len(filters)} detections")
    started = time.perf_counter()
    best = best_ground_truth(boxes, views, gt, gt_view, 0.4).numpy()
    matching = DetectionMatching(filters, scores.numpy(), best, len(gt), N_FILTERS)
    singles, _ = matching.single_aps()
    precompute = time.perf_counter() - started
    print(f"precomputed matching and {N_FILTERS} single-filter APs: {precompute:.2f} s")

    started = time.perf_counter()
    result = run_ga(lambda z: matching.ap(z)[0], N_FILTERS, GAConfig(), best_single=int(np.argmax(singles)))
    ga_time = time.perf_counter() - started
    print(
        f"GA (population 200, 100 generations, {result.evaluations} evaluations, {len(matching._cache)} distinct "
        f"chromosomes): {ga_time:.2f} s · AP {result.fitness:.3f} with {len(result.filters)} filters "
        f"(best single {singles.max():.3f}) · target <= 20 s: {'met' if ga_time <= 20 else 'MISSED'}"
    )

    rng = np.random.default_rng(1)
    sample = np.concatenate([rng.random((150, N_FILTERS)) < 0.02, rng.random((50, N_FILTERS)) < 0.1])
    sample[sample.sum(1) == 0, 0] = True
    fresh = DetectionMatching(filters, scores.numpy(), best, len(gt), N_FILTERS)
    started = time.perf_counter()
    fast = [fresh.ap(chromosome)[0] for chromosome in sample]
    fast_time = (time.perf_counter() - started) / len(sample)
    started = time.perf_counter()
    slow = []
    for chromosome in sample:
        picked = torch.from_numpy(np.flatnonzero(chromosome[filters]))
        slow.append(average_precision(boxes[picked], scores[picked], views[picked], gt, gt_view, 0.4)[0])
    slow_time = (time.perf_counter() - started) / len(sample)
    difference = max(abs(a - b) for a, b in zip(fast, slow))
    print(
        f"one fitness evaluation: precomputed {fast_time * 1e6:.0f} µs, from scratch {slow_time * 1e3:.1f} ms "
        f"-> speed-up {slow_time / fast_time:.0f}x (max |AP difference| {difference:.1e})"
    )
    print(
        f"GA from scratch (every evaluation recomputed, no cache), estimated: "
        f"{slow_time * result.evaluations:.0f} s = {slow_time * result.evaluations / ga_time:.0f}x the GA above"
    )


if __name__ == "__main__":
    main()
