"""Streaming per-unit statistics over activation batches, in bounded memory.

Accumulators in the style of davidbau/dissect ``runningstats``: ``add(...)`` a batch, ``result()``,
``state_dict()`` / ``from_state_dict(...)`` to save and restore, and ``merge(other)`` to combine
shards (disjoint image ranges of one dataset). Every merge is exact: merging the shards' states gives
bit-for-bit the state a single pass over all images would give.

Conventions used throughout this module:

* An activation batch is ``Tensor[B, C, h, w]`` (floating point): ``B`` images, ``C`` units (channels),
  an ``h x w`` map per unit. Fully connected outputs ``Tensor[B, C]`` are treated as ``1 x 1`` maps by
  :func:`extract_statistics`.
* ``image_indices`` is ``LongTensor[B]``: dataset-wide, non-negative image ids, unique over the whole
  dataset (shards must be disjoint).
* ``class_ids`` is ``LongTensor[B]``: one object class per image in ``[0, num_classes)``, or ``-1`` for
  an image that belongs to no class (it then counts only for the overall statistics). One class per
  image is the probe world's case (object-centred images); a multi-label dataset must be presented as
  one row per (image, class) by the caller.
* Map positions ``(y, x)`` are integer row/column indices into the ``h x w`` map. Mapping them to
  input pixel coordinates (receptive-field centres) is :func:`analysis.engine.upsample.peak_coordinates`.
* Scores are stored as ``float32`` by default (``dtype`` argument); float16/bfloat16/float32 inputs
  convert to float32 without loss.
* Nothing here picks a device: accumulators live on the ``device`` they are given, and ``add`` refuses
  a batch on another device rather than moving it.
* NaN activations are not supported by the top-k ordering (torch sorts NaN above +inf); the quantile
  returns NaN for a unit that saw a NaN, as ``numpy.quantile`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from analysis.engine.allocator import release_mapped_rows

__all__ = [
    "ActivationCacheWriter",
    "DecileExemplars",
    "ImageMaxScores",
    "LayerStatistics",
    "TopKPerUnit",
    "TopKResult",
    "UpperQuantile",
    "batch_aligned_bounds",
    "copy_cache_rows",
    "decile_exemplars",
    "extract_statistics",
    "fold_statistics",
    "iter_activation_cache",
    "map_max_and_peak",
    "map_sums",
    "quantile_buffer_size",
]

# Image id used for empty slots while accumulating: larger than any real id, so that an empty slot
# loses every tie (even against a real score of -inf). Reported as -1 by ``result()``.
_EMPTY = torch.iinfo(torch.int64).max


def _device(device: torch.device | str | None) -> torch.device:
    """The caller's device; ``None`` means torch's default (CPU) — this module never chooses one."""
    return torch.device("cpu") if device is None else torch.device(device)


def _check_device(t: Tensor, device: torch.device, what: str) -> None:
    if t.device.type != device.type or (device.index is not None and t.device != device):
        raise ValueError(f"{what} is on {t.device}, but the accumulator lives on {device}")


# ----------------------------------------------------------------------------------------------
# Per-image maxima
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def map_max_and_peak(acts: Tensor) -> tuple[Tensor, Tensor]:
    """Maximum of each unit's map and the position of that maximum.

    Args:
        acts: ``Tensor[B, C, h, w]``, floating point.

    Returns:
        ``(scores, peaks)``: ``scores`` is ``Tensor[B, C]`` (same dtype as ``acts``), the maximum over
        the ``h * w`` positions; ``peaks`` is ``LongTensor[B, C, 2]``, the ``(y, x)`` map position of
        that maximum. When several positions share the maximum, the first in row-major order wins
        (``torch.max`` returns the first maximal index).
    """
    if acts.ndim != 4:
        raise ValueError(f"acts must be [B, C, h, w], got shape {tuple(acts.shape)}")
    b, c, _, w = acts.shape
    scores, flat = acts.reshape(b, c, -1).max(dim=-1)
    peaks = torch.stack((flat // w, flat % w), dim=-1)
    return scores, peaks


# ----------------------------------------------------------------------------------------------
# Top-k images per unit, overall and per class
# ----------------------------------------------------------------------------------------------


def map_sums(acts: Tensor) -> Tensor:
    """Sum of each unit's map, ``Tensor[B, C]`` in float64: the second key of the top-k order."""
    if acts.ndim != 4:
        raise ValueError(f"acts must be [B, C, h, w], got shape {tuple(acts.shape)}")
    return acts.to(torch.float64).sum(dim=(2, 3))


def _select_topk(
    scores: Tensor, images: Tensor, peaks: Tensor, k: int, sums: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Best ``k`` candidates along the last axis: higher score first, then higher map sum, then lower
    image id.

    ``scores``/``images``/``sums``: ``[..., M]``; ``peaks``: ``[..., M, 2]``; ``M >= k``. The order is
    total (image ids are unique), so the selection does not depend on the candidates' input order —
    which is what makes ``merge`` exact. Returns ``(scores, images, peaks, sums)`` of the selection.
    """
    order = torch.argsort(images, dim=-1, stable=True)
    order = torch.gather(order, -1, torch.argsort(torch.gather(sums, -1, order), dim=-1, descending=True, stable=True))
    order = torch.gather(
        order, -1, torch.argsort(torch.gather(scores, -1, order), dim=-1, descending=True, stable=True)
    )[..., :k]
    peak_order = order.unsqueeze(-1).expand(*order.shape, 2)
    return (
        torch.gather(scores, -1, order),
        torch.gather(images, -1, order),
        torch.gather(peaks, -2, peak_order),
        torch.gather(sums, -1, order),
    )


@dataclass(frozen=True)
class TopKResult:
    """Top-k images per unit (see :class:`TopKPerUnit`). Empty slots: score NaN, image -1, peak -1.

    Attributes:
        scores: ``Tensor[C, k]`` map maxima, descending (ties: higher map sum, then lower image id
            first).
        images: ``LongTensor[C, k]`` image ids.
        peaks: ``LongTensor[C, k, 2]`` ``(y, x)`` map position of each maximum.
        class_scores, class_images, class_peaks: the same per (unit, class):
            ``[C, num_classes, k_per_class]`` (``[..., 2]`` for peaks); ``None`` without classes.
        class_counts: ``LongTensor[num_classes]`` images seen per class; ``None`` without classes.
    """

    scores: Tensor
    images: Tensor
    peaks: Tensor
    class_scores: Tensor | None = None
    class_images: Tensor | None = None
    class_peaks: Tensor | None = None
    class_counts: Tensor | None = None
    sums: Tensor | None = None
    class_sums: Tensor | None = None

    def ceiling_ties(self) -> Tensor:
        """``LongTensor[C]``: top images whose score equals the unit's best score (1 = no tie)."""
        best = self.scores[:, :1]
        return ((self.scores == best) & (self.images >= 0)).sum(dim=1)


class TopKPerUnit:
    """For each unit, the ``k`` images whose map maximum is highest (and per object class).

    The score of (image, unit) is the maximum of the unit's ``h x w`` map on that image; the peak is
    the map position of that maximum. Order: higher score first; ties broken by the higher sum of the
    unit's map over the image, then by lower image id. The second key is our choice: a unit that
    saturates (ReLU6 at 6.0 on many images) would otherwise show the dataset's first images; the map
    sum ranks them by how much of the image drives the unit to its ceiling, uses only the captured
    map (no pre-activation needed), and scales with the activation like the score. Per
    class (GG'18 §4.1 shows "the top 10 activations of the filter on object instances of the class"),
    the same selection is kept for every (unit, class) pair over the images of that class.

    Memory: ``C * (k + num_classes * k_per_class)`` slots. Per batch, work is vectorised over units,
    images and classes (no Python loop).

    Args:
        k: images kept per unit overall (ND'18 §3.1 shows 15).
        num_units: ``C``.
        num_classes: number of object classes, or ``None`` for no per-class statistics.
        k_per_class: images kept per (unit, class); defaults to ``k`` (GG'18 §4.1 uses 10).
        device: where the state lives (the caller's choice).
        dtype: dtype of stored scores (``float32`` default).
    """

    def __init__(
        self,
        k: int,
        num_units: int,
        num_classes: int | None = None,
        *,
        k_per_class: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if k < 1 or num_units < 1:
            raise ValueError("k and num_units must be positive")
        self.k = int(k)
        self.num_units = int(num_units)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.k_per_class = self.k if k_per_class is None else int(k_per_class)
        self.device = _device(device)
        self.dtype = dtype
        self.count = 0
        c, dev = self.num_units, self.device
        self._scores = torch.full((c, self.k), -math.inf, dtype=dtype, device=dev)
        self._images = torch.full((c, self.k), _EMPTY, dtype=torch.int64, device=dev)
        self._peaks = torch.full((c, self.k, 2), -1, dtype=torch.int64, device=dev)
        self._sums = torch.full((c, self.k), -math.inf, dtype=torch.float64, device=dev)
        if self.num_classes is not None:
            n, kc = self.num_classes, self.k_per_class
            self._csums = torch.full((c, n, kc), -math.inf, dtype=torch.float64, device=dev)
            self._cscores = torch.full((c, n, kc), -math.inf, dtype=dtype, device=dev)
            self._cimages = torch.full((c, n, kc), _EMPTY, dtype=torch.int64, device=dev)
            self._cpeaks = torch.full((c, n, kc, 2), -1, dtype=torch.int64, device=dev)
            self._ccounts = torch.zeros(n, dtype=torch.int64, device=dev)

    @torch.no_grad()
    def add(self, acts: Tensor, image_indices: Tensor, class_ids: Tensor | None = None) -> None:
        """Add a batch of maps ``Tensor[B, C, h, w]`` for images ``image_indices`` (``LongTensor[B]``).

        ``class_ids`` (``LongTensor[B]``, ``-1`` = no class) is required when ``num_classes`` is set.
        """
        scores, peaks = map_max_and_peak(acts)
        self.add_scores(scores, peaks, image_indices, class_ids, sums=map_sums(acts))

    @torch.no_grad()
    def add_scores(
        self,
        scores: Tensor,
        peaks: Tensor,
        image_indices: Tensor,
        class_ids: Tensor | None = None,
        *,
        sums: Tensor | None = None,
    ) -> None:
        """Add precomputed maxima: ``scores`` ``Tensor[B, C]``, ``peaks`` ``LongTensor[B, C, 2]``
        (as returned by :func:`map_max_and_peak`) and the map sums ``Tensor[B, C]`` (:func:`map_sums`;
        ``None``: ties are broken by image id alone)."""
        b = scores.shape[0]
        if scores.shape != (b, self.num_units) or peaks.shape != (b, self.num_units, 2):
            raise ValueError(f"expected scores [B, {self.num_units}] and peaks [B, {self.num_units}, 2]")
        if image_indices.shape != (b,):
            raise ValueError("image_indices must be LongTensor[B]")
        _check_device(scores, self.device, "scores")
        images = image_indices.to(torch.int64)
        s = scores.to(self.dtype).t()  # [C, B]
        p = peaks.to(torch.int64).transpose(0, 1)  # [C, B, 2]
        imgs = images.unsqueeze(0).expand(self.num_units, b)
        sm = torch.zeros_like(s, dtype=torch.float64) if sums is None else sums.to(torch.float64).t()  # [C, B]
        # Skip the merge when no score reaches any unit's current k-th best (ties may still enter:
        # a tie with a lower image id wins, so ">=" keeps the result exact).
        if bool((s >= self._scores[:, -1:]).any()):
            self._scores, self._images, self._peaks, self._sums = _select_topk(
                torch.cat((self._scores, s), 1),
                torch.cat((self._images, imgs), 1),
                torch.cat((self._peaks, p), 1),
                self.k,
                torch.cat((self._sums, sm), 1),
            )
        self.count += b
        if self.num_classes is None:
            return
        if class_ids is None:
            raise ValueError("class_ids is required when num_classes is set")
        if class_ids.shape != (b,):
            raise ValueError("class_ids must be LongTensor[B]")
        cls = class_ids.to(torch.int64)
        if bool(((cls < -1) | (cls >= self.num_classes)).any()):
            raise ValueError(f"class_ids must lie in [-1, {self.num_classes})")
        self._add_per_class(s, p, images, cls, sm)

    def _add_per_class(self, s: Tensor, p: Tensor, images: Tensor, cls: Tensor, sm: Tensor) -> None:
        """Per-class update, vectorised: group the batch's images by class into a padded
        ``[C, U, m]`` candidate block (``U`` classes present, ``m`` their largest count)."""
        keep = (cls >= 0).nonzero().squeeze(1)
        if keep.numel() == 0:
            return
        # Only images scoring at least their class's current k-th best for some unit can enter (ties
        # included, see ``add_scores``); after the first batches most are skipped.
        kth = self._cscores[:, :, -1]  # [C, n]
        reaches = (s[:, keep] >= kth[:, cls[keep]]).any(dim=0)
        self._ccounts.index_add_(0, cls[keep[~reaches]], torch.ones_like(cls[keep[~reaches]]))
        keep = keep[reaches]
        if keep.numel() == 0:
            return
        cls_k = cls[keep]
        cls_sorted, perm = torch.sort(cls_k, stable=True)
        members = keep[perm]  # batch positions grouped by class
        present, counts = torch.unique_consecutive(cls_sorted, return_counts=True)
        u = present.numel()
        group = torch.repeat_interleave(torch.arange(u, device=cls.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(members.numel(), device=cls.device) - starts[group]
        m = int(counts.max())
        c, dev = self.num_units, self.device
        cand_s = torch.full((c, u, m), -math.inf, dtype=self.dtype, device=dev)
        cand_i = torch.full((c, u, m), _EMPTY, dtype=torch.int64, device=dev)
        cand_p = torch.full((c, u, m, 2), -1, dtype=torch.int64, device=dev)
        cand_m = torch.full((c, u, m), -math.inf, dtype=torch.float64, device=dev)
        cand_m[:, group, slot] = sm[:, members]
        cand_s[:, group, slot] = s[:, members]
        cand_i[:, group, slot] = images[members].unsqueeze(0).expand(c, -1)
        cand_p[:, group, slot] = p[:, members]
        new_s, new_i, new_p, new_m = _select_topk(
            torch.cat((self._cscores[:, present], cand_s), -1),
            torch.cat((self._cimages[:, present], cand_i), -1),
            torch.cat((self._cpeaks[:, present], cand_p), -2),
            self.k_per_class,
            torch.cat((self._csums[:, present], cand_m), -1),
        )
        self._csums[:, present] = new_m
        self._cscores[:, present] = new_s
        self._cimages[:, present] = new_i
        self._cpeaks[:, present] = new_p
        self._ccounts.index_add_(0, present, counts)

    @torch.no_grad()
    def merge(self, other: TopKPerUnit) -> None:
        """Fold in another shard's state (disjoint images). Exact: equals a single pass."""
        if (other.k, other.k_per_class, other.num_units, other.num_classes) != (
            self.k,
            self.k_per_class,
            self.num_units,
            self.num_classes,
        ):
            raise ValueError("cannot merge TopKPerUnit with different k, units or classes")
        self._scores, self._images, self._peaks, self._sums = _select_topk(
            torch.cat((self._scores, other._scores.to(self.device, self.dtype)), 1),
            torch.cat((self._images, other._images.to(self.device)), 1),
            torch.cat((self._peaks, other._peaks.to(self.device)), 1),
            self.k,
            torch.cat((self._sums, other._sums.to(self.device)), 1),
        )
        self.count += other.count
        if self.num_classes is not None:
            self._cscores, self._cimages, self._cpeaks, self._csums = _select_topk(
                torch.cat((self._cscores, other._cscores.to(self.device, self.dtype)), -1),
                torch.cat((self._cimages, other._cimages.to(self.device)), -1),
                torch.cat((self._cpeaks, other._cpeaks.to(self.device)), -2),
                self.k_per_class,
                torch.cat((self._csums, other._csums.to(self.device)), -1),
            )
            self._ccounts += other._ccounts.to(self.device)

    @staticmethod
    def _finish(scores: Tensor, images: Tensor, peaks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        empty = images == _EMPTY
        return (
            scores.masked_fill(empty, math.nan),
            images.masked_fill(empty, -1),
            peaks.masked_fill(empty.unsqueeze(-1), -1),
        )

    @torch.no_grad()
    def result(self) -> TopKResult:
        """The current top-k (copies; see :class:`TopKResult` for shapes and padding)."""
        s, i, p = self._finish(self._scores, self._images, self._peaks)
        sums = self._sums.masked_fill(self._images == _EMPTY, math.nan)
        if self.num_classes is None:
            return TopKResult(s, i, p, sums=sums)
        cs, ci, cp = self._finish(self._cscores, self._cimages, self._cpeaks)
        csums = self._csums.masked_fill(self._cimages == _EMPTY, math.nan)
        return TopKResult(s, i, p, cs, ci, cp, self._ccounts.clone(), sums=sums, class_sums=csums)

    def state_dict(self) -> dict[str, Any]:
        """Plain dict of ints and tensors (loadable with ``torch.load(weights_only=True)``)."""
        state: dict[str, Any] = {
            "k": self.k,
            "k_per_class": self.k_per_class,
            "num_units": self.num_units,
            "num_classes": self.num_classes,
            "count": self.count,
            "scores": self._scores.clone(),
            "images": self._images.clone(),
            "peaks": self._peaks.clone(),
            "sums": self._sums.clone(),
        }
        if self.num_classes is not None:
            state |= {
                "class_sums": self._csums.clone(),
                "class_scores": self._cscores.clone(),
                "class_images": self._cimages.clone(),
                "class_peaks": self._cpeaks.clone(),
                "class_counts": self._ccounts.clone(),
            }
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, device: torch.device | str | None = None) -> TopKPerUnit:
        """Restore from :meth:`state_dict` onto ``device`` (default: CPU)."""
        obj = cls(
            state["k"],
            state["num_units"],
            state["num_classes"],
            k_per_class=state["k_per_class"],
            device=device,
            dtype=state["scores"].dtype,
        )
        obj.count = int(state["count"])
        obj._scores = state["scores"].to(obj.device).clone()
        obj._images = state["images"].to(obj.device).clone()
        obj._peaks = state["peaks"].to(obj.device).clone()
        if "sums" in state:  # states saved before the map-sum tie-break keep the image-id order
            obj._sums = state["sums"].to(obj.device).clone()
        else:
            obj._sums = torch.zeros_like(obj._scores, dtype=torch.float64)
        if obj.num_classes is not None:
            obj._csums = (
                state["class_sums"].to(obj.device).clone()
                if "class_sums" in state
                else torch.zeros_like(state["class_scores"], dtype=torch.float64).to(obj.device)
            )
            obj._cscores = state["class_scores"].to(obj.device).clone()
            obj._cimages = state["class_images"].to(obj.device).clone()
            obj._cpeaks = state["class_peaks"].to(obj.device).clone()
            obj._ccounts = state["class_counts"].to(obj.device).clone()
        return obj


# ----------------------------------------------------------------------------------------------
# Exact upper quantile
# ----------------------------------------------------------------------------------------------


def _quantile_positions(total_count: int, quantile: float) -> tuple[int, int, float]:
    """numpy's linear-method positions: ``(previous, next, gamma)`` in the ascending order.

    Mirrors ``numpy.lib._function_base_impl._quantile`` for ``method="linear"`` with a Python-float
    ``q``: virtual index ``(n - 1) * q`` in float64; at or past the last index both neighbours are the
    last element; gamma is the virtual index minus the (possibly adjusted) previous index.
    """
    n = int(total_count)
    virtual = (n - 1) * float(quantile)
    prev = math.floor(virtual)
    nxt = prev + 1
    if virtual >= n - 1:
        # numpy sets both to -1 (the last element) and computes gamma against -1
        prev_np = -1
        prev, nxt = n - 1, n - 1
        gamma = virtual - prev_np
    else:
        gamma = virtual - prev
    return prev, nxt, gamma


def quantile_buffer_size(total_count: int, quantile: float) -> int:
    """Values per unit to keep so that the linear-method quantile ``q`` of ``total_count`` values is
    exact: the order statistics at ascending positions ``floor((N-1) q)`` and the next one are among
    the top ``N - floor((N-1) q)`` values."""
    if total_count < 1:
        raise ValueError("total_count must be positive")
    prev, _, _ = _quantile_positions(total_count, quantile)
    return int(total_count) - prev


class UpperQuantile:
    """Exact per-unit quantile of all raw activation values, streamed.

    ``result()[c]`` equals ``numpy.quantile(values_c, quantile)`` (default ``method="linear"``, a
    Python float ``quantile``, values in ``dtype``) where ``values_c`` are all ``N = total_count``
    values of unit ``c`` over all images and map positions. ND'18 §2.2: ``T_k`` with
    ``P(a_k > T_k) = 0.005``, so the default ``quantile=0.995``.

    How: with ``p = floor((N-1) q)``, only the order statistics at ascending positions ``p`` and
    ``p + 1`` are needed, and both lie in the top ``m = N - p`` values (``~ N (1 - q)``, 0.5% of the
    data at the default). ``add`` keeps the top ``m`` values per unit with a running ``torch.topk`` over
    the kept buffer concatenated with the new batch (once the buffer is full, the batch is first cut
    to its top ``r`` values, ``r`` = the most values of any unit above that unit's smallest kept
    value; values equal to it cannot change the result). ``N`` must therefore be known up front
    (``total_count``: images in the WHOLE dataset — all shards — times ``h * w``); ``result()`` refuses
    to answer until exactly ``N`` values were added, so it is never silently approximate.

    Shards: build every shard's accumulator with the same global ``total_count``; the top ``m`` of a
    union is the top ``m`` of the shards' top ``m``, so ``merge`` is exact.

    Memory: ``C * m`` values; per batch a ``topk`` over ``C x (m + B h w)``.

    Args:
        num_units: ``C``.
        quantile: the level ``q`` in ``[0, 1]`` (ND'18: 0.995).
        total_count: ``N``, values per unit over the whole dataset.
        device: where the buffer lives.
        dtype: dtype of the kept values and of the result (``float32``, like the activations).
    """

    def __init__(
        self,
        num_units: int,
        quantile: float = 0.995,
        *,
        total_count: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not 0.0 <= quantile <= 1.0:
            raise ValueError("quantile must lie in [0, 1]")
        self.num_units = int(num_units)
        self.quantile = float(quantile)
        self.total_count = int(total_count)
        self.capacity = quantile_buffer_size(self.total_count, self.quantile)
        self.device = _device(device)
        self.dtype = dtype
        self.count = 0
        self._top = torch.full((self.num_units, 0), -math.inf, dtype=dtype, device=self.device)
        self._has_nan = torch.zeros(self.num_units, dtype=torch.bool, device=self.device)

    def _keep(self, candidates: Tensor) -> Tensor:
        if candidates.shape[1] <= self.capacity:
            return candidates
        return torch.topk(candidates, self.capacity, dim=1, largest=True, sorted=False).values

    @torch.no_grad()
    def add(self, acts: Tensor) -> None:
        """Add all values of a batch ``Tensor[B, C, h, w]`` (or ``Tensor[B, C]``)."""
        if acts.ndim < 2 or acts.shape[1] != self.num_units:
            raise ValueError(f"acts must be [B, {self.num_units}, ...], got {tuple(acts.shape)}")
        _check_device(acts, self.device, "acts")
        values = acts.transpose(0, 1).reshape(self.num_units, -1).to(self.dtype)
        if self.count + values.shape[1] > self.total_count:
            raise ValueError(
                f"more values than total_count={self.total_count} (had {self.count}, adding "
                f"{values.shape[1]}): total_count must count every shard's images times h*w"
            )
        self.count += values.shape[1]
        self._has_nan |= torch.isnan(values).any(dim=1)
        if self._top.shape[1] == self.capacity:
            # Once the buffer is full, only values above a unit's smallest kept value can enter (an
            # equal value would replace an equal one). Pre-select the batch's top ``r`` values, ``r``
            # the largest such count over units, so the merge topk stays ~``m + r`` wide.
            floor = self._top.min(dim=1, keepdim=True).values
            r = int((values > floor).sum(dim=1).max())
            if r == 0:
                return
            if r < values.shape[1]:
                values = torch.topk(values, r, dim=1, largest=True, sorted=False).values
        self._top = self._keep(torch.cat((self._top, values), dim=1))

    @torch.no_grad()
    def merge(self, other: UpperQuantile) -> None:
        """Fold in another shard built with the same ``total_count`` and ``quantile``. Exact."""
        if (other.num_units, other.quantile, other.total_count) != (
            self.num_units,
            self.quantile,
            self.total_count,
        ):
            raise ValueError("cannot merge UpperQuantile with different units, quantile or total_count")
        if self.count + other.count > self.total_count:
            raise ValueError("merged shards hold more values than total_count")
        self.count += other.count
        self._has_nan |= other._has_nan.to(self.device)
        self._top = self._keep(torch.cat((self._top, other._top.to(self.device, self.dtype)), dim=1))

    @torch.no_grad()
    def result(self) -> Tensor:
        """``Tensor[C]`` (``dtype``): the exact quantile per unit, NaN for a unit that saw a NaN.

        Raises ``RuntimeError`` unless exactly ``total_count`` values were added.
        """
        if self.count != self.total_count:
            raise RuntimeError(
                f"UpperQuantile saw {self.count} of {self.total_count} values per unit; "
                "the quantile is exact only over the whole dataset"
            )
        n = self.total_count
        desc = torch.sort(self._top, dim=1, descending=True).values
        prev, nxt, gamma = _quantile_positions(n, self.quantile)
        # ascending position i is descending position n - 1 - i
        a = desc[:, n - 1 - prev]
        b = desc[:, n - 1 - nxt]
        diff = b - a
        # numpy's _lerp, in the values' dtype, with the Python-float weight cast to that dtype
        if gamma >= 0.5:
            out = b - diff * torch.tensor(1.0 - gamma, dtype=self.dtype, device=self.device)
        else:
            out = a + diff * torch.tensor(gamma, dtype=self.dtype, device=self.device)
        return out.masked_fill(self._has_nan, math.nan)

    def state_dict(self) -> dict[str, Any]:
        """The kept values sorted (descending) per unit: the buffer's order depends on the batches and shards it
        came through, its sorted values do not, so a merged state saves exactly as a single pass's."""
        return {
            "num_units": self.num_units,
            "quantile": self.quantile,
            "total_count": self.total_count,
            "count": self.count,
            "top": torch.sort(self._top, dim=1, descending=True).values,
            "has_nan": self._has_nan.clone(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, device: torch.device | str | None = None) -> UpperQuantile:
        obj = cls(
            state["num_units"],
            state["quantile"],
            total_count=state["total_count"],
            device=device,
            dtype=state["top"].dtype,
        )
        obj.count = int(state["count"])
        obj._top = state["top"].to(obj.device).clone()
        obj._has_nan = state["has_nan"].to(obj.device).clone()
        return obj


# ----------------------------------------------------------------------------------------------
# Per-image scores and decile (non-maximal) exemplars — Net2Vec §5.1
# ----------------------------------------------------------------------------------------------


class ImageMaxScores:
    """Keeps every image's per-unit score (map maximum): ``images x units`` floats.

    The input to :func:`decile_exemplars`. Batches may arrive in any order; ``result()`` sorts by
    image id. ``merge`` concatenates shards (disjoint image ids), so it is exact.
    """

    def __init__(
        self,
        num_units: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.num_units = int(num_units)
        self.device = _device(device)
        self.dtype = dtype
        self._images: list[Tensor] = []
        self._scores: list[Tensor] = []

    @torch.no_grad()
    def add_scores(self, scores: Tensor, image_indices: Tensor) -> None:
        """``scores``: ``Tensor[B, C]``; ``image_indices``: ``LongTensor[B]``."""
        if scores.ndim != 2 or scores.shape[1] != self.num_units or image_indices.shape != scores.shape[:1]:
            raise ValueError(f"expected scores [B, {self.num_units}] and image_indices [B]")
        _check_device(scores, self.device, "scores")
        self._scores.append(scores.to(self.dtype).clone())
        self._images.append(image_indices.to(self.device, torch.int64).clone())

    @torch.no_grad()
    def add(self, acts: Tensor, image_indices: Tensor) -> None:
        """Add a batch of maps ``Tensor[B, C, h, w]``."""
        self.add_scores(map_max_and_peak(acts)[0], image_indices)

    def merge(self, other: ImageMaxScores) -> None:
        if other.num_units != self.num_units:
            raise ValueError("cannot merge ImageMaxScores with different numbers of units")
        images, scores = other._concat()
        self._images.append(images.to(self.device))
        self._scores.append(scores.to(self.device, self.dtype))

    def _concat(self) -> tuple[Tensor, Tensor]:
        if not self._images:
            return (
                torch.empty(0, dtype=torch.int64, device=self.device),
                torch.empty(0, self.num_units, dtype=self.dtype, device=self.device),
            )
        images, scores = torch.cat(self._images), torch.cat(self._scores)
        self._images, self._scores = [images], [scores]
        return images, scores

    @torch.no_grad()
    def result(self) -> tuple[Tensor, Tensor]:
        """``(image_indices LongTensor[N] ascending, scores Tensor[N, C])``.

        Raises ``ValueError`` if an image id was added twice (overlapping shards)."""
        images, scores = self._concat()
        order = torch.argsort(images, stable=True)
        images, scores = images[order], scores[order]
        if images.numel() > 1 and bool((images[1:] == images[:-1]).any()):
            raise ValueError("an image id was added more than once (overlapping shards?)")
        return images, scores

    def state_dict(self) -> dict[str, Any]:
        images, scores = self._concat()
        return {"num_units": self.num_units, "images": images.clone(), "scores": scores.clone()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, device: torch.device | str | None = None) -> ImageMaxScores:
        obj = cls(state["num_units"], device=device, dtype=state["scores"].dtype)
        obj._images = [state["images"].to(obj.device).clone()]
        obj._scores = [state["scores"].to(obj.device).clone()]
        return obj


@dataclass(frozen=True)
class DecileExemplars:
    """Non-maximal exemplars per unit (see :func:`decile_exemplars`). Empty slots: image -1, NaN.

    Attributes:
        images: ``LongTensor[C, num_bins, per_bin]`` image ids; bin 0 is the lowest decile.
        scores: ``Tensor[C, num_bins, per_bin]`` their scores.
        eligible: ``LongTensor[C]`` how many images formed each unit's distribution.
    """

    images: Tensor
    scores: Tensor
    eligible: Tensor


@torch.no_grad()
def decile_exemplars(
    scores: Tensor,
    image_indices: Tensor,
    *,
    num_bins: int = 10,
    per_bin: int = 1,
    min_score: float | None = 0.0,
    mode: str = "random",
    seed: int = 0,
    max_elements: int = 1 << 22,
) -> DecileExemplars:
    """Exemplars drawn from every decile of each unit's score distribution (Net2Vec §5.1).

    Net2Vec §5.1 / Fig. 8: "an example is automatically selected at each decile of the non-zero
    portion of the distribution" of per-image scores (there the individual IoU; here any per-image
    score: by default the map maximum kept by :class:`ImageMaxScores`, or an individual IoU row).
    Choices the paper leaves open, made here:

    * "non-zero portion": images with ``score > min_score`` (default 0, the paper's; ``None`` keeps
      every non-NaN score). NaN scores never count.
    * Deciles are equal-count bins of the eligible images ranked by ascending score (ties: lower image
      id first): bin ``b`` holds ranks ``[floor(b n / B), floor((b+1) n / B))`` of ``n`` eligible
      images. With fewer than ``num_bins`` images some bins are empty (-1).
    * ``mode="random"`` (default): uniformly at random within the bin, seeded (the paper's
      "automatically selected"); with ``per_bin > 1`` the bin is split into ``per_bin`` equal-count
      strata and one image is drawn from each, so picks never repeat. ``mode="median"``: the median
      rank of each stratum, no randomness.
    * Random numbers come from a CPU ``torch.Generator`` seeded with ``seed`` and are moved to the
      scores' device, so the choice is the same on every device.
    * Units are ranked a chunk at a time, so the working memory (an int64 rank and a float32 key per image
      and unit) is about ``12 * max_elements`` bytes whatever the number of images, not ``12 N C`` (full
      Broden's 63,305 images × 512 units would be 390 MB at once). The result does not depend on it.

    Args:
        scores: ``Tensor[N, C]`` (or ``Tensor[N]`` for one unit) per-image scores.
        image_indices: ``LongTensor[N]`` their image ids (unique).
        max_elements: images × units ranked at once (at least one unit).

    Returns:
        :class:`DecileExemplars` with ``[C, num_bins, per_bin]`` tensors (``C = 1`` for 1-D input).
    """
    if scores.ndim == 1:
        scores = scores.unsqueeze(1)
    if scores.ndim != 2 or image_indices.shape != scores.shape[:1]:
        raise ValueError("scores must be [N, C] and image_indices [N]")
    if mode not in ("random", "median"):
        raise ValueError("mode must be 'random' or 'median'")
    dev = scores.device
    n_img, c = scores.shape
    nb, pb = int(num_bins), int(per_bin)
    if n_img == 0:
        none = torch.full((c, nb, pb), -1, dtype=torch.int64, device=dev)
        nan = torch.full((c, nb, pb), math.nan, dtype=scores.dtype, device=dev)
        return DecileExemplars(none, nan, torch.zeros(c, dtype=torch.int64, device=dev))
    ids = image_indices.to(dev, torch.int64)
    by_id = torch.argsort(ids, stable=True)
    ids = ids[by_id]
    if mode == "random":  # drawn for all units at once: the same picks whatever the chunking
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        u = torch.rand((c, nb, pb), generator=gen, dtype=torch.float64).to(dev)
    chunk = max(1, int(max_elements) // n_img)
    parts = []
    for first in range(0, c, chunk):
        units = slice(first, min(c, first + chunk))
        s = scores[by_id, units].t()  # [chunk, N], columns in ascending image id
        m = s.shape[0]
        ok = ~torch.isnan(s)
        if min_score is not None:
            ok &= s > min_score
        key = s.to(torch.float32).masked_fill(~ok, -math.inf)
        order = torch.argsort(key, dim=1, stable=True)  # ineligible first, then ascending score, id
        del key
        n = ok.sum(dim=1)  # [chunk]
        b = torch.arange(nb, device=dev)
        j = torch.arange(pb, device=dev)
        n_ = n.view(m, 1, 1)
        lo = (b.view(1, nb, 1) * n_) // nb
        hi = ((b.view(1, nb, 1) + 1) * n_) // nb
        s_lo = lo + (j.view(1, 1, pb) * (hi - lo)) // pb
        s_hi = lo + ((j.view(1, 1, pb) + 1) * (hi - lo)) // pb
        width = s_hi - s_lo  # [chunk, nb, pb]
        if mode == "random":
            offset = torch.floor(u[units] * width.to(torch.float64)).to(torch.int64)
        else:
            offset = (width - 1).clamp(min=0) // 2
        rank = s_lo + torch.minimum(offset, (width - 1).clamp(min=0))
        pos = (n_img - n_) + rank  # position in the ascending order
        empty = width == 0
        pos = pos.masked_fill(empty, 0)
        col = torch.gather(order, 1, pos.view(m, -1)).view(m, nb, pb)
        images = ids[col].masked_fill(empty, -1)
        chosen = torch.gather(s, 1, col.view(m, -1)).view(m, nb, pb).masked_fill(empty, math.nan)
        parts.append((images, chosen, n))
    return DecileExemplars(*(torch.cat(column) for column in zip(*parts, strict=True)))


# ----------------------------------------------------------------------------------------------
# Activation cache (float16 memmap)
# ----------------------------------------------------------------------------------------------


_FLOAT16_MAX = 65504.0
FLOAT16_MAX = _FLOAT16_MAX


@torch.no_grad()
def units_beyond_float16(acts: Tensor) -> tuple[Tensor, Tensor]:
    """Units of ``acts`` (``Tensor[B, C, h, w]``) that the float16 cache cannot hold exactly: some value beyond
    ±65504 (it would be stored as ±inf) or not finite. Returns ``(units LongTensor[K], peaks float32 [K])`` with
    each such unit's largest magnitude; both empty in the common case (one reduction)."""
    peaks = acts.detach().abs().amax(dim=(0, 2, 3)).to(torch.float32)
    bad = ~(peaks <= FLOAT16_MAX)  # NaN compares false, so it lands here too
    units = torch.nonzero(bad).flatten()
    return units, peaks[units]


class ActivationCacheWriter:
    """Writes activation batches into a caller-provided ``np.memmap`` (``float16[N_rows, C, h, w]``).

    Row of image id ``i`` is ``i - row_offset`` (a shard's file may hold only its own image range).
    The caller creates, names and owns the file. float16 saturates beyond ±65504: such values become
    ±inf in the cache and are counted in :attr:`overflowed` (statistics computed by
    :func:`extract_statistics` use the float32 outputs, not the cache).
    """

    def __init__(self, memmap: np.ndarray, *, row_offset: int = 0) -> None:
        if memmap.dtype != np.float16 or memmap.ndim != 4:
            raise ValueError("the cache must be a float16 array of shape [N, C, h, w]")
        self.memmap = memmap
        self.row_offset = int(row_offset)
        self.written = np.zeros(memmap.shape[0], dtype=bool)
        self.overflowed = 0

    @torch.no_grad()
    def write(self, acts: Tensor, image_indices: Tensor) -> None:
        """Write ``Tensor[B, C, h, w]`` at the rows of ``image_indices`` (``LongTensor[B]``)."""
        if tuple(acts.shape[1:]) != tuple(self.memmap.shape[1:]) or acts.shape[0] != image_indices.shape[0]:
            raise ValueError(f"acts {tuple(acts.shape)} do not fit the cache {tuple(self.memmap.shape)}")
        rows = image_indices.detach().cpu().numpy().astype(np.int64) - self.row_offset
        if rows.size and (rows.min() < 0 or rows.max() >= self.memmap.shape[0]):
            raise IndexError("image index outside the cache's row range")
        half = acts.detach().to(torch.float16)
        if bool(acts.detach().abs().amax() > _FLOAT16_MAX):  # one reduction in the common case
            self.overflowed += int(torch.isinf(half).sum() - torch.isinf(acts).sum())
        data = half.cpu().numpy()
        if rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
            self.memmap[rows[0] : rows[0] + rows.size] = data  # contiguous: one slice write
        else:
            self.memmap[rows] = data
        self.written[rows] = True
        if rows.size:  # written once: the pages go to the kernel (page cache), not the resident set
            release_mapped_rows(self.memmap, int(rows.min()), int(rows.max()) + 1)

    @property
    def complete(self) -> bool:
        """Every row has been written."""
        return bool(self.written.all())

    def flush(self) -> None:
        flush = getattr(self.memmap, "flush", None)
        if flush is not None:
            flush()


def copy_cache_rows(source: np.ndarray, target: np.ndarray, *, row_offset: int, chunk_rows: int = 256) -> None:
    """Copy every row of ``source`` (``float16[R, C, h, w]``, e.g. one shard's maps) into ``target`` at rows
    ``row_offset .. row_offset + R``, ``chunk_rows`` at a time: memory stays a chunk, and each chunk's pages of
    ``target`` go back to the kernel once written (:func:`release_mapped_rows`)."""
    rows = source.shape[0]
    if tuple(source.shape[1:]) != tuple(target.shape[1:]) or not 0 <= row_offset <= target.shape[0] - rows:
        raise ValueError(f"rows of {tuple(source.shape)} do not fit {tuple(target.shape)} at row {row_offset}")
    for start in range(0, rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        target[row_offset + start : row_offset + stop] = source[start:stop]
        release_mapped_rows(target, row_offset + start, row_offset + stop)


def iter_activation_cache(
    memmap: np.ndarray,
    batch_size: int,
    *,
    start: int = 0,
    stop: int | None = None,
    row_offset: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Iterate a cache in row order: yields ``(acts Tensor[B, C, h, w] in dtype on device,
    image_indices LongTensor[B])`` for rows ``[start, stop)``; image id = row + ``row_offset``."""
    stop = memmap.shape[0] if stop is None else min(int(stop), memmap.shape[0])
    dev = torch.device(device)
    for r0 in range(int(start), stop, int(batch_size)):
        r1 = min(r0 + int(batch_size), stop)
        acts = torch.from_numpy(np.array(memmap[r0:r1])).to(device=dev, dtype=dtype)  # a writable copy
        yield acts, torch.arange(r0 + row_offset, r1 + row_offset, dtype=torch.int64, device=dev)


# ----------------------------------------------------------------------------------------------
# One pass over the data
# ----------------------------------------------------------------------------------------------


@dataclass
class LayerStatistics:
    """Everything one pass collects for one layer.

    Attributes:
        layer: layer name.
        shape: ``(C, h, w)`` of the layer's maps.
        topk: :class:`TopKPerUnit` (overall ``k_overall``, per class ``k_per_class``).
        quantile: :class:`UpperQuantile` (the dissection threshold ``T_k`` per unit).
        image_scores: :class:`ImageMaxScores` (per-image map maxima, for decile exemplars).
    """

    layer: str
    shape: tuple[int, int, int]
    topk: TopKPerUnit
    quantile: UpperQuantile
    image_scores: ImageMaxScores

    def merge(self, other: LayerStatistics) -> None:
        """Fold in another shard's statistics for the same layer. Exact."""
        if (other.layer, tuple(other.shape)) != (self.layer, tuple(self.shape)):
            raise ValueError("cannot merge statistics of different layers")
        self.topk.merge(other.topk)
        self.quantile.merge(other.quantile)
        self.image_scores.merge(other.image_scores)

    def to_state(self) -> dict[str, Any]:
        """Nested plain dict of str/int/float/tensors (``torch.save``-able, ``weights_only`` loadable)."""
        return {
            "layer": self.layer,
            "shape": list(self.shape),
            "topk": self.topk.state_dict(),
            "quantile": self.quantile.state_dict(),
            "image_scores": self.image_scores.state_dict(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, device: torch.device | str | None = None) -> LayerStatistics:
        return cls(
            layer=state["layer"],
            shape=tuple(int(v) for v in state["shape"]),  # type: ignore[arg-type]
            topk=TopKPerUnit.from_state_dict(state["topk"], device=device),
            quantile=UpperQuantile.from_state_dict(state["quantile"], device=device),
            image_scores=ImageMaxScores.from_state_dict(state["image_scores"], device=device),
        )


def batch_aligned_bounds(n_images: int, batch_size: int, shards: int) -> list[int]:
    """Image ranges of ``shards`` shards, ``bounds[k]:bounds[k + 1]``, cut on batch boundaries, so each image is
    computed in the same batch as in one pass (a convolution's float32 result can depend on the batch it runs
    in). ValueError when there are fewer batches than shards."""
    batches = -(-n_images // batch_size)
    if not 1 <= shards <= batches:
        raise ValueError(f"{shards} shards for {batches} batches of {batch_size} images")
    return [min(n_images, (index * batches // shards) * batch_size) for index in range(shards + 1)]


def fold_statistics(
    statistics: dict[str, LayerStatistics], states: Mapping[str, Mapping[str, Any]], *, device: torch.device | str
) -> None:
    """Fold one shard's saved states (``{layer: LayerStatistics.to_state()}``) into ``statistics`` (in place; the
    first shard's become the accumulators). Exact, as :meth:`LayerStatistics.merge`."""
    for name, state in states.items():
        part = LayerStatistics.from_state(state, device=device)
        if name in statistics:
            statistics[name].merge(part)
        else:
            statistics[name] = part


@torch.no_grad()
def extract_statistics(
    model_forward: Callable[[Tensor], Mapping[str, Tensor]],
    batches: Iterable[tuple[Tensor, Tensor, Tensor | None]],
    layers: Sequence[str],
    *,
    total_images: int,
    num_classes: int | None,
    device: torch.device | str,
    k_overall: int = 15,
    k_per_class: int = 10,
    quantile: float = 0.995,
    cache: Mapping[str, np.ndarray] | None = None,
    cache_row_offset: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, LayerStatistics]:
    """One pass over the data: one forward per batch updates every accumulator of every layer.

    Args:
        model_forward: images ``Tensor[B, 3, H, W]`` on ``device`` -> ``{layer: Tensor[B, C, h, w]}``
            (``Tensor[B, C]`` is taken as ``h = w = 1``). Called once per batch under ``no_grad``.
        batches: ``(images, image_indices LongTensor[B], class_ids LongTensor[B] | None)``; moved to
            ``device`` here.
        layers: the layers to collect.
        total_images: images in the WHOLE dataset (all shards): fixes the quantile's ``N =
            total_images * h * w`` so that shard states merge exactly.
        num_classes: object classes for per-class top-k (``None``: overall only).
        device: the caller's device; accumulators live there.
        k_overall: top images per unit (ND'18 §3.1 shows 15).
        k_per_class: top images per (unit, class) (GG'18 §4.1 shows 10).
        quantile: dissection quantile level (ND'18 §2.2: 0.995, i.e. the top 0.005).
        cache: optional ``{layer: float16 memmap [rows, C, h, w]}``; written batch by batch.
        cache_row_offset: image id of the caches' first row.

    Per-image scores (``image_scores``) are kept as float16: exact for the canonical float16-rounded maps the
    extraction service passes in, rounded otherwise (they only rank images for decile exemplars).
        progress: called after each batch with the number of images processed so far.

    Returns:
        ``{layer: LayerStatistics}``. Quantiles are final only when this pass (or the merge of all
        shards) covered ``total_images``.
    """
    dev = torch.device(device)
    stats: dict[str, LayerStatistics] = {}
    writers = {name: ActivationCacheWriter(mm, row_offset=cache_row_offset) for name, mm in (cache or {}).items()}
    done = 0
    for images, image_indices, class_ids in batches:
        images = images.to(dev)
        image_indices = image_indices.to(dev, torch.int64)
        class_ids = None if class_ids is None else class_ids.to(dev, torch.int64)
        outputs = model_forward(images)
        for name in layers:
            acts = outputs[name]
            if acts.ndim == 2:
                acts = acts[:, :, None, None]
            if name not in stats:
                c, h, w = (int(v) for v in acts.shape[1:])
                stats[name] = LayerStatistics(
                    layer=name,
                    shape=(c, h, w),
                    topk=TopKPerUnit(k_overall, c, num_classes, k_per_class=k_per_class, device=acts.device),
                    quantile=UpperQuantile(c, quantile, total_count=total_images * h * w, device=acts.device),
                    # float16 is exact here (the canonical maps are float16-rounded) and halves the one
                    # accumulator that grows with the dataset (images × units).
                    image_scores=ImageMaxScores(c, device=acts.device, dtype=torch.float16),
                )
            st = stats[name]
            scores, peaks = map_max_and_peak(acts)
            st.topk.add_scores(scores, peaks, image_indices, class_ids, sums=map_sums(acts))
            st.quantile.add(acts)
            st.image_scores.add_scores(scores, image_indices)
            if name in writers:
                writers[name].write(acts, image_indices)
        done += int(image_indices.shape[0])
        if progress is not None:
            progress(done)
    for writer in writers.values():
        writer.flush()
    if not stats:
        raise ValueError("no batches: nothing to extract")
    return stats
