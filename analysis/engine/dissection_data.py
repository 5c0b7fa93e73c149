"""Feeding Network Dissection from disk: Broden masks -> :class:`BatchLabels`, cached maps -> tallies.

Pure (numpy, torch, Pillow through :mod:`analysis.engine.broden`); used by the dissection service and
by ``benchmarks/bench_dissection.py`` so that both measure and run the same code.

Conventions (see :mod:`analysis.engine.dissection` for the scoring rule):

* ``maps`` is an array ``[N, U, h, w]`` (typically the float16 activation cache, a ``np.memmap``);
  row ``r`` holds the maps of ``index.csv`` row ``r``. Values are converted to float32 before any
  arithmetic, so float16 caches are compared with float32 thresholds exactly as stored.
* ``label_category`` is ``LongTensor[C]``: the primary category (position in ``categories``) of every
  label id ``0 .. C-1``, ``-1`` for label 0 and for ids outside every category.
* Masks are read at their segmentation size ``(sh, sw)``; images of one batch must share it, so
  batches are cut where the size changes.
* ``pairing`` (optional, ``LongTensor[N]``): the activations of row ``r`` are scored against the
  masks of row ``pairing[r]`` (the shuffled-mask null baseline, :func:`dissection.shuffled_pairing`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from analysis.engine.allocator import release_mapped_rows
from analysis.engine.broden import BrodenIndexRow, BrodenReader, SegmentationEntry
from analysis.engine.dissection import BatchLabels, DissectionTally
from analysis.engine.dissection_sparse import prepare_labels, tally_add_sparse
from analysis.engine.extraction import UpperQuantile

#: Label batches decoded ahead of the one being tallied (in one background thread).
_PREFETCH_BATCHES = 2

__all__ = [
    "TallyView",
    "iter_label_batches",
    "iter_map_batches",
    "label_category_table",
    "labels_from_segmentations",
    "tally_cached_maps",
    "thresholds_of_cached_maps",
]


def label_category_table(primary: Mapping[int, str | None], categories: Sequence[str]) -> Tensor:
    """``LongTensor[C]`` with ``C = max label id + 1``: ``categories.index(primary[id])`` per label id.

    Label 0 (unlabeled), ids absent from ``primary`` and labels whose primary category is ``None`` or
    not in ``categories`` get ``-1`` (never a concept).
    """
    size = max((int(number) for number in primary), default=0) + 1
    table = torch.full((size,), -1, dtype=torch.int64)
    position = {name: index for index, name in enumerate(categories)}
    for number, category in primary.items():
        if int(number) > 0 and category in position:
            table[int(number)] = position[category]
    return table


def labels_from_segmentations(entries: Sequence[Mapping[str, SegmentationEntry]], size: tuple[int, int]) -> BatchLabels:
    """One :class:`BatchLabels` from per-image :meth:`BrodenReader.load_segmentation` results.

    Every category's pixel layers of an image are stacked (order does not matter for the tally);
    images with fewer layers are padded with unlabeled (0) layers. Whole-image labels become rows
    ``(image position in the batch, label id)``.
    """
    h, w = size
    stacks: list[np.ndarray] = []
    pairs: list[tuple[int, int]] = []
    for position, segmentation in enumerate(entries):
        layers = [entry.layers for entry in segmentation.values() if entry.layers.shape[0]]
        for entry in segmentation.values():
            pairs.extend((position, int(label)) for label in entry.image_labels)
        stack = np.concatenate(layers) if layers else np.zeros((0, h, w), dtype=np.int32)
        if stack.shape[1:] != (h, w):
            raise ValueError(f"masks of image {position} are {stack.shape[1:]}, expected {(h, w)}")
        stacks.append(stack)
    depth = max((stack.shape[0] for stack in stacks), default=0)
    pixel = np.zeros((len(stacks), depth, h, w), dtype=np.int32)  # Broden ids < 65536
    for position, stack in enumerate(stacks):
        pixel[position, : stack.shape[0]] = stack
    image = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    return BatchLabels(torch.from_numpy(pixel), image)


def iter_label_batches(
    reader: BrodenReader,
    rows: Sequence[BrodenIndexRow],
    mask_rows: Sequence[int],
    *,
    batch_size: int,
    prefetch: bool = True,
) -> Iterator[tuple[int, int, BatchLabels]]:
    """Labels for consecutive positions of ``mask_rows`` (index.csv row numbers), in order.

    Yields ``(first, stop, labels)``: ``labels`` holds the masks of ``mask_rows[first:stop]``. A batch
    ends after ``batch_size`` images or where the segmentation size changes. With ``prefetch`` the
    next batches' PNGs are decoded in a background thread while the caller works on this one.
    """

    def spans() -> Iterator[tuple[int, int]]:
        start = 0
        while start < len(mask_rows):
            size = (rows[mask_rows[start]].sh, rows[mask_rows[start]].sw)
            stop = start + 1
            while (
                stop < len(mask_rows)
                and stop - start < batch_size
                and (rows[mask_rows[stop]].sh, rows[mask_rows[stop]].sw) == size
            ):
                stop += 1
            yield start, stop
            start = stop

    def load(span: tuple[int, int]) -> tuple[int, int, BatchLabels]:
        first, stop = span
        picked = [rows[mask_rows[position]] for position in range(first, stop)]
        labels = labels_from_segmentations(
            [reader.load_segmentation(row) for row in picked], (picked[0].sh, picked[0].sw)
        )
        return first, stop, labels

    if not prefetch:
        yield from map(load, spans())
        return
    with ThreadPoolExecutor(1, thread_name_prefix="masks") as pool:
        pending: deque = deque()
        for span in spans():
            pending.append(pool.submit(load, span))
            if len(pending) > _PREFETCH_BATCHES:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def iter_map_batches(
    maps: np.ndarray, start: int, stop: int, batch_size: int, *, device: torch.device | str
) -> Iterator[tuple[int, Tensor]]:
    """``(first row, float32 Tensor[B, U, h, w] on device)`` for rows ``[start, stop)`` of ``maps``."""
    for first in range(start, stop, batch_size):
        yield first, _read_rows(maps, first, min(stop, first + batch_size), device)


def _read_rows(maps: np.ndarray, first: int, last: int, device: torch.device | str) -> Tensor:
    """Rows ``[first, last)`` of ``maps`` as float32 on ``device``; a memory map's pages are handed back once
    copied (a pass reads each row once: the resident set must not grow with the dataset)."""
    block = _float32(maps[first:last], device)
    release_mapped_rows(maps, first, last)
    return block


def _float32(block: np.ndarray, device: torch.device | str) -> Tensor:
    """A float32 copy on ``device`` (float16 is widened by torch: exact, and much faster than numpy)."""
    # np.array copies the (read-only) memory-map slice, so torch gets a writable buffer.
    return torch.from_numpy(np.array(block)).to(device=device, dtype=torch.float32)


@dataclass
class TallyView:
    """One tally fed from the same pass: ``transform`` (e.g. a rotation of the units) is applied to
    the raw maps before upsampling; ``None`` means the maps as they are."""

    tally: DissectionTally
    transform: Callable[[Tensor], Tensor] | None = None


@torch.no_grad()
def tally_cached_maps(
    maps: np.ndarray,
    views: Sequence[TallyView],
    *,
    reader: BrodenReader,
    rows: Sequence[BrodenIndexRow],
    upsample: Callable[[Tensor, tuple[int, int]], Tensor],
    start: int = 0,
    stop: int | None = None,
    pairing: Tensor | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> None:
    """Tally rows ``[start, stop)`` of ``maps`` into every view (one read of maps and masks).

    Per batch: raw maps (float32, on ``device``) -> ``view.transform`` -> ``upsample(maps, mask
    size)`` -> ``view.tally.add``; when ``upsample`` is an :class:`~analysis.engine.dissection_sparse.
    AnchoredUpsample` or :class:`~analysis.engine.dissection_sparse.PlainUpsample`, only the pixels that can
    pass the thresholds are upsampled (identical counts, see :mod:`analysis.engine.dissection_sparse`).
    The masks of row ``r`` are those of ``pairing[r]`` when given (shuffled-mask baseline), else of ``r``.
    ``progress(images done)`` after each batch. Image ranges tallied separately and merged give exactly
    the counts of one pass (int64 sums).
    """
    stop = maps.shape[0] if stop is None else int(stop)
    if not 0 <= start <= stop <= maps.shape[0]:
        raise ValueError(f"image range [{start}, {stop}) is outside the {maps.shape[0]} cached images")
    if len(rows) != maps.shape[0]:
        raise ValueError(f"{len(rows)} index rows for {maps.shape[0]} cached images")
    mask_rows = range(start, stop) if pairing is None else pairing[start:stop].tolist()  # O(shard) ints at most
    tables: list[tuple[Tensor, int]] = []  # distinct (label_category, n_categories) of the views
    groups: list[int] = []
    for view in views:
        for index, (table, g) in enumerate(tables):  # noqa: B007 — read after the loop
            if g == view.tally.n_categories and torch.equal(table, view.tally.label_category):
                break
        else:
            index = len(tables)
            tables.append((view.tally.label_category, view.tally.n_categories))
        groups.append(index)
    done = 0
    for first, last, labels in iter_label_batches(reader, rows, mask_rows, batch_size=batch_size):
        acts = _read_rows(maps, start + first, start + last, device)
        labels = BatchLabels(labels.pixel.to(device), labels.image.to(device))
        # the label side is reduced once per batch and label table, and shared by the views
        prepared = (
            [prepare_labels(labels, table, g) for table, g in tables]
            if hasattr(upsample, "active")
            else [None] * len(tables)
        )
        for view, group in zip(views, groups):
            raw = view.transform(acts) if view.transform is not None else acts
            tally_add_sparse(view.tally, raw, labels, upsample, prepared[group])
        done += last - first
        if progress is not None:
            progress(done)


@torch.no_grad()
def thresholds_of_cached_maps(
    maps: np.ndarray,
    transforms: Sequence[Callable[[Tensor], Tensor] | None],
    *,
    quantile: float = 0.995,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[Tensor]:
    """Exact per-unit ``quantile`` (``numpy.quantile``, linear) of the raw maps under each transform.

    Returns one float32 ``Tensor[U]`` per entry of ``transforms`` (``None`` = untransformed maps,
    which reproduces the extraction's thresholds bit for bit). ND'18 §3.2 needs this for rotated
    representations: each rotated unit gets its own ``T_k``.
    """
    n, units, h, w = maps.shape
    accumulators = [UpperQuantile(units, quantile, total_count=n * h * w, device=device) for _ in transforms]
    for first, acts in iter_map_batches(maps, 0, n, batch_size, device=device):
        for transform, accumulator in zip(transforms, accumulators):
            accumulator.add(transform(acts) if transform is not None else acts)
        if progress is not None:
            progress(min(n, first + batch_size))
    return [accumulator.result() for accumulator in accumulators]
