"""What a scoring run reads before its engine pass: the one prologue of ``dissect``, ``dissect_rotation``,
``net2vec``, ``score_parts`` and ``explanatory_graph``.

:func:`run_inputs` resolves the network, dataset and layer a run's parameters name, builds the layer's
upsampler (:func:`analysis.engine.upsample.upsampler_for`, from :attr:`analysis.models.Layer.geometry`) when the
parameters name an ``upsample`` method — so an impossible anchoring fails before any work — finds or runs the
layer's extraction, and reads its exact thresholds and the dataset's label table when asked. The pieces are
public too, for runs that need them in another order (part detection reads its boxes before it may extract).

Views (what part detection, ablation and the explanatory graph feed the network): :func:`dataset_boxes` reads
every object and part box, :func:`object_views` turns an object class into views — each object box enlarged by
R-CNN's context (``RCNN_CONTEXT``), or each image holding the class — and :class:`ViewImages` turns views into
normalised network inputs (crops warped to the input with ``roi_align``, or whole images resized as the
extraction does).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.models import (
    AnnotatedBox,
    Concept,
    Dataset,
    Layer,
    LayerExtraction,
    Network,
    PartInputs,
    RunStatus,
    UnitActivationSummary,
)
from analysis.storage import artifact_exists

from .extraction import EXTRACTION_DEFAULTS, activation_cache_key, extraction_run_start
from .networks import network_spec
from .runs import RunInputError, RunProgress, run_layers, run_network_and_dataset

RCNN_CONTEXT = 16 / 227
"""Context around an object box in a crop, as a share of the warped input on each side (R-CNN: 16 of 227 px)."""


@dataclass(frozen=True)
class RunInputs:
    """A run's resolved inputs. ``extraction``, ``thresholds`` (float32 ``Tensor[U]``), ``label_category``
    (``LongTensor[C]``), ``categories`` and ``upsample`` are ``None`` unless :func:`run_inputs` was asked for
    them."""

    network: Network
    dataset: Dataset
    layer: Layer
    extraction: LayerExtraction | None = None
    thresholds: Any = None
    label_category: Any = None
    categories: list[str] | None = None
    upsample: Any = None

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H_in, W_in)`` of the network's input."""
        return self.network.input_height, self.network.input_width


def run_inputs(
    params: dict[str, Any],
    *,
    progress: RunProgress,
    extraction: bool = True,
    thresholds: bool = False,
    labels: bool = False,
) -> RunInputs:
    """The inputs of a one-layer run from its parameters (``network``, ``dataset``, ``layer``; ``upsample`` and
    ``quantile`` when present, else the extraction's default quantile).

    In order: resolve the names; the upsampler when ``params`` has ``upsample``; with ``extraction`` the layer's
    newest matching extraction (run inline first when there is none, see :func:`ensure_extraction`); with
    ``thresholds`` its exact per-unit thresholds; with ``labels`` the dataset's label table."""
    network, dataset = run_network_and_dataset(params)
    layer = run_layers(network, [params["layer"]])[params["layer"]]
    upsample = layer_upsampler(layer, params["upsample"]) if "upsample" in params else None
    found = None
    if extraction:
        progress.phase(f"Finding the activations of {layer.name} on {dataset.name}")
        found = ensure_extraction(
            network, dataset, layer, params.get("quantile", EXTRACTION_DEFAULTS["quantile"]), progress
        )
    label_category, categories = label_table(dataset) if labels else (None, None)
    return RunInputs(
        network=network,
        dataset=dataset,
        layer=layer,
        extraction=found,
        thresholds=unit_thresholds(found, layer) if thresholds and found is not None else None,
        label_category=label_category,
        categories=categories,
        upsample=upsample,
    )


def layer_geometry(layer: Layer, *, purpose: str):
    """``layer.geometry``, or a :class:`RunInputError` saying what cannot be done without it (``purpose``)."""
    geometry = layer.geometry
    if geometry is None:
        raise RunInputError(f"{layer} has no receptive-field geometry (the model could not be traced), so {purpose}.")
    return geometry


def layer_upsampler(layer: Layer, method: str):
    """The layer's upsampler for ``method`` (:func:`analysis.engine.upsample.upsampler_for`): ``upsample(maps
    Tensor[B, U, h, w], (H, W)) -> Tensor[B, U, H, W]`` with the sparse active-pixel path."""
    from analysis.engine.upsample import GeometryUnknown, upsampler_for

    network = layer.network
    try:
        return upsampler_for(layer.geometry, method, (network.input_height, network.input_width))
    except GeometryUnknown:
        raise RunInputError(
            f"{layer} has no receptive-field geometry (the model could not be traced), so maps "
            "cannot be anchored at receptive-field centres; use upsample=plain."
        ) from None


def ensure_extraction(
    network: Network, dataset: Dataset, layer: Layer, quantile: float, progress: RunProgress
) -> LayerExtraction:
    """The newest extraction of the layer's current maps at ``quantile`` whose cache is on disk; when there is
    none, an extraction run executed here first (it reuses a cache of the same maps, so no forward pass then)."""
    key = activation_cache_key(network, dataset, layer)
    candidates = (
        LayerExtraction.objects.filter(
            layer=layer, dataset=dataset, cache_key=key, quantile=quantile, run__status=RunStatus.SUCCEEDED
        )
        .select_related("run")
        .order_by("-created_at", "-id")
    )
    for extraction in candidates:
        if artifact_exists(f"{extraction.cache_path}/meta.json"):
            return extraction
    progress.phase(f"Extracting {layer.name} on {dataset.name} first (no cached activations)")
    run = extraction_run_start(
        network=network.name, dataset=dataset.name, layers=[layer.name], quantile=quantile, inline=True
    )
    if run.status != RunStatus.SUCCEEDED:
        raise RunInputError(f"The extraction this needs (run {run.pk}) ended {run.status}: {run.error}")
    return LayerExtraction.objects.select_related("run").get(run=run, layer=layer)


def unit_thresholds(extraction: LayerExtraction, layer: Layer):
    """float32 ``Tensor[U]``: the extraction's exact thresholds (stored as float64, exactly the float32 value)."""
    import torch

    stored = dict(UnitActivationSummary.objects.filter(extraction=extraction).values_list("unit__index", "threshold"))
    if len(stored) != layer.units:
        raise RunInputError(
            f"Extraction run {extraction.run_id} holds thresholds of {len(stored)} of {layer.units} units of {layer}."
        )
    return torch.tensor([stored[index] for index in range(layer.units)], dtype=torch.float32)


def label_table(dataset: Dataset):
    """``(label_category LongTensor[C], category names)``: each label id's primary category (Concept.category)
    as a position in the dataset's categories (index.csv order; categories only some labels name go last)."""
    from analysis.engine.dissection_data import label_category_table

    primary = dict(dataset.concepts.values_list("number", "category"))
    categories = list(dataset.categories)
    categories += sorted({name for name in primary.values() if name and name not in categories})
    return label_category_table(primary, categories), categories


# -- views: object crops or whole images ----------------------------------------------------------------


@dataclass
class View:
    """One network input: image ``image`` (dataset index), the region ``frame`` (image pixels, x1 y1 x2 y2) warped
    to the input, and the object it shows (``object_index``; -1 for a whole image)."""

    image: int
    frame: tuple[float, float, float, float]
    object_index: int
    object_box: tuple[float, float, float, float]


@dataclass
class DatasetBoxes:
    """Every object and part box of a dataset, grouped for the runs."""

    sizes: dict[int, tuple[int, int]]  # image -> (height, width)
    objects: dict[int, list[tuple[int, int, tuple]]] = field(default_factory=dict)  # class id -> [(image, obj, box)]
    parts: dict[tuple[int, int], list[tuple[int, int, tuple]]] = field(default_factory=dict)  # (class, part) -> [...]
    concepts: dict[int, Concept] = field(default_factory=dict)


def dataset_boxes(dataset: Dataset, split: str) -> DatasetBoxes:
    """The object and part boxes of the ``split`` images (``"all"``: every image); a part box belongs to the object
    box of the same image and ``object_index``."""
    images = dataset.images.all()
    if split != "all":
        images = images.filter(split=split)
    sizes = {index: (height, width) for index, height, width in images.values_list("index", "height", "width")}
    boxes = DatasetBoxes(sizes=sizes)
    rows = AnnotatedBox.objects.filter(image__dataset=dataset)
    if split != "all":
        rows = rows.filter(image__split=split)
    rows = rows.values_list("image__index", "kind", "concept_id", "object_index", "x1", "y1", "x2", "y2")
    object_class: dict[tuple[int, int], int] = {}
    part_rows = []
    for image, kind, concept, obj, x1, y1, x2, y2 in rows:
        if kind == AnnotatedBox.Kind.OBJECT:
            object_class[(image, obj)] = concept
            boxes.objects.setdefault(concept, []).append((image, obj, (x1, y1, x2, y2)))
        else:
            part_rows.append((image, concept, obj, (x1, y1, x2, y2)))
    for image, concept, obj, box in part_rows:
        owner = object_class.get((image, obj))
        if owner is not None:
            boxes.parts.setdefault((owner, concept), []).append((image, obj, box))
    ids = set(boxes.objects) | {part for _, part in boxes.parts}
    boxes.concepts = Concept.objects.in_bulk(ids)
    for entries in boxes.objects.values():
        entries.sort(key=lambda entry: (entry[0], entry[1]))
    return boxes


def object_views(boxes: DatasetBoxes, class_id: int, inputs: str, context: float) -> list[View]:
    """The views of an object class (object crops with context, or the images holding it), by image order."""
    from analysis.engine.part_detection import context_frame

    views = []
    if inputs == PartInputs.OBJECT_CROPS:
        for image, obj, box in boxes.objects.get(class_id, []):
            views.append(View(image, context_frame(box, context), obj, box))
    else:
        first_box: dict[int, tuple] = {}
        for image, _obj, box in boxes.objects.get(class_id, []):
            first_box.setdefault(image, box)
        for image, box in sorted(first_box.items()):
            height, width = boxes.sizes[image]
            views.append(View(image, (0.0, 0.0, float(width), float(height)), -1, box))
    return views


class ViewImages:
    """Loads dataset images by index (rows read once) and turns views into normalised network inputs."""

    def __init__(self, dataset: Dataset, network: Network, device):
        from analysis.engine.broden import BrodenReader

        self.reader = BrodenReader(dataset.root)
        self.rows = self.reader.indexed_rows
        self.network = network
        self.device = device
        self.input_size = (network.input_height, network.input_width)

    def part_mask(self, image: int, number: int):
        """``bool [ih, iw]``: pixels labelled ``number`` in any layer of the image's ``part`` masks (nearest)."""
        import torch
        import torch.nn.functional as F

        entry = self.reader.load_segmentation(self.rows[image]).get("part")
        row = self.rows[image]
        if entry is None or entry.layers.shape[0] == 0:
            return torch.zeros((row.ih, row.iw), dtype=torch.bool, device=self.device)
        mask = torch.from_numpy((entry.layers == number).any(axis=0)).to(self.device)
        return F.interpolate(mask[None, None].float(), size=(row.ih, row.iw), mode="nearest")[0, 0] > 0.5

    def inputs(self, views: list[View], mode: str, masks: dict[int, Any] | None = None):
        """``float32 [V, 3, H, W]``: each view's crop warped to the input (or the whole image resized as the
        extraction does: bilinear, antialiased, rounded to uint8), after mean subtraction; with ``masks`` (one
        ``bool [ih, iw]`` per view, in ``views``' order) those pixels of the view's image are set to 0 first, so two
        views of one image can black out different pixels. Images of one size are processed together."""
        import torch
        import torch.nn.functional as F
        from torchvision.ops import roi_align

        from analysis.engine.networks import normalize_images

        out = torch.zeros((len(views), 3, *self.input_size), device=self.device)
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        arrays = {image: self.reader.load_image(self.rows[image]) for image in dict.fromkeys(v.image for v in views)}
        for position, view in enumerate(views):
            by_size[arrays[view.image].shape[:2]].append(position)
        for size, positions in by_size.items():
            # one slot per image, or per view when each view blacks out its own pixels
            keys = list(positions) if masks is not None else list(dict.fromkeys(views[p].image for p in positions))
            slot = {key: k for k, key in enumerate(keys)}
            slot_of = [slot[p] if masks is not None else slot[views[p].image] for p in positions]
            batch = (
                torch.from_numpy(
                    np.stack([arrays[views[key].image] if masks is not None else arrays[key] for key in keys])
                )
                .permute(0, 3, 1, 2)
                .to(self.device)
            )
            if mode == PartInputs.OBJECT_CROPS:
                x = normalize_images(batch, self.network.mean, self.network.std, self.network.channel_order)
                if masks is not None:
                    x = x.masked_fill(torch.stack([masks[p] for p in positions])[:, None], 0.0)
                boxes = torch.tensor(
                    [[k, *views[p].frame] for k, p in zip(slot_of, positions)], dtype=torch.float32, device=self.device
                )
                out[positions] = roi_align(
                    x, boxes, output_size=self.input_size, spatial_scale=1.0, sampling_ratio=2, aligned=True
                )
            else:
                if tuple(size) != self.input_size:
                    batch = (
                        F.interpolate(
                            batch.float(), size=self.input_size, mode="bilinear", align_corners=False, antialias=True
                        )
                        .round()
                        .clamp(0, 255)
                        .byte()
                    )
                x = normalize_images(batch, self.network.mean, self.network.std, self.network.channel_order)
                if masks is not None:
                    mask = torch.stack([masks[p] for p in positions])[:, None].float()
                    x = x.masked_fill(F.interpolate(mask, size=self.input_size, mode="nearest") > 0.5, 0.0)
                out[positions] = x[slot_of]
        return out


def load_model(network: Network, device):
    from analysis.engine.networks import NetworkError, load_network

    try:
        return load_network(network_spec(network), device=device)
    except NetworkError as error:
        raise RunInputError(str(error)) from None
