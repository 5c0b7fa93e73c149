"""A straightforward reference of Algorithm 1 (Zhang et al. AAAI'18) for one lower graph layer: plain numpy loops over
images, nodes and candidate neighbours, float64, evaluating ℓ(V, V') for every candidate directly from its
definition (no accumulated sums). Used by the engine tests and ``bench_explanatory_graph``."""

from __future__ import annotations

import math

import numpy as np


def reference_learn_lower_layer(
    maps: np.ndarray,
    positions: np.ndarray,
    mu0: np.ndarray,
    upper_mu: np.ndarray,
    upper_sigma2: np.ndarray,
    upper_pos: np.ndarray,
    *,
    iterations: int,
    neighbours: int,
    tau: float,
    beta: float,
    init_sigma: float,
    neighbour_penalty: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(μ [D, N, 2], E_V [D*N, M])`` after ``iterations`` of Algorithm 1.

    ``maps [I, D, P]`` raw responses (normalised here as the engine does), ``positions [P, 2]``, ``mu0 [D, N, 2]``
    the initial μ, ``upper_mu [U, 2]``, ``upper_sigma2 [U]``, ``upper_pos [I, U, 2]`` the upper layer's inferred
    positions on each image.

    With E_V chosen, the compatibility is eq. 3 evaluated as written: ``γ_V Π_j N(p | μ_V − μ_j + p_j, σ_j²)^{1/M}``
    with the node's constant ``γ_V = Π_j (2π σ_j²)^{1/M} / (2π σ̃²)`` (the product integrates to 1 when the
    neighbours agree); ``neighbour_penalty=False`` instead normalises the product on every image (the Gaussian
    ``N(p | μ_V + Δ, σ̃²)``).
    """
    n_images, d_count, _ = maps.shape
    n_per = mu0.shape[1]
    peak = maps.max(2).clip(0, None).mean(0)
    f_all = beta * np.clip(maps / np.where(peak > 0, peak, 1.0)[None, :, None], 0, None)
    mu = mu0.astype(np.float64).copy()
    edges = np.zeros((d_count * n_per, 0), dtype=np.int64)
    for _ in range(iterations):
        num = np.zeros_like(mu)
        den = np.zeros(mu.shape[:2])
        resp_all = np.zeros((n_images, d_count, n_per, len(positions)))
        for i in range(n_images):
            for d in range(d_count):
                dens = np.zeros((n_per, len(positions)))
                deltas = np.zeros((n_per, 2))
                for n in range(n_per):
                    flat = d * n_per + n
                    if edges.shape[1] == 0:
                        delta, s2 = np.zeros(2), init_sigma**2
                    else:
                        w = 1.0 / upper_sigma2[edges[flat]]
                        delta = (w[:, None] * (upper_pos[i, edges[flat]] - upper_mu[edges[flat]])).sum(0) / w.sum()
                        s2 = 1.0 / w.mean()
                    deltas[n] = delta
                    if edges.shape[1] and neighbour_penalty:
                        m = edges.shape[1]
                        log_product = np.zeros(len(positions))
                        log_gamma = -math.log(2 * math.pi * s2)
                        for j in edges[flat]:
                            mean = mu[d, n] - upper_mu[j] + upper_pos[i, j]
                            d2_j = ((positions - mean) ** 2).sum(1)
                            log_product += (-d2_j / (2 * upper_sigma2[j]) - math.log(2 * math.pi * upper_sigma2[j])) / m
                            log_gamma += math.log(2 * math.pi * upper_sigma2[j]) / m
                        dens[n] = np.exp(log_gamma + log_product)
                        continue
                    d2 = ((positions - mu[d, n] - delta) ** 2).sum(1)
                    dens[n] = np.exp(-d2 / (2 * s2)) / (2 * math.pi * s2)
                resp = dens / (dens.sum(0) + tau)
                resp_all[i, d] = resp
                w_entities = resp * f_all[i, d][None, :]
                num[d] += (w_entities[:, :, None] * (positions[None] - deltas[:, None, :])).sum(1)
                den[d] += w_entities.sum(1)
        mu = np.where(den[..., None] > 0, num / np.where(den > 0, den, 1.0)[..., None], mu)
        # E_V: ℓ(V, V') = Σ_I Σ_x w log N(p_x | μ_V − μ_V' + p_V'^I, σ_V'²), the M largest (ties: lower index).
        chosen = []
        for d in range(d_count):
            for n in range(n_per):
                scores = []
                for candidate in range(len(upper_mu)):
                    s2 = upper_sigma2[candidate]
                    total = 0.0
                    for i in range(n_images):
                        w_entities = resp_all[i, d, n] * f_all[i, d]
                        mean = mu[d, n] - upper_mu[candidate] + upper_pos[i, candidate]
                        d2 = ((positions - mean) ** 2).sum(1)
                        total += (w_entities * (-d2 / (2 * s2) - math.log(2 * math.pi * s2))).sum()
                    scores.append(total)
                scores = np.array(scores)
                chosen.append(np.argsort(-scores, kind="stable")[:neighbours])
        edges = np.array(chosen, dtype=np.int64)
    return mu, edges
