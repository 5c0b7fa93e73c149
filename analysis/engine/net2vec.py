"""Net2Vec (Fong & Vedaldi, CVPR 2018, §3.1–3.2): concept segmentation and classification probes on one layer.

Pure torch; nothing from the project outside the engine. Every function runs under ``torch.no_grad()``
except the probe training, allocates on its inputs' device and never picks a device itself.

Inputs (shapes and dtypes)
    ``features``: the layer's unit indicators at mask resolution, one row per pixel, ``Tensor[P, K]`` (float in
    [0, 1], or bool). Two rules make them (:data:`MASK_RULES`, :func:`iter_unit_mask_batches`):

    * ``"net2vec"`` (default, §3.1.1): threshold the *raw map* first, strictly, ``I(A_k > T_k)`` at the map's
      ``h × w``, then upsample that indicator with plain bilinear interpolation (no anchoring): ``S(A_k > T_k)``,
      a float in [0, 1] per pixel. The probes (eq. 2) read this upsampled indicator as is; a single filter's binary
      mask ``M_k`` is ``S(A_k > T_k) ≥ ½``. Why ½: the paper writes ``M_k = S(A_k > T_k)`` and then scores it as a
      binary mask without naming the cut; ½ is the level set halfway between an "on" and an "off" map cell, so the
      mask covers as much area as the "on" cells do (a cut at > 0 would grow every blob by up to a cell, one at 1
      shrink it), and it is the same ½ at which the combination's σ is read in evaluation — so a one-hot ``w`` with
      bias −½ is exactly the single-filter segmenter (the paper's remark after eq. 3).
    * ``"nd18"``: ND'18's rule the dissection uses: upsample the raw map (anchored or plain) and threshold at mask
      resolution, ``S(A_k) ≥ T_k`` (``>`` with ``strict``): 0/1 indicators, the probes and the masks read the same.

    Single filters and combinations therefore see the same inputs under either rule.
    ``truth``: the concept's ground-truth pixels ``Tensor[P]`` bool (``Tensor[C, P]`` for several concepts).

(a) Single-filter **set IoU** (eq. 1): ``Σ_x |M_k(x) ∩ L_c(x)| / Σ_x |M_k(x) ∪ L_c(x)|`` with both sums over
    the images ``X_{s,c}`` of split ``s`` that contain concept ``c`` (pixels of images without ``c`` are
    never passed in). The best filter ``k*`` is chosen by its *train* set IoU and its *val* set IoU is
    reported (§3.1.1).
(b) Filter-combination probe (§3.1.2): ``M(x; w) = σ(w · features(x) + b)`` (the paper has no bias; we
    add one — ``bias=False`` restores theirs), trained on training pixels with the weighted binary cross
    entropy of eq. 4, reconstructed from the text (the printed equation lost its logarithms)::

        L = − mean_p [ α · L_c(p) · log M(p) + (1 − α) · (1 − L_c(p)) · log(1 − M(p)) ]

    with ``α = 1 − (positive pixels / all pixels)`` of the concept's training pixels (the paper: 1 − the
    mean concept size over the training masks), so the rare positive pixels weigh α and negatives 1 − α.
    Evaluation thresholds ``M`` at ½ (logit ≥ 0) and reports set IoU on validation images.
(c) Top-F subsets (§3.2.2, following [2] as the paper does): the F units with the largest ``|w_k|`` of the
    full probe, and a *new* probe ``w' ∈ R^F`` (+ bias) trained on those units only. F = 1 is then the
    learned single-filter probe.

Optimiser: SGD with momentum 0.9, minibatches and epochs as the paper's (a minibatch = the sampled pixels of 64
training images, an epoch = one pass over the concept's training images, 30 epochs). The paper's ``lr = 1e-4``
applies to eq. 4 *summed* over the ``h_s·w_s`` pixels of each image; our loss is the per-pixel *mean* over a
minibatch, so the equivalent step is ``1e-4 · h_s·w_s`` (≈ 1.3 at their 113×113 masks): :class:`ProbeConfig`
defaults to ``lr = 1.0``. With ``standardize`` (default; not in the paper) the indicators are standardised over
the concept's training pixels for the optimisation and the weights mapped back exactly (:func:`train_probes`):
the probes are eq. 2's, but a unit on at 0.5% of pixels is no longer learned 200 times slower than the bias.
Weights start at zero; minibatches are drawn with a ``torch.Generator`` seeded with ``seed``, so training is
deterministic under a seed on one device. Gradients are analytic and a concept's probes (the full one, then all
top-F ones) train together as one batched linear map.

Pixel sampling (bounded memory): training uses ``pixels_per_image`` pixels per training image, drawn
uniformly without replacement by :func:`sample_pixels` with a generator seeded by ``(seed, image row)``, so
an image's sample does not depend on batching. Evaluation (set IoU) always uses every pixel, streamed.

Concept embeddings are the learned ``w`` (§5.3) on the probes' inputs; nearest concepts by cosine similarity.

Non-extremal exemplars (§5.1, Figs. 7–8): :class:`ProbeTally` can record ``IoU_ind`` (eq. 3) of chosen probes on
every val image holding their concept; :func:`nonextremal_exemplars` picks one image per decile of the non-zero
part of that distribution.

(d) Image-level classification (§3.2, eq. 5): ``f(x) = σ(b + Σ_k w_k · mean_{i,j} A_{ijk}(x))`` on each unit's
    spatially averaged *raw* activation, trained with balanced minibatches (half images with the concept, half
    without: "sampled with equal probability"), evaluated by the accuracy on a balanced validation set — computed
    exactly as the balanced accuracy ``(TPR + TNR) / 2`` at ``σ ≥ ½`` — and, beside it, by average precision.
    The single-filter classifier is the paper's F = 1 case of §3.2.2: the unit of largest ``|w_k|`` in the full
    classifier, with a new weight and bias trained on it alone. ``w`` is eq. 5's, on raw pooled activations: the
    top-F ranking and the embedding read it (training may standardise the inputs; :meth:`Classifiers.raw` maps
    the weights back exactly). Every concept's classifiers train at once
    (:func:`fit_concept_classifiers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "MASK_RULES",
    "ND18_RULE",
    "NET2VEC_RULE",
    "PAPER_CLASSIFICATION_TOP_F",
    "TRAIN",
    "VAL",
    "ClassifierConfig",
    "Classifiers",
    "ConceptClassifiers",
    "ConceptProbes",
    "LinearProbe",
    "Net2VecTally",
    "ProbeConfig",
    "ProbeTally",
    "UnitMaskBatch",
    "average_precision",
    "balanced_accuracy",
    "balanced_batches",
    "batch_set_iou_counts",
    "best_single_filters",
    "classification_concepts",
    "concept_alpha",
    "cosine_similarity",
    "fit_concept_classifiers",
    "fit_concept_probes",
    "iter_unit_mask_batches",
    "label_presence",
    "label_truth",
    "nearest_concepts",
    "nonextremal_exemplars",
    "pool_activations",
    "present_labels",
    "probe_masks",
    "sample_pixels",
    "score_classifiers",
    "set_iou",
    "set_iou_counts",
    "single_filter_probe",
    "stack_probes",
    "standardizer",
    "top_units",
    "train_classifiers",
    "train_probe",
    "train_probes",
    "unit_indicators",
    "unit_masks",
    "weighted_bce",
]

#: How unit indicators are made (module docstring): the paper's threshold-then-upsample, or ND'18's.
NET2VEC_RULE, ND18_RULE = "net2vec", "nd18"
MASK_RULES = (NET2VEC_RULE, ND18_RULE)

#: The paper's segmentation subset sizes (§3.2.2), cut to the layer's width by :func:`fit_concept_probes`.
PAPER_TOP_F = (1, 2, 4, 8, 16, 32, 64, 128, 160, 192, 224)


@dataclass(frozen=True)
class ProbeConfig:
    """Training parameters; defaults are the paper's where it gives one (see the module docstring)."""

    epochs: int = 30
    lr: float = 1.0
    momentum: float = 0.9
    batch_pixels: int = 4096
    bias: bool = True
    seed: int = 0
    top_f: Sequence[int] = field(default=(1, 2, 4, 8, 16))
    standardize: bool = True


@dataclass
class LinearProbe:
    """``σ(features[:, units] @ weight + bias)``; ``units`` LongTensor[F] (all K units for the full probe)."""

    units: Tensor
    weight: Tensor
    bias: float


@dataclass
class ConceptProbes:
    """The full probe (its weight is the concept embedding, ``Tensor[K]``) and the top-F probes by F."""

    alpha: float
    full: LinearProbe
    top: dict[int, LinearProbe]

    @property
    def embedding(self) -> Tensor:
        return self.full.weight


def sample_pixels(n_pixels: int, count: int, *, seed: int, image: int) -> Tensor:
    """LongTensor[min(count, n_pixels)] of distinct pixel positions in ``0 .. n_pixels-1`` (CPU), sorted.

    Drawn with ``torch.randperm`` under a generator seeded with ``seed * 1_000_003 + image``."""
    if count >= n_pixels:
        return torch.arange(n_pixels)
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(image))
    return torch.randperm(n_pixels, generator=generator)[:count].sort().values


@torch.no_grad()
def set_iou_counts(pred: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(concept, mask) pixel counts of one image (or any pixel set): ``(intersection, union)``.

    ``pred`` bool ``Tensor[M, P]`` (M candidate masks), ``truth`` bool ``Tensor[C, P]``; returns int64
    ``Tensor[C, M]`` each. Callers add them up over the images ``X_{s,c}`` that contain each concept and
    must pass only such images' rows of ``truth`` (or zero the counts of concepts absent from an image)."""
    inter = (truth.to(torch.float64) @ pred.to(torch.float64).T).round().to(torch.int64)
    union = pred.sum(1).unsqueeze(0) + truth.sum(1).unsqueeze(1) - inter
    return inter, union


def set_iou(intersection: Tensor, union: Tensor) -> Tensor:
    """float64 ``intersection / union`` elementwise, 0 where the union is empty."""
    inter, union = intersection.to(torch.float64), union.to(torch.float64)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def concept_alpha(truth: Tensor) -> float:
    """α = 1 − fraction of positive pixels of ``truth`` (bool ``Tensor[N]``), eq. 4's weight of positives."""
    return 1.0 - float(truth.to(torch.float64).mean()) if truth.numel() else 0.5


def weighted_bce(logits: Tensor, target: Tensor, alpha: float) -> Tensor:
    """Mean over pixels of eq. 4: positives weighted ``alpha``, negatives ``1 − alpha`` (``logits`` float [N])."""
    target = target.to(logits.dtype)
    log_p = torch.nn.functional.logsigmoid(logits)
    log_not_p = torch.nn.functional.logsigmoid(-logits)
    return -(alpha * target * log_p + (1.0 - alpha) * (1.0 - target) * log_not_p).mean()


def train_probes(
    features: Tensor, target: Tensor, *, alpha: float, config: ProbeConfig, units: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Fit M probes ``σ(features @ w_m + b_m)`` to one concept's ``target`` (bool ``Tensor[N]``) at once with eq. 4
    (SGD + momentum as ``torch.optim.SGD`` computes it: ``v ← μv + g; p ← p − lr·v``; the gradient is the
    analytic one of the mean weighted cross entropy over the minibatch). Returns ``(weight float32 Tensor[M, K],
    bias Tensor[M])`` in the units of ``features`` (0/1 indicators), on the CPU.

    ``features`` ``Tensor[N, K]`` (bool or float) on the device to train on; ``units`` bool ``Tensor[M, K]``
    (default: one probe over all K units) the units each probe may weight, the rest stay 0. All M probes see the
    same minibatches (a shuffle per epoch from a generator seeded with ``config.seed``), so training is
    deterministic under a seed on one device and a probe's result does not depend on the others.

    With ``config.standardize`` the probes are trained on ``(x − μ) / s`` (μ, s: each unit's mean and standard
    deviation over the N pixels; s = 1 for a unit constant on them) and mapped back exactly
    (``w = w' / s``, ``b = b' − Σ w'μ / s``): the same family of probes as eq. 2, but a rarely active unit's weight
    is no longer learned ~1/μ times slower than the bias (at the 0.995 quantile a unit is on at ~0.5% of pixels)."""
    device = features.device
    n, k = features.shape
    x = features.to(torch.float32)
    if config.standardize and n:
        # without a bias the probe cannot absorb a shift: only rescale then
        mean = x.mean(0) if config.bias else torch.zeros(k, device=device)
        std = x.std(0, unbiased=False)
        scale = torch.where(std > 1e-6, std, torch.ones_like(std))
        x = (x - mean) / scale
    else:
        mean, scale = torch.zeros(k, device=device), torch.ones(k, device=device)
    y = target.to(device=device, dtype=torch.float32)
    allowed = (torch.ones(1, k, dtype=torch.bool) if units is None else units.cpu()).to(device, torch.float32)
    m = allowed.shape[0]
    weight = torch.zeros(m, k, device=device)
    bias = torch.zeros(m, device=device)
    bias_on = 1.0 if config.bias else 0.0
    v_weight, v_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    generator = torch.Generator().manual_seed(int(config.seed))
    with torch.no_grad():
        for _ in range(int(config.epochs) if n else 0):
            order = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, config.batch_pixels):
                batch = order[start : start + config.batch_pixels]
                xb, yb = x[batch], y[batch].unsqueeze(1)  # [B, K], [B, 1]
                p = torch.sigmoid(xb @ weight.T + bias)  # [B, M]
                # d/dz of −[α y log σ(z) + (1 − α)(1 − y) log(1 − σ(z))], averaged over the minibatch
                g = (alpha * yb * (p - 1.0) + (1.0 - alpha) * (1.0 - yb) * p) / len(batch)
                v_weight.mul_(config.momentum).add_((g.T @ xb) * allowed)
                v_bias.mul_(config.momentum).add_(g.sum(0) * bias_on)
                weight.sub_(config.lr * v_weight)
                bias.sub_(config.lr * v_bias)
    raw_weight = weight / scale
    raw_bias = bias - (raw_weight * mean).sum(1)
    return raw_weight.cpu(), raw_bias.cpu()


def train_probe(
    features: Tensor, target: Tensor, *, alpha: float, config: ProbeConfig, units: Tensor | None = None
) -> LinearProbe:
    """One probe ``σ(features[:, units] @ w + b)`` (``units`` LongTensor[F], default all) by :func:`train_probes`."""
    k = features.shape[1]
    units = torch.arange(k) if units is None else units.cpu()
    allowed = torch.zeros(1, k, dtype=torch.bool)
    allowed[0, units] = True
    weight, bias = train_probes(features, target, alpha=alpha, config=config, units=allowed)
    return LinearProbe(units=units, weight=weight[0, units], bias=float(bias[0]))


def fit_concept_probes(features: Tensor, target: Tensor, *, config: ProbeConfig) -> ConceptProbes:
    """The full probe, then one retrained probe on the top-F units by ``|w_k|`` for each F of ``config.top_f``
    not above the layer width K (ties broken by the lower unit index); the top-F probes train together."""
    alpha = concept_alpha(target)
    full = train_probe(features, target, alpha=alpha, config=config)
    k = features.shape[1]
    sizes = sorted({int(f) for f in config.top_f if 1 <= int(f) <= k})
    if not sizes:
        return ConceptProbes(alpha=alpha, full=full, top={})
    order = torch.argsort(-full.weight.abs().to(torch.float64), stable=True)  # largest |w| first, then lower index
    allowed = torch.zeros(len(sizes), k, dtype=torch.bool)
    for row, f in enumerate(sizes):
        allowed[row, order[:f]] = True
    weight, bias = train_probes(features, target, alpha=alpha, config=config, units=allowed)
    top = {}
    for row, f in enumerate(sizes):
        units = torch.nonzero(allowed[row]).flatten()
        top[f] = LinearProbe(units=units, weight=weight[row, units], bias=float(bias[row]))
    return ConceptProbes(alpha=alpha, full=full, top=top)


@torch.no_grad()
def probe_masks(features: Tensor, probes: Sequence[LinearProbe]) -> Tensor:
    """bool ``Tensor[M, P]``: each probe's mask ``σ(·) ≥ ½`` ⇔ logit ≥ 0 on ``features`` ``Tensor[P, K]``.

    (The paper thresholds at ½ without saying which side; a logit of exactly 0 counts as positive.)"""
    x = features.to(torch.float32)
    weights, bias = stack_probes(probes, x.shape[1], device=x.device)
    return (weights @ x.T + bias.unsqueeze(1)) >= 0


def stack_probes(
    probes: Sequence[LinearProbe], units: int, *, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """``(weights float32 Tensor[M, units], bias float32 Tensor[M])``: the probes as one dense linear map
    (zero weight on the units a top-F probe leaves out)."""
    weights = torch.zeros(len(probes), units, dtype=torch.float32, device=device)
    for row, probe in enumerate(probes):
        weights[row, probe.units.to(device)] = probe.weight.to(device, torch.float32)
    bias = torch.tensor([probe.bias for probe in probes], dtype=torch.float32, device=device)
    return weights, bias


def unit_masks(features: Tensor) -> Tensor:
    """bool masks of unit indicators ``features`` (any shape): ``features ≥ ½`` for the float indicators of the
    ``"net2vec"`` rule, the indicators themselves when bool (module docstring)."""
    return features if features.dtype == torch.bool else features >= 0.5


def single_filter_probe(unit: int) -> LinearProbe:
    """The single-filter segmenter as a probe: ``w = e_unit``, ``b = −½``, so its mask (logit ≥ 0) is exactly
    :func:`unit_masks` of that unit (``x − ½ ≥ 0`` is exact in float32)."""
    return LinearProbe(units=torch.tensor([int(unit)]), weight=torch.ones(1), bias=-0.5)


def nonextremal_exemplars(rows: Tensor, iou: Tensor, *, bins: int = 10) -> dict:
    """§5.1 / Figs. 7–8: one example per decile of the *non-zero* part of a concept's ``IoU_ind`` distribution.

    ``rows`` LongTensor[N] (dataset rows) and ``iou`` float ``Tensor[N]``: one mask's eq. 3 IoU on each val image
    holding the concept. The n non-zero values are sorted ascending (ties by row) and cut by rank into ``bins``
    equal bins; each bin's example is the one at its middle rank, ``floor((b + ½) · n / bins)`` — so the first
    column is the lowest tenth of the non-zero examples, the last the top tenth (the paper: "an example is
    automatically selected at each decile"; it does not say where in a decile, we take the middle). Fewer than
    ``bins`` non-zero values give one example each. Returns ``{"rows": [...], "ious": [...], "images": N,
    "zero": count of IoU 0, "mean": μ, "std": σ}`` with μ, σ (population) of the non-zero part as Fig. 7 reports
    them (``None`` without one)."""
    rows, iou = rows.cpu().to(torch.int64), iou.cpu().to(torch.float64)
    nonzero = iou > 0
    kept_rows, kept = rows[nonzero], iou[nonzero]
    order = sorted(range(len(kept)), key=lambda i: (float(kept[i]), int(kept_rows[i])))
    n = len(order)
    picks = range(n) if n < bins else [int((b + 0.5) * n / bins) for b in range(bins)]
    chosen = [order[i] for i in picks]
    return {
        "rows": [int(kept_rows[i]) for i in chosen],
        "ious": [float(kept[i]) for i in chosen],
        "images": len(iou),
        "zero": int((~nonzero).sum()),
        "mean": float(kept.mean()) if n else None,
        "std": float(kept.std(unbiased=False)) if n else None,
    }


@torch.no_grad()
def cosine_similarity(embeddings: Tensor) -> Tensor:
    """float64 ``Tensor[C, C]`` of cosine similarities between rows of ``embeddings`` ``Tensor[C, K]``
    (a zero row has similarity 0 with everything)."""
    e = embeddings.to(torch.float64)
    norm = e.norm(dim=1, keepdim=True)
    e = torch.where(norm > 0, e / norm.clamp(min=1e-300), torch.zeros_like(e))
    return e @ e.T


def nearest_concepts(embeddings: Tensor, index: int, count: int = 5) -> list[tuple[int, float]]:
    """The ``count`` rows nearest row ``index`` by cosine (itself excluded): ``[(row, cosine)]``, nearest first,
    ties by the lower row."""
    similarity = cosine_similarity(embeddings)[index].tolist()
    rows = [row for row in range(len(similarity)) if row != index]
    rows.sort(key=lambda row: (-similarity[row], row))
    return [(row, float(similarity[row])) for row in rows[:count]]


# -- §3.2: concept classification from spatially pooled activations ----------------------------------------

#: The paper's classification subset sizes (§3.2.2), cut to the layer's width by the caller.
PAPER_CLASSIFICATION_TOP_F = (1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 80, 100, 128)


@dataclass(frozen=True)
class ClassifierConfig:
    """Training of the image-level concept classifiers of §3.2.1 (eq. 5); see :func:`train_classifiers`.

    The main text gives no optimiser for classification (it points to its supplement), so we use its segmentation
    settings where they carry over: SGD with momentum 0.9, minibatches of 64 images, 30 epochs (an epoch = as
    many minibatches as it takes to draw as many images as the training split holds). Each minibatch holds
    ``batch_images / 2`` positives and as many negatives, drawn uniformly with replacement — the paper's
    "images from the two sets are sampled with equal probability". ``lr`` applies to the mean cross entropy of
    the minibatch on *standardised* pooled activations (``standardize``; see :func:`standardizer`)."""

    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    batch_images: int = 64
    standardize: bool = True
    seed: int = 0


@torch.no_grad()
def pool_activations(maps: Tensor) -> Tensor:
    """Eq. 5's inputs: float32 ``Tensor[B, K]``, each unit's raw activation map ``maps`` ``Tensor[B, K, h, w]``
    (any float dtype, e.g. the float16 cache) averaged over its ``h·w`` positions."""
    return maps.to(torch.float32).mean(dim=(2, 3))


@torch.no_grad()
def standardizer(features: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, scale)`` float32 ``Tensor[K]`` each of ``features`` ``Tensor[N, K]`` (the training images): the
    probe reads ``(x − mean) / scale``. ``scale`` is the standard deviation, 1 for a constant unit (its input is
    then 0 and its weight never moves). An affine change of the inputs, so the classifiers of eq. 5 are the same
    family of functions; it only conditions the optimisation (pooled activations of different units differ in
    scale by orders of magnitude)."""
    x = features.to(torch.float64)
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    scale = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.to(torch.float32), scale.to(torch.float32)


@dataclass
class Classifiers:
    """M linear classifiers ``σ(((x − mean) / scale) @ weight[m] + bias[m])`` on pooled activations ``x``.

    ``weight`` float32 ``Tensor[M, K]`` (zero outside a top-F classifier's units), ``bias`` ``Tensor[M]``,
    ``mean``/``scale`` ``Tensor[K]`` (0 and 1 without standardisation). ``weight`` is the weight per standard
    deviation of each unit's pooled activation (the optimisation's parameters); eq. 5's ``w`` on raw pooled
    activations — what the top-F ranking and the embedding read, as in the paper — is :meth:`raw`."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    scale: Tensor

    @torch.no_grad()
    def raw(self) -> tuple[Tensor, Tensor]:
        """``(w, b)`` of eq. 5 on raw pooled activations: ``w = weight / scale``, ``b = bias − w · mean``
        (float64 ``Tensor[M, K]``, ``Tensor[M]``)."""
        weight = self.weight.to(torch.float64) / self.scale.to(torch.float64)
        return weight, self.bias.to(torch.float64) - weight @ self.mean.to(torch.float64)

    @torch.no_grad()
    def logits(self, features: Tensor) -> Tensor:
        """float32 ``Tensor[N, M]`` for pooled activations ``features`` ``Tensor[N, K]``."""
        x = (features.to(torch.float32) - self.mean.to(features.device)) / self.scale.to(features.device)
        return x @ self.weight.to(features.device).T + self.bias.to(features.device)


def balanced_batches(target: Tensor, steps: int, count: int, generator: torch.Generator) -> Tensor:
    """LongTensor[steps, count] of image rows for one concept (``target`` bool ``Tensor[N]``, with positives and
    negatives): in each minibatch ``count // 2`` rows drawn uniformly with replacement among the positives, the
    rest among the negatives."""
    positives = torch.nonzero(target.cpu()).flatten()
    negatives = torch.nonzero(~target.cpu()).flatten()
    half = count // 2
    draws = torch.rand(steps, count, generator=generator, dtype=torch.float64)
    pos = positives[(draws[:, :half] * len(positives)).floor().to(torch.int64).clamp(max=len(positives) - 1)]
    neg = negatives[(draws[:, half:] * len(negatives)).floor().to(torch.int64).clamp(max=len(negatives) - 1)]
    return torch.cat([pos, neg], dim=1)


def train_classifiers(
    features: Tensor,
    targets: Tensor,
    *,
    config: ClassifierConfig,
    owners: Tensor | None = None,
    units: Tensor | None = None,
    standardization: tuple[Tensor, Tensor] | None = None,
) -> Classifiers:
    """Fit M classifiers of eq. 5 at once by minimising the binary cross entropy with balanced minibatches
    (SGD + momentum, as ``torch.optim.SGD`` computes it: ``v ← μv + g; p ← p − lr·v``; weights start at zero).

    ``features`` float ``Tensor[N, K]``: pooled activations of the training images (:func:`pool_activations`),
    on the device to train on. ``targets`` bool ``Tensor[N, C]``: concept ``c`` is in image ``n``; every column
    needs a positive and a negative. ``owners`` LongTensor[M] (default ``arange(C)``): the concept classifier
    ``m`` learns. ``units`` bool ``Tensor[M, K]`` (default all): the units classifier ``m`` may weight (a top-F
    subset, §3.2.2); the others keep weight 0. ``standardization`` ``(mean, scale)`` overrides
    :func:`standardizer` of ``features``. Deterministic under ``config.seed`` on one device: the classifiers
    of one concept see the same minibatches, whatever else is trained alongside."""
    device = features.device
    n, k = features.shape
    c = targets.shape[1]
    owners = torch.arange(c) if owners is None else owners.cpu()
    if config.standardize:
        mean, scale = standardization if standardization is not None else standardizer(features)
    else:
        mean, scale = torch.zeros(k), torch.ones(k)
    mean, scale = mean.to(device, torch.float32), scale.to(device, torch.float32)
    x = (features.to(torch.float32) - mean) / scale
    y = targets.to(device=device, dtype=torch.float32)
    m = len(owners)
    allowed = torch.ones(m, k, dtype=torch.bool) if units is None else units.cpu()
    concepts = sorted({int(owner) for owner in owners})
    for concept in concepts:
        if not 0 < int(targets[:, concept].sum()) < n:
            raise ValueError(f"concept column {concept} needs both positive and negative training images")
    # Classifiers grouped by concept, [C', G, K] (G: most classifiers of one concept; unused slots keep weight 0),
    # so a minibatch is gathered once per concept and every product is one batched matmul.
    column = {concept: position for position, concept in enumerate(concepts)}
    slot_of, filled = [], [0] * len(concepts)
    for owner in owners.tolist():
        slot_of.append((column[int(owner)], filled[column[int(owner)]]))
        filled[column[int(owner)]] += 1
    groups = max(filled)
    place_c = torch.tensor([c for c, _ in slot_of], dtype=torch.int64)
    place_g = torch.tensor([g for _, g in slot_of], dtype=torch.int64)
    mask = torch.zeros(len(concepts), groups, k)
    mask[place_c, place_g] = allowed.to(torch.float32)
    mask = mask.to(device)
    weight = torch.zeros(len(concepts), groups, k, device=device)
    bias = torch.zeros(len(concepts), groups, 1, device=device)
    v_weight, v_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    steps = max(1, -(-n // config.batch_images)) * int(config.epochs)
    # one generator per concept: a concept's minibatches do not depend on which other concepts are trained
    rows = torch.stack(
        [
            balanced_batches(
                targets[:, concept].to(torch.bool),
                steps,
                config.batch_images,
                torch.Generator().manual_seed(int(config.seed) * 1_000_003 + concept),
            )
            for concept in concepts
        ]
    ).to(device)  # [C', steps, B]
    labels = torch.gather(y[:, concepts].T, 1, rows.flatten(1)).view_as(rows)  # [C', steps, B]
    with torch.no_grad():
        for step in range(steps):
            batch_x = x[rows[:, step]]  # [C', B, K]
            batch_y = labels[:, step].unsqueeze(1)  # [C', 1, B]
            logits = torch.bmm(weight, batch_x.transpose(1, 2)) + bias  # [C', G, B]
            error = (torch.sigmoid(logits) - batch_y) / batch_y.shape[2]  # d(mean BCE)/d(logit)
            v_weight.mul_(config.momentum).add_(torch.bmm(error, batch_x) * mask)
            v_bias.mul_(config.momentum).add_(error.sum(2, keepdim=True))
            weight.sub_(config.lr * v_weight)
            bias.sub_(config.lr * v_bias)
    weight = weight[place_c.to(device), place_g.to(device)]
    bias = bias[place_c.to(device), place_g.to(device), 0]
    return Classifiers(weight=weight.cpu(), bias=bias.cpu(), mean=mean.cpu(), scale=scale.cpu())


def top_units(weight: Tensor, f: int) -> Tensor:
    """bool ``Tensor[M, K]``: each row's ``f`` units of largest ``|weight|`` (ties by the lower unit index)."""
    m, k = weight.shape
    f = min(int(f), k)
    magnitude = weight.abs().to(torch.float64)
    # stable descending sort keeps the lower index first among equal magnitudes
    order = torch.argsort(-magnitude, dim=1, stable=True)[:, :f]
    chosen = torch.zeros(m, k, dtype=torch.bool)
    chosen.scatter_(1, order.cpu(), True)
    return chosen


@dataclass
class ConceptClassifiers:
    """Per concept (columns of the targets): the full classifier over all K units (its eq. 5 weight row on raw
    pooled activations is the classification embedding) and the retrained top-F classifiers; ``top_units[f]`` bool
    ``Tensor[C, K]``."""

    full: Classifiers
    top: dict[int, Classifiers]
    top_units: dict[int, Tensor]

    @property
    def embeddings(self) -> Tensor:
        """float64 ``Tensor[C, K]``: eq. 5's raw ``w`` of each full classifier (§5.3), not the standardised one."""
        return self.full.raw()[0]


def fit_concept_classifiers(
    features: Tensor, targets: Tensor, *, config: ClassifierConfig, top_f: Sequence[int] = PAPER_CLASSIFICATION_TOP_F
) -> ConceptClassifiers:
    """§3.2.1 then §3.2.2 for every concept (column of ``targets`` bool ``Tensor[N, C]``) at once: the full
    classifiers, then for each F of ``top_f`` (those ≤ K) new classifiers trained on only the F units of largest
    ``|w_k|`` of the concept's full classifier — eq. 5's raw ``w`` (:meth:`Classifiers.raw`), the paper's ranking,
    whatever the training's standardisation. F = 1 is the paper's single-filter classifier."""
    k = features.shape[1]
    standardization = standardizer(features) if config.standardize else None
    full = train_classifiers(features, targets, config=config, standardization=standardization)
    sizes = sorted({int(f) for f in top_f if 1 <= int(f) <= k})
    c = targets.shape[1]
    if not sizes:
        return ConceptClassifiers(full=full, top={}, top_units={})
    chosen = {f: top_units(full.raw()[0], f) for f in sizes}
    owners = torch.arange(c).repeat(len(sizes))
    units = torch.cat([chosen[f] for f in sizes])
    subset = train_classifiers(
        features, targets, config=config, owners=owners, units=units, standardization=standardization
    )
    top = {
        f: Classifiers(
            weight=subset.weight[i * c : (i + 1) * c],
            bias=subset.bias[i * c : (i + 1) * c],
            mean=subset.mean,
            scale=subset.scale,
        )
        for i, f in enumerate(sizes)
    }
    return ConceptClassifiers(full=full, top=top, top_units=chosen)


@torch.no_grad()
def balanced_accuracy(logits: Tensor, truth: Tensor) -> Tensor:
    """float64 ``Tensor[M]``: ``(TPR + TNR) / 2`` of the decisions ``σ(logit) ≥ ½`` (``logits`` ``Tensor[N, M]``)
    against ``truth`` bool ``Tensor[N, M]`` — the accuracy on a validation set re-balanced to as many negatives as
    positives (§3.2.1), computed exactly instead of on a random balanced subsample. A class with no image counts
    as rate 0."""
    predicted = logits >= 0
    truth = truth.to(torch.bool)
    pos = truth.sum(0).to(torch.float64)
    neg = (~truth).sum(0).to(torch.float64)
    tpr = (predicted & truth).sum(0).to(torch.float64) / pos.clamp(min=1)
    tnr = (~predicted & ~truth).sum(0).to(torch.float64) / neg.clamp(min=1)
    return (tpr + tnr) / 2


@torch.no_grad()
def average_precision(scores: Tensor, truth: Tensor) -> Tensor:
    """float64 ``Tensor[M]``: non-interpolated average precision ``Σ_n (R_n − R_{n−1}) P_n`` over the distinct
    score thresholds, highest first (tied scores form one threshold; the definition of
    ``sklearn.metrics.average_precision_score``), of ``scores`` ``Tensor[N, M]`` against ``truth`` bool
    ``Tensor[N, M]``; 0 for a column without positives."""
    n, m = scores.shape
    result = torch.zeros(m, dtype=torch.float64)
    for column in range(m):
        s = scores[:, column].to(torch.float64).cpu()
        t = truth[:, column].to(torch.float64).cpu()
        positives = float(t.sum())
        if positives == 0 or n == 0:
            continue
        order = torch.argsort(-s, stable=True)
        s, t = s[order], t[order]
        tp = torch.cumsum(t, 0)
        last = torch.ones(n, dtype=torch.bool)  # the last position of each run of equal scores
        last[:-1] = s[1:] != s[:-1]
        tp = tp[last]
        seen = torch.arange(1, n + 1, dtype=torch.float64)[last]
        recall = tp / positives
        precision = tp / seen
        previous = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
        result[column] = float(((recall - previous) * precision).sum())
    return result


# -- the dataset passes, as accumulators (streaming, shardable by image range) ------------------------------------
#
# Pass 1 (:class:`Net2VecTally`, every image) gathers what the probes train and the single filters are scored on;
# pass 2 (:class:`ProbeTally`, the val images) scores the trained probes. Each ``add``s batches of
# :class:`UnitMaskBatch` (from :func:`iter_unit_mask_batches`), ``merge``s another shard's tally of other images,
# and round-trips through ``state_dict`` / ``from_state_dict``. Counts are int64 sums and per-image values are
# stored per image (never summed), so K shards merged give exactly the tally of one pass, in any merge order.

TRAIN, VAL = 0, 1  # split codes; any other value (e.g. -1) is an image of neither split


@dataclass
class UnitMaskBatch:
    """One batch of images at mask resolution ``P = H·W`` pixels.

    ``rows`` LongTensor[B] (CPU) dataset (index.csv) rows; ``features`` ``Tensor[B, K, P]`` the unit indicators
    (float in [0, 1] under the ``"net2vec"`` rule, bool under ``"nd18"``; masks by :func:`unit_masks`);
    ``pixel`` LongTensor[B, L, P] the label ids of each label layer (0 = none); ``pooled`` float32 ``Tensor[B, K]``
    each unit's raw map averaged spatially (eq. 5); ``image_labels`` LongTensor[n, 2] rows ``(position in the
    batch, label id)`` of whole-image labels."""

    rows: Tensor
    features: Tensor
    pixel: Tensor
    pooled: Tensor
    image_labels: Tensor


@torch.no_grad()
def iter_unit_mask_batches(
    maps,
    reader,
    rows,
    mask_rows: Sequence[int],
    *,
    upsample,
    thresholds: Tensor,
    strict: bool,
    batch_size: int,
    device: torch.device | str,
    mask_rule: str = NET2VEC_RULE,
):
    """Yield a :class:`UnitMaskBatch` per batch of ``mask_rows`` (index.csv row numbers, in order): the unit
    indicators of the raw maps ``maps[row]`` (``[N, K, h, w]``, e.g. the float16 activation cache) at mask size, and
    the masks read by ``reader`` (a ``BrodenReader``) for ``rows``.

    ``mask_rule`` ``"net2vec"`` (§3.1.1): ``upsample((A_k > T_k) as float)``, float32 in [0, 1] (``strict`` is
    ignored: the paper's ``>``; pass the plain bilinear upsampler for the paper's ``S``). ``"nd18"``:
    ``upsample(A_k) ≥ T_k`` (``>`` with ``strict``), bool. ``upsample`` from
    :func:`analysis.engine.upsample.upsampler_for`."""
    import numpy as np

    from analysis.engine.dissection_data import iter_label_batches

    if mask_rule not in MASK_RULES:
        raise ValueError(f"mask_rule must be one of {MASK_RULES}, not {mask_rule!r}")
    thresholds = thresholds.to(device)
    for first, stop, labels in iter_label_batches(reader, rows, mask_rows, batch_size=batch_size):
        picked = list(mask_rows[first:stop])
        raw = torch.from_numpy(np.array(maps[picked])).to(device=device, dtype=torch.float32)
        active = unit_indicators(raw, thresholds, labels.size, upsample=upsample, mask_rule=mask_rule, strict=strict)
        yield UnitMaskBatch(
            rows=torch.tensor(picked, dtype=torch.int64),
            features=active.flatten(2),
            pixel=labels.pixel.to(device).flatten(2),
            pooled=pool_activations(raw),
            image_labels=labels.image,
        )


@torch.no_grad()
def unit_indicators(
    raw: Tensor, thresholds: Tensor, size, *, upsample, mask_rule: str = NET2VEC_RULE, strict: bool = True
) -> Tensor:
    """The unit indicators of raw maps ``raw`` float ``Tensor[B, K, h, w]`` at mask ``size`` ``(H, W)``
    (``thresholds`` ``Tensor[K]``): ``"net2vec"`` → float32 ``upsample(I(A_k > T_k))`` clamped to [0, 1] (``strict``
    ignored); ``"nd18"`` → bool ``upsample(A_k) ≥ T_k`` (``>`` with ``strict``). ``Tensor[B, K, H, W]``."""
    t = thresholds.to(raw.device).view(1, -1, 1, 1)
    if mask_rule == NET2VEC_RULE:
        return upsample((raw > t).to(torch.float32), size).clamp_(0.0, 1.0)
    if mask_rule != ND18_RULE:
        raise ValueError(f"mask_rule must be one of {MASK_RULES}, not {mask_rule!r}")
    up = upsample(raw, size)
    return (up > t) if strict else (up >= t)


@torch.no_grad()
def label_presence(pixel: Tensor, image_labels: Tensor | None, n_labels: int) -> Tensor:
    """bool ``Tensor[B, n_labels]``: label id present in each image, at a pixel of any layer of ``pixel``
    ``LongTensor[B, L, P]`` or, when ``image_labels`` (rows ``(position, id)``) is given, as a whole-image label;
    label 0 never."""
    b = pixel.shape[0]
    present = torch.zeros(b, n_labels + 1, dtype=torch.bool, device=pixel.device)
    ids = pixel.flatten(1)
    present.scatter_(1, torch.where((ids >= 0) & (ids < n_labels), ids, n_labels), True)
    if image_labels is not None and len(image_labels):
        image_labels = image_labels.to(pixel.device)
        known = image_labels[:, 1] < n_labels
        present[image_labels[known, 0], image_labels[known, 1]] = True
    present[:, 0] = False
    return present[:, :n_labels]


@torch.no_grad()
def present_labels(pixel: Tensor, valid: Tensor) -> Tensor:
    """LongTensor of the label ids in ``pixel`` (> 0) whose entry of ``valid`` (bool ``Tensor[C]``) is True."""
    counts = torch.bincount(pixel.flatten(), minlength=len(valid))[: len(valid)]
    return torch.nonzero((counts > 0) & valid).flatten()


@torch.no_grad()
def label_truth(pixel: Tensor, ids: Tensor) -> Tensor:
    """bool ``Tensor[B, len(ids), P]``: pixels labelled with each of ``ids`` (LongTensor, ids > 0) in any layer of
    ``pixel`` ``LongTensor[B, L, P]`` (a scatter through a lookup table: no [B, C, L, P] comparison)."""
    size = max(int(pixel.max()) if pixel.numel() else 0, int(ids.max()) if len(ids) else 0) + 1
    lookup = torch.full((size,), len(ids), dtype=torch.int64, device=pixel.device)
    lookup[ids] = torch.arange(len(ids), device=pixel.device)
    b, depth, p = pixel.shape
    truth = torch.zeros(b, len(ids) + 1, p, dtype=torch.bool, device=pixel.device)
    for layer in range(depth):
        truth.scatter_(1, lookup[pixel[:, layer]].unsqueeze(1), True)
    return truth[:, : len(ids)]


@torch.no_grad()
def batch_set_iou_counts(features: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Set-IoU counts of one batch, per image: ``(intersection, union)`` int64 ``Tensor[B, C, M]`` for masks
    ``features`` bool ``[B, M, P]`` against ``truth`` bool ``[B, C, P]``; zero where the image lacks the concept
    (the batched :func:`set_iou_counts`)."""
    f = features.to(torch.float32)
    t = truth.to(torch.float32)
    inter = torch.bmm(t, f.transpose(1, 2)).round().to(torch.int64)  # exact: counts < 2**24 per image
    truth_sum = t.sum(2, keepdim=True).to(torch.int64)
    union = (f.sum(2).to(torch.int64).unsqueeze(1) + truth_sum) * (truth_sum > 0) - inter
    return inter, union


_TALLY_SUMS = ("intersection", "union", "images", "concept_pixels", "covered_pixels")
_TALLY_ROWS = ("pooled", "presence", "pixel_presence", "seen")
_TALLY_SAMPLES = ("sample_image", "sample_features", "sample_labels")


class Net2VecTally:
    """Pass 1 of a Net2Vec run over every image of a dataset (§3.1.1, §3.2): streamed, mergeable, exact.

    Per split ``s`` (:data:`TRAIN`, :data:`VAL`), int64 sums over the images of ``s`` that hold each label at a
    pixel: ``intersection[s, c, k]`` = Σ|M_k ∩ L_c|, ``union[s, c, k]`` = Σ|M_k ∪ L_c| (eq. 1's set IoU),
    ``images[s, c]`` the number of such images, ``concept_pixels[s, c]`` = Σ|L_c| and ``covered_pixels[s, c]`` =
    Σ of those images' pixel counts (the trivial "every pixel" segmenter's union). Per image (dataset row, dense
    ``[n_images, …]`` on the CPU, filled where ``seen``): ``pooled`` float32 ``[N, K]`` (eq. 5's inputs),
    ``presence`` bool ``[N, C]`` (label at a pixel or as a whole-image label), ``pixel_presence`` (at a valid
    label's pixel). The training sample: ``pixels_per_image`` pixels of every train image with a valid pixel
    label, drawn by :func:`sample_pixels` under ``(seed, row)`` so independent of batching and sharding, stored per
    pixel (``sample_image`` LongTensor[S], ``sample_features`` ``[S, K]``, ``sample_labels`` LongTensor[S, L]
    padded with label 0). ``sample_features`` are bool under the ``"nd18"`` rule; the ``"net2vec"`` rule's float
    indicators are stored as float16 to halve the sample's memory (exact for bilinear weights of power-of-two
    scale factors, else rounded by < 2⁻¹¹; the single-filter counts and pass 2 read the float32 values). The
    single-filter counts use :func:`unit_masks` of ``features``.

    Args:
        n_images: rows of the dataset (each shard sees a subset).
        valid: bool ``Tensor[C]``: the labels that are concepts (label 0 must be False); on the tally's device.
        n_units: ``K``.
    """

    def __init__(self, n_images: int, valid: Tensor, n_units: int, *, pixels_per_image: int, seed: int) -> None:
        if len(valid) and bool(valid[0]):
            raise ValueError("label 0 means 'unlabeled' and cannot be valid")
        self.device = valid.device
        self.valid = valid.detach().to(torch.bool).clone()
        self.n_images, self.n_units = int(n_images), int(n_units)
        self.pixels_per_image, self.seed = int(pixels_per_image), int(seed)
        n_labels = len(valid)
        z = dict(dtype=torch.int64, device=self.device)
        self.intersection = torch.zeros(2, n_labels, n_units, **z)
        self.union = torch.zeros(2, n_labels, n_units, **z)
        self.images = torch.zeros(2, n_labels, **z)
        self.concept_pixels = torch.zeros(2, n_labels, **z)
        self.covered_pixels = torch.zeros(2, n_labels, **z)
        self.pooled = torch.zeros(n_images, n_units, dtype=torch.float32)
        self.presence = torch.zeros(n_images, n_labels, dtype=torch.bool)
        self.pixel_presence = torch.zeros(n_images, n_labels, dtype=torch.bool)
        self.seen = torch.zeros(n_images, dtype=torch.bool)
        self._samples: list[tuple[Tensor, Tensor, Tensor]] = []  # (image [S], features [S, K], labels [S, L])

    @property
    def n_labels(self) -> int:
        return len(self.valid)

    @torch.no_grad()
    def add(self, batch: UnitMaskBatch, split: Tensor) -> None:
        """Tally one batch; ``split`` LongTensor[B] is each image's split code."""
        rows, features, pixel = batch.rows.cpu(), batch.features, batch.pixel
        if bool(self.seen[rows].any()):
            raise ValueError("an image was added twice")
        split = split.to(self.device)
        self.seen[rows] = True
        self.pooled[rows] = batch.pooled.cpu()
        self.presence[rows] = label_presence(pixel, batch.image_labels, self.n_labels).cpu()
        at_pixels = label_presence(pixel, None, self.n_labels) & self.valid
        self.pixel_presence[rows] = at_pixels.cpu()
        ids = present_labels(pixel, self.valid)
        masks = unit_masks(features)
        if len(ids):
            truth = label_truth(pixel, ids)
            inter, union = batch_set_iou_counts(masks, truth)
            truth_pixels = truth.sum(2)  # [B, C]
            for code in (TRAIN, VAL):
                in_split = split == code
                self.intersection[code, ids] += inter[in_split].sum(0)
                self.union[code, ids] += union[in_split].sum(0)
                self.images[code] += at_pixels[in_split].sum(0)
                self.concept_pixels[code, ids] += truth_pixels[in_split].sum(0)
                self.covered_pixels[code] += at_pixels[in_split].sum(0) * features.shape[2]
        keep = ((split == TRAIN) & at_pixels.any(1)).nonzero().flatten()
        if len(keep):
            n_pixels = features.shape[2]
            count = min(self.pixels_per_image, n_pixels)
            kept_rows = rows[keep.cpu()]
            pick = torch.stack(
                [sample_pixels(n_pixels, count, seed=self.seed, image=int(row)) for row in kept_rows.tolist()]
            ).to(self.device)  # [b, n]
            chosen = torch.gather(features[keep], 2, pick.unsqueeze(1).expand(-1, self.n_units, -1))  # [b, K, n]
            if chosen.dtype != torch.bool:
                chosen = chosen.to(torch.float16)  # the stored sample: see the class docstring
            labels = torch.gather(pixel[keep], 2, pick.unsqueeze(1).expand(-1, pixel.shape[1], -1))  # [b, L, n]
            self._samples.append(
                (
                    kept_rows.repeat_interleave(count).to(self.device),
                    chosen.transpose(1, 2).flatten(0, 1),
                    labels.transpose(1, 2).flatten(0, 1),
                )
            )

    @property
    def _sample_dtype(self) -> torch.dtype:
        return self._samples[0][1].dtype if self._samples else torch.bool

    def _sample_chunks(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The training sample's chunks in image-row order (stable: pixel order within an image). Chunks of one
        pass or of image-range shards never interleave, so they are only reordered; otherwise they are joined."""
        chunks = sorted(self._samples, key=lambda chunk: int(chunk[0][0]))
        firsts = [int(chunk[0][0]) for chunk in chunks]
        lasts = [int(chunk[0][-1]) for chunk in chunks]
        ordered = all(bool((chunk[0][1:] >= chunk[0][:-1]).all()) for chunk in chunks) and all(
            last <= first for last, first in zip(lasts, firsts[1:])
        )
        if not ordered:
            depth = max(labels.shape[1] for _, _, labels in chunks)
            image = torch.cat([image for image, _, _ in chunks])
            order = torch.argsort(image, stable=True)
            chunks = [
                (
                    image[order],
                    torch.cat([features for _, features, _ in chunks])[order],
                    torch.cat(
                        [torch.nn.functional.pad(labels, (0, depth - labels.shape[1])) for _, _, labels in chunks]
                    )[order],
                )
            ]
        self._samples = chunks
        return chunks

    def _sample_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """The training sample as three tensors (labels padded with 0 to the deepest chunk), by image row."""
        chunks = self._sample_chunks()
        if not chunks:
            return (
                torch.zeros(0, dtype=torch.int64, device=self.device),
                torch.zeros(0, self.n_units, dtype=self._sample_dtype, device=self.device),
                torch.zeros(0, 1, dtype=torch.int64, device=self.device),
            )
        depth = max(labels.shape[1] for _, _, labels in chunks)
        return (
            torch.cat([image for image, _, _ in chunks]),
            torch.cat([features for _, features, _ in chunks]),
            torch.cat([torch.nn.functional.pad(labels, (0, depth - labels.shape[1])) for _, _, labels in chunks]),
        )

    def _check_compatible(self, other: Net2VecTally) -> None:
        if (self.n_images, self.n_units, self.pixels_per_image, self.seed) != (
            other.n_images,
            other.n_units,
            other.pixels_per_image,
            other.seed,
        ) or not torch.equal(self.valid, other.valid.to(self.device)):
            raise ValueError("cannot merge Net2Vec tallies of different datasets, layers or sampling")
        if bool((self.seen & other.seen).any()):
            raise ValueError("cannot merge tallies that share images")

    @torch.no_grad()
    def merge(self, other: Net2VecTally) -> None:
        """Add another shard's tally (other images, same labels, layer and sampling). Exact."""
        self._check_compatible(other)
        for name in _TALLY_SUMS:
            getattr(self, name).add_(getattr(other, name).to(self.device))
        theirs = other.seen
        for name in ("pooled", "presence", "pixel_presence"):
            getattr(self, name)[theirs] = getattr(other, name)[theirs]
        self.seen |= theirs
        self._samples.extend(
            (image.to(self.device), features.to(self.device), labels.to(self.device))
            for image, features, labels in other._samples
        )

    def state_dict(self) -> dict:
        """Plain dict of ints and tensors (loadable with ``torch.load(weights_only=True)``)."""
        state = {
            "n_images": self.n_images,
            "n_units": self.n_units,
            "pixels_per_image": self.pixels_per_image,
            "seed": self.seed,
            "valid": self.valid.clone(),
        }
        state.update({name: getattr(self, name).clone() for name in (*_TALLY_SUMS, *_TALLY_ROWS)})
        state.update(zip(_TALLY_SAMPLES, (t.clone() for t in self._sample_tensors())))
        return state

    @classmethod
    def from_state_dict(cls, state: dict, *, device: torch.device | str | None = None) -> Net2VecTally:
        """Restore from :meth:`state_dict` onto ``device`` (default: where the state's tensors are)."""
        valid = state["valid"] if device is None else state["valid"].to(device)
        tally = cls(
            int(state["n_images"]),
            valid,
            int(state["n_units"]),
            pixels_per_image=int(state["pixels_per_image"]),
            seed=int(state["seed"]),
        )
        for name in _TALLY_SUMS:
            setattr(tally, name, state[name].to(tally.device, torch.int64).clone())
        for name in _TALLY_ROWS:
            setattr(tally, name, state[name].cpu().clone())
        if len(state["sample_image"]):
            tally._samples = [tuple(state[name].to(tally.device).clone() for name in _TALLY_SAMPLES)]
        return tally

    # -- results --------------------------------------------------------------------------------------------------

    def segmentation_concepts(self, *, min_images: int, count: int) -> list[int]:
        """The label ids a run probes: at least ``min_images`` train and val images with a pixel of the label,
        the ``count`` most frequent (train + val images; ``count = 0``: all of them, the paper's rule), ties by
        label id; ascending by frequency rank."""
        images = self.images.cpu()
        eligible = [
            number
            for number in range(self.n_labels)
            if images[TRAIN, number] >= min_images and images[VAL, number] >= min_images
        ]
        eligible.sort(key=lambda number: (-int(images[TRAIN, number] + images[VAL, number]), number))
        return eligible[:count] if count else eligible

    def single_filter_iou(self) -> tuple[Tensor, Tensor]:
        """``(train, val)`` float64 ``Tensor[C, K]`` (CPU): every unit's set IoU (eq. 1) per label."""
        return (
            set_iou(self.intersection[TRAIN], self.union[TRAIN]).cpu(),
            set_iou(self.intersection[VAL], self.union[VAL]).cpu(),
        )

    def all_pixels_iou(self) -> Tensor:
        """float64 ``Tensor[C]``: val set IoU of the trivial segmenter "every pixel of every image with the
        concept", i.e. the concept's share of those images' pixels."""
        return set_iou(self.concept_pixels[VAL].cpu(), self.covered_pixels[VAL].cpu())

    def training_pixels(self, number: int, *, max_pixels: int) -> tuple[Tensor, Tensor]:
        """``(features [S_c, K] (bool, or float16 indicators), target bool [S_c])``: the sampled pixels of the
        train images with a pixel of
        label ``number``, by image row; cut to ``max_pixels`` by a seeded uniform subset (seed ``(seed,
        number)``) when more."""
        presence = self.pixel_presence[:, number].to(self.device)
        picked = [
            (features[has], (labels[has] == number).any(1))
            for image, features, labels in self._sample_chunks()
            if (has := presence[image]).any()
        ]
        if not picked:
            return torch.zeros(0, self.n_units, dtype=self._sample_dtype, device=self.device), torch.zeros(
                0, dtype=torch.bool, device=self.device
            )
        features = torch.cat([features for features, _ in picked])
        target = torch.cat([target for _, target in picked])
        if len(target) > max_pixels:
            keep = sample_pixels(len(target), max_pixels, seed=self.seed, image=number).to(self.device)
            features, target = features[keep], target[keep]
        return features, target

    def release_training_pixels(self) -> None:
        """Drop the training sample (after training: pass 2 and the results do not need it)."""
        self._samples = []


class ProbeTally:
    """Pass 2 (§3.1.2): exact set-IoU counts of M linear probes on the val images, for their concepts.

    ``weights`` float32 ``Tensor[M, K]`` and ``bias`` ``Tensor[M]`` (:func:`stack_probes`) on the tally's device;
    ``concepts`` LongTensor[C] the label ids scored. ``add`` a :class:`UnitMaskBatch` (val images only):
    ``intersection``/``union`` int64 ``Tensor[C, M]`` sum over each image holding the concept (probe mask: logit
    ≥ 0). ``tracked`` LongTensor[T, 2] of ``(concept position, probe)`` pairs (default none) whose per-image counts
    are kept too, for eq. 3's ``IoU_ind`` on every image holding the concept (:meth:`per_image`)."""

    def __init__(self, weights: Tensor, bias: Tensor, concepts: Tensor, tracked: Tensor | None = None) -> None:
        self.device = weights.device
        self.weights, self.bias = weights.detach().clone(), bias.detach().to(self.device).clone()
        self.concepts = concepts.detach().to(self.device, torch.int64).clone()
        self.tracked = (
            torch.zeros(0, 2, dtype=torch.int64)
            if tracked is None
            else tracked.detach().cpu().to(torch.int64).view(-1, 2).clone()
        )
        self.intersection = torch.zeros(len(concepts), len(weights), dtype=torch.int64, device=self.device)
        self.union = torch.zeros_like(self.intersection)
        self.images = 0
        # per-image records of the tracked pairs: (row, pair, intersection, union), CPU int64 [n] each
        self._records: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    @torch.no_grad()
    def add(self, batch: UnitMaskBatch) -> None:
        logits = torch.einsum("mk,bkp->bmp", self.weights, batch.features.to(torch.float32)) + self.bias.view(1, -1, 1)
        inter, union = batch_set_iou_counts(logits >= 0, label_truth(batch.pixel, self.concepts))
        self.intersection += inter.sum(0)
        self.union += union.sum(0)
        self.images += len(batch.rows)
        if len(self.tracked):
            c, m = self.tracked[:, 0].to(self.device), self.tracked[:, 1].to(self.device)
            pair_inter, pair_union = inter[:, c, m].cpu(), union[:, c, m].cpu()  # [B, T]
            image, pair = torch.nonzero(pair_union > 0, as_tuple=True)  # the image holds the pair's concept
            self._records.append((batch.rows.cpu()[image], pair, pair_inter[image, pair], pair_union[image, pair]))

    def _record_tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The per-image records as four int64 tensors, ordered by (row, pair): independent of batching and merging."""
        if not self._records:
            return tuple(torch.zeros(0, dtype=torch.int64) for _ in range(4))
        row, pair, inter, union = (torch.cat(parts) for parts in zip(*self._records))
        order = torch.argsort(row * max(len(self.tracked), 1) + pair, stable=True)
        return row[order], pair[order], inter[order], union[order]

    @torch.no_grad()
    def merge(self, other: ProbeTally) -> None:
        """Add another shard's counts (other val images, same probes and concepts). Exact."""
        if not (
            torch.equal(self.weights, other.weights.to(self.device))
            and torch.equal(self.bias, other.bias.to(self.device))
            and torch.equal(self.concepts, other.concepts.to(self.device))
            and torch.equal(self.tracked, other.tracked)
        ):
            raise ValueError("cannot merge probe tallies of different probes or concepts")
        self.intersection += other.intersection.to(self.device)
        self.union += other.union.to(self.device)
        self.images += other.images
        self._records.extend(other._records)

    def state_dict(self) -> dict:
        row, pair, inter, union = self._record_tensors()
        return {
            "weights": self.weights.clone(),
            "bias": self.bias.clone(),
            "concepts": self.concepts.clone(),
            "intersection": self.intersection.clone(),
            "union": self.union.clone(),
            "images": self.images,
            "tracked": self.tracked.clone(),
            "record_row": row,
            "record_pair": pair,
            "record_intersection": inter,
            "record_union": union,
        }

    @classmethod
    def from_state_dict(cls, state: dict, *, device: torch.device | str | None = None) -> ProbeTally:
        weights = state["weights"] if device is None else state["weights"].to(device)
        tally = cls(weights, state["bias"], state["concepts"], state.get("tracked"))
        tally.intersection = state["intersection"].to(tally.device, torch.int64).clone()
        tally.union = state["union"].to(tally.device, torch.int64).clone()
        tally.images = int(state["images"])
        if len(state.get("record_row", ())):
            tally._records = [
                tuple(
                    state[name].clone() for name in ("record_row", "record_pair", "record_intersection", "record_union")
                )
            ]
        return tally

    def result(self) -> Tensor:
        """float64 ``Tensor[C, M]`` (CPU): each probe's val set IoU for each concept."""
        return set_iou(self.intersection, self.union).cpu()

    def per_image(self, pair: int) -> tuple[Tensor, Tensor]:
        """``(rows LongTensor[n], iou float64 Tensor[n])``: eq. 3's ``IoU_ind`` of tracked pair ``pair`` (its index
        in ``tracked``) on every val image holding its concept, by row."""
        row, which, inter, union = self._record_tensors()
        keep = which == int(pair)
        return row[keep], set_iou(inter[keep], union[keep])


def best_single_filters(single_train: Tensor, concepts: Sequence[int], *, excluded: Tensor | None = None) -> list[int]:
    """The best single filter of each label of ``concepts`` by train set IoU (``single_train`` ``Tensor[C, K]``),
    the first maximum (lowest unit on ties); ``excluded`` bool ``Tensor[K]`` units are never chosen (a unit on at
    every pixel under ``≥`` with ``T_k = 0`` just scores the concept's coverage)."""
    candidates = single_train.clone()
    if excluded is not None:
        candidates[:, excluded.cpu()] = -1.0
    return [int(torch.argmax(candidates[number])) for number in concepts]


def classification_concepts(
    presence: Tensor, split: Tensor, valid: Tensor, *, min_images: int, count: int
) -> tuple[list[int], Tensor, Tensor]:
    """§3.2's concepts: every valid label with at least ``min_images`` positive and as many negative images in
    train and in val each (``presence`` bool ``[N, C]``, ``split`` LongTensor[N] codes); all of them when ``count``
    is 0, else the ``count`` most frequent (train + val positives, ties by label id); returned sorted by id, with
    ``positives`` and ``negatives`` int64 ``Tensor[2, C]`` (train, val)."""
    train, val = split == TRAIN, split == VAL
    positives = torch.stack([presence[train].sum(0), presence[val].sum(0)])
    negatives = torch.stack([int(train.sum()) - positives[0], int(val.sum()) - positives[1]])
    enough = (positives >= min_images).all(0) & (negatives >= min_images).all(0) & valid.cpu()
    eligible = torch.nonzero(enough).flatten().tolist()
    eligible.sort(key=lambda number: (-int(positives[:, number].sum()), number))
    return sorted(eligible[:count] if count else eligible), positives, negatives


def score_classifiers(
    fit: ConceptClassifiers, top_f: Sequence[int], features: Tensor, truth: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """``(balanced accuracy, average precision)`` on the val images (pooled ``features`` ``[N, K]``, ``truth``
    bool ``[N, C]``) of the full classifiers then each top-F set in ``top_f`` order: lists of float64
    ``Tensor[C]``."""
    scored = [fit.full] + [fit.top[f] for f in top_f]
    return (
        [balanced_accuracy(classifiers.logits(features), truth) for classifiers in scored],
        [average_precision(classifiers.logits(features), truth) for classifiers in scored],
    )
