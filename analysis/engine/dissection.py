"""Network Dissection scoring (ND'18 §2.2): per-unit, per-concept IoU with exactly mergeable tallies.

Method (Zhou, Bau et al., TPAMI 2018, §2.2). For unit ``k`` with threshold ``T_k`` (the caller's exact
top-0.005 quantile of the raw maps) and upsampled map ``S_k(x)`` at mask resolution, the binary mask
is ``M_k(x) = S_k(x) >= T_k``. For concept ``c`` with pixel set ``L_c(x)``::

    IoU[k, c] = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|

where **both sums run only over the images that contain at least one label of c's category** (the
paper's rule). Inside such an image *every* active pixel of the unit counts towards the union, also
where no label of the category lies. This deliberately differs from NetDissect-Lite, which counts
activation only where it overlaps a label of the category and so inflates IoU for sparse categories
such as parts. Counts are kept as ``int64``::

    intersection[U, C]      sum_x |M_k(x) & L_c(x)|
    activation_cat[U, G]    sum over images having category g of |M_k(x)|
    truth[C]                sum_x |L_c(x)|
    union[k, c] = activation_cat[k, category[c]] + truth[c] - intersection[k, c]

``truth`` and ``intersection`` need no image restriction: an image carrying label ``c`` has c's
category by definition (see below), so it is in the union's image set anyway.

Conventions.

* Units: ``U``; label ids: ``0 .. C-1`` in the dataset's unified numbering (Broden ``label.csv``),
  ``0`` = unlabeled, never a concept. Result matrices are indexed by label id, so column 0 is always 0.
* Categories: ``0 .. G-1``. ``label_category: LongTensor[C]`` gives each label's **primary category**
  (Broden: the category in which the label has the largest coverage), ``-1`` for label 0 and for any
  label to leave out (e.g. a category not under study; such labels are ignored everywhere).
* **Category of an image (our choice, that of the original NetDissect code):** an image "has category
  g" iff it carries at least one (pixel or whole-image) label whose primary category is ``g``,
  regardless of which annotation layer (index column) the label came from. A label that belongs to
  several categories is one concept, scored with its primary category's image set. This keeps
  ``intersection <= union`` always (treating each (label, category) pair as its own concept would
  split one visual concept into several rows).
* Pixel labels: ``LongTensor[B, L, H, W]`` — ``L`` label layers (all categories' layers stacked; parts
  need several). ``L_c(x)`` is a *set*: a pixel carrying ``c`` in two layers counts once.
* Whole-image labels (Broden scene/texture): ``LongTensor[P, 2]`` rows ``(image index in batch,
  label id)``; such a label covers every pixel of its image (again counted once with any pixel label
  of the same id).
* Activations: ``Tensor[B, U, H, W]`` floating point, already upsampled to the mask size ``H x W``
  (see :mod:`analysis.engine.upsample`); all images of one batch share the mask size, batches may
  differ. The comparison with the thresholds happens after type promotion (float16 maps are compared
  with float32 thresholds without rounding the thresholds).
* Ties at the threshold: the paper's ``>=`` by default; ``strict_threshold=True`` gives the ``>`` of
  the published NetDissect code. With ``>=`` a unit whose threshold equals its floor (a ReLU unit that
  is zero on more than 99.5% of positions has ``T_k = 0``) is active on *every* pixel and can score
  like a detector of large concepts; check ``activation`` / the thresholds for such units.
* Devices: the tally lives on the thresholds' device; ``add`` refuses inputs on another device.
  Nothing here picks a device. All counting is integer-exact (``nonzero`` + ``bincount``; the dense
  path adds 0/1 in float32 below 2**24 per chunk; float64 matmuls of integers below 2**53), so results
  are identical on every device and for every chunking. (On CUDA the dense path's ``index_add_`` is
  flagged by ``torch.use_deterministic_algorithms``; its result is exact anyway, or use
  ``method="sparse"``.)

Vectorisation: per group of images, the unit masks are compared in one op; intersections are counted
either by enumerating the active (image, unit, pixel) triples and ``bincount``-ing ``unit * C + label``
for every label layer (sparse masks, the usual case at a 0.005 quantile) or by scatter-adding each
pixel's unit-mask row into its labels' rows (dense masks); the per-category activation and the
whole-image labels are small matmuls over ``[B, U] x [B, C or G]``. No Python loop runs over units,
pixels or concepts; loops run over groups of images (memory bound) and label layers only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_IOU_THRESHOLD",
    "BatchLabels",
    "DissectionResult",
    "DissectionTally",
    "LayerSummary",
    "dissect",
    "iou_from_counts",
    "shuffled_pairing",
    "unit_masks",
]

#: ND'18 §2.2: a unit is a detector for its top concept if IoU > 0.04.
DEFAULT_IOU_THRESHOLD = 0.04

# Working-set bound for one chunk of images inside ``add``: images are processed in groups of
# ``max(1, chunk_elements // (U * H * W))``. Peak extra memory is about ``chunk_elements`` bytes of
# mask, 16 bytes per active (unit, pixel) pair of the chunk, and ``_ACTIVE_SLICE`` gathered pairs.
DEFAULT_CHUNK_ELEMENTS = 1 << 22
# Active (unit, pixel) pairs gathered at once (~100 bytes each at L = 3): bounds memory when masks
# are dense (low thresholds, or dead units with T_k = 0 under the paper's ">=").
_ACTIVE_SLICE = 1 << 20
# "auto" switches to the dense intersection when more than this fraction of a chunk's (unit, pixel)
# pairs is active (crossover measured on CPU at 5-10%; either path gives identical counts).
_DENSE_FRACTION = 0.06


def _check_device(t: Tensor, device: torch.device, what: str) -> None:
    if t.device.type != device.type or (device.index is not None and t.device != device):
        raise ValueError(f"{what} is on {t.device}, but the tally lives on {device}")


@torch.no_grad()
def unit_masks(activations: Tensor, thresholds: Tensor, *, strict: bool = False) -> Tensor:
    """Binary unit masks ``M_k = S_k >= T_k`` (ND'18 §2.2).

    Args:
        activations: ``Tensor[B, U, H, W]`` upsampled maps (any float dtype).
        thresholds: ``Tensor[U]`` per-unit thresholds, same device.
        strict: ``False`` (default, the paper's ``>=``); ``True`` uses ``>`` as the published
            NetDissect code does. They differ only on ties: with ``>=`` a unit whose threshold equals
            its (ReLU) floor — e.g. a dead unit with ``T_k = 0`` — is "on" everywhere.

    Returns:
        ``BoolTensor[B, U, H, W]`` on the activations' device.
    """
    if activations.dim() != 4 or thresholds.shape != (activations.shape[1],):
        raise ValueError(
            f"expected activations [B, U, H, W] and thresholds [U], got "
            f"{tuple(activations.shape)} and {tuple(thresholds.shape)}"
        )
    t = thresholds.view(1, -1, 1, 1)
    return activations > t if strict else activations >= t


@dataclass(frozen=True)
class BatchLabels:
    """Ground truth for one batch of ``B`` images at mask size ``H x W``.

    Attributes:
        pixel: ``LongTensor[B, L, H, W]``, label ids per pixel in ``L >= 0`` layers, 0 = unlabeled.
            With ``L = 0`` the tensor still carries ``B``, ``H`` and ``W``.
        image: ``LongTensor[P, 2]`` whole-image labels as rows ``(image index in batch, label id)``;
            duplicates are harmless.
    """

    pixel: Tensor
    image: Tensor

    def __post_init__(self) -> None:
        if self.pixel.dim() != 4:
            raise ValueError(f"pixel labels must be [B, L, H, W], got {tuple(self.pixel.shape)}")
        if self.image.dim() != 2 or self.image.shape[1] != 2:
            raise ValueError(f"image labels must be [P, 2], got {tuple(self.image.shape)}")
        if self.pixel.dtype.is_floating_point or self.image.dtype.is_floating_point:
            raise ValueError("label ids must be integers")

    @property
    def batch_size(self) -> int:
        return self.pixel.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """Mask size ``(H, W)``."""
        return self.pixel.shape[2], self.pixel.shape[3]

    @classmethod
    def from_layers(
        cls,
        layers: Sequence[Tensor | None],
        image: Tensor | Sequence[tuple[int, int]] | None = None,
        *,
        batch_size: int | None = None,
        size: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
    ) -> BatchLabels:
        """Stack per-category layer stacks into one :class:`BatchLabels`.

        Args:
            layers: one entry per category (or any grouping): ``LongTensor[B, L_i, H, W]``,
                ``LongTensor[B, H, W]`` (a single layer) or ``None`` (no pixel labels, e.g. scene).
                Which stack a label arrives in does not matter (see the module docstring).
            image: whole-image labels ``(image index, label id)`` as ``LongTensor[P, 2]`` or pairs.
            batch_size, size: needed only when every entry of ``layers`` is ``None``.
            device: where to put tensors built here; defaults to the first layer's device (CPU
                when there is none).
        """
        stacks = [t.unsqueeze(1) if t.dim() == 3 else t for t in layers if t is not None]
        if device is None:
            device = stacks[0].device if stacks else torch.device("cpu")
        if stacks:
            pixel = torch.cat([s.to(device=device, dtype=torch.int64) for s in stacks], dim=1)
        else:
            if batch_size is None or size is None:
                raise ValueError("batch_size and size are required when there are no pixel layers")
            pixel = torch.zeros((batch_size, 0, *size), dtype=torch.int64, device=device)
        if image is None:
            img = torch.zeros((0, 2), dtype=torch.int64, device=device)
        else:
            img = torch.as_tensor(image, dtype=torch.int64, device=device).reshape(-1, 2)
        return cls(pixel, img)

    def select(self, indices: Tensor) -> BatchLabels:
        """The labels of images ``indices`` (``LongTensor[B']``), as a new batch in that order.

        Used for the shuffled-mask baseline: ``labels.select(shuffled_pairing(B, seed=s))``.
        """
        indices = indices.to(device=self.pixel.device, dtype=torch.int64)
        pixel = self.pixel.index_select(0, indices)
        # new row j takes image indices[j]'s whole-image labels (an image may be chosen repeatedly)
        ranked, order = torch.sort(indices, stable=True)
        src = self.image[:, 0].to(indices.device).contiguous()
        lo = torch.searchsorted(ranked, src)
        hits = torch.searchsorted(ranked, src, right=True) - lo
        row = torch.repeat_interleave(torch.arange(src.numel(), device=src.device), hits)
        start = torch.repeat_interleave(lo - (torch.cumsum(hits, 0) - hits), hits)
        new_img = order[start + torch.arange(row.numel(), device=src.device)]
        image = torch.stack([new_img, self.image[row, 1].to(indices.device)], dim=1)
        return BatchLabels(pixel, image)


def iou_from_counts(intersection: Tensor, activation_cat: Tensor, truth: Tensor, label_category: Tensor) -> Tensor:
    """IoU ``Tensor[U, C]`` (float64) from int64 counts; 0 where the union is 0 or the label is
    outside every category (``label_category == -1``, including label 0).

    Shapes: ``intersection[U, C]``, ``activation_cat[U, G]``, ``truth[C]``, ``label_category[C]``.
    """
    valid = label_category >= 0
    cat = label_category.clamp(min=0)
    act = activation_cat.index_select(1, cat) if activation_cat.shape[1] else torch.zeros_like(intersection)
    union = act + truth.unsqueeze(0) - intersection
    iou = intersection.to(torch.float64) / union.clamp(min=1).to(torch.float64)
    return torch.where(valid.unsqueeze(0) & (union > 0), iou, torch.zeros_like(iou))


@dataclass(frozen=True)
class LayerSummary:
    """Per-layer interpretability summary (plain ints, JSON-friendly).

    ``n_unique_detectors`` is ND'18's layer score: distinct concepts among detector labels.
    ``detectors_per_category[g]`` counts detector units whose label's category is ``g``;
    ``unique_per_category[g]`` counts distinct such concepts.
    """

    n_units: int
    n_detectors: int
    n_unique_detectors: int
    detectors_per_category: tuple[int, ...]
    unique_per_category: tuple[int, ...]
    iou_threshold: float


@dataclass(frozen=True)
class DissectionResult:
    """Scores of one layer.

    Attributes:
        iou: ``float64[U, C]`` per unit and label id (column 0 and out-of-study labels are 0).
        label: ``int64[U]`` each unit's top concept: argmax of IoU over in-study labels, ties broken
            towards the lower label id; ``-1`` when every IoU of the unit is 0 (never active, or
            active only outside all labels).
        label_iou: ``float64[U]`` IoU of that label (0 when ``label == -1``).
        detector: ``bool[U]`` ``label_iou > iou_threshold`` (strict, as in ND'18).
        label_category: ``int64[C]`` the primary categories used.
        n_categories: ``G``.
        iou_threshold: the detector threshold used (ND'18: 0.04).
    """

    iou: Tensor
    label: Tensor
    label_iou: Tensor
    detector: Tensor
    label_category: Tensor
    n_categories: int
    iou_threshold: float

    @property
    def label_category_of_unit(self) -> Tensor:
        """``int64[U]`` category of each unit's label, ``-1`` when it has none."""
        cat = self.label_category.index_select(0, self.label.clamp(min=0))
        return torch.where(self.label >= 0, cat, torch.full_like(cat, -1))

    def summary(self) -> LayerSummary:
        """Counts of detectors and unique detectors, overall and per category. Never fails when no
        unit is a detector (all counts are then 0)."""
        det_labels = self.label[self.detector]
        det_cats = self.label_category_of_unit[self.detector]
        unique = torch.unique(det_labels)
        unique_cats = self.label_category.index_select(0, unique)
        g = self.n_categories
        return LayerSummary(
            n_units=int(self.label.numel()),
            n_detectors=int(det_labels.numel()),
            n_unique_detectors=int(unique.numel()),
            detectors_per_category=tuple(int(v) for v in torch.bincount(det_cats, minlength=g)[:g]),
            unique_per_category=tuple(int(v) for v in torch.bincount(unique_cats, minlength=g)[:g]),
            iou_threshold=self.iou_threshold,
        )

    def top_concepts(self, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` concepts per unit: ``(iou float64[U, k], label int64[U, k])``, sorted by IoU
        descending, ties towards the lower label id (stable sort); ``k`` is capped at ``C``."""
        order = torch.sort(self.iou, dim=1, descending=True, stable=True).indices[:, :k]
        return self.iou.gather(1, order), order

    def category_top(self) -> tuple[Tensor, Tensor]:
        """Per unit and category, the best concept of that category (NetDissect reports these):
        ``(iou float64[U, G], label int64[U, G])``, label ``-1`` where that IoU is 0."""
        cats = self.label_category
        onehot = cats.unsqueeze(0) == torch.arange(self.n_categories, device=cats.device).unsqueeze(1)
        masked = torch.where(onehot.unsqueeze(0), self.iou.unsqueeze(1), -1.0)  # [U, G, C]
        best, label = _argmax_low(masked)
        label = torch.where(best > 0, label, torch.full_like(label, -1))
        return best.clamp(min=0), label


def _argmax_low(x: Tensor) -> tuple[Tensor, Tensor]:
    """Max over the last dim and the *lowest* index attaining it (deterministic on every device)."""
    best = x.max(dim=-1, keepdim=True).values
    idx = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    first = torch.where(x == best, idx, x.shape[-1]).min(dim=-1).values
    return best.squeeze(-1), first


def _active_per_image(mask: Tensor) -> Tensor:
    """``int64[b, U]`` active pixels per image and unit of ``mask: bool[b, U, n]``."""
    return mask.view(torch.uint8).sum(dim=2, dtype=torch.int64)


def _intersection_sparse(mask: Tensor, lab: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """``int64[U, C]`` pixel-label intersections by enumerating active (image, unit, pixel) triples,
    and (as a by-product) the active pixels per image and unit ``int64[b, U]``.

    ``mask``: ``bool[b, U, n]``; ``lab``: ``int64[b, L, n]`` deduplicated labels (0 = none). Cost and
    memory grow with the number of active pairs times ``L``: the fast path for sparse masks.
    """
    b, u, n = mask.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)  # row-major, deterministic
    lab_t = lab.permute(0, 2, 1)  # [b, n, L] view
    counts = torch.zeros(u * c, dtype=torch.int64, device=mask.device)
    act = torch.zeros(b * u, dtype=torch.int64, device=mask.device)
    for s in range(0, flat.numel(), _ACTIVE_SLICE):  # bounds memory when many pairs are active
        f = flat[s : s + _ACTIVE_SLICE]
        bu = torch.div(f, n, rounding_mode="floor")  # image * U + unit
        px = f - bu * n
        img = torch.div(bu, u, rounding_mode="floor")
        unit = bu - img * u
        act += torch.bincount(bu, minlength=b * u)
        # labels at each active pixel: [K, L]; label 0 lands in column 0 (discarded by the caller)
        key = (unit * c).unsqueeze(1) + lab_t[img, px]
        counts += torch.bincount(key.reshape(-1), minlength=u * c)
    return counts.view(u, c), act.view(b, u)


def _intersection_dense(mask: Tensor, lab: Tensor, c: int) -> Tensor:
    """Same result as :func:`_intersection_sparse`, by adding each pixel's unit-mask row into the row
    of each of its labels (``index_add_`` per label layer). Cost ``L * b * n * U`` regardless of how
    many pixels are active: the fast path for dense masks. Sums of 0/1 stay exact in float32 up to
    2**24 pixels per chunk (float64 beyond)."""
    b, u, n = mask.shape
    nl = lab.shape[1]
    dtype = torch.float32 if b * n <= 1 << 24 else torch.float64
    rows = mask.transpose(1, 2).reshape(b * n, u).to(dtype)  # [pixels, U]
    per_layer = lab.transpose(0, 1).reshape(nl, b * n)
    out = torch.zeros((c, u), dtype=dtype, device=mask.device)
    for layer in range(nl):  # a handful of label layers
        out.index_add_(0, per_layer[layer], rows)
    return out.T.to(torch.int64)


class DissectionTally:
    """Streaming ND'18 counts for one layer; ``merge`` of image shards is exact (int64 sums).

    Usage::

        tally = DissectionTally(thresholds, label_category)
        for acts_up, labels in batches:          # acts_up: Tensor[B, U, H, W] at mask size
            tally.add(acts_up, labels)
        result = tally.result()                  # DissectionResult

    Args:
        thresholds: ``Tensor[U]`` per-unit thresholds ``T_k``; fixes the tally's device.
        label_category: ``LongTensor[C]`` primary category per label id, ``-1`` = not a concept.
        n_categories: ``G``; defaults to ``label_category.max() + 1``.
        strict_threshold: see :func:`unit_masks` (default ``False``: the paper's ``>=``).
        chunk_elements: memory bound per processed group of images (see ``DEFAULT_CHUNK_ELEMENTS``);
            it changes speed and memory only, never the counts.
        method: how intersections are counted — ``"sparse"`` (enumerate active unit-pixel pairs; fast
            for the sparse masks of a 0.005 quantile), ``"dense"`` (per-layer scatter-add of mask
            rows; fast for dense masks), or ``"auto"`` (default: per chunk, by the active fraction).
            Counts are identical.

    Count tensors (all ``int64``, on the tally's device): ``intersection[U, C]``,
    ``activation_cat[U, G]``, ``truth[C]``, plus diagnostics ``activation[U]`` (``sum |M_k|`` over all
    images), ``category_images[G]`` and ``label_images[C]`` (images having the category / label),
    ``images`` and ``pixels`` (ints).
    """

    def __init__(
        self,
        thresholds: Tensor,
        label_category: Tensor,
        n_categories: int | None = None,
        *,
        strict_threshold: bool = False,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        method: str = "auto",
    ) -> None:
        if thresholds.dim() != 1:
            raise ValueError(f"thresholds must be [U], got {tuple(thresholds.shape)}")
        if label_category.dim() != 1 or label_category.dtype.is_floating_point:
            raise ValueError("label_category must be an integer tensor [C]")
        self.device = thresholds.device
        self.thresholds = thresholds.detach().clone()
        self.label_category = label_category.detach().to(self.device, torch.int64).clone()
        if self.label_category.numel() and int(self.label_category[0]) >= 0:
            raise ValueError("label 0 means 'unlabeled' and must have category -1")
        g_min = int(self.label_category.max()) + 1 if self.label_category.numel() else 0
        self.n_categories = g_min if n_categories is None else int(n_categories)
        if self.n_categories < g_min:
            raise ValueError(f"label_category uses category {g_min - 1} >= n_categories")
        self.strict_threshold = bool(strict_threshold)
        self.chunk_elements = int(chunk_elements)
        if method not in ("auto", "sparse", "dense"):
            raise ValueError("method must be 'auto', 'sparse' or 'dense'")
        self.method = method
        u, c, g = self.n_units, self.n_labels, self.n_categories
        z = dict(dtype=torch.int64, device=self.device)
        self.intersection = torch.zeros((u, c), **z)
        self.activation_cat = torch.zeros((u, g), **z)
        self.truth = torch.zeros((c,), **z)
        self.activation = torch.zeros((u,), **z)
        self.category_images = torch.zeros((g,), **z)
        self.label_images = torch.zeros((c,), **z)
        self.images = 0
        self.pixels = 0
        # derived lookup tables
        self._valid = self.label_category >= 0
        self._cat_onehot = (self.label_category.unsqueeze(1) == torch.arange(g, device=self.device).unsqueeze(0)).to(
            torch.float64
        )  # [C, G], zero rows for labels outside the study

    @property
    def n_units(self) -> int:
        return self.thresholds.shape[0]

    @property
    def n_labels(self) -> int:
        return self.label_category.shape[0]

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def add(self, activations: Tensor, labels: BatchLabels) -> None:
        """Tally one batch: ``activations`` ``Tensor[B, U, H, W]`` upsampled to the mask size of
        ``labels`` (see :class:`BatchLabels`). Label ids must lie in ``[0, C)``."""
        b, u, h, w = activations.shape
        if u != self.n_units:
            raise ValueError(f"activations have {u} units, thresholds {self.n_units}")
        if labels.batch_size != b or labels.size != (h, w):
            raise ValueError(
                f"labels are for {labels.batch_size} images of {labels.size}, activations for {b} of {(h, w)}"
            )
        for t, what in ((activations, "activations"), (labels.pixel, "pixel labels"), (labels.image, "image labels")):
            _check_device(t, self.device, what)
        if b == 0:
            return
        c, n = self.n_labels, h * w
        pixel = labels.pixel.to(torch.int64)
        image = labels.image.to(torch.int64)
        for t, what in ((pixel, "pixel"), (image[:, 1], "image")):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
                raise ValueError(f"{what} label ids must lie in [0, {c})")
        if image.numel() and (int(image[:, 0].min()) < 0 or int(image[:, 0].max()) >= b):
            raise ValueError(f"whole-image label rows must name images in [0, {b})")

        # whole[b, c]: image b carries whole-image label c (in-study labels only)
        whole = torch.zeros((b, c), dtype=torch.bool, device=self.device)
        keep = self._valid[image[:, 1]]
        whole[image[keep, 0], image[keep, 1]] = True

        present = whole.clone()  # [B, C] image carries label c anywhere
        act_img = torch.empty((b, u), dtype=torch.int64, device=self.device)
        step = max(1, self.chunk_elements // max(1, u * n))
        for s in range(0, b, step):  # groups of images, bounded memory; not a per-image loop
            e = min(b, s + step)
            act_img[s:e] = self._add_chunk(activations[s:e], pixel[s:e], whole[s:e], present[s:e])

        # whole-image labels: L_c covers the image -> intersection = all active pixels there
        wf = whole.to(torch.float64)
        af = act_img.to(torch.float64)
        self.intersection += (af.T @ wf).to(torch.int64)
        self.truth += wf.sum(0).to(torch.int64) * n
        # images having each category (primary category of any label they carry)
        has_cat = (present.to(torch.float64) @ self._cat_onehot) > 0  # [B, G]
        self.activation_cat += (af.T @ has_cat.to(torch.float64)).to(torch.int64)
        self.category_images += has_cat.sum(0)
        self.label_images += present.sum(0)
        self.activation += act_img.sum(0)
        self.images += b
        self.pixels += b * n

    def _add_chunk(self, acts: Tensor, pixel: Tensor, whole: Tensor, present: Tensor) -> Tensor:
        """Pixel-label counts for a group of images; updates ``present`` in place and returns the
        per-image active-pixel counts ``int64[b, U]``."""
        b, u, h, w = acts.shape
        c, n, nl = self.n_labels, h * w, pixel.shape[1]
        lab = pixel.reshape(b, nl, n)
        lab = torch.where(self._valid[lab], lab, 0)  # out-of-study labels -> unlabeled
        if nl:
            present.scatter_(1, lab.reshape(b, nl * n), True)
            present[:, 0] = False
            # set semantics: drop a pixel label already given by a whole-image label of its image ...
            lab = torch.where(whole.gather(1, lab.reshape(b, nl * n)).view(b, nl, n), 0, lab)
            # ... or by an earlier layer at the same pixel
            for layer in range(1, nl):  # loop over label layers (a handful), not pixels or units
                dup = (lab[:, layer : layer + 1] == lab[:, :layer]).any(dim=1)
                lab[:, layer] = torch.where(dup, 0, lab[:, layer])
            truth = torch.bincount(lab.reshape(-1), minlength=c)
            truth[0] = 0
            self.truth += truth

        mask = unit_masks(acts, self.thresholds, strict=self.strict_threshold).reshape(b, u, n)
        if not nl:
            return _active_per_image(mask)
        method = self.method
        if method == "auto":
            dense = int(mask.count_nonzero()) > _DENSE_FRACTION * mask.numel()
            method = "dense" if dense else "sparse"
        if method == "dense":
            counts, act_img = _intersection_dense(mask, lab, c), _active_per_image(mask)
        else:
            counts, act_img = _intersection_sparse(mask, lab, c)
        counts[:, 0] = 0
        self.intersection += counts
        return act_img

    # ------------------------------------------------------------------------------------------
    def _check_compatible(self, other: DissectionTally) -> None:
        same = (
            self.thresholds.shape == other.thresholds.shape
            and torch.equal(self.thresholds, other.thresholds.to(self.device))
            and torch.equal(self.label_category, other.label_category.to(self.device))
            and self.n_categories == other.n_categories
            and self.strict_threshold == other.strict_threshold
        )
        if not same:
            raise ValueError("cannot merge tallies with different thresholds, labels or rules")

    @torch.no_grad()
    def merge(self, other: DissectionTally) -> None:
        """Add another shard's counts (disjoint images, same thresholds and label set). Exact."""
        self._check_compatible(other)
        for name in ("intersection", "activation_cat", "truth", "activation", "category_images", "label_images"):
            getattr(self, name).add_(getattr(other, name).to(self.device))
        self.images += other.images
        self.pixels += other.pixels

    @torch.no_grad()
    def iou(self) -> Tensor:
        """``float64[U, C]`` IoU so far (see :func:`iou_from_counts`)."""
        return iou_from_counts(self.intersection, self.activation_cat, self.truth, self.label_category)

    @torch.no_grad()
    def result(self, *, iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> DissectionResult:
        """Labels and detectors: top concept per unit (ties -> lower label id), detector iff its
        IoU ``> iou_threshold`` (ND'18 default 0.04, a parameter)."""
        iou = self.iou()
        if iou.shape[1] == 0:
            best = torch.zeros(iou.shape[0], dtype=torch.float64, device=self.device)
            label = torch.full_like(best, -1, dtype=torch.int64)
        else:
            best, label = _argmax_low(iou)
            label = torch.where(best > 0, label, torch.full_like(label, -1))
        return DissectionResult(
            iou=iou,
            label=label,
            label_iou=best,
            detector=(best > iou_threshold) & (label >= 0),
            label_category=self.label_category.clone(),
            n_categories=self.n_categories,
            iou_threshold=float(iou_threshold),
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain dict of ints, bools and tensors (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "thresholds": self.thresholds.clone(),
            "label_category": self.label_category.clone(),
            "n_categories": self.n_categories,
            "strict_threshold": self.strict_threshold,
            "intersection": self.intersection.clone(),
            "activation_cat": self.activation_cat.clone(),
            "truth": self.truth.clone(),
            "activation": self.activation.clone(),
            "category_images": self.category_images.clone(),
            "label_images": self.label_images.clone(),
            "images": self.images,
            "pixels": self.pixels,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, device: torch.device | str | None = None) -> DissectionTally:
        """Restore from :meth:`state_dict` onto ``device`` (default: where the state's tensors are)."""
        thresholds = state["thresholds"] if device is None else state["thresholds"].to(device)
        obj = cls(
            thresholds,
            state["label_category"],
            int(state["n_categories"]),
            strict_threshold=bool(state["strict_threshold"]),
        )
        for name in ("intersection", "activation_cat", "truth", "activation", "category_images", "label_images"):
            setattr(obj, name, state[name].to(obj.device, torch.int64).clone())
        obj.images = int(state["images"])
        obj.pixels = int(state["pixels"])
        return obj


@torch.no_grad()
def dissect(
    batches: Iterable[tuple[Tensor, BatchLabels]],
    *,
    thresholds: Tensor,
    label_category: Tensor,
    upsample: Callable[[Tensor, tuple[int, int]], Tensor],
    n_categories: int | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    strict_threshold: bool = False,
    progress: Callable[[int], None] | None = None,
) -> DissectionTally:
    """Convenience driver: tally raw activation batches.

    Each batch is ``(acts, labels)`` with raw maps ``acts: Tensor[B, U, h, w]`` on the thresholds'
    device. ``transform`` (optional) is applied to the raw maps first — e.g.
    ``functools.partial(rotation.rotate_activations, rotation=R)``; then
    ``upsample(maps, labels.size)`` (e.g. :func:`analysis.engine.upsample.upsample_plain`, or
    ``functools.partial(upsample_anchored, rf_stride=..., rf_offset=..., input_size=...)``) brings
    them to the mask size. ``progress(n_images_done)`` is called after each batch. Returns the tally
    (call ``.result()``); shard a dataset by calling this per image range and ``merge``.
    """
    tally = DissectionTally(thresholds, label_category, n_categories, strict_threshold=strict_threshold)
    for acts, labels in batches:
        if transform is not None:
            acts = transform(acts)
        tally.add(upsample(acts, labels.size), labels)
        if progress is not None:
            progress(tally.images)
    return tally


def shuffled_pairing(n_images: int, *, seed: int) -> Tensor:
    """Null baseline: which image's labels to score each image's activations against.

    Returns ``LongTensor[n_images]`` (CPU; it indexes the dataset) ``partner`` such that the
    activations of image ``i`` are paired with the masks of image ``partner[i]``. It is a seeded
    random permutation with no fixed point (one random cycle through all images, so no image is
    paired with itself when ``n_images >= 2``). Thresholds stay those of the real activations. For an
    in-memory batch: ``labels.select(shuffled_pairing(B, seed=s))``. Any score surviving the pairing
    is chance alignment (e.g. of spatial priors), so detectors here should be ~0.
    """
    if n_images < 0:
        raise ValueError("n_images must be >= 0")
    gen = torch.Generator().manual_seed(int(seed))
    cycle = torch.randperm(n_images, generator=gen)
    partner = torch.empty(n_images, dtype=torch.int64)
    partner[cycle] = cycle.roll(-1)
    return partner
