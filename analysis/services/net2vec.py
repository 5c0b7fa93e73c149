"""Net2Vec runs (Fong & Vedaldi §3.1, §3.2.2, §5.3): segmentation probes for a layer's most frequent concepts.

``net2vec`` (``gpu`` queue) reuses the layer's extraction (the float16 activation cache and the exact dissection
thresholds ``T_k``) or runs it first, inline, as the ``dissect`` kind does. Maps are upsampled to mask resolution
with the dissection's method (``anchored`` by default, ``plain`` = Net2Vec's plain bilinear) and thresholded with
the dissection's rule (``S_k ≥ T_k``; ``strict_threshold`` gives ``>``), giving the binary unit masks every probe
reads (:mod:`analysis.engine.net2vec` documents the probes, the loss and the pixel sampling).

Two passes over the cache and masks:

1. every image: exact single-filter set-IoU counts per (concept, unit) on ``train`` and on ``val`` (sums over the
   images of the split that contain the concept at pixel level), per-image concept presence, and a seeded
   sample of ``pixels_per_image`` pixels of each ``train`` image (features and labels);
2. after training, every ``val`` image: exact set-IoU counts of each concept's combination and top-F probes.

Concepts: pixel-level labels only (as in the paper, whole-image scene/texture labels have no segmentation), with at
least ``min_images`` train and val images each; the ``concepts`` most frequent (train + val images), ties by
label id. The best single filter is chosen on train and reported on val (§3.1.1). A training minibatch holds
``batch_images`` (64, the paper's batch size) × ``pixels_per_image`` sampled pixels, shuffled across images. To bound
time and memory, a concept's training pixels are cut to ``max_train_pixels`` (a seeded uniform subset, seed
``(seed, label id)``) when its training images hold more.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from django.db import transaction

from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import Concept, Net2VecConcept, Net2VecStudy, Run, UpsampleMethod

from .dissection import _ensure_extraction, _label_table, _resolve, _thresholds, _upsampler
from .extraction import open_activation_cache
from .runs import RunInputError, RunProgress, run_start

NET2VEC_DEFAULTS: dict[str, Any] = {
    "concepts": 10, "epochs": 10, "lr": 1.0, "momentum": 0.9, "batch_images": 64, "pixels_per_image": 128,
    "max_train_pixels": 32768,
    "top_f": [1, 2, 4, 8, 16], "min_images": 5, "seed": 0, "upsample": UpsampleMethod.ANCHORED.value,
    "quantile": 0.995, "strict_threshold": False, "batch_size": 8,
}
MAX_CONCEPTS = 500


def net2vec_params(*, network: str, dataset: str, layer: str, **overrides: Any) -> dict[str, Any]:
    """The full, validated parameters of a ``net2vec`` run (defaults filled in)."""
    params = {"network": network, "dataset": dataset, "layer": layer, **NET2VEC_DEFAULTS}
    params.update({key: value for key, value in overrides.items() if value is not None})
    try:
        for key in ("concepts", "epochs", "batch_images", "pixels_per_image", "max_train_pixels", "min_images", "seed",
                    "batch_size"):
            params[key] = int(params[key])
        for key in ("lr", "momentum", "quantile"):
            params[key] = float(params[key])
        params["top_f"] = sorted({int(f) for f in params["top_f"]})
    except (TypeError, ValueError):
        raise RunInputError("numeric parameters of net2vec must be numbers (top_f a list of integers)") from None
    params["strict_threshold"] = bool(params["strict_threshold"])
    if params["upsample"] not in UpsampleMethod.values:
        raise RunInputError(f"upsample must be one of {', '.join(UpsampleMethod.values)}")
    if not 1 <= params["concepts"] <= MAX_CONCEPTS:
        raise RunInputError(f"concepts must be between 1 and {MAX_CONCEPTS}")
    if not 1 <= params["epochs"] <= 1000:
        raise RunInputError("epochs must be between 1 and 1000")
    if not 1 <= params["pixels_per_image"] <= 1_000_000 or not 1 <= params["batch_images"] <= 100_000:
        raise RunInputError("pixels_per_image and batch_images must be positive")
    if params["lr"] <= 0 or not 0 <= params["momentum"] < 1:
        raise RunInputError("lr must be positive and momentum in [0, 1)")
    if not 0 < params["quantile"] < 1:
        raise RunInputError("quantile must lie strictly between 0 and 1")
    if not 1 <= params["batch_size"] <= 1024 or params["min_images"] < 1:
        raise RunInputError("batch_size must be between 1 and 1024 and min_images at least 1")
    if params["max_train_pixels"] < 1:
        raise RunInputError("max_train_pixels must be positive")
    if any(f < 1 for f in params["top_f"]):
        raise RunInputError("top_f sizes must be positive")
    return params


def net2vec_run_start(*, network: str, dataset: str, layer: str, created_by=None, inline: bool = False,
                      **overrides: Any) -> Run:
    """Start (or reuse, when identical) a Net2Vec run on ``layer``; returns its run."""
    run, _ = run_start(kind=NET2VEC.name, params=net2vec_params(network=network, dataset=dataset, layer=layer,
                                                                 **overrides),
                       created_by=created_by, inline=inline)
    return run


def _image_batches(maps, reader, rows, mask_rows, *, upsample, thresholds, strict, batch_size, device):
    """Yield ``(rows, features bool Tensor[B, U, P], labels LongTensor[B, L, P])`` per batch of ``mask_rows``."""
    import torch

    from analysis.engine.dissection_data import iter_label_batches

    t = thresholds.to(device).view(1, -1, 1, 1)
    for first, stop, labels in iter_label_batches(reader, rows, mask_rows, batch_size=batch_size):
        picked = mask_rows[first:stop]
        raw = torch.from_numpy(np.array(maps[picked])).to(device=device, dtype=torch.float32)
        up = upsample(raw, labels.size)
        active = (up > t) if strict else (up >= t)
        yield picked, active.flatten(2), labels.pixel.to(device).flatten(2)


def _present_ids(pixel, valid):
    """LongTensor of the label ids in ``pixel`` (> 0) whose entry of ``valid`` (bool ``Tensor[C]``) is True."""
    import torch

    counts = torch.bincount(pixel.flatten(), minlength=len(valid))[:len(valid)]
    return torch.nonzero((counts > 0) & valid).flatten()


def _truth(pixel, ids):
    """bool ``Tensor[B, len(ids), P]``: pixels labelled with each of ``ids`` (LongTensor, ids > 0) in any layer of
    ``pixel`` ``LongTensor[B, L, P]`` (a scatter through a lookup table: no [B, C, L, P] comparison)."""
    import torch

    size = max(int(pixel.max()) if pixel.numel() else 0, int(ids.max()) if len(ids) else 0) + 1
    lookup = torch.full((size,), len(ids), dtype=torch.int64, device=pixel.device)
    lookup[ids] = torch.arange(len(ids), device=pixel.device)
    b, depth, p = pixel.shape
    truth = torch.zeros(b, len(ids) + 1, p, dtype=torch.bool, device=pixel.device)
    for layer in range(depth):
        truth.scatter_(1, lookup[pixel[:, layer]].unsqueeze(1), True)
    return truth[:, :len(ids)]


def _batch_counts(features, truth):
    """Set-IoU counts of one batch, per image: ``(intersection, union)`` int64 ``Tensor[B, C, M]`` for masks
    ``features`` bool ``[B, M, P]`` against ``truth`` bool ``[B, C, P]``; zero where the image lacks the concept."""
    import torch

    f = features.to(torch.float32)
    t = truth.to(torch.float32)
    inter = torch.bmm(t, f.transpose(1, 2)).round().to(torch.int64)  # exact: counts < 2**24 per image
    truth_sum = t.sum(2, keepdim=True).to(torch.int64)
    union = (f.sum(2).to(torch.int64).unsqueeze(1) + truth_sum) * (truth_sum > 0) - inter
    return inter, union


def net2vec_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.broden import BrodenReader
    from analysis.engine.net2vec import ProbeConfig, fit_concept_probes, sample_pixels, set_iou, stack_probes

    params = net2vec_params(**run.params)
    network, dataset, layer = _resolve(params)
    upsample = _upsampler(params["upsample"], layer, network)
    progress.phase(f"Finding the activations of {layer.name} on {dataset.name}")
    extraction = _ensure_extraction(network, dataset, layer, params["quantile"], progress)
    thresholds = _thresholds(extraction, layer)
    label_category, _ = _label_table(dataset)
    maps = open_activation_cache(extraction)
    reader = BrodenReader(dataset.root_dir)
    rows = list(reader.rows())
    dev = torch.device(device)
    n_labels, n_units = len(label_category), layer.units
    valid = (label_category >= 0).to(dev)
    valid[0] = False  # label 0 is unlabeled
    split_of = {"train": 0, "val": 1}
    splits = [split_of.get(row.split, -1) for row in rows]
    if 0 not in splits or 1 not in splits:
        raise RunInputError(f"{dataset.name} needs both train and val images for Net2Vec.")
    common = dict(upsample=upsample, thresholds=thresholds, strict=params["strict_threshold"],
                  batch_size=params["batch_size"], device=dev)

    # Pass 1: single-filter counts per split, presence, training samples.
    inter = torch.zeros(2, n_labels, n_units, dtype=torch.int64, device=dev)
    union = torch.zeros(2, n_labels, n_units, dtype=torch.int64, device=dev)
    images = torch.zeros(2, n_labels, dtype=torch.int64)
    samples: list[tuple[torch.Tensor, torch.Tensor, list[int]]] = []  # (features [n, U], layers [L, n], present)
    progress.phase(f"Single filters and training pixels of {layer.name}", total=len(rows))
    done = 0
    with torch.no_grad():
        for picked, features, pixel in _image_batches(maps, reader, rows, list(range(len(rows))), **common):
            ids = _present_ids(pixel, valid)
            if len(ids):
                truth = _truth(pixel, ids)
                i, u = _batch_counts(features, truth)
                present = i.sum(2) + u.sum(2) > 0  # the image has a pixel of the concept
                for position, row in enumerate(picked):
                    split = splits[row]
                    if split < 0:
                        continue
                    inter[split, ids] += i[position]
                    union[split, ids] += u[position]
                    images[split, ids[present[position]].cpu()] += 1
                    if split == 0 and bool(present[position].any()):
                        pick = sample_pixels(features.shape[2], params["pixels_per_image"], seed=params["seed"],
                                             image=row).to(dev)
                        samples.append((features[position][:, pick].T.contiguous(),
                                        pixel[position][:, pick].contiguous(), ids[present[position]].tolist()))
            done += len(picked)
            progress(done, len(rows))

    eligible = [number for number in range(n_labels)
                if images[0, number] >= params["min_images"] and images[1, number] >= params["min_images"]]
    eligible.sort(key=lambda number: (-int(images[0, number] + images[1, number]), number))
    chosen = eligible[:params["concepts"]]
    if not chosen:
        raise RunInputError(f"No concept of {dataset.name} has pixel labels in at least {params['min_images']} "
                            "train and val images each.")
    single_train = set_iou(inter[0], union[0]).cpu()
    single_val = set_iou(inter[1], union[1]).cpu()

    # Training.
    config = ProbeConfig(epochs=params["epochs"], lr=params["lr"], momentum=params["momentum"],
                         batch_pixels=params["batch_images"] * params["pixels_per_image"], seed=params["seed"],
                         top_f=tuple(params["top_f"]))
    top_f = [f for f in params["top_f"] if f <= n_units]
    progress.phase(f"Training probes for {len(chosen)} concepts", total=len(chosen))
    fitted = {}
    for done, number in enumerate(chosen, start=1):
        with_concept = [(features, layers) for features, layers, present in samples if number in present]
        features = torch.cat([features for features, _ in with_concept])
        target = torch.cat([(layers == number).any(0) for _, layers in with_concept])
        if len(target) > params["max_train_pixels"]:
            keep = sample_pixels(len(target), params["max_train_pixels"], seed=params["seed"], image=number).to(dev)
            features, target = features[keep], target[keep]
        fitted[number] = fit_concept_probes(features, target, config=config)
        progress(done, len(chosen))
    del samples

    # Pass 2: the probes' set IoU on val images.
    probes, owner = [], []
    for position, number in enumerate(chosen):
        for probe in [fitted[number].full] + [fitted[number].top[f] for f in top_f]:
            probes.append(probe)
            owner.append(position)
    probe_inter = torch.zeros(len(chosen), len(probes), dtype=torch.int64, device=dev)
    probe_union = torch.zeros_like(probe_inter)
    val_rows = [row for row, split in enumerate(splits) if split == 1]
    progress.phase(f"Scoring the probes on {len(val_rows)} validation images", total=len(val_rows))
    weights, bias = stack_probes(probes, n_units, device=dev)
    chosen_ids = torch.tensor(chosen, dtype=torch.int64, device=dev)
    done = 0
    with torch.no_grad():
        for picked, features, pixel in _image_batches(maps, reader, rows, val_rows, **common):
            logits = torch.einsum("mk,bkp->bmp", weights, features.to(torch.float32)) + bias.view(1, -1, 1)
            i, u = _batch_counts(logits >= 0, _truth(pixel, chosen_ids))
            probe_inter += i.sum(0)
            probe_union += u.sum(0)
            done += len(picked)
            progress(done, len(val_rows))
    probe_iou = set_iou(probe_inter, probe_union).cpu()

    concepts = {concept.number: concept for concept in Concept.objects.filter(dataset=dataset, number__in=chosen)}
    results = []
    column = 0
    # As in dissection, a unit whose threshold is 0 under "≥" is on at every pixel (saturated): its IoU is
    # just the concept's coverage, so it is not a candidate for the best single filter.
    candidates = single_train.clone()
    if not params["strict_threshold"]:
        candidates[:, (thresholds <= 0).cpu()] = -1.0
    for position, number in enumerate(chosen):
        best = int(torch.argmax(candidates[number]))  # first maximum: lowest unit index on ties
        ious = probe_iou[position, column:column + 1 + len(top_f)].tolist()
        column += 1 + len(top_f)
        fit = fitted[number]
        results.append(dict(concept=concepts[number], train_images=int(images[0, number]),
                            val_images=int(images[1, number]), alpha=fit.alpha, best_unit=best,
                            best_unit_train_iou=float(single_train[number, best]),
                            single_val_iou=float(single_val[number, best]), combination_val_iou=ious[0],
                            top_f_val_iou={str(f): iou for f, iou in zip(top_f, ious[1:])},
                            embedding=[float(value) for value in fit.full.weight.tolist()], bias=fit.full.bias))
    wins = sum(result["combination_val_iou"] >= result["single_val_iou"] for result in results)
    with transaction.atomic():
        study = Net2VecStudy.objects.create(
            run=run, layer=layer, dataset=dataset, extraction=extraction, upsample=params["upsample"],
            quantile=params["quantile"], top_f=top_f, n_concepts=len(results), n_combination_wins=wins,
            params={key: params[key] for key in ("concepts", "epochs", "lr", "momentum", "batch_images",
                                                 "pixels_per_image", "max_train_pixels", "min_images", "seed",
                                                 "strict_threshold")})
        Net2VecConcept.objects.bulk_create([Net2VecConcept(study=study, **result) for result in results])
    return {"net2vec_study": study.pk, "layer": layer.name, "dataset": dataset.name,
            "extraction_run": extraction.run_id, "concepts": len(results),
            "combination_at_least_single": f"{100.0 * wins / len(results):.0f}%"}


def net2vec_nearest(study: Net2VecStudy, concept_result: Net2VecConcept, count: int = 5
                    ) -> list[tuple[Net2VecConcept, float]]:
    """The ``count`` concepts of ``study`` whose embeddings are nearest ``concept_result``'s by cosine (§5.3)."""
    import torch

    from analysis.engine.net2vec import nearest_concepts

    others = list(study.concept_results.select_related("concept").order_by("concept__number"))
    position = next(index for index, other in enumerate(others) if other.pk == concept_result.pk)
    embeddings = torch.tensor([other.embedding for other in others], dtype=torch.float64)
    return [(others[row], cosine) for row, cosine in nearest_concepts(embeddings, position, count)]


NET2VEC = register_job_kind(JobKind(
    name="net2vec", label="Net2Vec probes", queue=GPU_QUEUE, execute=net2vec_run_execute,
    soft_time_limit=12 * 3600, time_limit=12 * 3600 + 300,
    description="Fong & Vedaldi: best single filter vs learned filter combinations (and top-F subsets) as "
                "segmenters of a layer's most frequent concepts; concept embeddings."))
