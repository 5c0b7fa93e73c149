"""Net2Vec (Fong & Vedaldi, CVPR 2018, §3.1): per-pixel concept segmentation probes on one layer.

Pure torch; nothing from the project outside the engine. Every function runs under ``torch.no_grad()``
except the probe training, allocates on its inputs' device and never picks a device itself.

Inputs (shapes and dtypes)
    ``features``: the layer's binary unit masks at mask resolution, one row per pixel, ``Tensor[P, K]``
    (bool or float 0/1): ``features[p, k] = 1`` when unit ``k``'s upsampled activation at pixel ``p`` is
    ≥ its dissection threshold ``T_k`` (the ND'18 mask ``M_k`` the dissection uses). Net2Vec's
    filter-combination probe (their eq. 2) combines exactly these indicators ``I(A_k > T_k)``, not raw
    activations, so single filters and combinations see the same inputs.
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
    Evaluation thresholds ``M`` at ½ (i.e. logit > 0) and reports set IoU on validation images.
(c) Top-F subsets (§3.2.2, following [2] as the paper does): the F units with the largest ``|w_k|`` of the
    full probe, and a *new* probe ``w' ∈ R^F`` (+ bias) trained on those units only. F = 1 is then the
    learned single-filter probe.

Optimiser: SGD with momentum 0.9 (the paper's). The paper's ``lr = 1e-4`` applies to eq. 4 *summed* over
the ``h_s·w_s`` pixels of each image; our loss is the per-pixel *mean* over a minibatch of sampled pixels,
so the equivalent step is ``1e-4 · h_s·w_s`` (≈ 1.3 at their 113×113 masks): :class:`ProbeConfig` defaults to
``lr = 1.0``. Weights start at zero; minibatches are drawn with a ``torch.Generator`` seeded with ``seed``,
so training is deterministic under a seed on one device.

Pixel sampling (bounded memory): training uses ``pixels_per_image`` pixels per training image, drawn
uniformly without replacement by :func:`sample_pixels` with a generator seeded by ``(seed, image row)``, so
an image's sample does not depend on batching. Evaluation (set IoU) always uses every pixel, streamed.

Concept embeddings are the learned ``w`` (§5.3); nearest concepts by cosine similarity.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "ProbeConfig", "LinearProbe", "ConceptProbes", "sample_pixels", "set_iou_counts", "set_iou",
    "concept_alpha", "weighted_bce", "train_probe", "fit_concept_probes", "probe_masks", "stack_probes", "cosine_similarity",
    "nearest_concepts",
]

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


def train_probe(features: Tensor, target: Tensor, *, alpha: float, config: ProbeConfig,
                units: Tensor | None = None) -> LinearProbe:
    """Fit ``σ(features[:, units] @ w + b)`` to ``target`` (bool ``Tensor[N]``) with eq. 4 (SGD + momentum).

    ``features`` ``Tensor[N, K]`` (bool or float), on the device to train on; ``units`` LongTensor[F] picks
    columns (default: all). Deterministic under ``config.seed`` on one device."""
    device = features.device
    units = torch.arange(features.shape[1], device=device) if units is None else units.to(device)
    x = features.index_select(1, units).to(torch.float32)
    y = target.to(device=device, dtype=torch.float32)
    weight = torch.zeros(x.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(1, device=device, requires_grad=config.bias)
    params = [weight, bias] if config.bias else [weight]
    # SGD with momentum as torch.optim.SGD computes it (dampening 0, no Nesterov): v ← μv + g; p ← p − lr·v
    velocity = [torch.zeros_like(param) for param in params]
    generator = torch.Generator().manual_seed(int(config.seed))
    n = x.shape[0]
    if n:
        for _ in range(int(config.epochs)):
            order = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, config.batch_pixels):
                batch = order[start:start + config.batch_pixels]
                with torch.enable_grad():
                    loss = weighted_bce(x[batch] @ weight + bias, y[batch], alpha)
                    grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for param, grad, v in zip(params, grads, velocity):
                        v.mul_(config.momentum).add_(grad)
                        param.sub_(config.lr * v)
    return LinearProbe(units=units.detach().cpu(), weight=weight.detach().cpu(), bias=float(bias.detach()))


def fit_concept_probes(features: Tensor, target: Tensor, *, config: ProbeConfig) -> ConceptProbes:
    """The full probe, then one retrained probe on the top-F units by ``|w_k|`` for each F of ``config.top_f``
    not above the layer width K (ties broken by the lower unit index)."""
    alpha = concept_alpha(target)
    full = train_probe(features, target, alpha=alpha, config=config)
    k = features.shape[1]
    magnitude = full.weight.abs()
    # stable order: largest |w| first, then lower index
    order = sorted(range(k), key=lambda unit: (-float(magnitude[unit]), unit))
    top = {}
    for f in sorted({int(f) for f in config.top_f if 1 <= int(f) <= k}):
        units = torch.tensor(sorted(order[:f]), dtype=torch.int64)
        top[f] = train_probe(features, target, alpha=alpha, config=config, units=units)
    return ConceptProbes(alpha=alpha, full=full, top=top)


@torch.no_grad()
def probe_masks(features: Tensor, probes: Sequence[LinearProbe]) -> Tensor:
    """bool ``Tensor[M, P]``: each probe's mask ``σ(·) ≥ ½`` ⇔ logit ≥ 0 on ``features`` ``Tensor[P, K]``.

    (The paper thresholds at ½ without saying which side; a logit of exactly 0 counts as positive.)"""
    x = features.to(torch.float32)
    weights, bias = stack_probes(probes, x.shape[1], device=x.device)
    return (weights @ x.T + bias.unsqueeze(1)) >= 0


def stack_probes(probes: Sequence[LinearProbe], units: int, *, device: torch.device | str = "cpu"
                 ) -> tuple[Tensor, Tensor]:
    """``(weights float32 Tensor[M, units], bias float32 Tensor[M])``: the probes as one dense linear map
    (zero weight on the units a top-F probe leaves out)."""
    weights = torch.zeros(len(probes), units, dtype=torch.float32, device=device)
    for row, probe in enumerate(probes):
        weights[row, probe.units.to(device)] = probe.weight.to(device, torch.float32)
    bias = torch.tensor([probe.bias for probe in probes], dtype=torch.float32, device=device)
    return weights, bias


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
