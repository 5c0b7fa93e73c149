"""Crowd aggregation (issue 8 item 5), measured in one run on this machine, no database.

A simulated validation study: 600 yes/no HITs, 3 answers each from 10 workers of planted reliability
(0.5–0.97). Printed:

1. crowd-kit ``DawidSkene`` on the answers as they come (string task, worker and label ids) ÷
   :func:`annotation.crowd.aggregation.dawid_skene` (the same EM on integer codes, mapped back): the coding's speed-up.
   Both must give the same labels.
2. Dawid-Skene ÷ majority vote time, and the accuracy of each against the planted truth.
3. :func:`annotation.crowd.aggregation.agreement` (Fleiss' κ, Krippendorff's α, 2000 bootstrap replicates) time.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotation.crowd import aggregation

RELIABILITIES = (0.97, 0.93, 0.88, 0.8, 0.72, 0.65, 0.58, 0.52, 0.5, 0.55)


def simulate(n_tasks: int = 600, per_task: int = 3, seed: int = 1) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(["yes", "no"], size=n_tasks, p=[0.6, 0.4])
    rows = []
    for task in range(n_tasks):
        for worker in rng.choice(len(RELIABILITIES), size=per_task, replace=False):
            right = rng.random() < RELIABILITIES[worker]
            rows.append(
                (f"hit-{task}", f"worker-{worker}", truth[task] if right else ("no" if truth[task] == "yes" else "yes"))
            )
    return aggregation.answers_frame(rows), pd.Series(truth, index=[f"hit-{task}" for task in range(n_tasks)])


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    from crowdkit.aggregation import DawidSkene

    answers, truth = simulate()
    aggregation.dawid_skene(answers.head(30))  # imports and warms up crowd-kit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw, raw_seconds = timed(lambda: DawidSkene(n_iter=100, tol=1e-5).fit(answers))
    ours, ours_seconds = timed(aggregation.dawid_skene, answers)
    same = bool((raw.labels_.sort_index() == ours.labels.sort_index()).all())
    print(f"{len(answers)} answers, {answers['task'].nunique()} HITs, {answers['worker'].nunique()} workers")
    print(
        f"Dawid-Skene: crowd-kit on string ids {raw_seconds:.2f} s ({len(raw.loss_history_)} EM steps), on integer "
        f"codes {ours_seconds:.2f} s ({ours.iterations} steps): ratio {raw_seconds / ours_seconds:.2f}× "
        f"; same labels: {same}"
    )
    majority, mv_seconds = timed(aggregation.majority_vote, answers, labels=["yes", "no"])
    mv_accuracy = float((majority["label"] == truth[majority.index]).mean())
    ds_accuracy = float((ours.labels == truth[ours.labels.index]).mean())
    print(
        f"majority vote {mv_seconds * 1000:.1f} ms; Dawid-Skene ÷ majority vote time {ours_seconds / mv_seconds:.0f}×; "
        f"accuracy vs planted truth: majority {mv_accuracy:.3f}, Dawid-Skene {ds_accuracy:.3f}"
    )
    summary, agreement_seconds = timed(aggregation.agreement, answers, labels=["yes", "no"])
    print(
        f"agreement with 2000 bootstrap replicates {agreement_seconds:.2f} s "
        f"(Fleiss' κ {summary.fleiss_kappa.value:.3f}, α {summary.krippendorff_alpha.value:.3f})"
    )


if __name__ == "__main__":
    main()
