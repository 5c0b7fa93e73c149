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
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from analysis import params as p
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


GRIDS_PARAMS = p.ParamSchema(
    {
        "extraction_run": p.integers(1, 2**63 - 1, help="the run that extracted the layer"),
        "layer": p.name(help="dotted layer name"),
        "units": p.Param(
            int,
            None,
            low=0,
            high=2**31 - 1,
            many=True,
            min_items=1,
            max_items=1_000_000,
            unique_sorted=True,
            nullable=True,
            help="only these units (default: every unit)",
        ),
    }
)


def grids_run_start(
    *, extraction_run: int, layer: str, units: str | list[int] | None = None, created_by=None, inline: bool = False
) -> Run:
    """Render one layer's grids of an extraction run: every unit's, or only ``units`` (``"0-9,17"`` or a list)."""
    if isinstance(units, str):
        units = parse_units(units) if units.strip() else None
    run, _ = run_start(
        kind=GRIDS.name,
        params={"extraction_run": extraction_run, "layer": layer, "units": units or None},
        created_by=created_by,
        inline=inline,
    )
    return run


class DatasetImageCache:
    """Dataset images by index, loaded on demand and kept (bounded, least recently used dropped)."""

    def __init__(self, dataset, capacity: int = IMAGE_CACHE_SIZE):
        from analysis.engine.broden import BrodenReader

        self.reader = BrodenReader(dataset.root)
        self.capacity = capacity
        self.images: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getitem__(self, index: int) -> np.ndarray:
        if index in self.images:
            self.images.move_to_end(index)
            return self.images[index]
        image = self.reader.load_image(self.reader.row(index))
        self.images[index] = image
        if len(self.images) > self.capacity:
            self.images.popitem(last=False)
        return image


def media_put(relative: str, data: bytes) -> None:
    """Store ``data`` as media file ``relative`` (a content-hash name: present means identical).

    On the local media folder the file appears whole (written aside, renamed into place); in the object store
    (django-storages, ``UNITSCOPE_STORAGE_URL``) one PUT does the same, and the web serves it from there.
    """
    from django.core.files.base import ContentFile
    from django.core.files.storage import FileSystemStorage, default_storage

    if not isinstance(default_storage, FileSystemStorage):
        if not default_storage.exists(relative):
            default_storage.save(relative, ContentFile(data))
        return
    path = Path(settings.MEDIA_ROOT) / relative
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.partial")
        temporary.write_bytes(data)
        temporary.replace(path)


def store_grid(picture, *, style: str) -> RenderedGrid:
    """Encode ``picture`` as PNG and store it as ``grids/<aa>/<sha256>.png`` (idempotent)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    relative = f"grids/{digest[:2]}/{digest}.png"
    media_put(relative, data)
    grid, _ = RenderedGrid.objects.get_or_create(
        sha256=digest, defaults={"path": relative, "style": style, "width": picture.width, "height": picture.height}
    )
    return grid


class UnitGridRenderer:
    """Draws the grids of one extraction's units (:func:`analysis.engine.rendering.render_unit_grid`): images read
    once and cached, maps from the activation cache, upsampled anchored at receptive-field centres when the layer
    has a geometry (plain otherwise). The one machine-side way to draw a unit's grid: exemplar grids here and the
    crowd's purity grids call it."""

    def __init__(self, extraction: LayerExtraction):
        from analysis.engine.upsample import ANCHORED, PLAIN, upsampler_for

        network = extraction.layer.network
        self.maps = open_activation_cache(extraction)
        self.images = DatasetImageCache(extraction.dataset)
        self.geometry = extraction.layer.geometry
        self.input_size = (network.input_height, network.input_width)
        self.upsample = upsampler_for(self.geometry, ANCHORED if self.geometry is not None else PLAIN, self.input_size)

    def picture(
        self,
        unit: int,
        image_indices,
        *,
        vmax: float,
        columns: int,
        num_slots: int,
        peaks=None,
        threshold: float | None = None,
    ):
        """A ``PIL.Image`` of unit ``unit`` on ``image_indices`` (dataset indices, slot order); ``peaks`` and
        ``threshold`` as :func:`analysis.engine.rendering.render_unit_grid`."""
        import torch

        from analysis.engine.rendering import render_unit_grid

        pictures = np.stack([self.images[int(index)] for index in image_indices])
        unit_maps = torch.from_numpy(np.asarray(self.maps[image_indices, unit], dtype=np.float32))
        return render_unit_grid(
            pictures,
            unit_maps,
            upsample=self.upsample,
            geometry=self.geometry,
            input_size=self.input_size,
            vmax=vmax,
            columns=columns,
            num_slots=num_slots,
            tile=min(GRID_TILE_MAX, max(pictures.shape[1:3])),
            peaks=peaks,
            threshold=threshold,
        )


def grids_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    extraction = (
        LayerExtraction.objects.select_related("layer__network", "dataset")
        .filter(run_id=run.params["extraction_run"], layer__name=run.params["layer"])
        .first()
    )
    if extraction is None:
        raise RunInputError(f"Run {run.params['extraction_run']} extracted no layer {run.params['layer']!r}.")
    layer = extraction.layer
    renderer = UnitGridRenderer(extraction)
    summaries = {summary.unit_id: summary for summary in UnitActivationSummary.objects.filter(extraction=extraction)}
    sets = ExemplarSet.objects.filter(extraction=extraction).select_related("unit").order_by("unit__index", "id")
    if run.params.get("units") is not None:  # the units a researcher chose
        chosen = run.params["units"]
        beyond = [unit for unit in chosen if unit >= layer.units]
        if beyond:
            raise RunInputError(f"{layer.name} has units 0-{layer.units - 1}; no unit {beyond[0]}.", field="units")
        sets = sets.filter(unit__index__in=chosen)
    sets = list(sets)
    progress.phase(f"Rendering {len(sets)} grids of {layer.name}", total=len(sets))
    pending: list[ExemplarSet] = []
    # The per-grid tensors are tiny: intra-op threads cost more than they save (3x slower measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for done, exemplar in enumerate(sets, start=1):
            exemplar.grid = store_grid(
                _exemplar_picture(renderer, exemplar, summaries[exemplar.unit_id]), style=exemplar.kind
            )
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
    return {
        "layer": layer.name,
        "grids": len(sets),
        "extraction_run": extraction.run_id,
        "units": run.params.get("units", "all"),
    }


def _exemplar_picture(renderer: UnitGridRenderer, exemplar: ExemplarSet, summary: UnitActivationSummary):
    """One exemplar set's grid: ND'18 threshold style (3×5) for ``top_overall``, else GG'18 style with the set's
    peaks (decile sets: each map's maximum), one row of ten for deciles, 2×5 otherwise."""
    vmax = max(summary.max_activation, 1e-6)
    if exemplar.kind == ExemplarKind.TOP_OVERALL:
        return renderer.picture(
            exemplar.unit.index, exemplar.image_indices, vmax=vmax, columns=5, num_slots=15, threshold=summary.threshold
        )
    return renderer.picture(
        exemplar.unit.index,
        exemplar.image_indices,
        vmax=vmax,
        columns=10 if exemplar.kind == ExemplarKind.DECILE else 5,
        num_slots=10,
        peaks=exemplar.peaks or None,
    )


GRIDS = register_job_kind(
    JobKind(
        name="render_grids",
        label="Render exemplar grids",
        queue=GPU_QUEUE,
        execute=grids_run_execute,
        params=GRIDS_PARAMS,
        exporter=None,  # the grids are media files, served and listed by the unit pages and API
        soft_time_limit=6 * 3600,
        time_limit=6 * 3600 + 120,
        description="Draws every exemplar grid of a layer (GG'18, ND'18 and decile styles) into media storage.",
    )
)
