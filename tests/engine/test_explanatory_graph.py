"""Tests for analysis.engine.explanatory_graph on synthetic feature maps with planted part patterns.

The world: a 12 × 12 map; the upper layer's filter 0 fires at one unit ``c`` per image (a random place); the lower
layer's filter 0 fires at ``c + O1`` and ``c + O2`` (two part patterns at fixed offsets from the upper pattern) and at
one noise unit anywhere, often stronger than the parts; every unit carries a little background noise. The lower
layer's filter 1 is noise only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.engine.explanatory_graph import (
    FilterPeakTally,
    GraphLayer,
    LayerConfig,
    LayerSource,
    crop_patch,
    default_nodes_per_filter,
    energy_top_k,
    infer_layer,
    learn_graph,
    location_instability,
    pattern_instability,
    raw_filter_peaks,
    render_patch_grid,
)

torch.set_num_threads(1)
SIDE = 12
O1, O2 = (-2, -2), (2, 3)
IMAGES = 60


def grid_positions(side: int = SIDE) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([(ys.flatten() + 0.5) / side, (xs.flatten() + 0.5) / side], dim=1).float()


def planted_world(seed: int = 3, images: int = IMAGES):
    """``(upper maps [I, 1, S, S], lower maps [I, 2, S, S], centres int [I, 2], noise units int [I, 2])``."""
    rng = np.random.default_rng(seed)
    upper = np.zeros((images, 1, SIDE, SIDE), dtype=np.float32)
    lower = (rng.random((images, 2, SIDE, SIDE)) * 0.05).astype(np.float32)
    centres = rng.integers(3, 8, size=(images, 2))
    noise = np.zeros((images, 2), dtype=np.int64)
    for i, (cy, cx) in enumerate(centres):
        upper[i, 0, cy, cx] = 1.0
        lower[i, 0, cy + O1[0], cx + O1[1]] = 1.0
        lower[i, 0, cy + O2[0], cx + O2[1]] = 0.8
        while True:  # a noise peak away from both parts
            ny, nx = rng.integers(0, SIDE, size=2)
            if min(abs(ny - cy - o[0]) + abs(nx - cx - o[1]) for o in (O1, O2)) >= 3:
                break
        noise[i] = (ny, nx)
        lower[i, 0, ny, nx] = rng.uniform(0.5, 1.6)
        lower[i, 1, rng.integers(0, SIDE), rng.integers(0, SIDE)] = rng.uniform(0.5, 1.5)
    return upper, lower, centres, noise


def sources(upper, lower):
    positions = grid_positions()
    return [
        LayerSource("upper", lambda rows: upper[rows], positions, 1),
        LayerSource("lower", lambda rows: lower[rows], positions, 2),
    ]


def configs(iterations: int = 8):
    return [
        LayerConfig(nodes_per_filter=2, iterations=iterations),
        LayerConfig(nodes_per_filter=4, neighbours=2, iterations=iterations),
    ]


@pytest.fixture(scope="module")
def learned():
    upper, lower, centres, noise = planted_world()
    result = learn_graph(
        sources(upper, lower), configs(), learn_rows=np.arange(IMAGES), n_images=IMAGES, seed=0, batch_size=16
    )
    return result, (upper, lower, centres, noise)


def unit_of(y, x):
    return y * SIDE + x


def test_learning_recovers_both_planted_patterns_relative_to_the_upper_pattern(learned):
    result, (_, _, centres, _) = learned
    top, bottom = result.layers
    # The upper pattern: some top node sits at the centres' mean and is inferred exactly at c on every image.
    hits = (result.units["upper"] == np.array([unit_of(*c) for c in centres])[:, None]).mean(0)
    assert hits.max() == 1.0
    found = []
    for offset in (O1, O2):
        best = None
        for node in range(bottom.nodes_per_filter):
            flat = node  # filter 0
            parents = bottom.edges[flat]
            assert len(parents) == 2
            # P(p_x|V) = N(μ_V + Δ, σ̃²), Δ = Σ (p_V' − μ_V')/σ_V'² / Σ 1/σ_V'²; both parents see the one upper
            # pattern at c, so the node predicts c + μ_V − (σ-weighted mean of its parents' μ).
            weight = 1.0 / top.sigma2.reshape(-1)[parents]
            anchor = (top.mu.reshape(-1, 2)[parents] * weight[:, None]).sum(0) / weight.sum()
            displacement = (bottom.mu[0, node] - anchor) * SIDE  # in map units
            error = float(torch.linalg.vector_norm(displacement - torch.tensor(offset, dtype=torch.float32)))
            if best is None or error < best[0]:
                best = (error, node)
        assert best[0] < 0.5, f"no node at offset {offset}: best error {best[0]:.2f} map units"
        found.append(best[1])
    assert found[0] != found[1]
    # Inference puts each of the two nodes on its planted part in (nearly) every image, never on the noise peak.
    for node, offset in zip(found, (O1, O2)):
        truth = np.array([unit_of(cy + offset[0], cx + offset[1]) for cy, cx in centres])
        assert (result.units["lower"][:, node] == truth).mean() >= 0.95


def test_learning_separates_patterns_from_noise(learned):
    result, (_, lower, _centres, noise) = learned
    bottom = result.layers[1]
    # The raw filter's peak is the noise unit on a good share of images (the noise is often the strongest)...
    raw_units, _ = raw_filter_peaks(torch.from_numpy(lower))
    noise_units = torch.tensor([unit_of(*n) for n in noise])
    assert (raw_units[:, 0] == noise_units).float().mean() > 0.25
    # ...but the nodes that carry the filter's entities never land there, and V_none takes the noise entities.
    heavy = torch.argsort(-bottom.mass[0])[:2]
    for node in heavy.tolist():
        assert (torch.from_numpy(result.units["lower"][:, node].astype(np.int64)) == noise_units).float().mean() < 0.05
    noise_entities = float(sum(lower[i, 0, n[0], n[1]] for i, n in enumerate(noise)))
    part_entities = IMAGES * 1.8
    assert float(bottom.noise_mass[0]) > 0.6 * noise_entities
    assert float(bottom.mass[0, heavy].sum()) > 0.8 * part_entities
    # Ranked by total inference score (how the paper picks its top nodes), the two part nodes come first, ahead of
    # every node of the noise-only filter 1 and the other nodes of filter 0.
    totals = result.scores["lower"].sum(0)
    assert sorted(np.argsort(-totals, kind="stable")[:2].tolist()) == sorted(heavy.tolist())
    # EM does not decrease the likelihood after the first, dummy-neighbour, iteration of the top layer.
    top_ll = result.layers[0].log_likelihood
    assert all(b >= a - 1e-3 * abs(a) for a, b in zip(top_ll, top_ll[1:]))


def test_learning_and_inference_are_deterministic(learned):
    result, (upper, lower, _, _) = learned
    again = learn_graph(
        sources(upper, lower), configs(), learn_rows=np.arange(IMAGES), n_images=IMAGES, seed=0, batch_size=16
    )
    for first, second in zip(result.layers, again.layers):
        assert torch.equal(first.mu, second.mu) and torch.equal(first.edges, second.edges)
        assert torch.equal(first.sigma2, second.sigma2)
    for name in ("upper", "lower"):
        np.testing.assert_array_equal(result.units[name], again.units[name])
        np.testing.assert_array_equal(result.scores[name], again.scores[name])
    # Batch size does not change inference.
    top, bottom = result.layers
    upper_pos = top.positions[torch.from_numpy(result.units["upper"].astype(np.int64))]
    units, scores, _ = infer_layer(bottom, lower, upper=top, upper_pos=upper_pos)
    np.testing.assert_array_equal(units.numpy(), result.units["lower"])
    np.testing.assert_allclose(scores.numpy(), result.scores["lower"], rtol=1e-6)


def test_inference_score_is_f_times_compatibility_squared():
    """Hand-computed: one filter, one top node at μ with σ²: S = F(x) N(p_x | μ, σ²)², argmax over x."""
    positions = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.5, 0.5]])
    config = LayerConfig(nodes_per_filter=1, iterations=1)
    layer = GraphLayer(
        name="t",
        config=config,
        positions=positions,
        normalizer=torch.ones(1),
        mu=torch.tensor([[[0.0, 0.4]]]),
        sigma2=torch.ones(1, 1),
        fit_sigma2=torch.full((1, 1), 0.04),
        edges=torch.zeros(1, 0, dtype=torch.int64),
        mass=torch.zeros(1, 1),
        noise_mass=torch.zeros(1),
    )
    maps = torch.tensor([[[[2.0, 1.0, 3.0]]]]).reshape(1, 1, 3)
    units, scores, _ = infer_layer(layer, maps.reshape(1, 1, 1, 3))

    def density(p):
        d2 = (p[0] - 0.0) ** 2 + (p[1] - 0.4) ** 2
        return math.exp(-d2 / 0.08) / (2 * math.pi * 0.04)

    expected = [f * density(p) ** 2 for f, p in zip((2.0, 1.0, 3.0), positions.tolist())]
    assert int(units[0, 0]) == int(np.argmax(expected))
    assert float(scores[0, 0]) == pytest.approx(max(expected), rel=1e-5)
    # A silent filter scores 0 and keeps the first unit.
    units, scores, _ = infer_layer(layer, torch.zeros(1, 1, 1, 3))
    assert int(units[0, 0]) == 0 and float(scores[0, 0]) == 0.0


def test_inference_penalises_a_node_whose_neighbours_disagree_as_eq_3_does():
    """Hand-computed: a node with two upper neighbours (σ² = 0.01 each) that sit at their prior positions on image 0
    and 0.2 apart from them in opposite directions on image 1. Δ is 0 on both, so the Gaussian is the same; eq. 3's
    product of the neighbours' Gaussians^{1/2} is lower on image 1 by exp(−D), D = ½ Σ_j ||b_j||² / (2 σ_j²) = 2,
    and the score (compatibility squared) by exp(−2D)."""
    positions = torch.tensor([[0.5, 0.5], [0.5, 0.7]])
    up_positions = torch.tensor([[0.3, 0.3], [0.5, 0.3], [0.1, 0.3]])
    upper = GraphLayer(
        name="up",
        config=LayerConfig(nodes_per_filter=2),
        positions=up_positions,
        normalizer=torch.ones(1),
        mu=torch.tensor([[[0.3, 0.3], [0.3, 0.3]]]),
        sigma2=torch.full((1, 2), 0.01),
        fit_sigma2=torch.ones(1, 2),
        edges=torch.zeros(2, 0, dtype=torch.int64),
        mass=torch.zeros(1, 2),
        noise_mass=torch.zeros(1),
    )
    lower = GraphLayer(
        name="low",
        config=LayerConfig(nodes_per_filter=1),
        positions=positions,
        normalizer=torch.ones(1),
        mu=torch.tensor([[[0.5, 0.5]]]),
        sigma2=torch.ones(1, 1),
        fit_sigma2=torch.ones(1, 1),
        edges=torch.tensor([[0, 1]]),
        mass=torch.zeros(1, 1),
        noise_mass=torch.zeros(1),
    )
    upper_pos = torch.stack([up_positions[[0, 0]], up_positions[[1, 2]]])  # image 1: (+0.2, 0) and (−0.2, 0)
    maps = torch.tensor([[2.0, 0.0]]).expand(2, 2).reshape(2, 1, 1, 2)
    _, scores, _ = infer_layer(lower, maps, upper=upper, upper_pos=upper_pos)
    gaussian = 1.0 / (2 * math.pi * 0.01)  # N(μ | μ, σ̃² = 0.01) at the node's own prior position
    assert float(scores[0, 0]) == pytest.approx(2.0 * gaussian**2, rel=1e-5)
    assert float(scores[1, 0]) == pytest.approx(2.0 * gaussian**2 * math.exp(-4.0), rel=1e-5)
    off = GraphLayer(**{**lower.__dict__, "config": LayerConfig(nodes_per_filter=1, neighbour_penalty=False)})
    _, scores, _ = infer_layer(off, maps, upper=upper, upper_pos=upper_pos)
    assert float(scores[1, 0]) == pytest.approx(float(scores[0, 0]), rel=1e-6)  # the named variant: no penalty


def test_instability_of_a_perfectly_stable_pattern_is_zero_and_raw_filters_are_worse(learned):
    result, (_, lower, centres, _) = learned
    _top, bottom = result.layers
    # Landmark: the upper pattern's centre (image pixels = map units here); images 12 × 12, diagonal 12√2.
    landmarks = torch.tensor(centres + 0.5, dtype=torch.float64).unsqueeze(1)  # [I, 1, 2]
    diagonals = torch.full((IMAGES,), SIDE * math.sqrt(2), dtype=torch.float64)
    node_pos = bottom.positions[torch.from_numpy(result.units["lower"].astype(np.int64))] * SIDE
    node_values, _ = location_instability(node_pos, torch.from_numpy(result.scores["lower"]), landmarks, diagonals)
    raw_units, raw_values = raw_filter_peaks(torch.from_numpy(lower))
    raw_pos = bottom.positions[raw_units] * SIDE
    filter_values, _ = location_instability(raw_pos, raw_values, landmarks, diagonals)
    heavy = torch.argsort(-bottom.mass[0])[:2]
    assert float(node_values[heavy].max()) < 1e-6
    assert float(filter_values[0]) > 0.05


def naive_instability(positions, scores, landmarks, diagonals, top, combine):
    q, k_count = scores.shape[1], landmarks.shape[1]
    out = []
    for p in range(q):
        stds = []
        for k in range(k_count):
            valid = [i for i in range(len(scores)) if not np.isnan(landmarks[i, k]).any()]
            valid.sort(key=lambda i: (-scores[i, p], i))
            chosen = valid[:top]
            if len(chosen) < 2:
                continue
            d = [np.linalg.norm(positions[i, p] - landmarks[i, k]) / diagonals[i] for i in chosen]
            stds.append(np.std(d))
        if not stds:
            out.append(np.nan)
        elif combine == "aaai":
            out.append(np.mean(stds))
        else:
            out.append(np.sqrt(np.mean(np.square(stds))))
    return np.array(out)


@pytest.mark.parametrize("combine", ["aaai", "arxiv"])
def test_location_instability_matches_a_naive_loop(combine):
    rng = np.random.default_rng(0)
    positions = rng.random((30, 5, 2)) * 50
    scores = np.round(rng.random((30, 5)), 1)  # ties, broken by image index
    landmarks = rng.random((30, 3, 2)) * 50
    landmarks[rng.random((30, 3)) < 0.3] = np.nan
    landmarks[:, 2] = np.nan
    landmarks[4, 2] = (1.0, 1.0)  # one image only: that landmark is left out
    diagonals = rng.random(30) * 10 + 40
    value, stds = location_instability(
        torch.from_numpy(positions),
        torch.from_numpy(scores),
        torch.from_numpy(landmarks),
        torch.from_numpy(diagonals),
        top_images=7,
        combine=combine,
    )
    np.testing.assert_allclose(
        value.numpy(), naive_instability(positions, scores, landmarks, diagonals, 7, combine), rtol=1e-12
    )
    assert torch.isnan(stds[:, 2]).all()


def test_purity_sample_shows_every_pattern_the_same_number_of_images_by_one_rule():
    from analysis.engine.explanatory_graph import purity_sample

    flat = np.ones(100)  # K = 30 of 100 equal scores: 5 images at ranks floor((i + ½)·30/5) = 3, 9, 15, 21, 27
    chosen, k = purity_sample(flat, 0.3, 5)
    assert k == 30 and chosen.tolist() == [3, 9, 15, 21, 27]
    peaked = np.array([100.0, 1.0, 0.0, 2.0, 0.5, 0.0])  # K = 1: the ranking continues past K to 5 images
    chosen, k = purity_sample(peaked, 0.3, 5)
    assert k == 1 and chosen.tolist() == [0, 3, 1, 4]  # only 4 images score above 0
    assert purity_sample(np.zeros(4), 0.3, 5)[1] == 0


def test_energy_top_k_takes_thirty_percent_of_the_inference_energy():
    scores = [1.0, 5.0, 0.0, 3.0, 1.0]  # total 10: 5 < 3 ≤ 5 → K = 1
    assert energy_top_k(scores).tolist() == [1]
    assert energy_top_k([2.0, 2.0, 2.0, 2.0, 2.0]).tolist() == [0, 1]  # 2 < 3 ≤ 4, ties by index
    assert energy_top_k([0.0, 0.0]).tolist() == []
    assert energy_top_k([1.0, 1.0, 1.0], fraction=1.0).tolist() == [0, 1, 2]


def test_patches_are_cropped_at_the_position_and_padded_outside():
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    patch = crop_patch(image, (5.0, 5.0), 4)
    np.testing.assert_array_equal(patch, image[3:7, 3:7])
    corner = crop_patch(image, (0.0, 0.0), 4)
    np.testing.assert_array_equal(corner[2:, 2:], image[0:2, 0:2])
    assert (corner[:2] == 224).all()
    picture = render_patch_grid([patch, corner, patch], columns=2, tile=8, gutter=1)
    assert picture.size == (2 * 8 + 3, 2 * 8 + 3)


def test_default_nodes_follow_the_paper():
    assert default_nodes_per_filter(3) == [10, 20, 40]
    assert default_nodes_per_filter(2) == [10, 20]


@pytest.mark.parametrize("penalty", [True, False])
def test_em_and_the_greedy_neighbour_choice_equal_a_naive_reference(penalty):
    """Two iterations of Algorithm 1 on a lower layer (the second uses the E_V chosen by the first) against plain
    loops that evaluate ℓ(V, V') for every candidate from its definition and eq. 3's compatibility as the product
    of the neighbours' Gaussians raised to 1/M (``penalty``; else normalised per image, the named variant)."""
    from analysis.engine.explanatory_graph import _initial_layer, filter_normalizer, learn_layer
    from benchmarks.explanatory_graph_reference import reference_learn_lower_layer

    rng = np.random.default_rng(1)
    images, filters, per, side = 12, 3, 2, 6
    maps = np.maximum(rng.standard_normal((images, filters, side, side)), 0).astype(np.float32)
    positions = grid_positions(side)
    upper_positions = grid_positions(3)
    upper = GraphLayer(
        name="up",
        config=LayerConfig(nodes_per_filter=2),
        positions=upper_positions,
        normalizer=torch.ones(2),
        mu=torch.from_numpy(rng.random((2, 2, 2))).float(),
        sigma2=torch.from_numpy(rng.uniform(0.005, 0.05, (2, 2))).float(),
        fit_sigma2=torch.ones(2, 2),
        edges=torch.zeros(4, 0, dtype=torch.int64),
        mass=torch.zeros(2, 2),
        noise_mass=torch.zeros(2),
    )
    upper_units = rng.integers(0, 9, size=(images, 4)).astype(np.int32)
    config = LayerConfig(nodes_per_filter=per, neighbours=2, iterations=2, init_sigma=0.2, neighbour_penalty=penalty)
    source = LayerSource("low", lambda rows: maps[rows], positions, filters)
    rows = np.arange(images)
    learned = learn_layer(source, config, rows, upper=upper, upper_units=upper_units, seed=4, level=1, batch_size=5)
    normalizer = filter_normalizer(source.read_maps, rows, filters, batch_size=5, device="cpu")
    mu0 = _initial_layer(source, config, normalizer, seed=4, level=1, device="cpu").mu.numpy()
    mu, edges = reference_learn_lower_layer(
        maps.reshape(images, filters, -1).astype(np.float64),
        positions.numpy().astype(np.float64),
        mu0,
        upper.mu.reshape(-1, 2).numpy().astype(np.float64),
        upper.sigma2.reshape(-1).numpy().astype(np.float64),
        upper_positions.numpy()[upper_units].astype(np.float64),
        iterations=2,
        neighbours=2,
        tau=config.tau,
        beta=config.beta,
        init_sigma=config.init_sigma,
        neighbour_penalty=penalty,
    )
    np.testing.assert_allclose(learned.mu.numpy(), mu, atol=2e-5)
    np.testing.assert_array_equal(learned.edges.numpy(), edges)


def test_top_layer_em_with_fitted_sigma_equals_a_naive_gaussian_mixture():
    """``fit_top_sigma=True``: a plain isotropic GMM with a constant-density noise component (naive loop)."""
    from analysis.engine.explanatory_graph import _initial_layer, filter_normalizer, learn_layer

    upper, _, _, _ = planted_world(seed=8, images=20)
    positions = grid_positions()
    source = LayerSource("upper", lambda rows: upper[rows], positions, 1)
    config = LayerConfig(nodes_per_filter=2, iterations=4, init_sigma=0.2, fit_top_sigma=True)
    rows = np.arange(20)
    learned = learn_layer(source, config, rows, seed=2, batch_size=7)
    normalizer = filter_normalizer(source.read_maps, rows, 1, batch_size=7, device="cpu")
    mu = _initial_layer(source, config, normalizer, seed=2, level=0, device="cpu").mu.numpy()[0].astype(np.float64)
    s2 = np.full(2, 0.04)
    p = positions.numpy().astype(np.float64)
    f = np.clip(upper.reshape(20, -1) / float(normalizer[0]), 0, None)
    for _ in range(4):
        dens = np.stack([np.exp(-((p - mu[n]) ** 2).sum(1) / (2 * s2[n])) / (2 * math.pi * s2[n]) for n in range(2)])
        w = dens[:, None, :] / (dens.sum(0) + 0.1)[None, None, :] * f[None]  # [N, I, P]
        total = w.sum((1, 2))
        mu = (w.sum(1) @ p) / total[:, None]
        s2 = np.array([(w[n].sum(0) * ((p - mu[n]) ** 2).sum(1)).sum() / (2 * total[n]) for n in range(2)])
        s2 = np.maximum(s2, config.min_sigma**2)
    np.testing.assert_allclose(learned.mu[0].numpy(), mu, atol=1e-5)
    np.testing.assert_allclose(learned.fit_sigma2[0].numpy(), s2, rtol=1e-4)


# -- the instability measure over a dataset pass ------------------------------------------------------------------


def _filter_maps(n_images=11, filters=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n_images, filters, 3, 5, generator=g).numpy()
    maps[2, 1] = -1.0  # a filter silent on an image: its peak is negative, clamped out of the strength
    return maps


def test_filter_peak_tally_shards_merge_exactly_and_match_a_naive_loop():
    maps = _filter_maps()
    eval_rows = np.array([1, 2, 5, 9])
    whole = FilterPeakTally(11, 4, eval_rows)
    for start in range(0, 11, 3):
        whole.add(np.arange(start, min(11, start + 3)), maps[start : start + 3])
    first, second = FilterPeakTally(11, 4, eval_rows), FilterPeakTally(11, 4, eval_rows)
    first.add(np.arange(0, 6), maps[:6])
    second.add(np.arange(6, 11), maps[6:])
    second.merge(first)
    restored = FilterPeakTally.from_state_dict(second.state_dict())
    for name, value in whole.state_dict().items():
        assert np.array_equal(np.asarray(restored.state_dict()[name]), np.asarray(value)), name
    strength = np.zeros(4)
    for image in range(11):
        for f in range(4):
            strength[f] += max(0.0, float(maps[image, f].max()))
    np.testing.assert_allclose(whole.strength(), strength, rtol=1e-12)
    assert whole.ranking(2).tolist() == np.argsort(-strength, kind="stable")[:2].tolist()
    for position, image in enumerate(eval_rows):
        assert whole.peak_unit[position].tolist() == [int(maps[image, f].argmax()) for f in range(4)]
    with pytest.raises(ValueError, match="share images"):
        second.merge(first)


def test_pattern_instability_is_location_instability_of_the_units_scaled_to_each_image_in_any_chunks():
    g = np.random.default_rng(0)
    unit_pos = np.stack(np.meshgrid(np.arange(3) * 8.0 + 4, np.arange(5) * 8.0 + 4, indexing="ij"), -1).reshape(-1, 2)
    units = g.integers(0, 15, (9, 6))
    scores = g.random((9, 6)).astype(np.float32)
    scale = np.stack([np.full(9, 2.0), np.linspace(1, 3, 9)], axis=1)
    landmarks = torch.from_numpy(g.random((9, 2, 2)) * 40)
    landmarks[0, 1] = float("nan")
    diagonals = torch.from_numpy(g.random(9) * 50 + 10)
    value, stds = pattern_instability(unit_pos, units, scores, scale, landmarks, diagonals, top_images=5, chunk=6)
    positions = torch.from_numpy(unit_pos[units] * scale[:, None, :])
    want_value, want_stds = location_instability(
        positions, torch.from_numpy(scores), landmarks, diagonals, top_images=5
    )
    np.testing.assert_array_equal(value, want_value.numpy())
    np.testing.assert_array_equal(stds, want_stds.numpy())
    one, _ = pattern_instability(unit_pos, units, scores, scale, landmarks, diagonals, top_images=5, chunk=1)
    np.testing.assert_allclose(one, value, rtol=1e-14)  # chunks move only the variance's last bit
