"""What a scoring run reads before its engine pass: the one prologue of ``dissect``, ``dissect_rotation``,
``net2vec``, ``score_parts`` and ``explanatory_graph``.

:func:`run_inputs` resolves the network, dataset and layer a run's parameters name, builds the layer's
upsampler (:func:`analysis.engine.upsample.upsampler_for`, from :attr:`analysis.models.Layer.geometry`) when the
parameters name an ``upsample`` method — so an impossible anchoring fails before any work — finds or runs the
layer's extraction, and reads its exact thresholds and the dataset's label table when asked. The pieces are
public too, for runs that need them in another order (part detection reads its boxes before it may extract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from analysis.models import Dataset, Layer, LayerExtraction, Network, RunStatus, UnitActivationSummary
from analysis.storage import artifact_exists

from .extraction import EXTRACTION_DEFAULTS, activation_cache_key, extraction_run_start
from .runs import RunInputError, RunProgress, run_layers, run_network_and_dataset


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
