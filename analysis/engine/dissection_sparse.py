"""Sparse Network Dissection tally: compute only the upsampled pixels that can pass their unit's threshold.

At ND'18's top-0.005 quantile a unit is active on ~0.5% of positions, yet a dense tally upsamples every map
to mask resolution (``B x U x H x W`` values, e.g. 600 x 128 x 56 x 56 per layer) and compares each with
``T_k``. Bilinear upsampling makes every output pixel a convex combination of at most 2 x 2 map cells (its
*support*), so a pixel can reach ``T_k`` only if some cell of its support does. This module

1. finds the candidate cells from the low-resolution maps (support maximum ``>= T_k`` minus a rounding
   margin, see below),
2. evaluates the upsampled value of every pixel those cells can influence with **exactly the arithmetic of
   the dense upsampler** (so the values are bit-identical), keeps the pixels with ``S >= T`` (or ``>``), and
3. counts the resulting active ``(image, unit, pixel)`` triples with the rules of
   :class:`analysis.engine.dissection.DissectionTally` (:func:`tally_add_active`).

The counts are identical to ``tally.add(upsample(raw, size), labels)``; tests check it against the dense
path and the naive reference. Two upsamplers are provided, both callables ``(maps, size) -> Tensor``
usable by the dense path too:

* :class:`AnchoredUpsample` (ND'18's anchoring at receptive-field centres, :func:`upsample_anchored`):
  candidates per *block* — the output pixels sharing one top-left support cell form a rectangle, so only the
  rectangles of candidate cells are evaluated. Values use ``upsample_anchored``'s formula
  ``(m[y0,x0] wy0 + m[y1,x0] wy1) wx0 + (m[y0,x1] wy0 + m[y1,x1] wy1) wx1`` in the maps' dtype.
* :class:`PlainUpsample` (``F.interpolate(mode="bilinear", align_corners=False)``): candidates per *map*
  (an image-unit pair whose maximum can reach ``T_k``); those maps are upsampled by ``F.interpolate``
  itself, which computes every plane independently, so their values are the dense path's.

Rounding margin: a computed convex combination exceeds the maximum of its support by at most a few units
of roundoff of the largest magnitude involved; a cell counts as a candidate when
``max(support) + 1e-5 * M >= T_k`` with ``M`` at least the largest magnitude involved (the unit's
largest ``|value|`` in the batch, or in the map), a far larger margin, so no active pixel is ever missed.
The margin only costs work, never exactness. NaN activations are never active (as in the dense path).

When the candidates are not sparse (e.g. a ReLU unit with ``T_k = 0`` under ``>=`` is active everywhere, or
a low quantile) a batch falls back to the dense path, which gives the same counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.engine.dissection import BatchLabels, DissectionTally, unit_masks
from analysis.engine.upsample import anchored_axis_weights, upsample_anchored, upsample_plain

__all__ = [
    "ActivePixels",
    "AnchoredUpsample",
    "PlainUpsample",
    "PreparedLabels",
    "dense_active",
    "prepare_labels",
    "tally_add_active",
    "tally_add_sparse",
]

#: Candidate rounding margin, relative to the largest magnitude in the support (see the module docstring).
MARGIN = 1e-5
#: A batch uses the dense path when the candidate pixels exceed this fraction of all pixels.
DENSE_FALLBACK_FRACTION = 0.35
#: Candidate pixels evaluated at once (bounds memory: ~40 bytes each).
_PIXEL_CHUNK = 1 << 22


@dataclass(frozen=True)
class ActivePixels:
    """Active ``(image, unit, pixel)`` triples of one batch: ``LongTensor[K]`` each, ``pixel = y * W + x``."""

    image: Tensor
    unit: Tensor
    pixel: Tensor

    @classmethod
    def from_mask(cls, mask: Tensor) -> ActivePixels:
        """From a dense ``bool[B, U, H, W]`` mask."""
        _b, u, h, w = mask.shape
        flat = mask.reshape(-1).nonzero().squeeze(1)
        image = torch.div(flat, u * h * w, rounding_mode="floor")
        rest = flat - image * (u * h * w)
        unit = torch.div(rest, h * w, rounding_mode="floor")
        return cls(image, unit, rest - unit * (h * w))


def _candidate_test(top: Tensor, magnitude: Tensor, thresholds: Tensor) -> Tensor:
    """``top + MARGIN * magnitude >= T`` with ``T`` broadcast over units (dim 1)."""
    t = thresholds.to(top.dtype).view(1, -1, *([1] * (top.dim() - 2)))
    return top + MARGIN * magnitude + torch.finfo(top.dtype).tiny >= t


def _shift_max(x: Tensor, dim: int) -> Tensor:
    """``max(x[i], x[min(i + 1, n - 1)])`` along ``dim``."""
    n = x.shape[dim]
    if n == 1:
        return x
    nxt = torch.cat((x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)), dim=dim)
    return torch.maximum(x, nxt)


@dataclass(frozen=True)
class _Axis:
    i0: Tensor  # [out] int64
    i1: Tensor
    w0: Tensor  # [out] maps' dtype
    w1: Tensor
    start: Tensor  # [map_len] first output index with i0 == i
    count: Tensor  # [map_len] how many
    max_count: int


def _axis(out_len: int, map_len: int, *, stride: float, offset: float, input_len: float, device, dtype) -> _Axis:
    i0, i1, w0, w1 = anchored_axis_weights(
        out_len, map_len, stride=stride, offset=offset, input_len=input_len, device=device, dtype=dtype
    )
    cells = torch.arange(map_len, device=device)
    start = torch.searchsorted(i0, cells)
    count = torch.searchsorted(i0, cells, right=True) - start
    return _Axis(i0, i1, w0, w1, start, count, int(count.max()))


class AnchoredUpsample:
    """ND'18's upsampling anchored at receptive-field centres, with a sparse active-pixel path.

    Calling it is :func:`upsample_anchored` (dense). :meth:`active` returns the same active pixels as
    ``unit_masks(upsample_anchored(raw, size, ...), thresholds, strict=strict)`` without computing the rest.
    """

    def __init__(self, *, rf_stride: Sequence[float], rf_offset: Sequence[float], input_size: Sequence[int]):
        self.rf_stride = (float(rf_stride[0]), float(rf_stride[1]))
        self.rf_offset = (float(rf_offset[0]), float(rf_offset[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._axes: dict[tuple, tuple[_Axis, _Axis]] = {}

    def __call__(self, maps: Tensor, size: Sequence[int]) -> Tensor:
        return upsample_anchored(
            maps, size, rf_stride=self.rf_stride, rf_offset=self.rf_offset, input_size=self.input_size
        )

    def _grid(self, h: int, w: int, size: tuple[int, int], device, dtype) -> tuple[_Axis, _Axis]:
        key = (h, w, size, str(device), dtype)
        if key not in self._axes:
            self._axes[key] = (
                _axis(
                    size[0],
                    h,
                    stride=self.rf_stride[0],
                    offset=self.rf_offset[0],
                    input_len=self.input_size[0],
                    device=device,
                    dtype=dtype,
                ),
                _axis(
                    size[1],
                    w,
                    stride=self.rf_stride[1],
                    offset=self.rf_offset[1],
                    input_len=self.input_size[1],
                    device=device,
                    dtype=dtype,
                ),
            )
        return self._axes[key]

    @torch.no_grad()
    def active(
        self, raw: Tensor, thresholds: Tensor, size: Sequence[int], *, strict: bool = False
    ) -> ActivePixels | None:
        """Active pixels of ``raw: Tensor[B, U, h, w]`` upsampled to ``size``; None when the candidates are too
        dense for the sparse path to pay (the caller then uses the dense path)."""
        size = (int(size[0]), int(size[1]))
        b, u, h, w = raw.shape
        rows, cols = self._grid(h, w, size, raw.device, raw.dtype)
        # support of the block of cell (i, j): rows {i, min(i+1, h-1)} x columns {j, min(j+1, w-1)}
        top = _shift_max(_shift_max(raw, 2), 3)
        magnitude = raw.abs().amax(dim=(0, 2, 3)).view(1, -1, 1, 1)  # >= max|support|: a safe, wider margin
        candidate = _candidate_test(top, magnitude, thresholds)
        # blocks are empty for cells no output pixel has as its top-left support cell
        candidate &= (rows.count > 0).view(1, 1, h, 1) & (cols.count > 0).view(1, 1, 1, w)
        cells = candidate.nonzero()  # [K, 4]: image, unit, i, j
        heights, widths = rows.count[cells[:, 2]], cols.count[cells[:, 3]]
        if int((heights * widths).sum()) > DENSE_FALLBACK_FRACTION * b * u * size[0] * size[1]:
            return None
        # Blocks differ in size only at the borders (clamped interpolation): evaluate each shape separately.
        shape_key = heights * (cols.max_count + 1) + widths
        parts = []
        for key in torch.unique(shape_key).tolist():
            group = cells[shape_key == key]
            bh, bw = divmod(int(key), cols.max_count + 1)
            step = max(1, _PIXEL_CHUNK // (bh * bw))
            for s in range(0, group.shape[0], step):
                parts.append(self._evaluate(raw, thresholds, group[s : s + step], rows, cols, (bh, bw), size, strict))
        if not parts:
            empty = torch.zeros(0, dtype=torch.int64, device=raw.device)
            return ActivePixels(empty, empty, empty)
        return ActivePixels(*(torch.cat([part[k] for part in parts]) for k in range(3)))

    @staticmethod
    def _evaluate(raw, thresholds, cells, rows: _Axis, cols: _Axis, block, size, strict):
        """Values of the ``block = (bh, bw)`` output pixels of each candidate cell ``(i, j)``, thresholded.

        Every pixel of the block has the support rows ``(i, i1)`` and columns ``(j, j1)``, so
        ``upsample_anchored``'s ``rows[r, x] = m[y0, x] wy0[r] + m[y1, x] wy1[r]`` is ``left`` at ``x = j`` and
        ``right`` at ``x = j1``, and ``out[r, c] = rows[r, x0] wx0[c] + rows[r, x1] wx1[c]``: the same float
        operations in the same order, so bit-identical values.
        """
        img, unit, i, j = cells.unbind(1)
        i1, j1 = rows.i1[rows.start[i]], cols.i1[cols.start[j]]
        r = rows.start[i].unsqueeze(1) + torch.arange(block[0], device=raw.device)  # [K, bh]
        c = cols.start[j].unsqueeze(1) + torch.arange(block[1], device=raw.device)  # [K, bw]
        a00, a10 = raw[img, unit, i, j].view(-1, 1, 1), raw[img, unit, i1, j].view(-1, 1, 1)
        a01, a11 = raw[img, unit, i, j1].view(-1, 1, 1), raw[img, unit, i1, j1].view(-1, 1, 1)
        wy0, wy1 = rows.w0[r].unsqueeze(2), rows.w1[r].unsqueeze(2)  # [K, bh, 1]
        wx0, wx1 = cols.w0[c].unsqueeze(1), cols.w1[c].unsqueeze(1)  # [K, 1, bw]
        left = a00 * wy0 + a10 * wy1  # [K, bh, 1]
        right = a01 * wy0 + a11 * wy1
        value = left * wx0 + right * wx1  # [K, bh, bw]
        t = thresholds.to(raw.dtype)[unit].view(-1, 1, 1)
        on = (value > t) if strict else (value >= t)
        kk, rr, cc = on.nonzero().unbind(1)
        pixel = r[kk, rr] * size[1] + c[kk, cc]
        return img[kk], unit[kk], pixel


class PlainUpsample:
    """``F.interpolate(mode="bilinear", align_corners=False)`` with a sparse active-pixel path: only the maps
    whose maximum can reach the threshold are upsampled (by ``F.interpolate`` itself, plane by plane)."""

    def __call__(self, maps: Tensor, size: Sequence[int]) -> Tensor:
        return upsample_plain(maps, size)

    @torch.no_grad()
    def active(
        self, raw: Tensor, thresholds: Tensor, size: Sequence[int], *, strict: bool = False
    ) -> ActivePixels | None:
        size = (int(size[0]), int(size[1]))
        b, u, _h, _w = raw.shape
        top = raw.amax(dim=(2, 3))
        magnitude = raw.abs().amax(dim=(2, 3))
        pairs = _candidate_test(top, magnitude, thresholds).nonzero()  # [K, 2]
        if pairs.shape[0] > DENSE_FALLBACK_FRACTION * b * u:
            return None
        images, units, pixels = [], [], []
        step = max(1, _PIXEL_CHUNK // (size[0] * size[1]))
        for s in range(0, pairs.shape[0], step):
            img, unit = pairs[s : s + step].unbind(1)
            planes = raw[img, unit].unsqueeze(1)  # [k, 1, h, w]: upsample_plain runs every plane this way
            up = F.interpolate(planes, size=size, mode="bilinear", align_corners=False)
            t = thresholds.to(raw.dtype)[unit].view(-1, 1, 1, 1)
            on = (up > t) if strict else (up >= t)
            kk, p = on.view(on.shape[0], -1).nonzero().unbind(1)
            images.append(img[kk])
            units.append(unit[kk])
            pixels.append(p)
        if not images:
            empty = torch.zeros(0, dtype=torch.int64, device=raw.device)
            return ActivePixels(empty, empty, empty)
        return ActivePixels(torch.cat(images), torch.cat(units), torch.cat(pixels))


@dataclass(frozen=True)
class PreparedLabels:
    """One batch's labels reduced once for every tally that shares its label table (see
    :func:`prepare_labels`): ``lab_t`` ``int32[B, n, L]`` (int64 for huge tables) deduplicated pixel labels
    (0 = none or already counted), ``whole`` ``bool[B, C]`` whole-image labels, ``present`` ``bool[B, C]``, ``has_cat``
    ``bool[B, G]``, ``truth`` ``int64[C]`` (pixel and whole-image truth of the batch), ``size``."""

    lab_t: Tensor
    whole: Tensor
    present: Tensor
    has_cat: Tensor
    truth: Tensor
    size: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return self.whole.shape[0]


@torch.no_grad()
def prepare_labels(labels: BatchLabels, label_category: Tensor, n_categories: int) -> PreparedLabels:
    """The label side of :meth:`DissectionTally.add`, done once: set semantics across label layers and
    whole-image labels, out-of-study labels dropped, which labels and categories each image has."""
    b = labels.batch_size
    h, w = labels.size
    n, c = h * w, label_category.shape[0]
    dev = label_category.device
    pixel = labels.pixel.to(dev, torch.int64)
    image = labels.image.to(dev, torch.int64)
    for t, what in ((pixel, "pixel"), (image[:, 1], "image")):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
            raise ValueError(f"{what} label ids must lie in [0, {c})")
    if image.numel() and (int(image[:, 0].min()) < 0 or int(image[:, 0].max()) >= b):
        raise ValueError(f"whole-image label rows must name images in [0, {b})")
    valid = label_category >= 0
    cat_onehot = label_category.unsqueeze(1) == torch.arange(n_categories, device=dev).unsqueeze(0)
    whole = torch.zeros((b, c), dtype=torch.bool, device=dev)
    keep = valid[image[:, 1]]
    whole[image[keep, 0], image[keep, 1]] = True
    present = whole.clone()
    nl = pixel.shape[1]
    small = torch.int32 if c < 2**31 else torch.int64  # half the memory traffic for the label-side work
    lab = pixel.reshape(b, nl, n).to(small)
    zero = torch.zeros((), dtype=small, device=dev)
    truth = torch.zeros(c, dtype=torch.int64, device=dev)
    if nl:
        # Each reduction below runs only when it can change something (typical batches need none).
        if not bool(valid[1:].all()):  # some label ids are outside the study: they become unlabeled
            lab = torch.where(valid[lab], lab, zero)
        index = lab.to(torch.int64)
        per_layer = torch.zeros((b, nl, c), dtype=torch.bool, device=dev)
        per_layer.scatter_(2, index, True)
        per_layer[:, :, 0] = False
        pixel_present = per_layer.any(dim=1)
        if bool((pixel_present & whole).any()):  # a pixel label repeats a whole-image label: count it once
            lab = torch.where(whole.gather(1, index.reshape(b, nl * n)).view(b, nl, n), zero, lab)
        present |= pixel_present
        if nl > 1 and bool((per_layer.sum(dim=1) > 1).any()):  # a label in two layers of one image
            for layer in range(1, nl):
                dup = (lab[:, layer : layer + 1] == lab[:, :layer]).any(dim=1)
                lab[:, layer] = torch.where(dup, zero, lab[:, layer])
        truth += torch.bincount(lab.reshape(-1), minlength=c)
        truth[0] = 0
    truth += whole.sum(0) * n
    has_cat = (present.to(torch.float64) @ cat_onehot.to(torch.float64)) > 0
    return PreparedLabels(lab.permute(0, 2, 1), whole, present, has_cat, truth, (h, w))


@torch.no_grad()
def tally_add_active(tally: DissectionTally, active: ActivePixels, labels: BatchLabels | PreparedLabels) -> None:
    """Add a batch to ``tally`` given its active pixels instead of its maps.

    Identical counts to ``tally.add(acts, labels)`` when ``active`` holds exactly the true entries of
    ``unit_masks(acts, tally.thresholds, strict=tally.strict_threshold)`` (the same label rules: set
    semantics across label layers and whole-image labels, images "having" a category by any label whose
    primary category it is; see :mod:`analysis.engine.dissection`). ``labels`` may be prepared once with
    :func:`prepare_labels` for several tallies with the same label table.
    """
    if isinstance(labels, BatchLabels):
        labels = prepare_labels(labels, tally.label_category, tally.n_categories)
    b, (h, w) = labels.batch_size, labels.size
    n, c, u, dev = h * w, tally.n_labels, tally.n_units, tally.device
    if labels.whole.shape[1] != c or labels.has_cat.shape[1] != tally.n_categories:
        raise ValueError("the prepared labels were made for another label table")
    if b == 0:
        return
    a_img, a_unit, a_px = (t.to(dev, torch.int64) for t in (active.image, active.unit, active.pixel))
    if labels.lab_t.shape[2]:
        counts = torch.zeros(u * c, dtype=torch.int64, device=dev)
        for s in range(0, a_img.numel(), _PIXEL_CHUNK):
            sl = slice(s, s + _PIXEL_CHUNK)
            key = (a_unit[sl] * c).unsqueeze(1) + labels.lab_t[a_img[sl], a_px[sl]]
            counts += torch.bincount(key.reshape(-1), minlength=u * c)
        counts = counts.view(u, c)
        counts[:, 0] = 0
        tally.intersection += counts
    act_img = torch.bincount(a_img * u + a_unit, minlength=b * u).view(b, u)
    af = act_img.to(torch.float64)
    tally.intersection += (af.T @ labels.whole.to(torch.float64)).to(torch.int64)
    tally.truth += labels.truth
    tally.activation_cat += (af.T @ labels.has_cat.to(torch.float64)).to(torch.int64)
    tally.category_images += labels.has_cat.sum(0)
    tally.label_images += labels.present.sum(0)
    tally.activation += act_img.sum(0)
    tally.images += b
    tally.pixels += b * n


@torch.no_grad()
def tally_add_sparse(
    tally: DissectionTally, raw: Tensor, labels: BatchLabels, upsample, prepared: PreparedLabels | None = None
) -> bool:
    """Tally raw maps ``Tensor[B, U, h, w]``: the sparse path when ``upsample`` has one (``.active``) and the
    candidates are sparse, else ``tally.add(upsample(raw, size), labels)``. Returns True if sparse.
    ``prepared`` (optional) is ``prepare_labels(labels, ...)`` for this tally's label table, shared by views."""
    active = None
    if hasattr(upsample, "active"):
        active = upsample.active(raw, tally.thresholds, labels.size, strict=tally.strict_threshold)
    if active is None:
        tally.add(upsample(raw, labels.size), labels)
        return False
    tally_add_active(tally, active, prepared if prepared is not None else labels)
    return True


def dense_active(up: Tensor, thresholds: Tensor, *, strict: bool = False) -> ActivePixels:
    """The active pixels of dense upsampled maps (for tests and comparisons)."""
    return ActivePixels.from_mask(unit_masks(up, thresholds, strict=strict))
