"""Net2Vec runs (Fong & Vedaldi §3.1, §3.2, §5.3): segmentation probes for a layer's most frequent concepts and
image-level classification probes for every concept with enough images.

``net2vec`` (``gpu`` queue) reuses the layer's extraction (the float16 activation cache and the exact dissection
thresholds ``T_k``) or runs it first, inline, as the ``dissect`` kind does. ``mask_rule`` makes the unit indicators
every probe reads (:mod:`analysis.engine.net2vec` documents them, the probes, the loss and the pixel sampling):
``net2vec`` (default, §3.1.1) thresholds each raw map strictly (``A_k > T_k``) and upsamples the indicator with
plain bilinear interpolation — ``upsample`` and ``strict_threshold`` are then fixed to ``plain`` and ``True`` (their
defaults; the parameter rules rewrite other values, so the stored parameters say what ran); a single filter's mask
is that upsampled indicator ≥ ½. ``nd18`` upsamples the raw map with ``upsample`` and thresholds at mask resolution
(``S_k > T_k``, ``≥`` with ``strict_threshold=false``): ``upsample=anchored, strict_threshold=false`` is the
dissection's own rule, which this kind used before #16.

Two passes over the cache and masks:

1. every image: exact single-filter set-IoU counts per (concept, unit) on ``train`` and on ``val`` (sums over the
   images of the split that contain the concept at pixel level), per-image concept presence (pixel or whole-image
   label), each unit's spatially averaged raw map (eq. 5's input, from the float16 cache), and a seeded sample of
   ``pixels_per_image`` pixels of each ``train`` image (features and labels);
2. after training, every ``val`` image: exact set-IoU counts of each concept's combination and top-F probes.

Classification (§3.2, ``classification``): for every label with a category (scene labels included) that has at
least ``min_images`` images with and without it in train and in val, the ``classification_concepts`` most frequent;
all their classifiers train at once on the pooled activations (:func:`analysis.engine.net2vec.fit_concept_classifiers`)
and are scored on the val images by balanced accuracy (the paper's accuracy on a balanced validation set) and
average precision. ``standardize`` (default on, not in the paper) standardises every probe's inputs for the
optimisation only — see the engine; it is what makes the full segmentation probe train reliably (on the demo's conv5
with raw inputs two of ten concepts ended with an empty mask, val IoU 0).

Concepts: pixel-level labels only (as in the paper, whole-image scene/texture labels have no segmentation), with at
least ``min_images`` train and val images each — all of them by default (``concepts = 0``: the paper probes every
Broden concept with segmentations), or the ``concepts`` most frequent (train + val images, ties by label id) when
set; the study records which (``params["concepts"]``) and the page says so. The best single filter is chosen on
train and reported on val (§3.1.1). A training minibatch holds ``batch_images`` (64, the paper's batch size) ×
``pixels_per_image`` sampled pixels, shuffled across images. To bound time and memory, a concept's training pixels
are cut to ``max_train_pixels`` (a seeded uniform subset, seed
``(seed, label id)``) when its training images hold more.

Non-extremal exemplars (§5.1, Figs. 7–8): pass 2 also scores each concept's best single filter (as a one-hot probe,
bias −½: exactly its mask) and keeps eq. 3's ``IoU_ind`` of it and of the combination on every val image holding
the concept; ``Net2VecConcept.exemplars`` holds, per mask, one image per decile of the non-zero part of that
distribution (:func:`analysis.engine.net2vec.nonextremal_exemplars`) with the share of zero-IoU images and μ, σ of
the rest (Fig. 7). (The extraction's "deciles of the unit's map maximum" are a different view, of a unit, not of a
concept.)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction

from analysis import params as p
from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import Concept, Net2VecClassification, Net2VecConcept, Net2VecStudy, Run, UpsampleMethod
from unitscope.spreadsheets import csv_writer

from .exports import write_run_json
from .extraction import open_activation_cache
from .inputs import run_inputs
from .runs import RunInputError, RunProgress, run_start

MAX_CONCEPTS = 100_000
#: :data:`analysis.engine.net2vec.MASK_RULES` (spelled out: this module loads without torch).
MASK_RULES = ("net2vec", "nd18")


def _net2vec_rules(params: dict[str, Any]) -> None:
    # F = 1 is the single-filter classifier Table 1 compares with: always trained
    params["classification_top_f"] = sorted({1, *params["classification_top_f"]})
    if params["mask_rule"] == "net2vec":  # §3.1.1: plain bilinear of A_k > T_k, whatever was asked
        params["upsample"], params["strict_threshold"] = UpsampleMethod.PLAIN.value, True


NET2VEC_PARAMS = p.ParamSchema(
    {
        "network": p.name(),
        "dataset": p.name(),
        "layer": p.name(help="dotted layer name"),
        "concepts": p.integers(
            0,
            MAX_CONCEPTS,
            0,
            help="segmentation concepts probed: 0 = every concept with "
            "min_images train and val images (the paper's rule); N = the N most frequent of them",
        ),
        "mask_rule": p.choice(
            MASK_RULES,
            "net2vec",
            help="net2vec: S(A > T), thresholded before plain bilinear "
            "upsampling (the paper); nd18: the dissection's upsample-then-threshold",
        ),
        "epochs": p.integers(1, 1000, 30),
        "lr": p.Param(float, 1.0, low=0, low_open=True),
        "momentum": p.Param(float, 0.9, low=0, high=1, high_open=True),
        "batch_images": p.integers(1, 100_000, 64),
        "pixels_per_image": p.integers(1, 1_000_000, 128),
        "max_train_pixels": p.integers(1, 10**10, 32768),
        "top_f": p.Param(
            int,
            [1, 2, 4, 8, 16],
            low=1,
            high=100_000,
            many=True,
            min_items=1,
            max_items=32,
            unique_sorted=True,
            help="sizes F of the top-F filter subsets compared",
        ),
        "min_images": p.integers(1, 10**9, 5, help="fewest images a concept needs"),
        "seed": p.seed(),
        "upsample": p.choice(
            UpsampleMethod.values,
            UpsampleMethod.PLAIN.value,
            help="mask_rule=nd18 only (net2vec: plain, the paper's); anchored is the dissection's",
        ),
        "quantile": p.fraction(0.995),
        "strict_threshold": p.Param(
            bool, True, help="mask_rule=nd18 only (net2vec: >, the paper's); the dissection uses ≥ (false)"
        ),
        "batch_size": p.integers(1, 1024, 16),
        "classification": p.Param(bool, True, help="also learn image-classification probes (Table 1)"),
        "classification_concepts": p.integers(0, MAX_CONCEPTS, 0, help="0 = every concept with enough images"),
        "classification_epochs": p.integers(1, 10_000, 30),
        "classification_lr": p.Param(float, 0.1, low=0, low_open=True),
        "classification_batch_images": p.integers(2, 100_000, 64, help="half positives, half negatives"),
        "classification_top_f": p.Param(
            int,
            [1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 80, 100, 128],
            low=1,
            high=100_000,
            many=True,
            min_items=1,
            unique_sorted=True,
        ),
        "standardize": p.Param(bool, True),
    },
    rules=_net2vec_rules,
)
NET2VEC_DEFAULTS = NET2VEC_PARAMS.defaults
#: The demo's Net2Vec runs (``analysis.services.demo``): the defaults — every eligible concept (the probe world has
#: few enough that all of them train in seconds per layer).
DEMO_NET2VEC: dict[str, Any] = {}


def net2vec_params(*, network: str, dataset: str, layer: str, **overrides: Any) -> dict[str, Any]:
    """The full, validated parameters of a ``net2vec`` run (defaults filled in)."""
    return NET2VEC_PARAMS.validate({"network": network, "dataset": dataset, "layer": layer, **overrides})


def net2vec_run_start(
    *, network: str, dataset: str, layer: str, created_by=None, inline: bool = False, **overrides: Any
) -> Run:
    """Start (or reuse, when identical) a Net2Vec run on ``layer``; returns its run."""
    run, _ = run_start(
        kind=NET2VEC.name,
        params=net2vec_params(network=network, dataset=dataset, layer=layer, **overrides),
        created_by=created_by,
        inline=inline,
    )
    return run


@contextmanager
def _one_thread():
    """Run the probe training loops on one torch thread, then restore the worker's setting: their operations are
    small (a minibatch of 64 images × the layer's units), so a second thread only adds synchronisation, and on a
    shared CPU it made the classifiers' training 4–5× slower (16 s vs 3.4 s on the demo's conv5)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _classification(params, tally, splits, device, progress):
    """§3.2 on the pooled activations: ``(top_f, results)``, one result dict per classified concept (concepts:
    :func:`analysis.engine.net2vec.classification_concepts`)."""
    import torch

    from analysis.engine.net2vec import (
        TRAIN,
        VAL,
        ClassifierConfig,
        classification_concepts,
        fit_concept_classifiers,
        score_classifiers,
    )

    split = torch.tensor(splits)
    chosen, positives, negatives = classification_concepts(
        tally.presence, split, tally.valid, min_images=params["min_images"], count=params["classification_concepts"]
    )
    if not chosen:
        return [], []
    top_f = [f for f in params["classification_top_f"] if f <= tally.n_units]
    progress.phase(f"Training image classifiers for {len(chosen)} concepts", total=1)
    config = ClassifierConfig(
        epochs=params["classification_epochs"],
        lr=params["classification_lr"],
        momentum=params["momentum"],
        batch_images=params["classification_batch_images"],
        standardize=params["standardize"],
        seed=params["seed"],
    )
    train, val = split == TRAIN, split == VAL
    dev = torch.device(device)
    with _one_thread():
        fit = fit_concept_classifiers(
            tally.pooled[train].to(dev), tally.presence[train][:, chosen].to(dev), config=config, top_f=top_f
        )
    accuracy, ap = score_classifiers(fit, top_f, tally.pooled[val], tally.presence[val][:, chosen])
    progress(1, 1)
    concepts = {
        concept.number: concept
        for concept in Concept.objects.filter(dataset__name=params["dataset"], number__in=chosen)
    }
    single = 1 + top_f.index(1)  # net2vec_params always includes F = 1
    raw_weight, raw_bias = fit.full.raw()
    results = []
    for column, number in enumerate(chosen):
        unit = int(torch.nonzero(fit.top_units[1][column]).flatten()[0])
        results.append(
            dict(
                concept=concepts[number],
                train_positives=int(positives[0, number]),
                train_negatives=int(negatives[0, number]),
                val_positives=int(positives[1, number]),
                val_negatives=int(negatives[1, number]),
                single_unit=unit,
                single_val_accuracy=float(accuracy[single][column]),
                single_val_ap=float(ap[single][column]),
                combination_val_accuracy=float(accuracy[0][column]),
                combination_val_ap=float(ap[0][column]),
                top_f_val_accuracy={str(f): float(accuracy[1 + i][column]) for i, f in enumerate(top_f)},
                top_f_val_ap={str(f): float(ap[1 + i][column]) for i, f in enumerate(top_f)},
                embedding=[float(value) for value in raw_weight[column].tolist()],
                standardized_weight=[float(value) for value in fit.full.weight[column].tolist()],
                bias=float(raw_bias[column]),
            )
        )
    return top_f, results


def net2vec_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.broden import BrodenReader
    from analysis.engine.net2vec import (
        TRAIN,
        VAL,
        Net2VecTally,
        ProbeConfig,
        ProbeTally,
        best_single_filters,
        fit_concept_probes,
        iter_unit_mask_batches,
        nonextremal_exemplars,
        single_filter_probe,
        stack_probes,
    )

    params = net2vec_params(**run.params)
    inputs = run_inputs(params, progress=progress, thresholds=True, labels=True)
    dataset, layer, extraction, thresholds = inputs.dataset, inputs.layer, inputs.extraction, inputs.thresholds
    maps = open_activation_cache(extraction)
    reader = BrodenReader(dataset.root)
    rows = reader.indexed_rows
    dev = torch.device(device)
    valid = (inputs.label_category >= 0).to(dev)
    valid[0] = False  # label 0 is unlabeled
    split_of = {"train": TRAIN, "val": VAL}
    splits = [split_of.get(row.split, -1) for row in rows]
    if TRAIN not in splits or VAL not in splits:
        raise RunInputError(f"{dataset.name} needs both train and val images for Net2Vec.")

    def batches(mask_rows):
        return iter_unit_mask_batches(
            maps,
            reader,
            rows,
            mask_rows,
            upsample=inputs.upsample,
            thresholds=thresholds,
            strict=params["strict_threshold"],
            batch_size=params["batch_size"],
            device=dev,
            mask_rule=params["mask_rule"],
        )

    # Pass 1: single-filter counts per split, presence, pooled activations, training pixels.
    tally = Net2VecTally(
        len(rows), valid, layer.units, pixels_per_image=params["pixels_per_image"], seed=params["seed"]
    )
    progress.phase(f"Single filters and training pixels of {layer.name}", total=len(rows))
    for batch in batches(list(range(len(rows)))):
        tally.add(batch, torch.tensor([splits[row] for row in batch.rows.tolist()]))
        progress(int(tally.seen.sum()), len(rows))
    chosen = tally.segmentation_concepts(min_images=params["min_images"], count=params["concepts"])
    if not chosen:
        raise RunInputError(
            f"No concept of {dataset.name} has pixel labels in at least {params['min_images']} "
            "train and val images each."
        )

    # Training.
    config = ProbeConfig(
        epochs=params["epochs"],
        lr=params["lr"],
        momentum=params["momentum"],
        batch_pixels=params["batch_images"] * params["pixels_per_image"],
        seed=params["seed"],
        top_f=tuple(params["top_f"]),
        standardize=params["standardize"],
    )
    top_f = [f for f in params["top_f"] if f <= layer.units]
    progress.phase(f"Training probes for {len(chosen)} concepts", total=len(chosen))
    fitted = {}
    for done, number in enumerate(chosen, start=1):
        features, target = tally.training_pixels(number, max_pixels=params["max_train_pixels"])
        with _one_thread():
            fitted[number] = fit_concept_probes(features, target, config=config)
        progress(done, len(chosen))
    tally.release_training_pixels()
    single_train, single_val = tally.single_filter_iou()
    # As in dissection, a unit whose threshold is 0 under "≥" is on at every pixel (saturated): not a candidate.
    best = best_single_filters(single_train, chosen, excluded=None if params["strict_threshold"] else (thresholds <= 0))

    # Pass 2: the probes' set IoU on val images (per concept: the full probe, the top-F ones, then the best single
    # filter as a probe), and IoU_ind per image of the full probe and the single filter (the exemplars).
    per_concept = 2 + len(top_f)
    probes = [
        probe
        for position, number in enumerate(chosen)
        for probe in [fitted[number].full, *(fitted[number].top[f] for f in top_f), single_filter_probe(best[position])]
    ]
    weights, bias = stack_probes(probes, layer.units, device=dev)
    tracked = torch.tensor(
        [
            [position, position * per_concept + offset]
            for position in range(len(chosen))
            for offset in (0, per_concept - 1)
        ],
        dtype=torch.int64,
    )
    scores = ProbeTally(weights, bias, torch.tensor(chosen, dtype=torch.int64, device=dev), tracked)
    val_rows = [row for row, split in enumerate(splits) if split == VAL]
    progress.phase(f"Scoring the probes on {len(val_rows)} validation images", total=len(val_rows))
    for batch in batches(val_rows):
        scores.add(batch)
        progress(scores.images, len(val_rows))
    probe_iou = scores.result()

    all_pixels = tally.all_pixels_iou().tolist()
    concepts = {concept.number: concept for concept in Concept.objects.filter(dataset=dataset, number__in=chosen)}
    results = []
    for position, number in enumerate(chosen):
        ious = probe_iou[position, position * per_concept : (position + 1) * per_concept].tolist()
        fit, unit = fitted[number], best[position]
        exemplars = {
            name: nonextremal_exemplars(*scores.per_image(2 * position + offset))
            for offset, name in ((0, "combination"), (1, "single"))
        }
        results.append(
            dict(
                concept=concepts[number],
                train_images=int(tally.images[TRAIN, number]),
                val_images=int(tally.images[VAL, number]),
                alpha=fit.alpha,
                best_unit=unit,
                best_unit_train_iou=float(single_train[number, unit]),
                single_val_iou=float(single_val[number, unit]),
                combination_val_iou=ious[0],
                top_f_val_iou={str(f): iou for f, iou in zip(top_f, ious[1:])},
                all_pixels_val_iou=all_pixels[number],
                exemplars=exemplars,
                embedding=[float(value) for value in fit.full.weight.tolist()],
                bias=fit.full.bias,
            )
        )
    wins = sum(result["combination_val_iou"] >= result["single_val_iou"] for result in results)
    classification_top_f, classified = ([], [])
    if params["classification"]:
        classification_top_f, classified = _classification(params, tally, splits, device, progress)
    del tally
    classification_wins = sum(
        result["combination_val_accuracy"] >= result["single_val_accuracy"] for result in classified
    )
    with transaction.atomic():
        study = Net2VecStudy.objects.create(
            run=run,
            layer=layer,
            dataset=dataset,
            extraction=extraction,
            upsample=params["upsample"],
            quantile=params["quantile"],
            top_f=top_f,
            n_concepts=len(results),
            n_combination_wins=wins,
            params={
                key: params[key]
                for key in (
                    "concepts",
                    "mask_rule",
                    "epochs",
                    "lr",
                    "momentum",
                    "batch_images",
                    "pixels_per_image",
                    "max_train_pixels",
                    "min_images",
                    "seed",
                    "strict_threshold",
                    "classification",
                    "classification_concepts",
                    "classification_epochs",
                    "classification_lr",
                    "classification_batch_images",
                    "standardize",
                )
            },
            classification_top_f=classification_top_f,
            n_classification_concepts=len(classified),
            n_classification_wins=classification_wins,
        )
        Net2VecConcept.objects.bulk_create([Net2VecConcept(study=study, **result) for result in results])
        Net2VecClassification.objects.bulk_create(
            [Net2VecClassification(study=study, **result) for result in classified]
        )
    return {
        "net2vec_study": study.pk,
        "layer": layer.name,
        "dataset": dataset.name,
        "extraction_run": extraction.run_id,
        "concepts": len(results),
        "combination_at_least_single": f"{100.0 * wins / len(results):.0f}%",
        "classified_concepts": len(classified),
        "classification_combination_at_least_single": f"{100.0 * classification_wins / len(classified):.0f}%"
        if classified
        else None,
    }


def net2vec_nearest_table(rows: list, count: int = 5) -> dict[int, list[tuple[Any, float]]]:
    """Per row (a :class:`Net2VecConcept` or :class:`Net2VecClassification` of one study), keyed by its concept
    number: the ``count`` other rows nearest by cosine of their embeddings (§5.3, Table 2), nearest first, ties by
    the lower concept number."""
    import torch

    from analysis.engine.net2vec import cosine_similarity

    rows = sorted(rows, key=lambda row: row.concept.number)
    if not rows:
        return {}
    similarity = cosine_similarity(torch.tensor([row.embedding for row in rows], dtype=torch.float64))
    table = {}
    for index, row in enumerate(rows):
        others = [other for other in range(len(rows)) if other != index]
        others.sort(key=lambda other: (-float(similarity[index, other]), other))
        table[row.concept.number] = [(rows[other], float(similarity[index, other])) for other in others[:count]]
    return table


def net2vec_layer_table(network) -> list[dict[str, Any]]:
    """Fong & Vedaldi Table 1 for ``network``: per layer (network order) with a Net2Vec study, the newest study and
    the percent of concepts where the combination ≥ the best single filter, for segmentation (val set IoU) and
    classification (balanced val accuracy; also by val average precision)."""
    table = []
    for layer in network.layers.order_by("order"):
        study = Net2VecStudy.objects.filter(layer=layer).select_related("dataset", "run").first()
        if study is None:
            continue
        classified = list(study.classifications.values_list("combination_val_ap", "single_val_ap"))
        ap_share = (
            100.0 * sum(combined >= single for combined, single in classified) / len(classified) if classified else None
        )
        table.append(
            {
                "layer": layer,
                "study": study,
                "segmentation": study.combination_share,
                "classification": study.classification_share,
                "classification_ap": ap_share,
            }
        )
    return table


def net2vec_export(run: Run, out_dir: Path) -> list[Path]:
    """``segmentation.csv`` and ``segmentation_weights.npz``, ``classification.csv`` and
    ``classification_weights.npz`` (when the run trained classifiers), and ``run.json``.

    ``segmentation.csv``: one row per concept: ``concept,category,train_images,val_images,alpha,best_unit,
    best_unit_train_iou,single_val_iou,combination_val_iou,all_pixels_val_iou`` then ``top<F>_val_iou`` per subset
    size F (empty where F exceeded the layer); units 0-based, IoUs as Python ``repr``. ``classification.csv``: per
    concept the split counts, the single unit, balanced val accuracy and AP of the single unit, of the combination
    and of each top-F classifier. The ``.npz`` files hold ``concepts`` (names, the CSV's order), ``weight`` float32
    ``[concepts, units]`` and ``bias`` float32 ``[concepts]`` (segmentation: the learned w, b; classification: eq.
    5's w (the embedding) and b on raw pooled activations, plus ``standardized_weight``, the w per input std).
    """
    study = Net2VecStudy.objects.select_related("layer__network", "dataset").filter(run=run).first()
    if study is None:
        raise RunInputError(f"Run {run.pk} holds no Net2Vec study.")
    written = []
    segmentation = list(study.concept_results.select_related("concept").order_by("concept__name"))
    tops = [str(f) for f in study.top_f]
    written += _probe_table(
        out_dir,
        "segmentation",
        segmentation,
        [
            "train_images",
            "val_images",
            "alpha",
            "best_unit",
            "best_unit_train_iou",
            "single_val_iou",
            "combination_val_iou",
            "all_pixels_val_iou",
        ],
        {f"top{f}_val_iou": ("top_f_val_iou", f) for f in tops},
        weights={"weight": "embedding"},
    )
    classification = list(study.classifications.select_related("concept").order_by("concept__name"))
    if classification:
        tops = [str(f) for f in study.classification_top_f]
        written += _probe_table(
            out_dir,
            "classification",
            classification,
            [
                "train_positives",
                "train_negatives",
                "val_positives",
                "val_negatives",
                "single_unit",
                "single_val_accuracy",
                "single_val_ap",
                "combination_val_accuracy",
                "combination_val_ap",
            ],
            {
                **{f"top{f}_val_accuracy": ("top_f_val_accuracy", f) for f in tops},
                **{f"top{f}_val_ap": ("top_f_val_ap", f) for f in tops},
            },
            weights={"weight": "embedding", "standardized_weight": "standardized_weight"},
        )
    written.append(
        write_run_json(
            out_dir,
            run,
            {
                "network": study.layer.network.name,
                "layer": study.layer.name,
                "units": study.layer.units,
                "dataset": study.dataset.name,
                "upsample": study.upsample,
                "quantile": study.quantile,
                "segmentation_concepts": len(segmentation),
                "classification_concepts": len(classification),
                "concept_choice": (
                    "every concept with enough train and val images"
                    if not study.params.get("concepts")
                    else f"the {study.params['concepts']} most frequent concepts with enough images"
                ),
                "rules": {
                    "iou": "set IoU over the val images holding the concept at pixel level (Net2Vec §3.1.1)",
                    "masks": {
                        "net2vec": "S(A_k > T_k): thresholded on the map, plain bilinear, mask = S >= 1/2",
                        "nd18": "S(A_k) >= T_k: the dissection's rule",
                    }.get(study.params.get("mask_rule"), "S(A_k) >= T_k: the dissection's rule"),
                    "best_unit": "chosen by train IoU, reported on val",
                    "accuracy": "balanced accuracy on the val images (Net2Vec §3.2)",
                },
            },
        )
    )
    return written


def _probe_table(
    out_dir: Path,
    name: str,
    rows: list,
    columns: list[str],
    keyed: dict[str, tuple[str, str]],
    *,
    weights: dict[str, str],
) -> list[Path]:
    """``<name>.csv`` (concept, category, ``columns``, then ``keyed`` columns read from a per-F dict field) and
    ``<name>_weights.npz`` (``concepts``, ``bias`` and each ``weights`` array from its list field)."""
    table = out_dir / f"{name}.csv"

    def shown(value):
        return repr(float(value)) if isinstance(value, float) else value

    with open(table, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["concept", "category", *columns, *keyed])
        for row in rows:
            writer.writerow(
                [
                    row.concept.name,
                    row.concept.category,
                    *(shown(getattr(row, c)) for c in columns),
                    *(shown(getattr(row, field).get(f, "")) for field, f in keyed.values()),
                ]
            )
    arrays = {
        key: np.asarray([getattr(row, field) for row in rows], dtype=np.float32) for key, field in weights.items()
    }
    npz = out_dir / f"{name}_weights.npz"
    np.savez(
        npz,
        concepts=np.asarray([row.concept.name for row in rows]),
        bias=np.asarray([row.bias for row in rows], dtype=np.float32),
        **arrays,
    )
    return [table, npz]


NET2VEC = register_job_kind(
    JobKind(
        name="net2vec",
        label="Net2Vec probes",
        queue=GPU_QUEUE,
        execute=net2vec_run_execute,
        params=NET2VEC_PARAMS,
        exporter=net2vec_export,
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        description="Fong & Vedaldi: best single filter vs learned filter combinations (and top-F subsets) as "
        "segmenters of a layer's most frequent concepts; concept embeddings.",
    )
)
