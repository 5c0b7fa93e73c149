"""Network Dissection runs (ND'18 §2.2), its null baselines, and their export.

Three job kinds, all on the ``gpu`` queue:

``dissect``
    Scores every unit of one layer against every concept of a dataset. It reuses the layer's extraction
    (the float16 activation cache and the exact per-unit thresholds ``T_k``, ``numpy.quantile`` linear at
    ``quantile``), or runs that extraction first, inline, when there is none. Cached maps are upsampled to
    mask resolution (``anchored`` at receptive-field centres, ND'18's rule and our default; ``plain`` =
    ``F.interpolate(mode="bilinear", align_corners=False)``), thresholded, and tallied against the masks
    with :class:`analysis.engine.dissection.DissectionTally` (its module docstring states the IoU rule:
    both sums of IoU run over the images that contain any label of the concept's category). A unit's
    label is its top concept; it is a detector when that IoU exceeds ``iou_threshold`` (0.04).

``dissect_shard``
    One image range of a ``dissect`` run. With ``shards=K`` the images are cut into K contiguous ranges;
    each range is its own run (its own Celery task when the parent runs on a worker, else executed
    inline, one after the other) and saves its partial int64 counts as a file. The last shard to finish
    claims the merge with a conditional UPDATE on :class:`LayerDissection` (no Celery result backend, so
    no chord) and sums the counts: integer sums, so K shards give exactly the counts of one. The parent
    run executes any shard no other worker has claimed yet (so one worker never waits on itself) and
    finishes when the merge is saved.

``dissect_rotation``
    ND'18 §3.2: the layer's units rotated by ``Q^α`` (``Q`` Haar-uniform on SO(n) from ``seed``, the
    minimal geodesic from I for α in a grid), each rotated representation dissected with *its own*
    exact thresholds (a first pass over the cache), all of them in one second pass over the masks.
    α = 0 is the identity exactly, so it reproduces the unrotated dissection's counts.

Threshold rule and saturated units. ND'18 defines ``M_k = S_k ≥ T_k``; we keep ``≥`` by default
(``strict_threshold=True`` gives the ``>`` of the published NetDissect code). With ``≥``, a ReLU unit
that is zero on more than 99.5% of positions has ``T_k = 0`` and is "active" on every pixel; it then
scores IoU = coverage against large concepts (a colour, the sky) without selecting anything. Our
choice (``count_saturated=False``): a unit whose mask covers every pixel of every image is *saturated*;
its counts and IoU are reported unchanged (the tally and ``export_run`` stay the paper's), but it is
never counted as a detector. ``count_saturated=True`` restores the literal rule.

Null baselines. ``baseline="shuffled"`` pairs the activations of each image with the masks of another
image (:func:`analysis.engine.dissection.shuffled_pairing`, one seeded random cycle, no image paired with
itself) while keeping the real thresholds: detectors found then are chance alignments, so expect ~0.

Files (DESIGN §5), artifacts ``dissections/<id>/`` (:mod:`analysis.storage`: the data dir, or the object store
with each worker's scratch copy): ``plan.npz`` (thresholds, label categories, pairing), ``shard-<k>.npz`` while
shards run, ``tally.npz`` (every count, IoU, labels) once merged; each published before the database counts it,
so a shard or merge on another machine fetches what it needs. Rotation tests write ``rotations/<id>/rotation.npz``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from analysis import params as p
from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import (
    Concept,
    DissectionBaseline,
    LayerDissection,
    RotationTest,
    Run,
    UnitDissection,
    UnitStatus,
    UpsampleMethod,
)
from analysis.storage import artifact_store, fetch, local_path, publish, stored_path
from unitscope.spreadsheets import csv_writer

from .extraction import open_activation_cache
from .inputs import layer_upsampler, run_inputs
from .runs import (
    MAX_SHARDS,
    RunInputError,
    RunProgress,
    refuse_failed_shards,
    run_shards,
    run_start,
    shard_param_fields,
    shard_range_rules,
)

logger = logging.getLogger(__name__)

MAX_ROTATIONS = 64
TALLY_FILE = "tally.npz"
PLAN_FILE = "plan.npz"
ROTATION_FILE = "rotation.npz"
_COUNT_NAMES = ("intersection", "activation_cat", "truth", "activation", "category_images", "label_images")


# -- parameters ---------------------------------------------------------------------------------------


def _layer_run_params(**fields: p.Param) -> dict[str, p.Param]:
    """The parameters every run over one layer's cached maps takes, then ``fields``."""
    return {
        "network": p.name(),
        "dataset": p.name(),
        "layer": p.name(help="dotted layer name"),
        "upsample": p.choice(
            UpsampleMethod.values,
            UpsampleMethod.ANCHORED.value,
            help="anchored at receptive-field centres (ND'18) or a plain bilinear resize",
        ),
        "quantile": p.fraction(0.995, help="per-unit threshold level T_k"),
        "iou_threshold": p.Param(float, 0.04, low=0, high=1, high_open=True, help="detector IoU threshold"),
        "strict_threshold": p.Param(
            bool, False, help="a pixel is active when S_k > T_k (the published code) instead of S_k >= T_k (ND'18)"
        ),
        "count_saturated": p.Param(
            bool, False, help="let units active on every pixel (T_k at the ReLU floor) count as detectors"
        ),
        "batch_size": p.integers(1, 4096, 64),
        **fields,
    }


DISSECTION_PARAMS = p.ParamSchema(
    _layer_run_params(
        shards=p.integers(
            1, MAX_SHARDS, 1, help="split the images into this many ranges, each its own task; merged exactly"
        ),
        baseline=p.choice(
            DissectionBaseline.values,
            DissectionBaseline.NONE.value,
            help="shuffled: pair each image's activations with another image's masks (null baseline)",
        ),
        shuffle_seed=p.seed(),
        top_k=p.integers(1, 50, 5, help="concepts kept per unit"),
    )
)
DISSECTION_DEFAULTS = DISSECTION_PARAMS.defaults


def rotation_seeds(params: dict[str, Any], alpha: float) -> list[int]:
    """The seeds (one random rotation Q each) measured at ``alpha``: the run's ``seeds`` for every α of the
    curve (ND'18 Fig. 6) and, at α = 1, as many more as make ``full_rotation_repeats`` (Fig. 8 repeats the
    complete rotation 10 times; the extra seeds follow the largest of the run's, our choice)."""
    if alpha == 0:
        return list(params["seeds"])
    seeds = list(params["seeds"])
    if alpha == 1.0:
        extra = params["full_rotation_repeats"] - len(seeds)
        seeds += [max(seeds) + 1 + k for k in range(max(0, extra))]
    return seeds


def _rotation_rules(params: dict[str, Any]) -> None:
    params["alphas"] = sorted({round(alpha, 6) for alpha in params["alphas"]})
    rotated = sum(len(rotation_seeds(params, alpha)) for alpha in params["alphas"] if alpha > 0)
    if rotated > MAX_ROTATIONS:
        raise p.ParamsError(
            {
                "seeds": f"at most {MAX_ROTATIONS} rotated representations per run (seeds × nonzero alphas, "
                f"and the repeats at α = 1); these ask for {rotated}"
            }
        )


ROTATION_PARAMS = p.ParamSchema(
    _layer_run_params(
        alphas=p.Param(
            float,
            [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0],
            low=0,
            high=1,
            many=True,
            min_items=1,
            help="fractions α of the rotation; 0 is the layer itself",
        ),
        seeds=p.Param(
            int,
            [0],
            low=0,
            high=p.SEED_MAX,
            many=True,
            min_items=1,
            unique_sorted=True,
            help="one random rotation Q per seed",
        ),
        full_rotation_repeats=p.integers(
            1,
            MAX_ROTATIONS,
            10,
            help="random rotations measured at α = 1 (ND'18 §3.2 repeats the complete rotation 10 times); "
            "seeds after the largest of the run's are added to reach it",
        ),
    ),
    rules=_rotation_rules,
)
ROTATION_DEFAULTS = ROTATION_PARAMS.defaults


def dissection_params(*, network: str, dataset: str, layer: str, **overrides: Any) -> dict[str, Any]:
    """The full, validated parameters of a ``dissect`` run (defaults filled in)."""
    return DISSECTION_PARAMS.validate({"network": network, "dataset": dataset, "layer": layer, **overrides})


def dissection_run_start(
    *, network: str, dataset: str, layer: str, created_by=None, inline: bool = False, **overrides: Any
) -> Run:
    """Start (or reuse, when identical) a dissection of ``layer``; returns its run."""
    run, _ = run_start(
        kind=DISSECTION.name,
        params=dissection_params(network=network, dataset=dataset, layer=layer, **overrides),
        created_by=created_by,
        inline=inline,
    )
    return run


def rotation_params(*, network: str, dataset: str, layer: str, **overrides: Any) -> dict[str, Any]:
    """The full, validated parameters of a ``dissect_rotation`` run."""
    return ROTATION_PARAMS.validate({"network": network, "dataset": dataset, "layer": layer, **overrides})


def rotation_run_start(
    *, network: str, dataset: str, layer: str, created_by=None, inline: bool = False, **overrides: Any
) -> Run:
    """Start (or reuse) a random-rotation test of ``layer``; returns its run."""
    run, _ = run_start(
        kind=ROTATION.name,
        params=rotation_params(network=network, dataset=dataset, layer=layer, **overrides),
        created_by=created_by,
        inline=inline,
    )
    return run


# -- files ----------------------------------------------------------------------------------------------


def _fresh_directory(key: str) -> Path:
    """The empty scratch folder of artifact ``key`` (whatever an earlier attempt left is removed, here and in the
    store)."""
    artifact_store().remove(key)
    path = artifact_store().path(key)
    path.mkdir(parents=True)
    return path


def _dissection_file(dissection: LayerDissection, name: str) -> str:
    """What :func:`analysis.storage.fetch` takes for one file of ``dissection`` (a key, or an absolute path)."""
    return f"{dissection.directory}/{name}"


def _save_npz(path: Path, **arrays: Any) -> None:
    """Write ``path`` atomically (a reader never sees half a file)."""
    partial_path = path.with_name(path.name + ".partial")
    with open(partial_path, "wb") as handle:
        np.savez(handle, **arrays)
    partial_path.replace(path)


def _tally_arrays(tally) -> dict[str, np.ndarray]:
    state = tally.state_dict()
    arrays = {name: state[name].cpu().numpy() for name in _COUNT_NAMES}
    arrays.update(
        thresholds=state["thresholds"].cpu().numpy(),
        label_category=state["label_category"].cpu().numpy(),
        n_categories=np.int64(state["n_categories"]),
        strict_threshold=np.bool_(state["strict_threshold"]),
        images=np.int64(state["images"]),
        pixels=np.int64(state["pixels"]),
    )
    return arrays


def _tally_from_arrays(data):
    import torch

    from analysis.engine.dissection import DissectionTally

    state = {name: torch.from_numpy(np.asarray(data[name])) for name in _COUNT_NAMES}
    state.update(
        thresholds=torch.from_numpy(np.asarray(data["thresholds"])),
        label_category=torch.from_numpy(np.asarray(data["label_category"])),
        n_categories=int(data["n_categories"]),
        strict_threshold=bool(data["strict_threshold"]),
        images=int(data["images"]),
        pixels=int(data["pixels"]),
    )
    return DissectionTally.from_state_dict(state)


def _scored(tally, *, iou_threshold: float, count_saturated: bool):
    """``(DissectionResult with our detector rule, saturated bool Tensor[U])`` (see the module docstring)."""
    result = tally.result(iou_threshold=iou_threshold)
    saturated = (tally.activation == tally.pixels) & (tally.pixels > 0)
    if not count_saturated:
        result = dataclasses.replace(result, detector=result.detector & ~saturated)
    return result, saturated


def _category_summary(result, categories: list[str], concept_names: dict[int, str]) -> dict[str, dict[str, Any]]:
    summary = result.summary()
    labels = result.label[result.detector].unique().tolist()
    by_category: dict[str, list[str]] = {name: [] for name in categories}
    for number in labels:
        by_category[categories[int(result.label_category[number])]].append(concept_names.get(number, str(number)))
    return {
        name: {
            "detectors": summary.detectors_per_category[position],
            "unique": summary.unique_per_category[position],
            "concepts": sorted(by_category[name]),
        }
        for position, name in enumerate(categories)
    }


# -- dissect: the parent run --------------------------------------------------------------------------


def dissection_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.dissection import shuffled_pairing

    params = dissection_params(**run.params)
    inputs = run_inputs(params, progress=progress, thresholds=True, labels=True)  # fails early if anchoring can't
    layer, dataset, extraction = inputs.layer, inputs.dataset, inputs.extraction
    thresholds, label_category, categories = inputs.thresholds, inputs.label_category, inputs.categories
    n_images, shards = extraction.n_images, params["shards"]
    if shards > n_images:
        raise RunInputError(f"{shards} shards for {n_images} images: use at most one shard per image.")
    pairing = (
        shuffled_pairing(n_images, seed=params["shuffle_seed"])
        if params["baseline"] == DissectionBaseline.SHUFFLED
        else torch.zeros(0, dtype=torch.int64)
    )

    dissection = LayerDissection.objects.create(
        run=run,
        layer=layer,
        dataset=dataset,
        extraction=extraction,
        baseline=params["baseline"],
        shuffle_seed=params["shuffle_seed"],
        upsample=params["upsample"],
        quantile=params["quantile"],
        iou_threshold=params["iou_threshold"],
        strict_threshold=params["strict_threshold"],
        count_saturated=params["count_saturated"],
        categories=categories,
        shards=shards,
        n_images=n_images,
        n_units=layer.units,
    )
    key = f"dissections/{dissection.pk}"
    directory = _fresh_directory(key)
    _save_npz(
        directory / PLAN_FILE,
        thresholds=thresholds.numpy(),
        label_category=label_category.numpy(),
        n_categories=np.int64(len(categories)),
        pairing=pairing.numpy(),
    )
    publish(directory / PLAN_FILE)  # before any shard can be queued: a worker elsewhere fetches it
    dissection.directory = stored_path(directory)
    LayerDissection.objects.filter(pk=dissection.pk).update(directory=dissection.directory)

    bounds = [index * n_images // shards for index in range(shards + 1)]
    progress.phase(
        f"Tallying {n_images} images of {layer.name} against {dataset.name}"
        + (f" in {shards} shards" if shards > 1 else ""),
        total=n_images,
    )
    shard_runs = run_shards(
        run=run,
        kind=DISSECTION_SHARD.name,
        shard_params=[
            {"dissection": dissection.pk, "shard": index, "start": bounds[index], "stop": bounds[index + 1]}
            for index in range(shards)
        ],
        progress=progress,
    )
    refuse_failed_shards(shard_runs)
    _dissection_merge_claim(dissection.pk)  # a no-op when the last shard merged, as it normally does
    dissection.refresh_from_db()
    if not dissection.complete:
        raise RunInputError(f"The shards of dissection {dissection.pk} finished but their merge was not saved.")
    return {
        "dissection": dissection.pk,
        "layer": layer.name,
        "dataset": dataset.name,
        "baseline": dissection.baseline,
        "extraction_run": extraction.run_id,
        "images": n_images,
        "shards": shards,
        "shard_runs": [shard.pk for shard in shard_runs],
        "units": dissection.n_units,
        "detectors": dissection.n_detectors,
        "unique_detectors": dissection.n_unique_detectors,
        "saturated_units": dissection.n_saturated,
        "unique_per_category": " · ".join(
            f"{name} {value['unique']}" for name, value in dissection.per_category.items()
        ),
    }


# -- dissect_shard ------------------------------------------------------------------------------------


def dissection_shard_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.broden import BrodenReader
    from analysis.engine.dissection import DissectionTally
    from analysis.engine.dissection_data import TallyView, tally_cached_maps

    index, start, stop = int(run.params["shard"]), int(run.params["start"]), int(run.params["stop"])
    dissection = (
        LayerDissection.objects.select_related("layer__network", "dataset", "extraction", "run")
        .filter(pk=run.params["dissection"])
        .first()
    )
    if dissection is None or dissection.extraction is None:
        raise RunInputError(f"Dissection {run.params['dissection']} or the extraction it reads no longer exists.")
    with np.load(fetch(_dissection_file(dissection, PLAN_FILE))) as plan:
        thresholds = torch.from_numpy(plan["thresholds"])
        label_category = torch.from_numpy(plan["label_category"])
        pairing = torch.from_numpy(plan["pairing"]) if plan["pairing"].size else None
    maps = open_activation_cache(dissection.extraction)
    reader = BrodenReader(dissection.dataset.root)
    rows = reader.indexed_rows
    dev = torch.device(device)
    tally = DissectionTally(
        thresholds.to(dev), label_category, len(dissection.categories), strict_threshold=dissection.strict_threshold
    )
    upsample = layer_upsampler(dissection.layer, dissection.upsample)
    progress.phase(f"Tallying images {start}–{stop - 1} of {dissection.layer.name}", total=stop - start)
    batch_size = int(dissection.run.params.get("batch_size", DISSECTION_DEFAULTS["batch_size"]))
    tally_cached_maps(
        maps,
        [TallyView(tally)],
        reader=reader,
        rows=rows,
        upsample=upsample,
        start=start,
        stop=stop,
        pairing=pairing,
        batch_size=batch_size,
        device=dev,
        progress=lambda done: progress(done, stop - start),
    )
    shard_path = local_path(_dissection_file(dissection, f"shard-{index:04d}.npz"))
    shard_path.parent.mkdir(parents=True, exist_ok=True)
    _save_npz(shard_path, **_tally_arrays(tally))
    publish(shard_path)  # in the store (one PUT) before it is counted: the merge may run on another machine
    LayerDissection.objects.filter(pk=dissection.pk).update(shards_done=F("shards_done") + 1)
    merged = _dissection_merge_claim(dissection.pk)
    return {"dissection": dissection.pk, "shard": index, "images": stop - start, "merged_here": merged}


def _dissection_merge_claim(dissection_id: int) -> bool:
    """Merge the shards if every one has saved its counts and nobody has claimed the merge; True if merged here.

    The claim is one conditional UPDATE, so of several shards finishing together exactly one merges.
    """
    claimed = LayerDissection.objects.filter(
        pk=dissection_id, merge_claimed=False, shards_done__gte=F("shards")
    ).update(merge_claimed=True)
    if claimed != 1:
        return False
    try:
        _dissection_merge(LayerDissection.objects.select_related("layer", "dataset", "run").get(pk=dissection_id))
    except BaseException:  # whatever stops the merge (even a time limit): release the claim so a retry can merge
        LayerDissection.objects.filter(pk=dissection_id).update(merge_claimed=False)
        raise
    return True


def _dissection_merge(dissection: LayerDissection) -> None:
    shard_keys = [_dissection_file(dissection, f"shard-{index:04d}.npz") for index in range(dissection.shards)]
    tally = None
    for key in shard_keys:
        with np.load(fetch(key)) as data:
            part = _tally_from_arrays(data)
        if tally is None:
            tally = part
        else:
            tally.merge(part)
    if tally.images != dissection.n_images:
        raise RuntimeError(
            f"the shards of dissection {dissection.pk} hold {tally.images} of {dissection.n_images} images"
        )
    result, saturated = _scored(
        tally, iou_threshold=dissection.iou_threshold, count_saturated=dissection.count_saturated
    )
    top_k = int(dissection.run.params.get("top_k", DISSECTION_DEFAULTS["top_k"]))
    top_iou, top_label = result.top_concepts(top_k)
    tally_path = local_path(_dissection_file(dissection, TALLY_FILE))
    _save_npz(
        tally_path,
        **_tally_arrays(tally),
        iou=result.iou.cpu().numpy(),
        label=result.label.cpu().numpy(),
        label_iou=result.label_iou.cpu().numpy(),
        detector=result.detector.cpu().numpy(),
        saturated=saturated.cpu().numpy(),
        iou_threshold=np.float64(dissection.iou_threshold),
    )
    publish(tally_path)  # before the row says complete

    concepts = {concept.number: concept for concept in Concept.objects.filter(dataset=dissection.dataset)}
    names = {number: concept.name for number, concept in concepts.items()}
    summary = result.summary()
    labels, label_ious = result.label.tolist(), result.label_iou.tolist()
    detectors, saturated_list = result.detector.tolist(), saturated.tolist()
    activation, thresholds = tally.activation.tolist(), tally.thresholds.tolist()
    top_iou, top_label = top_iou.tolist(), top_label.tolist()
    rows = []
    for unit in dissection.layer.unit_set.all():
        k = unit.index
        top = [
            {
                "number": int(number),
                "name": names.get(int(number), str(number)),
                "category": concepts[int(number)].category if int(number) in concepts else "",
                "iou": float(iou),
            }
            for iou, number in zip(top_iou[k], top_label[k])
            if iou > 0
        ]
        rows.append(
            UnitDissection(
                dissection=dissection,
                unit=unit,
                concept=concepts.get(labels[k]),
                iou=float(label_ious[k]),
                is_detector=bool(detectors[k]),
                saturated=bool(saturated_list[k]),
                threshold=float(thresholds[k]),
                active_pixels=int(activation[k]),
                top_concepts=top,
            )
        )
    with transaction.atomic():
        UnitDissection.objects.bulk_create(rows, batch_size=2000)
        LayerDissection.objects.filter(pk=dissection.pk).update(
            complete=True,
            finished_at=timezone.now(),
            mask_pixels=tally.pixels,
            n_units=summary.n_units,
            n_detectors=summary.n_detectors,
            n_unique_detectors=summary.n_unique_detectors,
            n_saturated=int(saturated.sum()),
            per_category=_category_summary(result, dissection.categories, names),
        )
    for key in shard_keys:  # the merged tally holds everything they did
        if key.startswith("/"):  # the local default (or a row written before artifact keys)
            Path(key).unlink(missing_ok=True)
        else:
            artifact_store().remove(key)


# -- dissect_rotation ---------------------------------------------------------------------------------


def rotation_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.broden import BrodenReader
    from analysis.engine.dissection import DissectionTally
    from analysis.engine.dissection_data import TallyView, tally_cached_maps, thresholds_of_cached_maps
    from analysis.engine.rotation import random_rotation, rotate_activations, rotation_power

    params = rotation_params(**run.params)
    inputs = run_inputs(params, progress=progress, labels=True)
    layer, dataset, extraction, upsample = inputs.layer, inputs.dataset, inputs.extraction, inputs.upsample
    label_category, categories = inputs.label_category, inputs.categories
    maps = open_activation_cache(extraction)
    dev = torch.device(device)

    # One representation per distinct rotation: alpha = 0 is the identity for every seed, computed once.
    views: list[tuple[float, int | None]] = []  # (alpha, seed or None for the identity)
    transforms = []
    if 0.0 in params["alphas"]:
        views.append((0.0, None))
        identity = rotation_power(random_rotation(layer.units, seed=params["seeds"][0]), 0.0)
        transforms.append(partial(rotate_activations, rotation=identity.to(dev)))
    measured = {alpha: rotation_seeds(params, alpha) for alpha in params["alphas"]}
    for seed in sorted({seed for seeds in measured.values() for seed in seeds}):
        q = random_rotation(layer.units, seed=seed)
        for alpha in params["alphas"]:
            if alpha > 0 and seed in measured[alpha]:
                views.append((alpha, seed))
                transforms.append(partial(rotate_activations, rotation=rotation_power(q, alpha).to(dev)))

    progress.phase(f"Thresholds of {len(views)} rotated versions of {layer.name}", total=extraction.n_images)
    thresholds = thresholds_of_cached_maps(
        maps,
        transforms,
        quantile=params["quantile"],
        batch_size=max(params["batch_size"], 64),
        device=dev,
        progress=lambda done: progress(done, extraction.n_images),
    )
    tallies = [
        DissectionTally(t, label_category, len(categories), strict_threshold=params["strict_threshold"])
        for t in thresholds
    ]
    reader = BrodenReader(dataset.root)
    progress.phase(f"Tallying {len(views)} rotated versions of {layer.name}", total=extraction.n_images)
    tally_cached_maps(
        maps,
        [TallyView(tally, transform) for tally, transform in zip(tallies, transforms)],
        reader=reader,
        rows=reader.indexed_rows,
        upsample=upsample,
        batch_size=params["batch_size"],
        device=dev,
        progress=lambda done: progress(done, extraction.n_images),
    )

    names = dict(Concept.objects.filter(dataset=dataset).values_list("number", "name"))
    scored = [
        _scored(tally, iou_threshold=params["iou_threshold"], count_saturated=params["count_saturated"])
        for tally in tallies
    ]
    view_points = []
    for result, saturated in scored:
        summary = result.summary()
        view_points.append(
            {
                "detectors": summary.n_detectors,
                "unique": summary.n_unique_detectors,
                "saturated": int(saturated.sum()),
                "per_category": {
                    name: {key: value for key, value in entry.items() if key != "concepts"}
                    for name, entry in _category_summary(result, categories, names).items()
                },
            }
        )
    points = []
    for alpha in params["alphas"]:
        for seed in measured[alpha]:
            position = views.index((alpha, None if alpha == 0 else seed))
            points.append({"seed": seed, "alpha": alpha, **view_points[position]})

    test = RotationTest.objects.create(
        run=run,
        layer=layer,
        dataset=dataset,
        extraction=extraction,
        upsample=params["upsample"],
        quantile=params["quantile"],
        iou_threshold=params["iou_threshold"],
        strict_threshold=params["strict_threshold"],
        count_saturated=params["count_saturated"],
        alphas=params["alphas"],
        seeds=params["seeds"],
        categories=categories,
        points=points,
        directory="",
    )
    directory = _fresh_directory(f"rotations/{test.pk}")
    arrays = [_tally_arrays(tally) for tally in tallies]
    _save_npz(
        directory / ROTATION_FILE,
        alpha=np.array([alpha for alpha, _ in views], dtype=np.float64),
        seed=np.array([-1 if seed is None else seed for _, seed in views], dtype=np.int64),
        label_category=label_category.numpy(),
        images=np.int64(extraction.n_images),
        **{name: np.stack([a[name] for a in arrays]) for name in (*_COUNT_NAMES, "thresholds")},
        label=np.stack([result.label.cpu().numpy() for result, _ in scored]),
        label_iou=np.stack([result.label_iou.cpu().numpy() for result, _ in scored]),
        detector=np.stack([result.detector.cpu().numpy() for result, _ in scored]),
    )
    publish(directory)
    RotationTest.objects.filter(pk=test.pk).update(directory=stored_path(directory))
    mean_unique = [
        float(np.mean([point["unique"] for point in points if point["alpha"] == alpha])) for alpha in params["alphas"]
    ]
    return {
        "rotation_test": test.pk,
        "layer": layer.name,
        "dataset": dataset.name,
        "extraction_run": extraction.run_id,
        "units": layer.units,
        "rotations": len(views),
        "unique_detectors_by_alpha": " · ".join(
            f"α {alpha:g}: {value:g}" for alpha, value in zip(params["alphas"], mean_unique)
        ),
    }


# -- reading results ----------------------------------------------------------------------------------


def dissection_tally_load(dissection: LayerDissection) -> dict[str, np.ndarray]:
    """Every array of a complete dissection's ``tally.npz`` (counts int64, ``iou`` float64 ``[U, C]``, ...)."""
    with np.load(dissection.tally_path) as data:
        return {name: data[name] for name in data.files}


# -- export -------------------------------------------------------------------------------------------


def dissection_export(run: Run, out_dir: Path) -> list[Path]:
    """``tally.csv``, ``thresholds.csv``, ``units.csv`` (each unit's label and status, see
    :func:`_write_unit_results`) and ``run.json`` (plus ``pairing.csv`` for the shuffled baseline).

    ``tally.csv``: ``unit,concept,category,iou,intersection,activation,truth``, one row per unit × concept with
    truth > 0, units 0-based, concepts by name with their primary category, counts in mask pixels:
    ``intersection`` = Σ|M_k ∩ L_c|, ``activation`` = Σ|M_k| over the images having c's category, ``truth`` =
    Σ|L_c|; so ``iou = intersection / (activation + truth − intersection)`` (printed exactly, Python ``repr``).
    """
    dissection = (
        LayerDissection.objects.complete()
        .select_related("layer__network", "dataset", "extraction")
        .filter(run=run)
        .first()
    )
    if dissection is None:
        raise RunInputError(f"Run {run.pk} holds no finished dissection.")
    data = dissection_tally_load(dissection)
    concepts = dict(Concept.objects.filter(dataset=dissection.dataset).values_list("number", "name"))
    label_category, truth = data["label_category"], data["truth"]
    inter, act_cat, iou = data["intersection"], data["activation_cat"], data["iou"]
    present = np.flatnonzero(truth > 0)
    written = []
    tally_path = out_dir / "tally.csv"
    with open(tally_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["unit", "concept", "category", "iou", "intersection", "activation", "truth"])
        for unit in range(inter.shape[0]):
            for number in present:
                category = int(label_category[number])
                writer.writerow(
                    [
                        unit,
                        concepts.get(int(number), str(number)),
                        dissection.categories[category],
                        repr(float(iou[unit, number])),
                        int(inter[unit, number]),
                        int(act_cat[unit, category]),
                        int(truth[number]),
                    ]
                )
    written.append(tally_path)
    thresholds_path = out_dir / "thresholds.csv"
    with open(thresholds_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["unit", "threshold"])
        writer.writerows((unit, repr(float(value))) for unit, value in enumerate(data["thresholds"]))
    written.append(thresholds_path)
    written.append(_write_unit_results(out_dir / "units.csv", dissection, data["thresholds"]))
    if dissection.baseline == DissectionBaseline.SHUFFLED:
        with np.load(fetch(_dissection_file(dissection, PLAN_FILE))) as plan:
            pairing = plan["pairing"]
        pairing_path = out_dir / "pairing.csv"
        with open(pairing_path, "w", newline="") as handle:
            writer = csv_writer(handle)
            writer.writerow(["image", "masks_of"])
            writer.writerows(enumerate(pairing.tolist()))
        written.append(pairing_path)
    layer, network = dissection.layer, dissection.layer.network
    written.append(
        _write_json(
            out_dir / "run.json",
            {
                "run": run.pk,
                "kind": run.kind,
                "params": run.params,
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                "network": network.name,
                "weights_sha256": network.weights_sha256,
                "layer": layer.name,
                "dataset": dissection.dataset.name,
                "dataset_dir": str(local_path(dissection.dataset.root_dir)),
                "activations_run": dissection.extraction.run_id if dissection.extraction else None,
                "quantile": dissection.quantile,
                "upsample": dissection.upsample,
                "iou_threshold": dissection.iou_threshold,
                "strict_threshold": dissection.strict_threshold,
                "count_saturated": dissection.count_saturated,
                "baseline": dissection.baseline,
                "shuffle_seed": dissection.shuffle_seed,
                "categories": dissection.categories,
                "images": dissection.n_images,
                "mask_pixels": dissection.mask_pixels,
                "units": dissection.n_units,
                "detectors": dissection.n_detectors,
                "unique_detectors": dissection.n_unique_detectors,
                "saturated_units": dissection.n_saturated,
                "rules": {
                    "threshold": "T_k = numpy.quantile(all raw activations of unit k, quantile), linear method; maps are "  # noqa: E501
                    "the float16-rounded activations of activations_run",
                    "mask": "S_k > T_k" if dissection.strict_threshold else "S_k >= T_k (ND'18)",
                    "upsample": "bilinear anchored at receptive-field centres"
                    if dissection.upsample == "anchored"
                    else "torch.nn.functional.interpolate(mode='bilinear', align_corners=False)",
                    "iou": "sums over the images containing any label of the concept's (primary) category",
                    "detector": f"label IoU > {dissection.iou_threshold}"
                    + ("" if dissection.count_saturated else "; units active on every pixel excluded"),
                },
            },
        )
    )
    return written


def _write_unit_results(path: Path, dissection: LayerDissection, thresholds: np.ndarray) -> Path:
    """``units.csv``: ``unit,label,category,iou,is_detector,saturated,status``; ``status`` is the unit's
    :class:`UnitStatus` in the activations the dissection used (from its threshold alone when they are gone):
    a dead or saturated unit's label is an artefact of a mask that covers every pixel or none."""
    statuses = {}
    if dissection.extraction is not None:
        statuses = dict(dissection.extraction.unit_summaries.with_status().values_list("unit__index", "status"))
    with open(path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["unit", "label", "category", "iou", "is_detector", "saturated", "status"])
        for result in dissection.unit_results.select_related("unit", "concept").order_by("unit__index"):
            index = result.unit.index
            status = statuses.get(index) or (
                UnitStatus.SATURATED.value if float(thresholds[index]) == 0 else UnitStatus.LIVE.value
            )
            writer.writerow(
                [
                    index,
                    result.concept.name if result.concept else "",
                    result.concept.category if result.concept else "",
                    repr(result.iou),
                    int(result.is_detector),
                    int(result.saturated),
                    status,
                ]
            )
    return path


def rotation_export(run: Run, out_dir: Path) -> list[Path]:
    """``rotation.csv`` (``seed,alpha,detectors,unique_detectors,saturated_units``) and ``run.json``."""
    test = RotationTest.objects.select_related("layer__network", "dataset", "extraction").filter(run=run).first()
    if test is None:
        raise RunInputError(f"Run {run.pk} holds no rotation test.")
    path = out_dir / "rotation.csv"
    with open(path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["seed", "alpha", "detectors", "unique_detectors", "saturated_units"])
        writer.writerows(
            (p["seed"], repr(float(p["alpha"])), p["detectors"], p["unique"], p["saturated"]) for p in test.points
        )
    meta = _write_json(
        out_dir / "run.json",
        {
            "run": run.pk,
            "kind": run.kind,
            "params": run.params,
            "network": test.layer.network.name,
            "layer": test.layer.name,
            "dataset": test.dataset.name,
            "dataset_dir": str(local_path(test.dataset.root_dir)),
            "activations_run": test.extraction.run_id if test.extraction else None,
            "quantile": test.quantile,
            "upsample": test.upsample,
            "iou_threshold": test.iou_threshold,
            "alphas": test.alphas,
            "seeds": test.seeds,
            "rotation": "Q Haar-uniform on SO(n) (QR of a standard normal matrix, torch.Generator seeded with seed); "
            "Q^alpha = expm(alpha log Q); thresholds recomputed on the rotated maps",
        },
    )
    return [path, meta]


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


# -- job kinds ----------------------------------------------------------------------------------------

DISSECTION = register_job_kind(
    JobKind(
        name="dissect",
        label="Network Dissection",
        queue=GPU_QUEUE,
        execute=dissection_run_execute,
        params=DISSECTION_PARAMS,
        exporter=dissection_export,
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        description="Scores every unit of a layer as a segmenter of every concept (ND'18 IoU), optionally against "
        "shuffled masks; shards merge exactly.",
    )
)


DISSECTION_SHARD = register_job_kind(
    JobKind(
        name="dissect_shard",
        label="Network Dissection shard",
        queue=GPU_QUEUE,
        execute=dissection_shard_run_execute,
        params=p.ParamSchema(shard_param_fields("dissection"), rules=shard_range_rules),
        exporter=None,  # its tally is merged into the dissection, which exports it
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        reuse_finished=False,
        api_startable=False,
        description="Tallies one image range of a dissection; the last shard to finish merges.",
    )
)
ROTATION = register_job_kind(
    JobKind(
        name="dissect_rotation",
        label="Random-rotation test",
        queue=GPU_QUEUE,
        execute=rotation_run_execute,
        params=ROTATION_PARAMS,
        exporter=rotation_export,
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        description="ND'18 §3.2: unique detectors of a layer under random rotations Q^α of its units.",
    )
)
