"""Filters as part detectors (GG'18 §3.1): stimulus detections, box regression, NMS, VOC average precision,
and a precomputed matching that scores any union of filters' detections in microseconds (for the GA, §3.1.2).

Conventions. A *view* is one network input (an R-CNN-style object crop or a whole image, chosen by the caller)
of size ``H x W``. Boxes are ``float (x1, y1, x2, y2)`` in continuous input-pixel coordinates of their view
(pixel ``p`` spans ``[p, p + 1)``, as :mod:`analysis.engine.receptive_field` and ``torchvision.ops``; area =
``(x2 - x1) * (y2 - y1)``). Feature maps are ``Tensor[V, F, h, w]`` (views, filters, map rows, map columns).

Method (GG'18 §3.1, and where the paper is silent, our named choices):

* **Stimulus detections**: every local maximum of a filter's map (a value equal to the maximum of its 3x3
  neighbourhood) becomes a detection scored by its activation, with no minimum threshold. Our choice
  (``include_zero_peaks=False``): positions whose activation is exactly 0 are not peaks — on a ReLU map a flat
  zero region makes every position a "maximum" of a response that does not exist. Plateaus of equal positive
  values yield one detection per position (NMS then removes the duplicates).
* **Box regression** (§3.1.1): features ``γ(α) = (c_x, c_y, a_{r-1,c-1}, a_{r-1,c}, …, a_{r+1,c+1})`` (the
  receptive-field centre and the 3x3 neighbourhood in row-major order, zero outside the map — the ReLU
  floor), targets ``(G_x - c_x, G_y - c_y, G_w, G_h)``, weighted least squares with weights = activation.
  Training pairs: every position (not only peaks) with positive activation whose receptive-field centre lies
  inside a ground-truth box of its view, paired with each such box. Our choices: ``intercept=True`` appends a
  constant feature (the paper's ``w·γ`` as extracted has none; without one a constant part width is not
  expressible, and the R-CNN regressor the paper follows has a bias); ``ridge=1e-6`` (times each diagonal
  entry of the normal matrix, Marquardt-style) only for numerical stability. A filter with no positive training
  pair keeps its receptive-field boxes. Regressed widths and heights are floored at ``min_box_size`` (1 px) and boxes
  clipped to the view.
* **NMS**: per (filter, view), greedy by score (ties: input order). GG'18 cites Felzenszwalb et al. (2010),
  whose ``nms.m`` suppresses a box when the intersection with a kept (higher-scoring) box covers more than
  0.5 of the *suppressed box's own area*: ``nms_overlap="suppressed_area"``, ``nms_threshold=0.5``, the default.
  The R-CNN rule (IoU > 0.3) is the named option ``nms_overlap="iou"``, ``nms_threshold=0.3``. The area rule
  also removes a small box nested inside a kept larger one, which IoU keeps.
* **Location-prior floor** (ours; not in GG'18): an activation-blind detector per part that sees only where a
  map position lies (:func:`location_prior_score`). When parts sit at nearly fixed places in their crops, box
  regression from the receptive-field centre alone finds them whatever the filter does; a filter's AP means
  something only above this floor.
* **Correct detections**: IoU ≥ 0.4 with a ground-truth box of the part (Chen et al. 2014), matched as in the
  VOC devkit: in score order each detection takes the ground truth of maximal IoU in its view; if that one is
  already taken the detection is a false positive (duplicates), as is any detection below 0.4.
* **AP**: VOC 2010+ all-point interpolated average precision; recall over all ground-truth instances.
  Ties in score are ordered by input order (a stable sort), so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.engine.allocator import release_mapped_rows

__all__ = [
    "NMS_OVERLAPS",
    "DetectionConfig",
    "DetectionMatching",
    "PartScore",
    "Peaks",
    "PriorScore",
    "apply_box_regressors",
    "average_precision",
    "best_ground_truth",
    "box_normal_equations",
    "boxes_to_image",
    "boxes_to_view",
    "context_frame",
    "fit_box_regressors",
    "fit_part_regressors",
    "grouped_nms",
    "local_maxima",
    "location_prior_score",
    "neighbourhood_features",
    "neighbourhood_features_all",
    "nms_overlap_matrix",
    "part_size",
    "precision_recall",
    "regression_pairs",
    "score_part",
    "solve_box_regressors",
    "tp_flags",
    "views_per_chunk",
    "voc_ap",
]

FEATURES = 11  # c_x, c_y and 9 neighbourhood activations


@dataclass(frozen=True)
class DetectionConfig:
    """The knobs of part detection; defaults are GG'18's values where it gives one (see the module docstring)."""

    iou_threshold: float = 0.4
    nms_overlap: str = "suppressed_area"
    nms_threshold: float = 0.5
    regression: bool = True
    intercept: bool = True
    ridge: float = 1e-6
    include_zero_peaks: bool = False
    min_box_size: float = 1.0


@dataclass(frozen=True)
class Peaks:
    """Local maxima of a stack of maps: each a ``LongTensor[D]`` (view, filter, row, column) and scores
    ``float32 [D]``, ordered by (view, filter, row, column)."""

    view: Tensor
    filter: Tensor
    row: Tensor
    col: Tensor
    score: Tensor

    def __len__(self) -> int:
        return int(self.view.numel())


@torch.no_grad()
def local_maxima(maps: Tensor, *, include_zero_peaks: bool = False) -> Peaks:
    """Every position of ``maps`` ``[V, F, h, w]`` equal to the maximum of its 3x3 neighbourhood (the border
    padded with -inf), excluding value-0 positions unless ``include_zero_peaks``."""
    x = maps.to(torch.float32)
    pooled = F.max_pool2d(x, 3, stride=1, padding=1)  # max_pool2d pads with -inf
    mask = x >= pooled
    if not include_zero_peaks:
        mask &= x > 0
    view, filt, row, col = torch.nonzero(mask, as_tuple=True)
    return Peaks(view, filt, row, col, x[view, filt, row, col])


@torch.no_grad()
def neighbourhood_features(
    maps: Tensor, view: Tensor, filt: Tensor, row: Tensor, col: Tensor, cy: Tensor, cx: Tensor
) -> Tensor:
    """``γ(α)`` of the activations at ``(view, filt, row, col)`` (``LongTensor[K]`` each): ``float32 [K, 11]``
    = (c_x, c_y, the 3x3 neighbourhood row-major, 0 outside the map). ``cy [h]``, ``cx [w]`` are the
    receptive-field centres of map rows and columns (:func:`analysis.engine.receptive_field.unit_centers`)."""
    padded = F.pad(maps.to(torch.float32), (1, 1, 1, 1))
    values = [padded[view, filt, row + 1 + dy, col + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return torch.stack([cx[col], cy[row], *values], dim=1)


@torch.no_grad()
def neighbourhood_features_all(maps: Tensor, view: Tensor, row: Tensor, col: Tensor, cy: Tensor, cx: Tensor) -> Tensor:
    """``γ`` of the positions ``(view, row, col)`` (``LongTensor[K]``) under every filter of ``maps`` ``[V, F, h, w]``:
    ``float32 [F, K, 11]`` (as :func:`neighbourhood_features`; slice ``maps`` by filters to bound memory)."""
    padded = F.pad(maps.to(torch.float32), (1, 1, 1, 1))
    n_filters, k = maps.shape[1], view.numel()
    values = [padded[view, :, row + 1 + dy, col + 1 + dx].T for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # [F, K]
    centres = [cx[col].expand(n_filters, k), cy[row].expand(n_filters, k)]
    return torch.stack([*centres, *values], dim=2)


@torch.no_grad()
def regression_pairs(cy: Tensor, cx: Tensor, gt_boxes: Tensor, gt_view: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Map positions whose receptive-field centre lies inside a ground-truth box (``x1 ≤ c_x < x2`` and
    ``y1 ≤ c_y < y2``): ``(box index, row, column)`` LongTensors ``[K]``; the view is ``gt_view[box]``."""
    inside_y = (cy[None, :] >= gt_boxes[:, 1:2]) & (cy[None, :] < gt_boxes[:, 3:4])  # [B, h]
    inside_x = (cx[None, :] >= gt_boxes[:, 0:1]) & (cx[None, :] < gt_boxes[:, 2:3])  # [B, w]
    box, row, col = torch.nonzero(inside_y[:, :, None] & inside_x[:, None, :], as_tuple=True)
    return box, row, col


def _design(features: Tensor, intercept: bool) -> Tensor:
    if not intercept:
        return features.to(torch.float64)
    ones = torch.ones(*features.shape[:-1], 1, dtype=torch.float64, device=features.device)
    return torch.cat([features.to(torch.float64), ones], dim=-1)


@torch.no_grad()
def fit_box_regressors(
    features: Tensor, weights: Tensor, targets: Tensor, *, intercept: bool = True, ridge: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Weighted least squares per filter: ``argmin_w Σ_k a_k (t_k − w·γ_k)²`` for the four targets at once.

    Args:
        features: ``[F, K, D]`` γ of each training pair under each filter (the pairs are shared, the
            activations differ per filter).
        weights: ``[F, K]`` the activations (≥ 0).
        targets: ``[K, 4]`` or ``[F, K, 4]``: ``(G_x − c_x, G_y − c_y, G_w, G_h)``.

    Returns:
        ``(W float64 [F, D (+1), 4], fitted bool [F])``; filters whose weights sum to 0 get W = 0 and
        ``fitted`` False.
    """
    return solve_box_regressors(*box_normal_equations(features, weights, targets, intercept=intercept), ridge=ridge)


@torch.no_grad()
def box_normal_equations(
    features: Tensor, weights: Tensor, targets: Tensor, *, intercept: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """The weighted least-squares sums of :func:`fit_box_regressors` (arguments alike): ``(Σ a γ γᵀ float64
    [F, D, D], Σ a γ tᵀ [F, D, 4], Σ a [F])``. Sums over disjoint sets of pairs add up, so pairs can come a
    chunk of views at a time (:func:`fit_part_regressors`)."""
    x = _design(features, intercept)
    w = weights.to(torch.float64).clamp_min(0)
    t = targets.to(torch.float64)
    if t.dim() == 2:
        t = t.expand(x.shape[0], -1, -1)
    return torch.einsum("fkd,fk,fke->fde", x, w, x), torch.einsum("fkd,fk,fke->fde", x, w, t), w.sum(dim=1)


@torch.no_grad()
def solve_box_regressors(
    normal: Tensor, rhs: Tensor, weight_sum: Tensor, *, ridge: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """``(W float64 [F, D, 4], fitted bool [F])`` from :func:`box_normal_equations`' sums (see
    :func:`fit_box_regressors`)."""
    diagonal = normal.diagonal(dim1=1, dim2=2)
    scale = diagonal.mean(dim=1, keepdim=True).clamp_min(1e-12)
    damping = torch.diag_embed(ridge * diagonal + 1e-12 * scale)  # Marquardt-style: relative to each feature
    solution = torch.linalg.solve(normal + damping, rhs)
    fitted = weight_sum > 0
    return torch.where(fitted[:, None, None], solution, torch.zeros_like(solution)), fitted


@torch.no_grad()
def apply_box_regressors(
    weights: Tensor,
    fitted: Tensor,
    filt: Tensor,
    features: Tensor,
    rf_size: tuple[float, float],
    *,
    intercept: bool = True,
    frame: tuple[int, int] | None = None,
    min_box_size: float = 1.0,
) -> Tensor:
    """Regressed boxes ``float32 [K, 4]`` of detections of filters ``filt`` ``[K]`` with ``γ`` ``features``
    ``[K, 11]``: centre ``(c_x + d_x, c_y + d_y)``, size ``(d_w, d_h)`` floored at ``min_box_size``. Filters not
    ``fitted`` keep their receptive-field box (``rf_size`` = (height, width)). Clipped to ``frame`` = (H, W)."""
    x = _design(features, intercept)
    pred = torch.einsum("kd,kde->ke", x, weights[filt])
    cx, cy = features[:, 0].to(torch.float64), features[:, 1].to(torch.float64)
    use = fitted[filt]
    centre_x = torch.where(use, cx + pred[:, 0], cx)
    centre_y = torch.where(use, cy + pred[:, 1], cy)
    width = torch.where(use, pred[:, 2].clamp_min(min_box_size), torch.full_like(cx, float(rf_size[1])))
    height = torch.where(use, pred[:, 3].clamp_min(min_box_size), torch.full_like(cy, float(rf_size[0])))
    return receptive_boxes(centre_x, centre_y, width, height, frame)


def receptive_boxes(
    cx: Tensor, cy: Tensor, width: Tensor | float, height: Tensor | float, frame: tuple[int, int] | None
) -> Tensor:
    """``float32 [K, 4]`` boxes of the given centres and sizes, clipped to ``frame`` = (H, W) when given."""
    boxes = torch.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], dim=1)
    if frame is not None:
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, frame[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, frame[0])
    return boxes.to(torch.float32)


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a [..., N, 4]`` with ``b [..., M, 4]`` -> ``[..., N, M]`` (float64; 0 for empty unions)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(inter))


NMS_OVERLAPS = ("suppressed_area", "iou")


def nms_overlap_matrix(a: Tensor, b: Tensor, overlap: str) -> Tensor:
    """Overlap of each box of ``a [..., N, 4]`` (the keeper) with each of ``b [..., M, 4]`` (the candidate for
    suppression), ``[..., N, M]`` float64: ``iou``, or ``suppressed_area`` = intersection / area of the ``b`` box
    (Felzenszwalb et al. 2010, ``nms.m``; 0 for an empty ``b`` box)."""
    if overlap == "iou":
        return _pairwise_iou(a, b)
    if overlap != "suppressed_area":
        raise ValueError(f"nms overlap must be one of {NMS_OVERLAPS}, not {overlap!r}")
    a, b = a.to(torch.float64), b.to(torch.float64)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    area = area_b[..., None, :].expand_as(inter)
    return torch.where(area > 0, inter / area.clamp_min(1e-300), torch.zeros_like(inter))


@torch.no_grad()
def grouped_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, threshold: float, overlap: str = "iou", max_cells: int = 1 << 22
) -> Tensor:
    """Greedy NMS within each group (e.g. one (filter, view) pair), vectorised across groups.

    Returns the kept indices (``LongTensor``, ascending). Within a group boxes are visited by decreasing score
    (ties: lower index first); a box is dropped when its ``overlap`` (:func:`nms_overlap_matrix`) with an already
    kept box exceeds ``threshold`` (with ``iou``, the rule of ``torchvision.ops.nms``). Groups are padded to their
    largest size in chunks of at most ``max_cells`` overlap entries, so memory stays bounded.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = np.lexsort((np.arange(n), -scores.cpu().numpy().astype(np.float64), groups.cpu().numpy()))
    order = torch.from_numpy(order).to(boxes.device)
    g = groups[order]
    starts = torch.ones(n, dtype=torch.bool, device=boxes.device)
    starts[1:] = g[1:] != g[:-1]
    first = torch.nonzero(starts).flatten()
    sizes = torch.diff(torch.cat([first, torch.tensor([n], device=boxes.device)]))
    group_of = torch.cumsum(starts.to(torch.int64), 0) - 1
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    single = sizes[group_of] == 1
    keep[single] = True
    by_size = torch.argsort(sizes, stable=True)
    sizes_sorted = sizes[by_size].cpu().numpy()
    n_groups = len(sizes_sorted)
    position = int(np.searchsorted(sizes_sorted, 1, side="right"))
    while position < n_groups:
        # the next groups (ascending size) while the padded IoU tensor [groups, m, m] fits in max_cells
        counts = np.arange(1, n_groups - position + 1)
        fits = counts * sizes_sorted[position:].astype(np.int64) ** 2 <= max_cells
        end = position + max(1, int(np.argmin(fits)) if not fits.all() else len(fits))
        chunk = by_size[position:end]
        m = int(sizes[chunk].max())
        index = first[chunk][:, None] + torch.arange(m, device=boxes.device)[None, :]
        valid = torch.arange(m, device=boxes.device)[None, :] < sizes[chunk][:, None]
        index = torch.where(valid, index, torch.zeros_like(index))
        chunk_boxes = boxes[order[index]]
        iou = nms_overlap_matrix(chunk_boxes, chunk_boxes, overlap) > threshold
        kept = torch.zeros_like(valid)
        suppressed = ~valid
        for k in range(m):
            take = ~suppressed[:, k]
            kept[:, k] = take
            suppressed |= take[:, None] & iou[:, k, :]
        keep[order[index[kept]]] = True
        position = end
    return torch.nonzero(keep).flatten()


@torch.no_grad()
def best_ground_truth(
    boxes: Tensor, view: Tensor, gt_boxes: Tensor, gt_view: Tensor, iou_threshold: float, chunk: int = 1 << 16
) -> Tensor:
    """For each detection, the index of the ground-truth box of its view with maximal IoU (the first on ties)
    when that IoU ≥ ``iou_threshold``, else -1 (``LongTensor[D]``). This is the only geometry VOC matching
    needs: a detection's candidate box does not depend on the other detections."""
    d = boxes.shape[0]
    result = torch.full((d,), -1, dtype=torch.int64, device=boxes.device)
    if d == 0 or gt_boxes.shape[0] == 0:
        return result
    n_views = int(max(int(view.max()), int(gt_view.max())) + 1)
    counts = torch.bincount(gt_view, minlength=n_views)
    g_max = int(counts.max())
    order = torch.argsort(gt_view, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(gt_view), device=boxes.device) - starts[gt_view[order]]
    table = torch.full((n_views, g_max), -1, dtype=torch.int64, device=boxes.device)
    table[gt_view[order], slot] = order
    for begin in range(0, d, chunk):
        ids = table[view[begin : begin + chunk]]  # [c, g_max]
        candidates = gt_boxes[ids.clamp_min(0)]
        iou = _pairwise_iou(boxes[begin : begin + chunk, None, :], candidates)[:, 0, :]
        iou = torch.where(ids >= 0, iou, torch.full_like(iou, -1.0))
        value, arg = iou.max(dim=1)
        best = ids.gather(1, arg[:, None])[:, 0]
        result[begin : begin + chunk] = torch.where(value >= iou_threshold, best, torch.full_like(best, -1))
    return result


def score_order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, ties by increasing index (a stable sort)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)), -scores))


def tp_flags(best_gt_in_order: np.ndarray) -> np.ndarray:
    """True positives of detections already in score order, given each one's best ground truth (-1 = none):
    the first detection taking a ground truth is correct, later ones are duplicates (false positives)."""
    best = np.asarray(best_gt_in_order, dtype=np.int64)
    tp = np.zeros(len(best), dtype=bool)
    has = np.flatnonzero(best >= 0)
    if len(has):
        _, first = np.unique(best[has], return_index=True)
        tp[has[first]] = True
    return tp


def precision_recall(tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection (``float64 [D]``) of a ranked list of TP flags."""
    tp = np.asarray(tp, dtype=bool)
    hits = np.cumsum(tp)
    ranks = np.arange(1, len(tp) + 1)
    return hits / ranks, hits / max(n_gt, 1)


def voc_ap(tp: np.ndarray, n_gt: int) -> tuple[float, float]:
    """``(AP, maximal recall)`` of ranked TP flags, VOC 2010+ all-point interpolation: the area under the
    precision envelope (precision at recall r = max precision at any recall ≥ r). 0 without ground truth."""
    tp = np.asarray(tp, dtype=bool)
    if n_gt <= 0 or len(tp) == 0 or not tp.any():
        return 0.0, 0.0
    precision, _ = precision_recall(tp, n_gt)
    at_hits = precision[tp]
    envelope = np.maximum.accumulate(at_hits[::-1])[::-1]
    return float(envelope.sum() / n_gt), float(tp.sum() / n_gt)


def average_precision(
    boxes: Tensor, scores: Tensor, view: Tensor, gt_boxes: Tensor, gt_view: Tensor, iou_threshold: float = 0.4
) -> tuple[float, float]:
    """AP and maximal recall of a set of detections from scratch (match, sort, greedy, VOC AP)."""
    best = best_ground_truth(boxes, view, gt_boxes, gt_view, iou_threshold).cpu().numpy()
    order = score_order(scores.cpu().numpy())
    return voc_ap(tp_flags(best[order]), int(gt_boxes.shape[0]))


class DetectionMatching:
    """Every filter's detections of one part, matched once, so that the AP of any union of filters is cheap.

    A detection's VOC outcome in a union depends only on (a) its ground truth of maximal IoU (fixed,
    :func:`best_ground_truth`) and (b) whether a better-ranked detection of the union took that ground truth
    first. All detections get one global rank (score descending, ties by input order); per filter we keep the
    sorted ranks and, per ground truth, the best rank of a detection that could take it. The union of a
    selection S then has, for each ground truth, its TP at ``min_{f∈S} first[f, g]`` and that TP's position in
    the union's ranking is ``Σ_{f∈S} #{detections of f with rank ≤ r}`` (binary searches): AP needs no sort and
    no IoU. Equal to :func:`average_precision` on the concatenated detections (ties by input order).

    Args:
        det_filter: ``int [D]`` filter of each detection; det_score ``float [D]``; det_gt ``int [D]`` the best
            ground truth (-1 for none); n_gt the number of ground-truth instances; n_filters F.
    """

    def __init__(
        self,
        det_filter: np.ndarray,
        det_score: np.ndarray,
        det_gt: np.ndarray,
        n_gt: int,
        n_filters: int,
        max_table_cells: int = 1 << 25,
    ):
        det_filter = np.asarray(det_filter, dtype=np.int64)
        det_gt = np.asarray(det_gt, dtype=np.int64)
        d = len(det_filter)
        self.n_gt = int(n_gt)
        self.n_filters = int(n_filters)
        rank = np.empty(d, dtype=np.int64)
        rank[score_order(det_score)] = np.arange(d)
        by_filter = np.lexsort((rank, det_filter))
        self._ranks = rank[by_filter]
        counts = np.bincount(det_filter, minlength=n_filters)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self.counts = counts
        self._big = np.int64(d + 1)
        first = np.full((self.n_filters, max(self.n_gt, 1)), self._big, dtype=np.int64)
        hit = det_gt >= 0
        np.minimum.at(first, (det_filter[hit], det_gt[hit]), rank[hit])
        self._first = first
        # Only a (filter, ground truth) "first" detection can ever be a union's true positive. For each of them
        # (sorted global ranks ``_candidates``) and each filter: how many of the filter's detections rank at or
        # above it. A union's TP positions are then column sums over its filters, with no per-filter loop.
        # The table is F x (at most F x G) int32; past ``max_table_cells`` the positions come from one binary
        # search per selected filter instead (same numbers, slower).
        candidates = np.unique(first[first < self._big])
        self._candidates = candidates
        self._below = None
        if self.n_filters * len(candidates) <= max_table_cells:
            below = np.zeros((self.n_filters, len(candidates)), dtype=np.int32)
            for f in range(self.n_filters):
                below[f] = np.searchsorted(
                    self._ranks[self._offsets[f] : self._offsets[f + 1]], candidates, side="right"
                )
            self._below = below
        self._cache: dict[bytes, tuple[float, float]] = {}

    def _tp_positions(self, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global ranks of the union's true positives (ascending) and their 1-based positions in the union."""
        tp_rank = self._first[selected].min(axis=0)
        tp_rank = np.sort(tp_rank[tp_rank < self._big])
        if self._below is not None:
            columns = np.searchsorted(self._candidates, tp_rank)
            return tp_rank, self._below[np.ix_(selected, columns)].sum(axis=0, dtype=np.int64)
        position = np.zeros(len(tp_rank), dtype=np.int64)
        for f in selected:
            position += np.searchsorted(self._ranks[self._offsets[f] : self._offsets[f + 1]], tp_rank, side="right")
        return tp_rank, position

    def ap(self, chromosome: np.ndarray) -> tuple[float, float]:
        """``(AP, maximal recall)`` of the union of the filters where ``chromosome`` (bool ``[F]``) is set."""
        chromosome = np.asarray(chromosome, dtype=bool)
        key = np.packbits(chromosome).tobytes()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        selected = np.flatnonzero(chromosome)
        if len(selected) == 0 or self.n_gt == 0:
            result = (0.0, 0.0)
        else:
            _, position = self._tp_positions(selected)
            if len(position) == 0:
                result = (0.0, 0.0)
            else:
                precision = np.arange(1, len(position) + 1) / position
                envelope = np.maximum.accumulate(precision[::-1])[::-1]
                result = (float(envelope.sum() / self.n_gt), float(len(position) / self.n_gt))
        self._cache[key] = result
        return result

    def single_aps(self) -> tuple[np.ndarray, np.ndarray]:
        """AP and maximal recall of each filter alone: ``float64 [F]`` each."""
        aps, recalls = np.zeros(self.n_filters), np.zeros(self.n_filters)
        for f in range(self.n_filters):
            chromosome = np.zeros(self.n_filters, dtype=bool)
            chromosome[f] = True
            aps[f], recalls[f] = self.ap(chromosome)
        return aps, recalls

    def curve(self, chromosome: np.ndarray, max_points: int = 200) -> tuple[list[float], list[float]]:
        """The union's precision–recall curve at its true positives (precision as measured, not interpolated),
        starting at recall 0 and thinned to at most ``max_points`` points: ``(recall, precision)``."""
        selected = np.flatnonzero(np.asarray(chromosome, dtype=bool))
        if len(selected) == 0 or self.n_gt == 0:
            return [0.0], [1.0]
        _, position = self._tp_positions(selected)
        hits = np.arange(1, len(position) + 1)
        recall, precision = hits / self.n_gt, hits / np.maximum(position, 1)
        if len(recall) > max_points:
            keep = np.unique(np.linspace(0, len(recall) - 1, max_points).round().astype(int))
            recall, precision = recall[keep], precision[keep]
        return [0.0, *recall.tolist()], [float(precision[0]) if len(precision) else 1.0, *precision.tolist()]


# -- one part class over a dataset's views: boxes between frames, detections, regression, AP, filter sets ---------


def boxes_to_view(boxes: np.ndarray, frames: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Image-pixel boxes ``float [n, 4]`` -> the input pixels of their views, whose ``frames`` ``float [n, 4]``
    (the image region, x1 y1 x2 y2, warped to an input of ``input_size`` ``(H, W)``); float64."""
    frames = np.asarray(frames, dtype=np.float64).reshape(-1, 4)
    sx = input_size[1] / (frames[:, 2] - frames[:, 0])
    sy = input_size[0] / (frames[:, 3] - frames[:, 1])
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 0::2] = (out[:, 0::2] - frames[:, 0:1]) * sx[:, None]
    out[:, 1::2] = (out[:, 1::2] - frames[:, 1:2]) * sy[:, None]
    return out


def boxes_to_image(boxes: np.ndarray, frames: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Input-pixel boxes ``[n, 4]`` of views with ``frames`` ``[n, 4]`` -> image pixels (inverse of
    :func:`boxes_to_view`); float64."""
    sx = (frames[:, 2] - frames[:, 0]) / input_size[1]
    sy = (frames[:, 3] - frames[:, 1]) / input_size[0]
    out = np.asarray(boxes, dtype=np.float64).copy()
    out[:, 0::2] = out[:, 0::2] * sx[:, None] + frames[:, 0:1]
    out[:, 1::2] = out[:, 1::2] * sy[:, None] + frames[:, 1:2]
    return out


def context_frame(box: tuple[float, float, float, float], context: float) -> tuple[float, float, float, float]:
    """R-CNN's crop of an object box (x1 y1 x2 y2, image pixels): ``context`` of the warped input on each side,
    i.e. the box grows by ``context / (1 − 2·context)`` of its size per side (GG'18 §4.1 uses 16/227)."""
    x1, y1, x2, y2 = box
    grow = context / (1 - 2 * context)
    pad_x, pad_y = (x2 - x1) * grow, (y2 - y1) * grow
    return x1 - pad_x, y1 - pad_y, x2 + pad_x, y2 + pad_y


def part_size(part_boxes: np.ndarray, object_boxes: np.ndarray) -> tuple[float, float]:
    """``(mean size, relative size)`` of a part class: the mean over its boxes ``[n, 4]`` of (width + height) / 2
    (GG'18 §4.1's size rule) and the mean part area over the mean area of the object boxes ``[m, 4]``."""
    part_boxes = np.asarray(part_boxes, dtype=np.float64).reshape(-1, 4)
    objects = np.asarray(object_boxes, dtype=np.float64).reshape(-1, 4)
    widths, heights = part_boxes[:, 2] - part_boxes[:, 0], part_boxes[:, 3] - part_boxes[:, 1]
    object_area = float(np.mean((objects[:, 2] - objects[:, 0]) * (objects[:, 3] - objects[:, 1])))
    relative = float(np.mean(widths * heights) / object_area) if object_area > 0 else 0.0
    return float(np.mean((widths + heights) / 2)), relative


def views_per_chunk(shape, max_bytes: int = 1 << 28) -> int:
    """Views of maps ``shape`` ``(V, F, h, w)`` worked on at once: their float32 copy, padded copy and pooled
    map (about three copies) fit in ``max_bytes`` (256 MiB by default), at least one view."""
    _, n_filters, h, w = (int(v) for v in shape)
    return max(1, int(max_bytes) // max(1, 3 * 4 * n_filters * (h + 2) * (w + 2)))


def _views_on(maps, start: int, stop: int, device) -> Tensor:
    """``float32 [stop - start, F, h, w]`` on ``device``: views ``start:stop`` of ``maps`` (a tensor, or any array
    indexable by a slice of views, such as a memory map, so the whole stack never needs to be in memory)."""
    chunk = maps[start:stop]
    if not isinstance(chunk, Tensor):
        chunk = torch.from_numpy(np.array(chunk))  # a copy: a memory map's pages can then go back
        release_mapped_rows(maps, start, stop)
    return chunk.to(device=device, dtype=torch.float32)


@torch.no_grad()
def fit_part_regressors(
    maps,
    cy: Tensor,
    cx: Tensor,
    gt_boxes: Tensor,
    gt_view: Tensor,
    *,
    intercept: bool = True,
    ridge: float = 1e-6,
    max_design: int = 1_000_000,
    view_chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Box regressors of every filter for one part (§3.1.1): ``(W float64 [F, 11 (+1), 4], fitted bool [F])``
    trained on the :func:`regression_pairs` of ground truth ``gt_boxes`` ``[G, 4]`` (view pixels) in views
    ``gt_view`` ``[G]``, on ``gt_boxes``' device. ``maps`` ``[V, F, h, w]`` (a tensor or a memory map) are read
    ``view_chunk`` views at a time (:func:`views_per_chunk` by default) and the weighted least-squares sums added
    up, so memory does not grow with the views; filters go in chunks so that the ``[chunk, K, 12]`` float64
    design of a view chunk's ``K`` pairs holds at most ``max_design`` pairs. ``cy [h]``, ``cx [w]``: the
    receptive-field centres of map rows and columns."""
    device = gt_boxes.device
    n_views, n_filters = (int(v) for v in maps.shape[:2])
    dims = FEATURES + int(intercept)
    normal = torch.zeros((n_filters, dims, dims), dtype=torch.float64, device=device)
    rhs = torch.zeros((n_filters, dims, 4), dtype=torch.float64, device=device)
    weight_sum = torch.zeros(n_filters, dtype=torch.float64, device=device)
    if not len(gt_view):
        return rhs, weight_sum > 0
    box, row, col = regression_pairs(cy, cx, gt_boxes, gt_view)
    pair_view = gt_view[box]
    g = gt_boxes[box].to(torch.float64)
    targets = torch.stack(
        [(g[:, 0] + g[:, 2]) / 2 - cx[col], (g[:, 1] + g[:, 3]) / 2 - cy[row], g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]],
        dim=1,
    )
    view_chunk = view_chunk or views_per_chunk(maps.shape)
    for first in range(0, n_views, view_chunk):
        last = min(n_views, first + view_chunk)
        inside = torch.nonzero((pair_view >= first) & (pair_view < last)).flatten()
        if not len(inside):
            continue
        views = _views_on(maps, first, last, device)
        p_view, p_row, p_col = pair_view[inside] - first, row[inside], col[inside]
        chunk = max(1, int(max_design // len(inside)))
        for start in range(0, n_filters, chunk):
            stop = min(n_filters, start + chunk)
            sums = box_normal_equations(
                neighbourhood_features_all(views[:, start:stop], p_view, p_row, p_col, cy, cx),
                views[p_view, start:stop, p_row, p_col].T,
                targets[inside],
                intercept=intercept,
            )
            for total, part in zip((normal, rhs, weight_sum), sums, strict=True):
                total[start:stop] += part
    return solve_box_regressors(normal, rhs, weight_sum, ridge=ridge)


@dataclass
class PartScore:
    """One part class scored over its views: the detections after regression and NMS (``det_*``, numpy, boxes in
    view pixels; ``det_gt`` the matched ground truth or -1) and the APs (VOC) and maximal recalls of every filter
    alone, the GA combination, TopFilters (as many filters as the GA chose) and all filters, with PR curves of the
    three best filters and of the two combinations."""

    det_filter: np.ndarray
    det_view: np.ndarray
    det_box: np.ndarray
    det_score: np.ndarray
    det_gt: np.ndarray
    single_ap: np.ndarray
    single_recall: np.ndarray
    best_filter: int
    ga_filters: list[int]
    ga_ap: float
    ga_recall: float
    ga_history: list
    top_filters: list[int]
    top_ap: float
    top_recall: float
    all_ap: float
    all_recall: float
    curves: dict[str, dict[str, list[float]]]

    def summary(self) -> dict:
        """The scalar results, as a part-detection row stores them."""
        return {
            "n_detections": int(len(self.det_filter)),
            "best_filter": self.best_filter,
            "best_ap": float(self.single_ap[self.best_filter]),
            "best_recall": float(self.single_recall[self.best_filter]),
            "ga_filters": self.ga_filters,
            "ga_ap": self.ga_ap,
            "ga_recall": self.ga_recall,
            "ga_history": self.ga_history,
            "top_filters": self.top_filters,
            "top_ap": self.top_ap,
            "top_recall": self.top_recall,
            "all_ap": self.all_ap,
            "all_recall": self.all_recall,
            "single_ap": self.single_ap.tolist(),
            "single_recall": self.single_recall.tolist(),
            "curves": self.curves,
        }


@torch.no_grad()
def score_part(
    maps,
    geometry,
    gt_boxes: Tensor,
    gt_view: Tensor,
    *,
    rf_size,
    input_size: tuple[int, int],
    config: DetectionConfig = DetectionConfig(),
    ga=None,
    curve_points: int = 150,
    progress=None,
    view_chunk: int | None = None,
) -> PartScore:
    """GG'18 §3.1 for one part class over the views of ``maps`` ``[V, F, h, w]`` (a tensor or a memory map, read
    ``view_chunk`` views at a time, :func:`views_per_chunk` by default), units placed by ``geometry`` (a
    ``LayerGeometry``), with ground truth ``gt_boxes`` ``float32 [G, 4]`` (view pixels) in views ``gt_view``
    ``[G]``; computed on ``gt_boxes``' device. Regressors per filter are trained on the views themselves
    (``config.regression``, one pass over the views); a second pass takes each view chunk's stimulus detections
    (every local maximum), regresses their boxes (unfitted filters keep their ``rf_size`` ``(h, w)`` box) clipped
    to ``input_size``, applies NMS per (filter, view) and finds each kept detection's ground truth, so only the
    kept detections stay in memory. Then VOC AP per filter, the GA (:mod:`analysis.engine.genetic`, ``ga`` a
    ``GAConfig``; ``progress(generation)``), TopFilters and all filters. Chunking changes nothing but the
    summation order of the regression sums: detections keep their global (view, filter, row, column) order."""
    from analysis.engine.genetic import GAConfig, run_ga, top_filters
    from analysis.engine.receptive_field import unit_centers

    device = gt_boxes.device
    n_views, n_filters, h, w = (int(v) for v in maps.shape)
    cy, cx = unit_centers(geometry, h, w, device=device)
    view_chunk = view_chunk or views_per_chunk(maps.shape)
    used = slice(None) if config.regression else slice(0)  # without regression every filter keeps its RF boxes
    weights, fitted = fit_part_regressors(
        maps,
        cy,
        cx,
        gt_boxes[used],
        gt_view[used],
        intercept=config.intercept,
        ridge=config.ridge,
        view_chunk=view_chunk,
    )
    kept = {"box": [], "view": [], "filter": [], "score": [], "gt": []}
    for first in range(0, n_views, view_chunk):
        views = _views_on(maps, first, min(n_views, first + view_chunk), device)
        peaks = local_maxima(views, include_zero_peaks=config.include_zero_peaks)
        boxes = apply_box_regressors(
            weights,
            fitted,
            peaks.filter,
            neighbourhood_features(views, peaks.view, peaks.filter, peaks.row, peaks.col, cy, cx),
            (rf_size[0], rf_size[1]),
            intercept=config.intercept,
            frame=input_size,
            min_box_size=config.min_box_size,
        )
        del views
        view = peaks.view + first
        keep = grouped_nms(boxes, peaks.score, peaks.filter * n_views + view, config.nms_threshold, config.nms_overlap)
        kept["box"].append(boxes[keep])
        kept["view"].append(view[keep])
        kept["filter"].append(peaks.filter[keep])
        kept["score"].append(peaks.score[keep])
        kept["gt"].append(best_ground_truth(boxes[keep], view[keep], gt_boxes, gt_view, config.iou_threshold))
    if not kept["box"]:  # no views
        kept = {
            "box": [torch.zeros((0, 4))],
            **{k: [torch.zeros(0, dtype=torch.int64)] for k in ("view", "filter", "gt")},
        }
        kept["score"] = [torch.zeros(0)]
    det_boxes, det_view = torch.cat(kept["box"]), torch.cat(kept["view"])
    det_filter, det_score = torch.cat(kept["filter"]).cpu().numpy(), torch.cat(kept["score"]).cpu().numpy()
    best = torch.cat(kept["gt"]).cpu().numpy()
    matching = DetectionMatching(det_filter, det_score, best, len(gt_view), n_filters)
    singles, single_recall = matching.single_aps()
    ranked = np.lexsort((np.arange(n_filters), -singles))
    best_filter = int(ranked[0])
    result = run_ga(
        lambda z: matching.ap(z)[0], n_filters, ga or GAConfig(), best_single=best_filter, progress=progress
    )
    ga_ap, ga_recall = matching.ap(result.chromosome)
    top = top_filters(singles, max(1, len(result.filters)))
    top_ap, top_recall = matching.ap(top)
    all_ap, all_recall = matching.ap(np.ones(n_filters, dtype=bool))
    curves = {}
    for f in ranked[:3]:
        chromosome = np.zeros(n_filters, dtype=bool)
        chromosome[f] = True
        recall, precision = matching.curve(chromosome, curve_points)
        curves[f"filter {int(f)}"] = {"recall": recall, "precision": precision}
    for label, chromosome in (("GA combination", result.chromosome), ("TopFilters", top)):
        recall, precision = matching.curve(chromosome, curve_points)
        curves[label] = {"recall": recall, "precision": precision}
    return PartScore(
        det_filter=det_filter,
        det_view=det_view.cpu().numpy(),
        det_box=det_boxes.cpu().numpy(),
        det_score=det_score,
        det_gt=best,
        single_ap=singles,
        single_recall=single_recall,
        best_filter=best_filter,
        ga_filters=result.filters,
        ga_ap=ga_ap,
        ga_recall=ga_recall,
        ga_history=result.history,
        top_filters=np.flatnonzero(top).tolist(),
        top_ap=top_ap,
        top_recall=top_recall,
        all_ap=all_ap,
        all_recall=all_recall,
        curves=curves,
    )


@dataclass
class PriorScore:
    """The location-prior floor of one part class: AP and maximal recall of :func:`location_prior_score`'s
    detections, and the prior map (``float64 [h, w]``: the share of views whose part box holds the position's
    receptive-field centre)."""

    ap: float
    recall: float
    prior: np.ndarray
    n_detections: int


@torch.no_grad()
def location_prior_score(
    n_views: int,
    cy: Tensor,
    cx: Tensor,
    gt_boxes: Tensor,
    gt_view: Tensor,
    *,
    rf_size,
    input_size: tuple[int, int],
    config: DetectionConfig = DetectionConfig(),
) -> PriorScore:
    """An activation-blind detector of one part (ours: the floor a filter's AP is read against).

    Every map position of every view (``cy [h]``, ``cx [w]``: receptive-field centres, view pixels) becomes a
    detection scored by the location prior, the share of the ``n_views`` views whose ground truth (``gt_boxes``
    ``float32 [G, 4]`` in views ``gt_view`` ``[G]``) holds that position's centre; its box comes from a least-squares
    regression on ``(c_x, c_y, 1)`` only, fitted on the same pairs and targets as the filters' regressors
    (:func:`regression_pairs`, unweighted; ``rf_size`` boxes when no pair exists, or with
    ``config.regression`` off). NMS per view and VOC matching follow ``config`` exactly as for the filters, so the
    floor and a filter's AP differ only in what the activations add. Views score alike at a position: ties keep
    view order (a stable sort), which is the expected order of a detector blind to the image.
    """
    device = cy.device
    h, w = cy.numel(), cx.numel()
    box, row, col = regression_pairs(cy, cx, gt_boxes, gt_view)
    inside = torch.zeros((n_views, h, w), dtype=torch.bool, device=device)
    if len(box):
        inside[gt_view[box], row, col] = True
    prior = inside.to(torch.float64).mean(dim=0) if n_views else torch.zeros((h, w), dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(cy.to(torch.float64), cx.to(torch.float64), indexing="ij")
    centres_x, centres_y = grid_x.reshape(-1), grid_y.reshape(-1)
    if config.regression and len(box):
        g = gt_boxes[box].to(torch.float64)
        targets = torch.stack(
            [
                (g[:, 0] + g[:, 2]) / 2 - cx[col],
                (g[:, 1] + g[:, 3]) / 2 - cy[row],
                g[:, 2] - g[:, 0],
                g[:, 3] - g[:, 1],
            ],
            dim=1,
        )
        features = torch.stack([cx[col], cy[row]], dim=1)[None]
        weights, _ = fit_box_regressors(
            features, torch.ones((1, len(box)), device=device), targets, intercept=True, ridge=config.ridge
        )
        pred = _design(torch.stack([centres_x, centres_y], dim=1), True) @ weights[0]
        boxes = receptive_boxes(
            centres_x + pred[:, 0],
            centres_y + pred[:, 1],
            pred[:, 2].clamp_min(config.min_box_size),
            pred[:, 3].clamp_min(config.min_box_size),
            input_size,
        )
    else:
        boxes = receptive_boxes(centres_x, centres_y, float(rf_size[1]), float(rf_size[0]), input_size)
    positions = h * w
    view = torch.arange(n_views, device=device).repeat_interleave(positions)
    all_boxes = boxes.repeat(n_views, 1)
    scores = prior.reshape(-1).to(torch.float32).repeat(n_views)
    keep = grouped_nms(all_boxes, scores, view, config.nms_threshold, config.nms_overlap)
    keep = keep[scores[keep] > 0]  # a position no part ever covered is no detection
    ap, recall = average_precision(all_boxes[keep], scores[keep], view[keep], gt_boxes, gt_view, config.iou_threshold)
    return PriorScore(ap=float(ap), recall=float(recall), prior=prior.cpu().numpy(), n_detections=int(len(keep)))


PALETTE = (
    (230, 25, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)
GROUND_TRUTH_COLOUR = (60, 200, 75)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    colours: list[tuple[int, int, int]],
    *,
    crop: tuple[float, float, float, float] | None = None,
    min_side: int = 192,
    width: int = 2,
) -> np.ndarray:
    """``uint8 [h, w, 3]``: ``image`` (``uint8 [H, W, 3]``) cut to ``crop`` (image pixels, clipped), enlarged by
    an integer factor (nearest) until its shorter side is ≥ ``min_side``, with ``boxes`` ``[n, 4]`` (image
    pixels, x1 y1 x2 y2) outlined in their ``colours``."""
    from PIL import Image, ImageDraw

    height, width_px = image.shape[:2]
    x1, y1, x2, y2 = crop if crop is not None else (0, 0, width_px, height)
    left, top = int(max(0, np.floor(x1))), int(max(0, np.floor(y1)))
    right, bottom = int(min(width_px, np.ceil(x2))), int(min(height, np.ceil(y2)))
    part = image[top:bottom, left:right]
    scale = max(1, int(np.ceil(min_side / max(1, min(part.shape[:2])))))
    picture = Image.fromarray(part).resize((part.shape[1] * scale, part.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for box, colour in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), colours):
        a = ((box[0] - left) * scale, (box[1] - top) * scale)
        b = ((box[2] - left) * scale - 1, (box[3] - top) * scale - 1)
        if b[0] > a[0] and b[1] > a[1]:
            draw.rectangle([a, b], outline=tuple(colour), width=width)
    return np.asarray(picture)
