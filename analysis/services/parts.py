"""Automatic scoring II (GG'18 §3, §5–6): filters as part detectors with box regression and GA filter
combinations (``score_parts``), and the discriminativeness of filters and parts (``ablate``). Both on the ``gpu``
queue.

Inputs (``inputs``, both kinds). ``object_crops`` (default, GG'18 §4.1): for a part class such as car-wheel only
car object boxes are evaluated; each box is enlarged with R-CNN's context — ``context = 16/227`` of the warped
input on each side, i.e. the box grows by ``context / (1 − 2·context)`` of its size per side — then cut from the
mean-subtracted image and warped to the network's input size (``torchvision.ops.roi_align``, bilinear,
``aligned=True``); pixels outside the image are 0, i.e. the mean colour, as R-CNN pads. These crops need forward
passes (the activation cache holds whole images). ``whole_images``: every image holding an object of the class is
one view, read from the layer's float16 activation cache (no forward pass; an extraction runs first if none
exists); ground truth = every box of the part on objects of that class in the image.

``score_parts``. Per object class: the views' maps, every local maximum as a detection
(:mod:`analysis.engine.part_detection` documents peaks, regression, NMS, matching and AP); per part class of that
object (the dataset's part boxes whose object is of the class): regressors per filter trained on the views
themselves (the paper evaluates on the train set it trains on; ``split``, default ``train``), regressed boxes,
NMS per (filter, view), VOC AP at IoU ≥ 0.4 per filter, the GA combination (:mod:`analysis.engine.genetic`,
paper settings), TopFilters with as many filters as the GA chose, and all filters. Parts are kept as in GG'18
§4.1: mean of box widths and heights > ``min_part_size`` (15 px) and at least ``min_instances`` (11, the paper
drops parts with ≤ 10 samples) instances. A part *emerges* when its GA AP > ``ap_criterion`` (0.3) and is
*covered* when its GA recall > ``recall_criterion`` (0.5) (GG'18 §4.2). Detections after regression and NMS
(image pixels) and the ground truth are saved per part as ``part-<k>.npz`` under
``UNITSCOPE_DATA_DIR/part_detection/run-<run id>/``.

``ablate``. Per object class that the network names in its ``class_names``: δ_j of every filter of the layer
(eq. 3) over the class's views (``max_images`` > 0 takes a seeded sample), the 2σ rule, the two set ablations
(every discriminative filter zeroed / every other filter zeroed), and the part blackout δ of each part class
(its pixels, from the dataset's part masks, set to 0 after mean subtraction — before cropping — over the views
whose image contains the part). :mod:`analysis.engine.ablation` documents the score and the split of the network.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from analysis import params as p
from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import (
    AblationStudy,
    ClassDiscriminativeness,
    Layer,
    Network,
    PartDetectionResult,
    PartDetectionStudy,
    PartDiscriminativeness,
    PartInputs,
    Run,
)
from analysis.storage import artifact_store, fetch, publish, stored_path
from unitscope.spreadsheets import csv_field, csv_writer

from .extraction import EXTRACTION_DEFAULTS, open_activation_cache
from .inputs import (
    RCNN_CONTEXT,
    DatasetBoxes,
    View,
    ViewImages,
    dataset_boxes,
    ensure_extraction,
    layer_geometry,
    load_model,
    object_views,
    run_inputs,
)
from .runs import RunInputError, RunProgress, run_start

SPLITS = ("train", "val", "all")
# The demo (analysis.services.demo): the paper's settings on a seeded sample of views per class, so that the two
# layers' part studies and ablations add a few minutes to the default build on two CPU cores.
DEMO_PART_LAYERS = ("conv4", "conv5")
DEMO_MAX_VIEWS = 150
# Prefix outputs an ablation keeps between its two passes over a class's views; beyond this it recomputes them.
FRONTIER_BUDGET_BYTES = 256 * 2**20
DEMO_ABLATION: dict[str, dict[str, Any]] = {
    "conv4": {"max_images": 25, "blackout": False},
    "conv5": {"max_images": 60, "blackout": True},
}
CURVE_POINTS = 150


# -- parameters ---------------------------------------------------------------------------------------


def _share(default: float, **kwargs: Any) -> p.Param:
    return p.Param(float, default, low=0, high=1, **kwargs)


def _view_params(**fields: p.Param) -> dict[str, p.Param]:
    """The parameters both kinds take: the layer, and which views of which images feed the network."""
    return {
        "network": p.name(),
        "dataset": p.name(),
        "layer": p.name(help="dotted layer name"),
        "inputs": p.choice(
            PartInputs.values, PartInputs.OBJECT_CROPS.value, help="object crops (GG'18) or whole images"
        ),
        "split": p.choice(SPLITS, "train"),
        "context": p.Param(
            float,
            RCNN_CONTEXT,
            low=0,
            high=0.4,
            high_open=True,
            help="the share of the input on each side of the box (R-CNN: 16/227)",
        ),
        "seed": p.seed(),
        **fields,
    }


PART_PARAMS = p.ParamSchema(
    _view_params(
        iou_threshold=p.Param(float, 0.4, low=0, high=1, low_open=True, help="a detection's IoU with its part box"),
        nms_overlap=p.choice(
            ("suppressed_area", "iou"),
            "suppressed_area",
            help="NMS overlap: intersection over the suppressed box's area (Felzenszwalb et al. 2010, "
            "cited by GG'18) or IoU (R-CNN)",
        ),
        nms_threshold=p.Param(
            float,
            0.5,
            low=0,
            high=1,
            low_open=True,
            help="suppress above this overlap (Felzenszwalb: 0.5; R-CNN's IoU rule: 0.3)",
        ),
        regression=p.Param(bool, True, help="box regression on the filter's activations"),
        intercept=p.Param(bool, True, help="the regression has an intercept"),
        min_part_size=p.Param(
            float, 15.0, low=0, help="drop parts whose mean box side is at most this many pixels (GG'18: 15)"
        ),
        min_instances=p.integers(1, 10**7, 11, help="fewest instances a part class needs"),
        population=p.integers(2, 10000, 200, help="GA population"),
        generations=p.integers(0, 10000, 100, help="GA generations"),
        crossover=_share(0.7),
        mutation=_share(0.3),
        init_probability=_share(0.02),
        ap_criterion=_share(0.3, help="a part emerged when its GA AP exceeds this"),
        recall_criterion=_share(0.5),
        max_views=p.integers(0, 10**9, 0, help="a seeded sample of views per class (0 = all)"),
        batch_size=p.integers(1, 4096, 64),
    )
)
PART_DEFAULTS = PART_PARAMS.defaults
ABLATION_PARAMS = p.ParamSchema(
    _view_params(
        score=p.choice(("softmax", "logit"), "softmax"),
        sigma_factor=p.Param(float, 2.0, low=0, low_open=True, help="discriminative when δ exceeds this many σ"),
        max_images=p.integers(0, 10**9, 0, help="views per class (0 = all)"),
        blackout=p.Param(bool, True, help="also black out every part (GG'18 §6)"),
        batch_size=p.integers(1, 4096, 32),
    )
)
ABLATION_DEFAULTS = ABLATION_PARAMS.defaults


def part_detection_params(*, network: str, dataset: str, layer: str, **overrides: Any) -> dict[str, Any]:
    """The full, validated parameters of a ``score_parts`` run (defaults filled in)."""
    return PART_PARAMS.validate({"network": network, "dataset": dataset, "layer": layer, **overrides})


def ablation_params(*, network: str, dataset: str, layer: str, **overrides: Any) -> dict[str, Any]:
    """The full, validated parameters of an ``ablate`` run (defaults filled in)."""
    return ABLATION_PARAMS.validate({"network": network, "dataset": dataset, "layer": layer, **overrides})


def part_detection_run_start(
    *, network: str, dataset: str, layer: str, created_by=None, inline: bool = False, **overrides: Any
) -> Run:
    """Start (or reuse, when identical) a part-detection study of ``layer``; returns its run."""
    run, _ = run_start(
        kind=SCORE_PARTS.name,
        params=part_detection_params(network=network, dataset=dataset, layer=layer, **overrides),
        created_by=created_by,
        inline=inline,
    )
    return run


def ablation_run_start(
    *, network: str, dataset: str, layer: str, created_by=None, inline: bool = False, **overrides: Any
) -> Run:
    """Start (or reuse, when identical) the ablations of ``layer``; returns its run."""
    run, _ = run_start(
        kind=ABLATE.name,
        params=ablation_params(network=network, dataset=dataset, layer=layer, **overrides),
        created_by=created_by,
        inline=inline,
    )
    return run


def _sample(views: list[View], limit: int, seed: int, salt: int) -> list[View]:
    if limit <= 0 or len(views) <= limit:
        return views
    rng = np.random.default_rng([seed, salt])
    keep = np.sort(rng.choice(len(views), size=limit, replace=False))
    return [views[k] for k in keep]


def _part_classes(boxes: DatasetBoxes, *, min_part_size: float, min_instances: int) -> list[dict[str, Any]]:
    """Eligible part classes (object class, part) with their sizes, ordered by object then part name."""
    from analysis.engine.part_detection import part_size

    found = []
    for (class_id, part_id), entries in boxes.parts.items():
        mean_size, relative = part_size([box for _, _, box in entries], [box for _, _, box in boxes.objects[class_id]])
        obj, part = boxes.concepts[class_id], boxes.concepts[part_id]
        found.append(
            {
                "class_id": class_id,
                "part_id": part_id,
                "name": f"{obj.name}-{part.name}",
                "object_name": obj.name,
                "instances": len(entries),
                "mean_size": mean_size,
                "relative_size": relative,
                "eligible": len(entries) >= min_instances and mean_size > min_part_size,
            }
        )
    found.sort(key=lambda item: item["name"])
    return found


# -- score_parts ------------------------------------------------------------------------------------------


class _CachedViews:
    """Rows ``rows`` of an activation cache (float16 memory map ``[N, F, h, w]``) as a stack of views ``[V, F, h,
    w]`` read a slice at a time (what :func:`analysis.engine.part_detection.score_part` needs), never all at once."""

    def __init__(self, cache: np.ndarray, rows: list[int]):
        self.cache, self.rows = cache, np.asarray(rows, dtype=np.int64)
        self.shape = (len(rows), *cache.shape[1:])

    def __getitem__(self, views: slice) -> np.ndarray:
        return np.asarray(self.cache[self.rows[views]], dtype=np.float32)


def _class_maps(views, images: ViewImages, model, layer: Layer, params, extraction, scratch: Path):
    """The views' maps ``[V, F, h, w]``, never whole in memory: rows of the activation cache (whole images), or
    the forward passes on the crops written batch by batch to a float32 memory map in ``scratch``."""
    import torch

    from analysis.engine.networks import capture_forward

    if params["inputs"] == PartInputs.WHOLE_IMAGES:
        return _CachedViews(open_activation_cache(extraction), [view.image for view in views])
    maps = None
    with torch.no_grad():
        for start in range(0, len(views), params["batch_size"]):
            batch = images.inputs(views[start : start + params["batch_size"]], params["inputs"])
            out = capture_forward(model, batch, [layer.name])[layer.name].to(torch.float32).cpu().numpy()
            if maps is None:
                maps = np.lib.format.open_memmap(
                    scratch / "maps.npy", mode="w+", dtype=np.float32, shape=(len(views), *out.shape[1:])
                )
            maps[start : start + len(out)] = out
    return maps


def _score_part(
    maps, part: dict, views: list[View], boxes: DatasetBoxes, geometry, params, input_size, device, progress=None
) -> dict[str, Any]:
    """Detections, APs and filter combinations of one part class over its object class's views
    (:func:`analysis.engine.part_detection.score_part`), boxes saved in image pixels."""
    import torch

    from analysis.engine.genetic import GAConfig
    from analysis.engine.part_detection import (
        DetectionConfig,
        boxes_to_image,
        boxes_to_view,
        location_prior_score,
        score_part,
    )
    from analysis.engine.receptive_field import unit_centers

    index_of = defaultdict(list)
    for position, view in enumerate(views):
        index_of[view.image].append(position)
    gt_view, gt_image_boxes = [], []
    for image, obj, box in boxes.parts[(part["class_id"], part["part_id"])]:
        for position in index_of.get(image, []):
            if views[position].object_index in (-1, obj):
                gt_view.append(position)
                gt_image_boxes.append(box)
    gt_image_boxes = np.array(gt_image_boxes, dtype=np.float64).reshape(-1, 4)
    frames = np.array([view.frame for view in views], dtype=np.float64)
    gt_in_view = boxes_to_view(gt_image_boxes, frames[gt_view], input_size)
    config = DetectionConfig(
        iou_threshold=params["iou_threshold"],
        nms_overlap=params["nms_overlap"],
        nms_threshold=params["nms_threshold"],
        regression=params["regression"],
        intercept=params["intercept"],
    )
    ga = GAConfig(
        population=params["population"],
        generations=params["generations"],
        crossover=params["crossover"],
        mutation=params["mutation"],
        init_probability=params["init_probability"],
        seed=params["seed"],
    )
    gt_boxes = torch.tensor(gt_in_view, dtype=torch.float32, device=device)
    gt_views = torch.tensor(gt_view, dtype=torch.int64, device=device)
    scored = score_part(
        maps,
        geometry,
        gt_boxes,
        gt_views,
        rf_size=geometry.size,
        input_size=input_size,
        config=config,
        ga=ga,
        curve_points=CURVE_POINTS,
        progress=progress,
    )
    cy, cx = unit_centers(geometry, maps.shape[2], maps.shape[3], device=device)
    prior = location_prior_score(
        len(views),
        cy,
        cx,
        gt_boxes,
        gt_views,
        rf_size=geometry.size,
        input_size=input_size,
        config=config,
    )
    arrays = {
        "det_filter": scored.det_filter.astype(np.int32),
        "det_view": scored.det_view.astype(np.int32),
        "det_box": boxes_to_image(scored.det_box, frames[scored.det_view], input_size).astype(np.float32),
        "det_score": scored.det_score.astype(np.float32),
        "det_gt": scored.det_gt.astype(np.int32),
        "gt_view": np.array(gt_view, dtype=np.int32),
        "gt_box": gt_image_boxes.astype(np.float32),
        "view_image": np.array([view.image for view in views], dtype=np.int32),
        "view_frame": frames.astype(np.float32),
    }
    arrays["location_prior"] = prior.prior.astype(np.float32)
    return {
        "arrays": arrays,
        "n_views": len(views),
        "n_instances": len(gt_view),
        "prior_ap": prior.ap,
        "prior_recall": prior.recall,
        **scored.summary(),
    }


def part_detection_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    params = part_detection_params(**run.params)
    inputs = run_inputs(params, progress=progress, extraction=False)
    network, dataset, layer = inputs.network, inputs.dataset, inputs.layer
    geometry = layer_geometry(layer, purpose="its activations cannot be placed on the image")
    if not dataset.has_boxes:
        raise RunInputError(f"{dataset.name} has no object and part boxes (boxes.csv), which part detection needs.")
    progress.phase(f"Reading the boxes of {dataset.name}")
    boxes = dataset_boxes(dataset, params["split"])
    parts = [
        part
        for part in _part_classes(boxes, min_part_size=params["min_part_size"], min_instances=params["min_instances"])
        if part["eligible"]
    ]
    if not parts:
        raise RunInputError(
            f"No part class of {dataset.name} ({params['split']} split) has at least "
            f"{params['min_instances']} instances with mean size > {params['min_part_size']:g} px."
        )
    dev = torch.device(device)
    input_size = (network.input_height, network.input_width)
    extraction = model = None
    if params["inputs"] == PartInputs.WHOLE_IMAGES:
        progress.phase(f"Finding the activations of {layer.name} on {dataset.name}")
        extraction = ensure_extraction(network, dataset, layer, EXTRACTION_DEFAULTS["quantile"], progress)
    else:
        model = load_model(network, dev)
    images = ViewImages(dataset, network, dev)
    key = f"part_detection/run-{run.pk}"
    artifact_store().remove(key)
    directory = artifact_store().path(key)
    directory.mkdir(parents=True)
    by_class: dict[int, list[dict]] = defaultdict(list)
    for part in parts:
        by_class[part["class_id"]].append(part)
    results = []
    done = 0
    scratch = settings.UNITSCOPE_DATA_DIR / "tmp"  # crop maps of one class at a time, on disk
    for class_id, class_parts in by_class.items():
        name = boxes.concepts[class_id].name
        views = _sample(
            object_views(boxes, class_id, params["inputs"], params["context"]),
            params["max_views"],
            params["seed"],
            class_id,
        )
        progress.phase(f"Activations of {len(views)} {name} views", total=len(views))
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as class_scratch:
            maps = _class_maps(views, images, model, layer, params, extraction, Path(class_scratch))
            for part in class_parts:
                progress.phase(
                    f"Part {done + 1} of {len(parts)}: {part['name']} (GA generations)", total=params["generations"]
                )
                scored = _score_part(
                    maps,
                    part,
                    views,
                    boxes,
                    geometry,
                    params,
                    input_size,
                    dev,
                    progress=lambda generation: progress(generation, params["generations"]),
                )
                np.savez(directory / f"part-{done}.npz", **scored.pop("arrays"))
                results.append(
                    PartDetectionResult(
                        position=done,
                        object_class=boxes.concepts[class_id],
                        part=boxes.concepts[part["part_id"]],
                        name=part["name"],
                        relative_size=part["relative_size"],
                        mean_size=part["mean_size"],
                        **scored,
                    )
                )
                done += 1
            del maps
    emerged = sum(result.ga_ap > params["ap_criterion"] for result in results)
    above_prior = sum(result.emerges_above_prior(params["ap_criterion"]) for result in results)
    covered = sum(result.ga_recall > params["recall_criterion"] for result in results)

    def mean(values):
        values = list(values)
        return float(np.mean(values)) if values else 0.0

    publish(directory)  # in the store before the study row points at it
    with transaction.atomic():  # the study appears with all its results or not at all
        study = PartDetectionStudy.objects.create(
            run=run,
            layer=layer,
            dataset=dataset,
            inputs=params["inputs"],
            split=params["split"],
            params=params,
            directory=stored_path(directory),
            n_parts=len(results),
            n_emerged=emerged,
            n_emerged_above_prior=above_prior,
            n_covered=covered,
            mean_prior_ap=mean(r.prior_ap for r in results),
            mean_best_ap=mean(r.best_ap for r in results),
            mean_ga_ap=mean(r.ga_ap for r in results),
            mean_top_ap=mean(r.top_ap for r in results),
            mean_all_ap=mean(r.all_ap for r in results),
        )
        for result in results:
            result.study = study
        PartDetectionResult.objects.bulk_create(results)
    return {
        "part_detection_study": study.pk,
        "layer": layer.name,
        "dataset": dataset.name,
        "inputs": params["inputs"],
        "parts": len(results),
        "emerged_ap": f"{emerged} of {len(results)} (GA AP > {params['ap_criterion']:g})",
        "emerged_above_prior": f"{above_prior} of {len(results)} (and above the location-prior floor)",
        "covered": f"{covered} of {len(results)} (GA recall > {params['recall_criterion']:g})",
        "mAP": f"best single {100 * mean(r.best_ap for r in results):.1f} · "
        f"GA {100 * mean(r.ga_ap for r in results):.1f} · "
        f"TopFilters {100 * mean(r.top_ap for r in results):.1f} · "
        f"all {100 * mean(r.all_ap for r in results):.1f} · "
        f"location-prior floor {100 * mean(r.prior_ap for r in results):.1f}",
    }


def part_detection_arrays(result: PartDetectionResult) -> dict[str, np.ndarray]:
    """The saved detections (image pixels, after regression and NMS) and ground truth of one part result."""
    with np.load(fetch(f"{result.study.directory}/part-{result.position}.npz")) as data:
        return {name: data[name] for name in data.files}


# -- ablate -----------------------------------------------------------------------------------------------


def _class_index(network: Network, name: str) -> int | None:
    names = list(network.class_names or [])
    return names.index(name) if name in names else None


def _instance_part_mask(images: ViewImages, boxes: DatasetBoxes, view: View, class_id: int, part_id: int, number: int):
    """``bool [ih, iw]``: the part's pixels that belong to the object ``view`` shows, inside the view's frame; None
    when there are none (GG'18 §6 blacks out the part of the object being recognised, so a view whose part lies
    outside its crop, or belongs to another object of the image, says nothing about the part).

    Broden masks carry no instance ids: an instance's pixels are the part's pixels inside that instance's part
    boxes (``boxes.csv``, which ties every part box to its object). A whole-image view (``object_index`` -1) takes
    every instance of the class's part in the image."""
    import torch

    height, width = boxes.sizes[view.image]
    own = torch.zeros((height, width), dtype=torch.bool, device=images.device)
    for image, obj, (x1, y1, x2, y2) in boxes.parts.get((class_id, part_id), []):
        if image == view.image and view.object_index in (-1, obj):
            own[max(0, int(np.floor(y1))) : int(np.ceil(y2)), max(0, int(np.floor(x1))) : int(np.ceil(x2))] = True
    if not bool(own.any()):
        return None
    fx1, fy1, fx2, fy2 = view.frame
    inside = torch.zeros_like(own)
    inside[
        max(0, int(np.floor(fy1))) : max(0, int(np.ceil(fy2))), max(0, int(np.floor(fx1))) : max(0, int(np.ceil(fx2)))
    ] = True
    mask = images.part_mask(view.image, number) & own & inside
    return mask if bool(mask.any()) else None


def ablation_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.ablation import LayerAblator, class_scores, discriminative_filters
    from analysis.engine.networks import UnknownLayerError

    params = ablation_params(**run.params)
    inputs = run_inputs(params, progress=progress, extraction=False)
    network, dataset, layer = inputs.network, inputs.dataset, inputs.layer
    dev = torch.device(device)
    model = load_model(network, dev)
    try:
        ablator = LayerAblator(model, layer.name)
    except UnknownLayerError as error:  # the engine's readable error
        raise RunInputError(str(error)) from None
    progress.phase(f"Reading the boxes of {dataset.name}")
    boxes = dataset_boxes(dataset, params["split"])
    classes = [
        (class_id, _class_index(network, boxes.concepts[class_id].name))
        for class_id in sorted(boxes.objects, key=lambda cid: boxes.concepts[cid].name)
    ]
    classes = [(class_id, index) for class_id, index in classes if index is not None]
    if not classes:
        raise RunInputError(
            f"None of {dataset.name}'s object classes is an output class of {network.name} "
            f"({', '.join(network.class_names[:10]) or 'no class names'})."
        )
    parts = _part_classes(boxes, min_part_size=0.0, min_instances=1)
    images = ViewImages(dataset, network, dev)
    n_filters = layer.units
    single = torch.ones(1 + n_filters, n_filters, device=dev)
    single[1:] -= torch.eye(n_filters, device=dev)
    chunk_masks = max(1, 512 // max(1, params["batch_size"]))
    class_rows, part_rows = [], []
    for class_id, output in classes:
        concept = boxes.concepts[class_id]
        views = _sample(
            object_views(boxes, class_id, params["inputs"], params["context"]),
            params["max_images"],
            params["seed"],
            class_id,
        )
        if not views:
            continue
        progress.phase(
            f"Ablating {n_filters} filters of {layer.name} on {len(views)} {concept.name} views", total=len(views)
        )
        totals = torch.zeros(1 + n_filters, dtype=torch.float64, device=dev)
        # The second pass reuses the prefix outputs while they fit FRONTIER_BUDGET_BYTES, else recomputes them: memory
        # stays bounded however many views a class has.
        frontiers: list | None = []
        base = []
        kept_bytes = 0
        with torch.no_grad():
            for start in range(0, len(views), params["batch_size"]):
                x = images.inputs(views[start : start + params["batch_size"]], params["inputs"])
                frontier = ablator.prefix(x)
                if frontiers is not None:
                    # a split graph's frontier may hold plain values (a batch size) beside its tensors
                    kept_bytes += sum(t.numel() * t.element_size() for t in frontier if isinstance(t, torch.Tensor))
                    if kept_bytes <= FRONTIER_BUDGET_BYTES:
                        frontiers.append(frontier)
                    else:
                        frontiers = None
                for m in range(0, 1 + n_filters, chunk_masks):
                    scores = class_scores(
                        ablator.logits(frontier, single[m : m + chunk_masks]), output, params["score"]
                    )
                    totals[m : m + chunk_masks] += scores.sum(dim=1)
                    if m == 0:
                        base.append(scores[0])
                progress(min(len(views), start + params["batch_size"]), len(views))
            mean_scores = (totals / len(views)).cpu().numpy()
            deltas = mean_scores[0] - mean_scores[1:]
            flags, sigma = discriminative_filters(deltas, params["sigma_factor"])
            sets = torch.ones(2, n_filters, device=dev)
            flag_t = torch.from_numpy(flags).to(dev)
            sets[0, flag_t] = 0  # every discriminative filter zeroed
            sets[1, ~flag_t] = 0  # every other filter zeroed
            set_totals = torch.zeros(2, dtype=torch.float64, device=dev)
            for k, start in enumerate(range(0, len(views), params["batch_size"])):
                frontier = (
                    frontiers[k]
                    if frontiers is not None
                    else ablator.prefix(images.inputs(views[start : start + params["batch_size"]], params["inputs"]))
                )
                set_totals += class_scores(ablator.logits(frontier, sets), output, params["score"]).sum(dim=1)
            del frontiers
        set_deltas = (mean_scores[0] - (set_totals / len(views)).cpu().numpy()).tolist()
        order = np.lexsort((np.arange(n_filters), -deltas))
        class_rows.append(
            ClassDiscriminativeness(
                object_class=concept,
                n_images=len(views),
                mean_score=float(mean_scores[0]),
                deltas=[float(value) for value in deltas],
                sigma=sigma,
                discriminative=[int(f) for f in order if flags[f]],
                delta_discriminative_set=set_deltas[0] if flags.any() else None,
                delta_other_set=set_deltas[1] if (~flags).any() else None,
            )
        )

        if params["blackout"]:
            base_scores = torch.cat(base)  # each view's score with every filter (the prefix/suffix pass above)
            class_parts = [part for part in parts if part["class_id"] == class_id]
            for _done, part in enumerate(class_parts):
                number = boxes.concepts[part["part_id"]].number
                progress.phase(f"Blacking out {part['name']}", total=len(views))
                total, holding = 0.0, 0
                with torch.no_grad():
                    # Masks a batch at a time (an image-sized mask per view would grow with the views).
                    for start in range(0, len(views), params["batch_size"]):
                        masks = {
                            k: _instance_part_mask(images, boxes, views[k], class_id, part["part_id"], number)
                            for k in range(start, min(len(views), start + params["batch_size"]))
                        }
                        batch = [k for k, mask in masks.items() if mask is not None]
                        if batch:
                            x = images.inputs(
                                [views[k] for k in batch], params["inputs"], masks=[masks[k] for k in batch]
                            )
                            blacked = class_scores(model(x), output, params["score"])
                            total += float((base_scores[batch] - blacked).sum())
                            holding += len(batch)
                        progress(min(len(views), start + params["batch_size"]), len(views))
                if not holding:
                    continue
                part_rows.append(
                    PartDiscriminativeness(
                        object_class=concept,
                        part=boxes.concepts[part["part_id"]],
                        name=part["name"],
                        n_images=holding,
                        delta=total / holding,
                        relative_size=part["relative_size"],
                    )
                )
    mean_disc = float(np.mean([len(row.discriminative) for row in class_rows])) if class_rows else 0.0
    with transaction.atomic():  # the study appears with all its results or not at all
        study = AblationStudy.objects.create(
            run=run,
            layer=layer,
            dataset=dataset,
            inputs=params["inputs"],
            split=params["split"],
            score=params["score"],
            sigma_factor=params["sigma_factor"],
            params=params,
            n_classes=len(class_rows),
            mean_discriminative=mean_disc,
        )
        for row in [*class_rows, *part_rows]:
            row.study = study
        ClassDiscriminativeness.objects.bulk_create(class_rows)
        PartDiscriminativeness.objects.bulk_create(part_rows)
    return {
        "ablation_study": study.pk,
        "layer": layer.name,
        "dataset": dataset.name,
        "classes": len(class_rows),
        "discriminative_per_class": f"{mean_disc:.1f} of {n_filters}",
        "parts_blacked_out": len(part_rows),
        "split_network": "torch.fx split at the layer" if ablator.traced else "forward hook (model not traceable)",
    }


# -- reading results ------------------------------------------------------------------------------------


def part_correlations(*, parts: PartDetectionStudy | None, ablation: AblationStudy | None) -> dict[str, Any]:
    """GG'18 Fig. 3 and Fig. 15: per part class its relative size, GA AP (``parts``) and blackout δ (``ablation``),
    with Pearson's r and p for each pair. When both studies are given, all three correlations are computed on one
    part set, the parts present in both (``in_common``); the others are listed but left out of every r, so the
    three figures describe the same parts."""
    from analysis.engine.ablation import pearson

    rows: dict[str, dict[str, Any]] = {}
    if parts is not None:
        for result in parts.part_results.all():
            rows[result.name] = {"name": result.name, "size": result.relative_size, "ap": result.ga_ap, "delta": None}
    if ablation is not None:
        for result in ablation.part_results.all():
            row = rows.setdefault(result.name, {"name": result.name, "size": result.relative_size, "ap": None})
            row["delta"] = result.delta
    table = sorted(rows.values(), key=lambda row: row["name"])
    both = parts is not None and ablation is not None
    for row in table:
        row["in_common"] = not both or (row["ap"] is not None and row["delta"] is not None)
    common = [row for row in table if row["in_common"]]

    def pairs(a: str, b: str):
        chosen = [row for row in common if row[a] is not None and row[b] is not None]
        return [row[a] for row in chosen], [row[b] for row in chosen]

    return {
        "rows": table,
        "n_common": len(common),
        "size_ap": pearson(*pairs("size", "ap")),
        "size_delta": pearson(*pairs("size", "delta")),
        "ap_delta": pearson(*pairs("ap", "delta")),
    }


# -- export -----------------------------------------------------------------------------------------------


def part_detection_export(run: Run, out_dir: Path) -> list[Path]:
    """``detections.csv`` (``filter,part,image,x1,y1,x2,y2,score``: every detection after regression and NMS, boxes
    in continuous image-pixel coordinates, area = (x2 − x1)(y2 − y1) as torchvision.ops), ``ground_truth.csv``
    (``part,image,x1,y1,x2,y2``), ``ap.csv`` (``filter,part,ap,recall_max`` per filter alone), ``ga.csv``
    (``part,filters,ap``; filters space-separated, 0-based) and ``run.json``. Images are dataset indices."""
    study = PartDetectionStudy.objects.select_related("layer__network", "dataset").filter(run=run).first()
    if study is None:
        raise RunInputError(f"Run {run.pk} holds no part-detection study.")
    results = list(study.part_results.order_by("position"))
    paths = {name: out_dir / name for name in ("detections.csv", "ground_truth.csv", "ap.csv", "ga.csv")}
    with (
        open(paths["detections.csv"], "w", newline="") as det_file,
        open(paths["ground_truth.csv"], "w", newline="") as gt_file,
    ):
        det_file.write("filter,part,image,x1,y1,x2,y2,score\n")
        gt_file.write("part,image,x1,y1,x2,y2\n")
        for result in results:
            data = part_detection_arrays(result)
            name = csv_field(result.name).replace("%", "%%")
            image = data["view_image"][data["det_view"]]
            table = np.column_stack(
                [data["det_filter"], image, data["det_box"].astype(np.float64), data["det_score"].astype(np.float64)]
            )
            np.savetxt(det_file, table, fmt=f"%d,{name},%d,%.9g,%.9g,%.9g,%.9g,%.9g")
            gt = np.column_stack([data["view_image"][data["gt_view"]], data["gt_box"].astype(np.float64)])
            np.savetxt(gt_file, gt, fmt=f"{name},%d,%.9g,%.9g,%.9g,%.9g")
    with open(paths["ap.csv"], "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["filter", "part", "ap", "recall_max"])
        for result in results:
            writer.writerows(
                (f, result.name, repr(float(ap)), repr(float(recall)))
                for f, (ap, recall) in enumerate(zip(result.single_ap, result.single_recall))
            )
    with open(paths["ga.csv"], "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["part", "filters", "ap"])
        writer.writerows(
            (result.name, " ".join(str(f) for f in result.ga_filters), repr(float(result.ga_ap))) for result in results
        )
    meta = out_dir / "run.json"
    meta.write_text(
        json.dumps(
            {
                "run": run.pk,
                "kind": run.kind,
                "params": run.params,
                "network": study.layer.network.name,
                "weights_sha256": study.layer.network.weights_sha256,
                "layer": study.layer.name,
                "dataset": study.dataset.name,
                "inputs": study.inputs,
                "split": study.split,
                "parts": [
                    {
                        "part": r.name,
                        "instances": r.n_instances,
                        "views": r.n_views,
                        "best_filter": r.best_filter,
                        "best_ap": r.best_ap,
                        "ga_ap": r.ga_ap,
                        "ga_recall": r.ga_recall,
                        "top_filters": r.top_filters,
                        "top_ap": r.top_ap,
                        "all_ap": r.all_ap,
                        "location_prior_ap": r.prior_ap,
                        "emerges_above_prior": r.emerges_above_prior(study.params.get("ap_criterion", 0.3)),
                    }
                    for r in results
                ],
                "rules": {
                    "correct": f"IoU >= {study.params.get('iou_threshold')} (VOC greedy matching)",
                    "ap": "VOC 2010+ all-point interpolated",
                    "nms": f"{study.nms_rule} per filter and view",
                    "location_prior": "an activation-blind detector scored by how often a part covers each map "
                    "position, boxes regressed from the position alone (the floor)",
                    "boxes": "continuous image pixels (x1, y1, x2, y2)",
                },
            },
            indent=2,
        )
    )
    return [*paths.values(), meta]


def ablation_export(run: Run, out_dir: Path) -> list[Path]:
    """``ablation.csv`` (``object_class,filter,delta,discriminative``), ``parts.csv``
    (``object_class,part,images,delta,relative_size``: part blackouts) and ``run.json``."""
    study = AblationStudy.objects.select_related("layer__network", "dataset").filter(run=run).first()
    if study is None:
        raise RunInputError(f"Run {run.pk} holds no ablation study.")
    path = out_dir / "ablation.csv"
    rows = list(study.class_results.select_related("object_class"))
    with open(path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["object_class", "filter", "delta", "discriminative"])
        for row in rows:
            flagged = set(row.discriminative)
            writer.writerows(
                (row.object_class.name, f, repr(float(delta)), int(f in flagged)) for f, delta in enumerate(row.deltas)
            )
    parts_path = out_dir / "parts.csv"
    with open(parts_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["object_class", "part", "images", "delta", "relative_size"])
        writer.writerows(
            (r.object_class.name, r.part.name, r.n_images, repr(float(r.delta)), repr(r.relative_size))
            for r in study.part_results.select_related("object_class", "part").order_by("name")
        )
    meta = out_dir / "run.json"
    meta.write_text(
        json.dumps(
            {
                "run": run.pk,
                "kind": run.kind,
                "params": run.params,
                "network": study.layer.network.name,
                "layer": study.layer.name,
                "dataset": study.dataset.name,
                "score": study.score,
                "classes": [
                    {
                        "object_class": r.object_class.name,
                        "images": r.n_images,
                        "mean_score": r.mean_score,
                        "sigma": r.sigma,
                        "discriminative": r.discriminative,
                        "delta_discriminative_set": r.delta_discriminative_set,
                        "delta_other_set": r.delta_other_set,
                    }
                    for r in rows
                ],
                "rules": {
                    "delta": "mean over the class's views of (score - score with the filter's map zeroed)",
                    "discriminative": f"delta > {study.sigma_factor:g} sigma (population std of delta over the layer)",
                },
            },
            indent=2,
        )
    )
    return [path, parts_path, meta]


# -- job kinds --------------------------------------------------------------------------------------------

SCORE_PARTS = register_job_kind(
    JobKind(
        name="score_parts",
        label="Part detection (GG'18)",
        queue=GPU_QUEUE,
        execute=part_detection_run_execute,
        params=PART_PARAMS,
        exporter=part_detection_export,
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        description="Every filter of a layer as a detector of every part class: box regression, NMS, VOC AP, "
        "GA filter combinations, TopFilters and all filters (GG'18 §3).",
    )
)
ABLATE = register_job_kind(
    JobKind(
        name="ablate",
        label="Filter and part ablations (GG'18)",
        queue=GPU_QUEUE,
        execute=ablation_run_execute,
        params=ABLATION_PARAMS,
        exporter=ablation_export,
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        description="Discriminativeness of every filter per object class (δ, 2σ rule, set ablations) and of every "
        "part by blackout (GG'18 §5–6).",
    )
)


def part_examples(result: PartDetectionResult, *, count: int = 6, per_view: int = 3) -> list[dict[str, Any]]:
    """GG'18 Fig. 4 style examples: the ``count`` views where the GA combination fires most strongly, each with the
    part's ground truth (green) and its ``per_view`` best GA detections (one colour per filter), as PNG data."""
    import base64
    import io

    from PIL import Image

    from analysis.engine.broden import BrodenReader
    from analysis.engine.part_detection import GROUND_TRUTH_COLOUR, PALETTE, draw_boxes

    data = part_detection_arrays(result)
    chosen = np.isin(data["det_filter"], result.ga_filters)
    if not chosen.any():
        return []
    det_view, det_score = data["det_view"][chosen], data["det_score"][chosen]
    det_box, det_filter, det_gt = data["det_box"][chosen], data["det_filter"][chosen], data["det_gt"][chosen]
    best_per_view: dict[int, float] = {}
    for view, value in zip(det_view.tolist(), det_score.tolist()):
        best_per_view[view] = max(value, best_per_view.get(view, float("-inf")))
    views = sorted(best_per_view, key=lambda view: (-best_per_view[view], view))[:count]
    reader = BrodenReader(result.study.dataset.root)
    wanted = {int(data["view_image"][view]) for view in views}
    rows = {position: reader.row(position) for position in wanted}
    colour_of = {f: PALETTE[k % len(PALETTE)] for k, f in enumerate(result.ga_filters)}
    examples = []
    for view in views:
        image_index = int(data["view_image"][view])
        mine = np.flatnonzero(det_view == view)
        mine = mine[np.lexsort((mine, -det_score[mine]))][:per_view]
        gt = data["gt_box"][data["gt_view"] == view]
        boxes = np.concatenate([gt, det_box[mine]]) if len(gt) else det_box[mine]
        colours = [GROUND_TRUTH_COLOUR] * len(gt) + [colour_of[int(f)] for f in det_filter[mine]]
        picture = draw_boxes(
            reader.load_image(rows[image_index]), boxes, colours, crop=tuple(float(v) for v in data["view_frame"][view])
        )
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
        examples.append(
            {
                "png": base64.b64encode(buffer.getvalue()).decode(),
                "image": image_index,
                "width": picture.shape[1],
                "height": picture.shape[0],
                "detections": [
                    {
                        "filter": int(det_filter[k]),
                        "score": float(det_score[k]),
                        "hit": bool(det_gt[k] >= 0),
                        "colour": "#{:02x}{:02x}{:02x}".format(*colour_of[int(det_filter[k])]),
                    }
                    for k in mine
                ],
                "alt": f"Image {image_index}: {len(gt)} ground-truth {result.part.name} box(es) in green and the "
                f"{len(mine)} strongest detections of the GA filters",
            }
        )
    return examples
