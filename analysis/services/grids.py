"""Rendering exemplar grids (a Run per layer): the engine draws, this module stores them under content-hash
names in media storage and links them to their exemplar sets.

Styles: ``top_class`` and ``decile`` sets are drawn GG'18 Fig. 7 style (2×5 for the top 10, one row of
ten deciles from low to high); ``top_overall`` ND'18 Fig. 4 style (3×5, the region above the unit's
threshold highlighted). Maps are upsampled anchored at receptive-field centres; a grid's brightest
activation (vmax) is the unit's top-1 score so a unit's grids compare across classes (our choice).
"""
from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import ExemplarKind, ExemplarSet, LayerExtraction, RenderedGrid, Run, UnitActivationSummary

from .extraction import open_activation_cache
from .runs import RunInputError, RunProgress, run_start

GRID_TILE_MAX = 160
IMAGE_CACHE_SIZE = 4096


def parse_units(text: str) -> list[int]:
    """Unit indices from ``"0-9,17"`` (comma-separated indices and inclusive ranges), sorted, unique.

    Raises :class:`RunInputError` on anything else (a negative number, a range that runs backwards, text).
    """
    units: set[int] = set()
    for part in (piece.strip() for piece in str(text).split(",")):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
            raise RunInputError(f"{part!r} is not a unit index or a range like 0-9.", field="units")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise RunInputError(f"the range {part!r} runs backwards.", field="units")
        units.update(range(first, last + 1))
    if not units:
        raise RunInputError("Name at least one unit, e.g. 0-9,17.", field="units")
    return sorted(units)


def grids_run_start(*, extraction_run: int, layer: str, units: str | list[int] | None = None, created_by=None,
                    inline: bool = False) -> Run:
    """Render one layer's grids of an extraction run: every unit's, or only ``units`` (``"0-9,17"`` or a list)."""
    params: dict[str, Any] = {"extraction_run": int(extraction_run), "layer": layer}
    if units not in (None, "", []):
        params["units"] = parse_units(units) if isinstance(units, str) else sorted({int(unit) for unit in units})
    run, _ = run_start(kind=GRIDS.name, params=params, created_by=created_by, inline=inline)
    return run


class DatasetImageCache:
    """Dataset images by index, loaded on demand and kept (bounded, least recently used dropped)."""

    def __init__(self, dataset, capacity: int = IMAGE_CACHE_SIZE):
        from analysis.engine.broden import BrodenReader

        self.reader = BrodenReader(dataset.root_dir)
        self.rows = None
        self.capacity = capacity
        self.images: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getitem__(self, index: int) -> np.ndarray:
        if index in self.images:
            self.images.move_to_end(index)
            return self.images[index]
        if self.rows is None:  # index.csv rows are small: keep them to reach any image directly
            self.rows = list(self.reader.rows())
        image = self.reader.load_image(self.rows[index])
        self.images[index] = image
        if len(self.images) > self.capacity:
            self.images.popitem(last=False)
        return image


def store_grid(picture, *, style: str) -> RenderedGrid:
    """Encode ``picture`` as PNG and store it as ``grids/<aa>/<sha256>.png`` (idempotent)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    relative = f"grids/{digest[:2]}/{digest}.png"
    path = Path(settings.MEDIA_ROOT) / relative
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial")
        temporary.write_bytes(data)
        temporary.replace(path)
    grid, _ = RenderedGrid.objects.get_or_create(sha256=digest, defaults={
        "path": relative, "style": style, "width": picture.width, "height": picture.height})
    return grid


def grids_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.upsample import upsample_anchored, upsample_plain

    extraction = (LayerExtraction.objects.select_related("layer__network", "dataset")
                  .filter(run_id=run.params["extraction_run"], layer__name=run.params["layer"]).first())
    if extraction is None:
        raise RunInputError(f"Run {run.params['extraction_run']} extracted no layer {run.params['layer']!r}.")
    layer, network = extraction.layer, extraction.layer.network
    maps = open_activation_cache(extraction)
    images = DatasetImageCache(extraction.dataset)
    summaries = {summary.unit_id: summary for summary in UnitActivationSummary.objects.filter(extraction=extraction)}
    sets = ExemplarSet.objects.filter(extraction=extraction).select_related("unit").order_by("unit__index", "id")
    if run.params.get("units") is not None:  # the units a researcher chose
        chosen = run.params["units"]
        beyond = [unit for unit in chosen if unit >= layer.units]
        if beyond:
            raise RunInputError(f"{layer.name} has units 0-{layer.units - 1}; no unit {beyond[0]}.", field="units")
        sets = sets.filter(unit__index__in=chosen)
    sets = list(sets)
    input_size = (network.input_height, network.input_width)
    anchored = layer.rf_stride_y is not None
    progress.phase(f"Rendering {len(sets)} grids of {layer.name}", total=len(sets))

    def upsample(unit_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if anchored:
            return upsample_anchored(unit_maps, size, rf_stride=(layer.rf_stride_y, layer.rf_stride_x),
                                     rf_offset=(layer.rf_offset_y, layer.rf_offset_x), input_size=input_size)
        return upsample_plain(unit_maps, size)

    pending: list[ExemplarSet] = []
    # The per-grid tensors are tiny: intra-op threads cost more than they save (3x slower measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for done, exemplar in enumerate(sets, start=1):
            _render_one(exemplar, images, maps, summaries, upsample, layer, input_size, anchored)
            pending.append(exemplar)
            if len(pending) >= 200:
                with transaction.atomic():
                    ExemplarSet.objects.bulk_update(pending, ["grid"])
                pending = []
            progress(done, len(sets))
    finally:
        torch.set_num_threads(threads)
    with transaction.atomic():
        ExemplarSet.objects.bulk_update(pending, ["grid"])
    return {"layer": layer.name, "grids": len(sets), "extraction_run": extraction.run_id,
            "units": run.params.get("units", "all")}


def _render_one(exemplar, images, maps, summaries, upsample, layer, input_size, anchored) -> None:
    """Draw one exemplar set's grid and store it on ``exemplar.grid`` (saved by the caller)."""
    import torch

    from analysis.engine.rendering import render_activation_grid, render_threshold_grid
    from analysis.engine.upsample import peak_coordinates

    indices = exemplar.image_indices
    pictures = np.stack([images[index] for index in indices])
    size = pictures.shape[1:3]
    unit_maps = torch.from_numpy(np.asarray(maps[indices, exemplar.unit.index], dtype=np.float32))
    upsampled = upsample(unit_maps, size).numpy()
    summary = summaries[exemplar.unit_id]
    tile = min(GRID_TILE_MAX, max(size))
    if exemplar.kind == ExemplarKind.TOP_OVERALL:
        # A unit silent on more than the top quantile's share of positions has T_k = 0; "at or above 0"
        # would light every pixel, so such a unit shows where it fires at all (> 0). Our choice.
        threshold = summary.threshold if summary.threshold > 0 else float(np.nextafter(np.float32(0), 1))
        picture = render_threshold_grid(pictures, upsampled, threshold, columns=5, num_slots=15, tile=tile)
    else:
        if exemplar.peaks:
            positions = torch.tensor(exemplar.peaks, dtype=torch.int64)
        else:  # decile sets: the peak of each image's map
            flat = unit_maps.flatten(1).argmax(dim=1)
            positions = torch.stack((flat // unit_maps.shape[2], flat % unit_maps.shape[2]), dim=1)
        if anchored:
            peaks = peak_coordinates(positions, rf_stride=(layer.rf_stride_y, layer.rf_stride_x),
                                     rf_offset=(layer.rf_offset_y, layer.rf_offset_x))
            scale = torch.tensor([size[0] / input_size[0], size[1] / input_size[1]], dtype=torch.float64)
            peak_array = (peaks * scale).numpy()
        else:
            peak_array = upsampled.reshape(len(indices), -1).argmax(axis=1)
            peak_array = np.stack(np.unravel_index(peak_array, size), axis=1).astype(np.float64) + 0.5
        # No green square where the unit is silent: its "maximum" would be an arbitrary position.
        silent = unit_maps.flatten(1).amax(dim=1).numpy() <= 0
        peak_array[silent] = np.nan
        columns = 10 if exemplar.kind == ExemplarKind.DECILE else 5
        picture = render_activation_grid(pictures, upsampled, peak_array, vmax=max(summary.max_activation, 1e-6),
                                          columns=columns, num_slots=10, tile=tile)
    exemplar.grid = store_grid(picture, style=exemplar.kind)


GRIDS = register_job_kind(JobKind(
    name="render_grids", label="Render exemplar grids", queue=GPU_QUEUE, execute=grids_run_execute,
    soft_time_limit=6 * 3600, time_limit=6 * 3600 + 120,
    description="Draws every exemplar grid of a layer (GG'18, ND'18 and decile styles) into media storage."))
