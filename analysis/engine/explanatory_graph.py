"""Explanatory graphs (Zhang, Cao, Shi, Wu & Zhu, AAAI'18; arXiv version §3.2, Algorithm 1): part patterns
disentangled from the filters of a CNN's top conv layers, without part annotations.

The model (notation of the paper; the text extraction garbles some formulas, reconstructed here from the prose
and said so where it matters):

* Positions. Every unit ``x`` of a layer's ``[D, h, w]`` map sits at ``p_x``, the centre of its receptive field on
  the image plane (paper footnote 2/3), given by the caller as ``positions float32 [h*w, 2]`` ``(y, x)`` in
  *plane units*. Our choice: one plane unit = the network input's longer side (so positions lie in about [0, 1]).
  Densities, σ and τ are in these units; τ = 0.1 is then a tenth of the uniform density over the image.
* Activation entities. ``F(x) = β · max(f_x, 0)`` with ``f_x`` the *normalised* response (eq. 2). The paper does
  not say how responses are normalised; our choice: each filter's responses are divided by the mean, over the
  learning images, of that filter's per-image maximum (1 when that mean is 0), so a typical peak is ``β``.
* Mixture (eq. 2). Filter ``d``'s entities are explained by its ``N`` nodes ``Ω_{L,d}`` and a noise component
  ``V_none``, each with prior ``P(V) = 1 / (N + 1)``.
* Compatibility (eq. 3–4). ``P(p_x | V) = γ Π_{V'∈E_V} N(p_x | μ_V − μ_V' + p_V', σ_V'²)^{1/M}`` and
  ``P(p_x | V_none) = γ τ``. Completing the square, the product of the M Gaussians raised to λ = 1/M is
  ``N(p_x | μ_V + Δ_{I,V}, σ̃_V²) · exp(−D_{I,V}) / γ_V`` with ``Δ_{I,V} = Σ b_j/σ_j² / Σ 1/σ_j²``
  (``b_j = p_V'^I − μ_V'``), ``σ̃_V² = 1 / mean(1/σ_j²)`` (paper footnote 3/4) and the **disagreement**
  ``D_{I,V} = (1/M) Σ_j ||b_j − Δ_{I,V}||² / (2 σ_j²)``: the product is lower on an image where the neighbours
  predict different positions for V. γ is a constant (the paper: "to roughly ensure" the density integrates to 1);
  we take the node's constant ``γ_V`` that makes it exact when the neighbours agree, so
  ``P(p_x | V) = N(p_x | μ_V + Δ_{I,V}, σ̃_V²) · exp(−D_{I,V})`` (2-D density; the noise density is ``τ``).
  ``neighbour_penalty=False`` drops ``exp(−D)`` — a per-image normalisation that makes a node as likely when its
  neighbours disagree as when they agree (the engine's behaviour before; not the paper's).
  On the top layer ``E_V = {V_dummy}`` with ``μ_dummy = p_dummy = 0``: ``P(p_x | V) = N(p_x | μ_V, σ_V²)``. The paper
  does not say how this σ_V is set while the top layer is learned; our default keeps it at ``init_sigma`` (a node
  then explains the entities within a few σ of μ_V and V_none the rest); ``fit_top_sigma=True`` re-estimates it
  each iteration as the weighted variance of the node's entities (plain GMM; on real maps broad nodes then swallow
  whole filters and drift together, seen on the demo network). The same form with σ = ``init_sigma`` serves the
  first iteration of every lower layer, before any E_V is chosen (Algorithm 1's initialisation).
* σ_V' (eq. 4, "estimated from data"): footnote 4's second option, the variation over images of
  ``p_V − μ_V − Δ_{I,V}`` at the inferred positions, weighted by the inference score ``S_V^I`` (our choice: images
  where the node is silent carry no information), per coordinate (isotropic), floored at ``min_sigma``. A node
  silent on every image gets σ² = 1 (uninformative).
* EM (Algorithm 1). ``T`` iterations, each one streamed pass over the learning images: the E-step computes
  ``P(V | p_x)`` (softmax over the N + 1 components); step 1) updates μ_V. Algorithm 1 writes a gradient step with
  rate η; we take the η that makes it the exact EM maximiser,
  ``μ_V = Σ_{I,x} w (p_x − Δ_{I,V}) / Σ_{I,x} w`` with ``w = P(V | p_x) F(x)``. Step 2) chooses E_V greedily to
  maximise ``Π_I P(X_L | R_{L+1}, θ_L)`` with the responsibilities of this iteration held fixed: because
  ``log P(p_x | V)`` is the mean of the M log-densities, the expected log-likelihood is a sum of one term per
  neighbour, ``ℓ(V, V') = Σ_{I,x} w · log N(p_x | μ_V − μ_V' + p_V'^I, σ_V'²)``, and the greedy choice is exactly
  the M upper-layer nodes with the largest ℓ (ties: lower index). ℓ for every pair (V, V') is accumulated in the
  same pass from per-image sums (no pass per candidate): with ``a = p_x − μ_V`` and ``b^I = p_V'^I − μ_V'``,
  ``Σ w ||a − b||² = Σ w ||p||² − 2 μ·Σ w p + ||μ||² Σ w − 2 Σ_I (Σ_x w p − W^I μ)·b^I + Σ_I W^I ||b^I||²``.
* Initialisation. "A random value for μ_V^(0)": each node starts at a unit position drawn uniformly (seeded by
  ``seed`` and the layer's position in the graph).
* Inference. ``x̂ = argmax_{x: d_x = d} S_{V→x}`` with ``S_{V→x} = F(x) · P(p_x | V)²`` (arXiv; the AAAI
  extraction lost the square); ties go to the first unit in row-major order; the node's score on the image is
  ``S_V^I = S_{V→x̂}`` (0 when the filter is silent). The graph is learned top-down: a layer's inference results
  on every image are stored (``allocate``) before the next layer down is learned.

Evaluation helpers: :func:`location_instability` (the paper's Table 1) and :func:`energy_top_k` (the 30 %
inference-energy rule that sets K for the purity counts). Patch helpers crop fixed-size patches at inferred
positions (Fig. 5: 70 × 70 px on 224 px inputs).

Images. An "image" here is one input of the graph: a row of ``read_maps`` — the paper's cropped object images of
one category (the service's default: object crops, each warped to the network input), or whole images. Positions
stay on the network input's plane either way; mapping them back to a dataset image is the caller's (through the
crop's frame).

Streaming: maps are read per batch of images through ``read_maps(rows)``; memory is bounded by the batch size, the
graph's parameters, the ``[nodes, upper nodes]`` selection statistics and the inference arrays the caller
allocates (memory maps in the service). Deterministic under ``seed`` on a given device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "PAPER_BETA",
    "PAPER_M",
    "PAPER_T",
    "PAPER_TAU",
    "PATCH_FRACTION",
    "FilterPeakTally",
    "GraphLayer",
    "GraphResult",
    "LayerConfig",
    "LayerSource",
    "crop_patch",
    "default_nodes_per_filter",
    "energy_top_k",
    "filter_normalizer",
    "infer_layer",
    "learn_graph",
    "learn_layer",
    "location_instability",
    "pattern_instability",
    "purity_sample",
    "raw_filter_peaks",
    "render_patch_grid",
]

PAPER_TAU = 0.1
PAPER_M = 15
PAPER_T = 20
PAPER_BETA = 1.0
PATCH_FRACTION = 70 / 224
"""Fig. 5 patches: 70 × 70 px on VGG-16's 224 px input; we keep the same fraction of the input side."""

ReadMaps = Callable[[np.ndarray], "np.ndarray | Tensor"]
Progress = Callable[[str, int, int], None]
Allocate = Callable[[str, tuple[int, ...], str], np.ndarray]


def default_nodes_per_filter(n_layers: int) -> list[int]:
    """``N_{L,d}`` per graph layer, top layer first: the paper's three-layer ResNet values (10, 20, 40 from the top),
    continued by doubling (so a two-layer graph gets 10, 20)."""
    return [10 * 2**level for level in range(n_layers)]


@dataclass(frozen=True)
class LayerConfig:
    """Parameters of one graph layer; defaults are the paper's (§ Implementation details: τ=0.1, M=15, T=20, β=1).

    ``init_sigma`` (σ of V_dummy, and of the top layer's nodes while they are learned), ``min_sigma`` (floor of every
    σ) and ``fit_top_sigma`` (see the module docstring) are our choices, in plane units: the paper leaves them open.
    """

    nodes_per_filter: int
    neighbours: int = PAPER_M
    tau: float = PAPER_TAU
    iterations: int = PAPER_T
    beta: float = PAPER_BETA
    init_sigma: float = 0.1
    min_sigma: float = 0.01
    fit_top_sigma: bool = False
    neighbour_penalty: bool = True

    def __post_init__(self) -> None:
        if self.nodes_per_filter < 1 or self.neighbours < 1 or self.iterations < 1:
            raise ValueError("nodes_per_filter, neighbours and iterations must be positive")
        if self.tau <= 0 or self.beta <= 0 or self.init_sigma <= 0 or self.min_sigma <= 0:
            raise ValueError("tau, beta and the sigmas must be positive")


@dataclass(frozen=True)
class LayerSource:
    """One conv layer to build a graph layer from.

    ``read_maps(rows int64[B]) -> float [B, D, h, w]`` (post-ReLU maps of those images); ``positions``
    ``float32 [h*w, 2]`` (y, x) in plane units, row-major over the map.
    """

    name: str
    read_maps: ReadMaps
    positions: Tensor
    n_filters: int


@dataclass
class GraphLayer:
    """A learned graph layer. Node ``n`` of filter ``d`` has flat index ``d * N + n``.

    ``mu float32 [D, N, 2]`` prior positions (plane units, (y, x)); ``sigma2 float32 [D, N]`` the variation of the
    inferred positions (used by the layer below); ``fit_sigma2 float32 [D, N]`` the top layer's σ_V² while learning
    and inferring (unused below the top); ``edges int64 [D*N, M]`` flat indices of E_V in the upper layer
    (``[D*N, 0]`` on the top layer);
    ``mass float64 [D, N]`` activation entities each node explained in the last E-step and ``noise_mass float64
    [D]`` those of V_none; ``normalizer float32 [D]``; ``log_likelihood`` per iteration (eq. 2, summed over images).
    """

    name: str
    config: LayerConfig
    positions: Tensor
    normalizer: Tensor
    mu: Tensor
    sigma2: Tensor
    fit_sigma2: Tensor
    edges: Tensor
    mass: Tensor
    noise_mass: Tensor
    log_likelihood: list[float] = field(default_factory=list)

    @property
    def n_filters(self) -> int:
        return int(self.mu.shape[0])

    @property
    def nodes_per_filter(self) -> int:
        return int(self.mu.shape[1])

    @property
    def n_nodes(self) -> int:
        return self.n_filters * self.nodes_per_filter


@dataclass
class GraphResult:
    """Layers top first; ``units[name] int32 [I, D*N]`` inferred unit (row-major map index) of every node on every
    image and ``scores[name] float32 [I, D*N]`` its ``S_V^I`` (arrays from the caller's ``allocate``)."""

    layers: list[GraphLayer]
    units: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]


# -- pieces ---------------------------------------------------------------------------------------------------------


def _batches(rows: np.ndarray, batch_size: int):
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def _entities(maps, normalizer: Tensor, beta: float, device) -> Tensor:
    """``F(x)``: float32 ``[B, D, P]`` = β · max(map / normalizer, 0)."""
    x = torch.as_tensor(np.asarray(maps) if not isinstance(maps, Tensor) else maps)
    x = x.to(device=device, dtype=torch.float32)
    x = x.flatten(2)
    return beta * torch.clamp(x / normalizer.view(1, -1, 1), min=0.0)


def filter_normalizer(
    read_maps: ReadMaps, rows: np.ndarray, n_filters: int, *, batch_size: int, device: torch.device | str
) -> Tensor:
    """float32 ``[D]``: mean over ``rows`` of each filter's per-image maximum (1 where that is 0). One pass."""
    total = torch.zeros(n_filters, dtype=torch.float64, device=device)
    for batch in _batches(rows, batch_size):
        x = torch.as_tensor(np.asarray(read_maps(batch))).to(device=device, dtype=torch.float32)
        total += x.flatten(2).amax(dim=2).clamp(min=0).sum(0).to(torch.float64)
    mean = total / max(len(rows), 1)
    return torch.where(mean > 0, mean, torch.ones_like(mean)).to(torch.float32)


def _neighbour_terms(
    layer: GraphLayer, upper: GraphLayer | None, upper_pos: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(Δ float32 [B, D*N, 2] or [1, D*N, 2], σ² float32 [D*N], −D float32 [B, D*N] or [1, D*N])`` of every
    node's compatibility: its Gaussian and the log of eq. 3's disagreement factor (0 without neighbours, or with
    ``neighbour_penalty`` off).

    ``upper_pos``: float32 ``[B, U, 2]`` inferred positions of the upper layer's nodes on the batch's images.
    """
    n = layer.n_nodes
    device = layer.mu.device
    none = torch.zeros(1, n, device=device)
    if upper is None:  # top layer: N(μ_V, σ_V²) with the EM variance
        return torch.zeros(1, n, 2, device=device), layer.fit_sigma2.reshape(n), none
    if layer.edges.shape[1] == 0:  # before E_V is chosen: V_dummy, σ = init_sigma
        return (torch.zeros(1, n, 2, device=device), torch.full((n,), layer.config.init_sigma**2, device=device), none)
    up_mu = upper.mu.reshape(-1, 2)
    up_s2 = upper.sigma2.reshape(-1)
    b = upper_pos - up_mu.unsqueeze(0)  # [B, U, 2]
    weight = 1.0 / up_s2[layer.edges]  # [n, M]
    gathered = b[:, layer.edges]  # [B, n, M, 2]
    delta = (gathered * weight.unsqueeze(0).unsqueeze(-1)).sum(2) / weight.sum(1).view(1, n, 1)
    if not layer.config.neighbour_penalty:
        return delta, 1.0 / weight.mean(1), torch.zeros(delta.shape[:2], device=device)
    spread = ((gathered - delta.unsqueeze(2)) ** 2).sum(-1)  # [B, n, M]: ||b_j − Δ||²
    penalty = -(spread * weight.unsqueeze(0)).mean(2) / 2  # −(1/M) Σ_j ||b_j − Δ||² / (2 σ_j²)
    return delta, 1.0 / weight.mean(1), penalty


def _log_compat(moments: Tensor, mean: Tensor, s2: Tensor) -> Tensor:
    """``log N(p_x | mean, s2 I)`` (2-D): float32 ``[B, D, N, P]`` for ``mean [B, D, N, 2]``, ``s2 [D, N]``.

    ``moments`` ``[P, 4]`` = (y, x, y² + x², 1) of the unit positions: the log-density is one matmul,
    ``[μ/s2, −1/(2 s2), −||μ||²/(2 s2) − log(2π s2)] · (p, ||p||², 1)``.
    """
    s2 = s2.unsqueeze(0).expand(mean.shape[0], -1, -1).unsqueeze(-1)  # [B, D, N, 1]
    coefficients = torch.cat(
        [mean / s2, -0.5 / s2, -(mean**2).sum(-1, keepdim=True) / (2 * s2) - torch.log(2 * math.pi * s2)], dim=-1
    )
    return torch.matmul(coefficients, moments.T)


def _select_neighbours(
    selection: Tensor,
    mu: Tensor,
    sum_w: Tensor,
    sum_wp: Tensor,
    sum_wpp: Tensor,
    upper_s2: Tensor,
    m: int,
    chunk: int = 1024,
) -> Tensor:
    """E_V: per node, the ``m`` upper nodes with the largest ℓ(V, V') (ties → lower index); int64 ``[n, m]``.

    ``selection`` float32 ``[n, 4U]`` (see :func:`learn_layer`), ``mu`` ``[n, 2]`` the updated μ_V, ``sum_w`` ``[n]``,
    ``sum_wp`` ``[n, 2]``, ``sum_wpp`` ``[n]`` the E-step sums, ``upper_s2`` ``[U]`` the σ_V'². Row chunks bound memory.
    """
    n = selection.shape[0]
    u = upper_s2.shape[0]
    up_s2 = upper_s2.reshape(1, -1).to(torch.float64)
    log_norm = torch.log(2 * math.pi * up_s2)
    edges = []
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        block = selection[rows].to(torch.float64)
        mu_c = mu[rows].to(torch.float64)
        cross = block[:, :u] - (mu_c[:, 0:1] * block[:, u : 2 * u] + mu_c[:, 1:2] * block[:, 2 * u : 3 * u])
        own = sum_wpp[rows] - 2 * (mu_c * sum_wp[rows]).sum(1) + (mu_c**2).sum(1) * sum_w[rows]
        squared = (own.unsqueeze(1) - 2 * cross + block[:, 3 * u :]).clamp(min=0)
        ell = -squared / (2 * up_s2) - sum_w[rows].unsqueeze(1) * log_norm
        edges.append(torch.argsort(-ell, dim=1, stable=True)[:, :m])
    return torch.cat(edges).contiguous()


def _moments(positions: Tensor) -> Tensor:
    """float32 ``[P, 4]``: (y, x, y² + x², 1) of each unit position."""
    return torch.cat([positions, (positions**2).sum(1, keepdim=True), torch.ones_like(positions[:, :1])], dim=1)


def _upper_positions(
    upper: GraphLayer | None, upper_units: np.ndarray | None, batch: np.ndarray, device
) -> Tensor | None:
    if upper is None:
        return None
    units = torch.from_numpy(np.asarray(upper_units[batch], dtype=np.int64)).to(device)
    return upper.positions[units]  # [B, U, 2]


def _initial_layer(
    source: LayerSource, config: LayerConfig, normalizer: Tensor, *, seed: int, level: int, device
) -> GraphLayer:
    d, n = source.n_filters, config.nodes_per_filter
    positions = source.positions.to(device=device, dtype=torch.float32)
    generator = torch.Generator().manual_seed(int(seed) * 1000003 + level)
    pick = torch.randint(len(positions), (d, n), generator=generator).to(device)
    mu = positions[pick].clone()
    return GraphLayer(
        name=source.name,
        config=config,
        positions=positions,
        normalizer=normalizer,
        mu=mu,
        sigma2=torch.ones(d, n, device=device),
        fit_sigma2=torch.full((d, n), config.init_sigma**2, device=device),
        edges=torch.zeros(d * n, 0, dtype=torch.int64, device=device),
        mass=torch.zeros(d, n, dtype=torch.float64, device=device),
        noise_mass=torch.zeros(d, dtype=torch.float64, device=device),
    )


# -- learning -------------------------------------------------------------------------------------------------------


@torch.no_grad()
def learn_layer(
    source: LayerSource,
    config: LayerConfig,
    rows: np.ndarray,
    *,
    upper: GraphLayer | None = None,
    upper_units: np.ndarray | None = None,
    seed: int = 0,
    level: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> GraphLayer:
    """Algorithm 1 for one layer: T EM iterations over the learning images ``rows`` (int64 rows of ``read_maps``).

    ``upper``/``upper_units``: the learned layer above and its inferred units ``int [I, U]`` on every image
    (indexed by row); None for the top layer. Returns the layer with μ_V, E_V and its σ_fit; its
    ``sigma2`` (for the layer below) is set by :func:`infer_layer` statistics in :func:`learn_graph`.
    """
    rows = np.asarray(rows, dtype=np.int64)
    normalizer = filter_normalizer(source.read_maps, rows, source.n_filters, batch_size=batch_size, device=device)
    layer = _initial_layer(source, config, normalizer, seed=seed, level=level, device=device)
    d, n_per = source.n_filters, config.nodes_per_filter
    n = d * n_per
    pos = layer.positions
    # [P, 4]: (y, x, y² + x², 1): one matmul gives Σ_x w p, Σ_x w ||p||² and Σ_x w per image and node.
    moments = _moments(pos)
    m = min(config.neighbours, upper.n_nodes) if upper is not None else 0
    for iteration in range(1, config.iterations + 1):
        sum_w = torch.zeros(d, n_per, dtype=torch.float64, device=device)
        sum_wp = torch.zeros(d, n_per, 2, dtype=torch.float64, device=device)
        sum_wdelta = torch.zeros(d, n_per, 2, dtype=torch.float64, device=device)
        sum_wpp = torch.zeros(d, n_per, dtype=torch.float64, device=device)
        noise = torch.zeros(d, dtype=torch.float64, device=device)
        log_likelihood = 0.0
        if upper is not None:
            u = upper.n_nodes
            # Selection statistics (float32 accumulators, bounded memory: 4 × nodes × upper nodes):
            # [:, :u] Σ_I (Σ_x w p)·b^I, then Σ_I W^I b_y^I, Σ_I W^I b_x^I, Σ_I W^I ||b^I||².
            selection = torch.zeros(n, 4 * u, dtype=torch.float32, device=device)
            up_mu = upper.mu.reshape(-1, 2)
        done = 0
        for batch in _batches(rows, batch_size):
            f = _entities(source.read_maps(batch), normalizer, config.beta, device)  # [B, D, P]
            upper_pos = _upper_positions(upper, upper_units, batch, device)
            delta, s2, penalty = _neighbour_terms(layer, upper, upper_pos)
            delta = delta.view(-1, d, n_per, 2)
            mean = (layer.mu.unsqueeze(0) + delta).expand(f.shape[0], -1, -1, -1)
            density = _log_compat(moments, mean, s2.view(d, n_per))
            density = density.add_(penalty.view(-1, d, n_per, 1)).exp_()  # [B, D, N, P]
            # E-step: P(V | p_x) = P(p_x | V) / (Σ_V' P(p_x | V') + τ) (equal priors cancel); the densities are
            # bounded by 1/(2π min_sigma²) and the denominator by τ > 0, so no log domain is needed.
            total = density.sum(2) + config.tau  # [B, D, P]
            log_likelihood += float((f * torch.log(total / (n_per + 1))).sum())
            share = f / total
            noise += (config.tau * share).sum((0, 2)).to(torch.float64)
            w = density.mul_(share.unsqueeze(2))  # w = P(V | p_x) F(x), in place: [B, D, N, P]
            stats = torch.matmul(w, moments)  # [B, D, N, 4]
            w_img = stats[..., 3]
            sum_w += w_img.sum(0).to(torch.float64)
            sum_wp += stats[..., :2].sum(0).to(torch.float64)
            sum_wpp += stats[..., 2].sum(0).to(torch.float64)
            sum_wdelta += (w_img.unsqueeze(-1) * delta).sum(0).to(torch.float64)
            if upper is not None:
                bsz = len(batch)
                b = upper_pos - up_mu.unsqueeze(0)  # [B, U, 2]
                wp_f = stats[..., :2].reshape(bsz, n, 2).permute(1, 0, 2).reshape(n, 2 * bsz)
                selection[:, :u].addmm_(wp_f, b.permute(0, 2, 1).reshape(2 * bsz, u))
                w_f = w_img.reshape(bsz, n).T
                rhs = torch.cat([b[..., 0], b[..., 1], (b**2).sum(2)], dim=1)  # [B, 3U]
                selection[:, u:].addmm_(w_f, rhs)
            done += len(batch)
            if progress is not None:
                progress(f"{source.name}: EM iteration {iteration} of {config.iterations}", done, len(rows))
        # 1) μ_V: the EM maximiser (η chosen so the gradient step lands on it); empty nodes keep their value.
        has = sum_w > 0
        new_mu = torch.where(
            has.unsqueeze(-1), (sum_wp - sum_wdelta) / sum_w.clamp(min=1e-300).unsqueeze(-1), layer.mu.to(torch.float64)
        )
        if upper is None and config.fit_top_sigma:  # σ_V²: weighted variance about the new μ, per coordinate
            spread = sum_wpp - 2 * (new_mu * sum_wp).sum(-1) + (new_mu**2).sum(-1) * sum_w
            fit = torch.where(has, spread / (2 * sum_w.clamp(min=1e-300)), torch.full_like(sum_w, config.init_sigma**2))
            layer.fit_sigma2 = fit.clamp(min=config.min_sigma**2).to(torch.float32)
        layer.mu = new_mu.to(torch.float32)
        layer.mass, layer.noise_mass = sum_w, noise
        layer.log_likelihood.append(log_likelihood)
        # 2) E_V: the M upper nodes with the largest expected log-likelihood ℓ(V, V') (exact greedy; see above).
        if upper is not None:
            layer.edges = _select_neighbours(
                selection,
                new_mu.reshape(n, 2),
                sum_w.reshape(n),
                sum_wp.reshape(n, 2),
                sum_wpp.reshape(n),
                upper.sigma2.reshape(-1),
                m,
            )
    return layer


@torch.no_grad()
def infer_layer(
    layer: GraphLayer, maps, *, upper: GraphLayer | None = None, upper_pos: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Inference on a batch: ``(units int64 [B, D*N], scores float32 [B, D*N], residual2 float32 [B, D*N])``.

    ``maps``: float ``[B, D, h, w]``; ``upper_pos`` float32 ``[B, U, 2]`` inferred positions of the upper layer's
    nodes (None on the top layer). ``units`` is x̂ (row-major map index), ``scores`` ``S_{V→x̂} = F(x̂)·P(p_x̂|V)²``
    and ``residual2`` ``||p_x̂ − μ_V − Δ_{I,V}||²``, from which σ_V is estimated.
    """
    device = layer.mu.device
    d, n_per = layer.n_filters, layer.nodes_per_filter
    f = _entities(maps, layer.normalizer, layer.config.beta, device)
    delta, s2, penalty = _neighbour_terms(layer, upper, upper_pos)
    mean = (layer.mu.unsqueeze(0) + delta.view(-1, d, n_per, 2)).expand(f.shape[0], -1, -1, -1)
    log_node = _log_compat(_moments(layer.positions), mean, s2.view(d, n_per)).add_(penalty.view(-1, d, n_per, 1))
    log_score = log_node.mul_(2.0).add_(torch.log(f).unsqueeze(2))  # log 0 = -inf where the filter is silent
    best, units = log_score.max(dim=3)  # first maximum on ties
    scores = torch.exp(best.to(torch.float64)).to(torch.float32)
    chosen = layer.positions[units]  # [B, D, N, 2]
    residual2 = ((chosen - mean) ** 2).sum(-1)
    b = f.shape[0]
    return units.reshape(b, -1), scores.reshape(b, -1), residual2.reshape(b, -1)


@torch.no_grad()
def learn_graph(
    sources: Sequence[LayerSource],
    configs: Sequence[LayerConfig],
    *,
    learn_rows: np.ndarray,
    n_images: int,
    allocate: Allocate | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> GraphResult:
    """Learn the graph top-down over ``sources`` (top layer first), then infer every node on all ``n_images``.

    Each layer is learned on ``learn_rows`` (rows of the sources' ``read_maps``), then inferred on every image (its
    results feed the next layer's learning and are returned). ``allocate(name, shape, dtype)`` supplies the result
    arrays (memory maps in the service; plain arrays by default).
    """
    if len(sources) != len(configs) or not sources:
        raise ValueError("one LayerConfig per layer source, at least one layer")
    allocate = allocate or (lambda name, shape, dtype: np.zeros(shape, dtype=dtype))
    learn_rows = np.asarray(learn_rows, dtype=np.int64)
    all_rows = np.arange(n_images, dtype=np.int64)
    layers: list[GraphLayer] = []
    units_out: dict[str, np.ndarray] = {}
    scores_out: dict[str, np.ndarray] = {}
    upper, upper_units = None, None
    for level, (source, config) in enumerate(zip(sources, configs)):
        layer = learn_layer(
            source,
            config,
            learn_rows,
            upper=upper,
            upper_units=upper_units,
            seed=seed,
            level=level,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        units = allocate(f"{source.name}-units", (n_images, layer.n_nodes), "int32")
        scores = allocate(f"{source.name}-scores", (n_images, layer.n_nodes), "float32")
        weighted = torch.zeros(layer.n_nodes, dtype=torch.float64, device=device)
        weight = torch.zeros(layer.n_nodes, dtype=torch.float64, device=device)
        done = 0
        for batch in _batches(all_rows, batch_size):
            upper_pos = _upper_positions(upper, upper_units, batch, device)
            u, s, r2 = infer_layer(layer, source.read_maps(batch), upper=upper, upper_pos=upper_pos)
            units[batch] = u.cpu().numpy().astype(np.int32)
            scores[batch] = s.cpu().numpy()
            s64 = s.to(torch.float64)
            weighted += (s64 * r2.to(torch.float64)).sum(0)
            weight += s64.sum(0)
            done += len(batch)
            if progress is not None:
                progress(f"{source.name}: inferring {layer.n_nodes} nodes", done, n_images)
        # σ_V² for the layer below: score-weighted variation of the inference residual, per coordinate.
        sigma2 = torch.where(weight > 0, weighted / (2 * weight.clamp(min=1e-300)), torch.ones_like(weight))
        layer.sigma2 = sigma2.clamp(min=config.min_sigma**2).to(torch.float32).view(layer.n_filters, -1)
        layers.append(layer)
        units_out[source.name], scores_out[source.name] = units, scores
        upper, upper_units = layer, units
    return GraphResult(layers=layers, units=units_out, scores=scores_out)


@torch.no_grad()
def raw_filter_peaks(maps) -> tuple[Tensor, Tensor]:
    """The raw-filter baseline (Zhou et al. 2015, as in Table 1): each filter's highest unit.

    ``maps`` float ``[B, D, h, w]`` → ``(units int64 [B, D] row-major, peak values float32 [B, D])``; ties → first.
    """
    x = torch.as_tensor(np.asarray(maps) if not isinstance(maps, Tensor) else maps).to(torch.float32).flatten(2)
    values, units = x.max(dim=2)
    return units, values


# -- evaluation -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def location_instability(
    positions: Tensor,
    scores: Tensor,
    landmarks: Tensor,
    diagonals: Tensor,
    *,
    top_images: int = 20,
    combine: str = "aaai",
) -> tuple[Tensor, Tensor]:
    """Location instability of patterns (AAAI'18 Table 1 / Fig. 9; arXiv "standard deviation of relative
    pattern positions").

    Args:
        positions: float ``[I, Q, 2]`` each pattern's inferred position on each image, (y, x) image pixels.
        scores: float ``[I, Q]`` the pattern's score on each image (ranks the images).
        landmarks: float ``[I, K, 2]`` ground-truth landmark positions (y, x), NaN where an image lacks one.
        diagonals: float ``[I]`` each image's diagonal length (distances are normalised by it).
        top_images: per pattern and landmark, the images used: the ``top_images`` highest-scoring images that
            have the landmark (paper: top 20; ties → lower image index).
        combine: ``"aaai"`` = (Σ_k sqrt(var_k)) / K (AAAI'18) or ``"arxiv"`` = sqrt(Σ_k var_k / K) (arXiv).
            ``var`` is the population variance over the chosen images (ddof 0; the paper does not say).

    Returns ``(instability float64 [Q], per_landmark_std float64 [Q, K])``; a landmark with fewer than two images is
    NaN and left out of the mean; a pattern with none is NaN.
    """
    if combine not in ("aaai", "arxiv"):
        raise ValueError("combine must be 'aaai' or 'arxiv'")
    positions = positions.to(torch.float64)
    scores = scores.to(torch.float64)
    landmarks = landmarks.to(torch.float64)
    diagonals = diagonals.to(torch.float64)
    _n_images, q = scores.shape
    k_count = landmarks.shape[1]
    stds = torch.full((q, k_count), float("nan"), dtype=torch.float64, device=scores.device)
    for k in range(k_count):
        valid = ~torch.isnan(landmarks[:, k]).any(1)  # [I]
        count = int(valid.sum())
        if count < 2:
            continue
        rows = torch.nonzero(valid).flatten()
        take = min(top_images, count)
        order = torch.argsort(-scores[rows], dim=0, stable=True)[:take]  # [take, Q] positions in rows
        chosen = rows[order]  # image indices
        pattern = torch.arange(q, device=scores.device).expand(take, q)
        pos = positions[chosen, pattern]  # [take, Q, 2]
        distance = torch.linalg.vector_norm(pos - landmarks[chosen, k], dim=-1) / diagonals[chosen]
        if take >= 2:
            stds[:, k] = distance.var(dim=0, unbiased=False).sqrt()
    present = ~torch.isnan(stds)
    counts = present.sum(1)
    if combine == "aaai":
        value = torch.where(present, stds, torch.zeros_like(stds)).sum(1) / counts
    else:
        value = (torch.where(present, stds**2, torch.zeros_like(stds)).sum(1) / counts).sqrt()
    value = torch.where(counts > 0, value, torch.full_like(value, float("nan")))
    return value, stds


def pattern_instability(
    unit_positions: np.ndarray,
    units: np.ndarray,
    scores: np.ndarray,
    scale: np.ndarray,
    landmarks: Tensor,
    diagonals: Tensor,
    *,
    top_images: int = 20,
    combine: str = "aaai",
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`location_instability` of Q patterns inferred at map units: ``unit_positions`` float64 ``[P, 2]``
    ``(y, x)`` input pixels of the layer's units (row-major), ``units`` int ``[I, Q]`` each pattern's unit on each
    evaluation image, ``scores`` ``[I, Q]``, ``scale`` float64 ``[I, 2]`` image pixels per input pixel ``(y, x)``,
    ``landmarks`` ``[I, K, 2]`` and ``diagonals`` ``[I]`` as :func:`location_instability`. Patterns are taken
    ``chunk`` at a time (each pattern's value depends on its own column only, so chunks bound memory and move
    only the last bit of the variance's vectorised reduction; the run keeps its chunk sizes fixed). Returns
    ``(instability float64 [Q], per_landmark_std float64 [Q, K])`` as numpy."""
    values, stds = [], []
    for start in range(0, units.shape[1], chunk):
        columns = slice(start, start + chunk)
        positions = unit_positions[np.asarray(units[:, columns], dtype=np.int64)] * scale[:, None, :]
        value, std = location_instability(
            torch.from_numpy(positions),
            torch.from_numpy(np.asarray(scores[:, columns])),
            landmarks,
            diagonals,
            top_images=top_images,
            combine=combine,
        )
        values.append(value.cpu().numpy())
        stds.append(std.cpu().numpy())
    if not values:
        return np.zeros(0), np.zeros((0, landmarks.shape[1]))
    return np.concatenate(values), np.concatenate(stds)


class FilterPeakTally:
    """The raw-filter baseline of Table 1 over a dataset pass (streamed, mergeable, exact): per image and filter
    the peak (:func:`raw_filter_peaks`); kept for every image as float32 ``peak_value [N, D]`` (the ranking's
    input) and, on the evaluation images ``eval_rows`` (sorted dataset rows), as ``peak_unit`` int64
    ``[len(eval_rows), D]``. Per-image values are stored, never summed, so shards merge bit for bit;
    :meth:`strength` sums them in a fixed order."""

    def __init__(self, n_images: int, n_filters: int, eval_rows: np.ndarray) -> None:
        self.n_images, self.n_filters = int(n_images), int(n_filters)
        self.eval_rows = np.asarray(eval_rows, dtype=np.int64)
        self.peak_value = np.zeros((n_images, n_filters), dtype=np.float32)
        self.peak_unit = np.zeros((len(self.eval_rows), n_filters), dtype=np.int64)
        self.seen = np.zeros(n_images, dtype=bool)

    def add(self, rows: np.ndarray, maps) -> None:
        """Tally the maps ``[B, D, h, w]`` of dataset rows ``rows`` ``[B]``."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.seen[rows].any():
            raise ValueError("an image was added twice")
        units, values = raw_filter_peaks(maps)
        self.peak_value[rows] = values.numpy()
        self.seen[rows] = True
        inside = np.isin(rows, self.eval_rows)
        if inside.any():
            self.peak_unit[np.searchsorted(self.eval_rows, rows[inside])] = units.numpy()[inside]

    def merge(self, other: FilterPeakTally) -> None:
        """Take another shard's images (same dataset, layer and evaluation rows). Exact."""
        if (self.n_images, self.n_filters) != (other.n_images, other.n_filters) or not np.array_equal(
            self.eval_rows, other.eval_rows
        ):
            raise ValueError("cannot merge filter-peak tallies of different datasets, layers or evaluation rows")
        if (self.seen & other.seen).any():
            raise ValueError("cannot merge tallies that share images")
        self.peak_value[other.seen] = other.peak_value[other.seen]
        theirs = other.seen[self.eval_rows]
        self.peak_unit[theirs] = other.peak_unit[theirs]
        self.seen |= other.seen

    def state_dict(self) -> dict:
        return {
            "n_images": self.n_images,
            "n_filters": self.n_filters,
            "eval_rows": self.eval_rows.copy(),
            "peak_value": self.peak_value.copy(),
            "peak_unit": self.peak_unit.copy(),
            "seen": self.seen.copy(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> FilterPeakTally:
        tally = cls(int(state["n_images"]), int(state["n_filters"]), np.asarray(state["eval_rows"]))
        tally.peak_value = np.asarray(state["peak_value"], dtype=np.float32).copy()
        tally.peak_unit = np.asarray(state["peak_unit"], dtype=np.int64).copy()
        tally.seen = np.asarray(state["seen"], dtype=bool).copy()
        return tally

    def strength(self, block: int = 256) -> np.ndarray:
        """float64 ``[D]``: Σ over all images of ``max(0, peak)`` (Zhou et al.'s ranking of raw filters), summed
        in blocks of ``block`` rows in row order."""
        total = np.zeros(self.n_filters, dtype=np.float64)
        for start in range(0, self.n_images, block):
            values = torch.from_numpy(self.peak_value[start : start + block])
            total += values.clamp(min=0).to(torch.float64).sum(0).numpy()
        return total

    def ranking(self, count: int) -> np.ndarray:
        """The ``count`` filters of highest :meth:`strength` (ties → lower index)."""
        return np.argsort(-self.strength(), kind="stable")[:count]


def energy_top_k(scores, fraction: float = 0.3) -> np.ndarray:
    """The paper's rule for K (purity counts): the K highest scores whose sum first reaches ``fraction`` of all
    scores, ``Σ_{i≤K} S^{I_i} ≥ 0.3 Σ_I S^I``. Returns the chosen image positions (int64, best first; ties → lower
    index); empty when every score is 0."""
    values = np.asarray(scores, dtype=np.float64)
    values = np.where(values > 0, values, 0.0)
    total = values.sum()
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-values, kind="stable")
    cumulative = np.cumsum(values[order])
    k = int(np.searchsorted(cumulative, fraction * total * (1 - 1e-12), side="left")) + 1
    return order[: min(k, len(order))].astype(np.int64)


def purity_sample(scores, fraction: float = 0.3, shown: int = 20) -> tuple[np.ndarray, int]:
    """The images a purity count judges for one pattern (raw filter or graph node alike), and its K.

    K is the paper's 30 % energy rule (:func:`energy_top_k`). Every pattern is judged on the same number of images,
    ``shown``, drawn by the same rule: when ``K ≥ shown``, the images at evenly spaced ranks of the top K,
    ``floor((i + ½)·K / shown)`` for ``i < shown`` (so a pattern with a long top-K is not shown only its purest
    head); when ``K < shown``, the ``shown`` best images with a positive score (the ranking continued past K).
    Fewer appear only when fewer images score above 0. Returns ``(positions int64, best first; K)``."""
    values = np.asarray(scores, dtype=np.float64)
    top = energy_top_k(values, fraction)
    k = len(top)
    if k >= shown:
        return top[((np.arange(shown) + 0.5) * k / shown).astype(np.int64)], k
    order = np.argsort(-np.where(values > 0, values, 0.0), kind="stable")
    order = order[values[order] > 0]
    return order[:shown].astype(np.int64), k


def crop_patch(image: np.ndarray, centre: tuple[float, float], size: int, fill=(224, 224, 224)) -> np.ndarray:
    """A ``size × size`` crop of ``image`` (uint8 ``[H, W, 3]``) centred at ``(y, x)`` (continuous pixel
    coordinates); parts outside the image are ``fill``."""
    h, w = image.shape[:2]
    y0 = int(math.floor(centre[0] - size / 2 + 0.5))
    x0 = int(math.floor(centre[1] - size / 2 + 0.5))
    patch = np.empty((size, size, 3), dtype=np.uint8)
    patch[...] = fill
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + size), min(w, x0 + size)
    if ye > ys and xe > xs:
        patch[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    return patch


def render_patch_grid(
    patches: Sequence[np.ndarray], *, columns: int = 8, tile: int = 72, gutter: int = 3
) -> Image.Image:
    """Patches (uint8 ``[s, s, 3]``) in rows of ``columns``, each resized to ``tile`` px, on white."""
    from analysis.engine.rendering import BACKGROUND, grid_shape, tile_origin

    slots = max(1, len(patches))
    columns = max(1, min(columns, slots))
    height, width = grid_shape(slots, columns, (tile, tile), gutter)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = BACKGROUND
    for slot, patch in enumerate(patches):
        y, x = tile_origin(slot, columns, (tile, tile), gutter)
        resized = np.asarray(Image.fromarray(patch).resize((tile, tile), Image.Resampling.BILINEAR))
        canvas[y : y + tile, x : x + tile] = resized
    return Image.fromarray(canvas)
