"""Explanatory-graph learning speed (issue 9), measured in one run on this machine; no Django database.

1. ours ÷ reference: Algorithm 1 (two EM iterations of a lower layer, E_V chosen greedily) with the engine's
   accumulated selection statistics vs the straightforward loops of ``benchmarks/explanatory_graph_reference.py``
   that evaluate ℓ(V, V') for every candidate from its definition. μ and E_V must agree.
2. EM cost at the demo's shapes, in forward passes: one EM iteration of conv5 (128 filters, 13 × 13, N = 10) and of
   conv4 (N = 20, M = 15 among conv5's 1280 nodes) per image, divided by the demo network's forward pass per image
   (112 px input, float32, the same thread count), and the demo step's estimated total (300 learning images,
   10 iterations, inference on 3000 images).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.engine.demo_network import build_demo_network
from analysis.engine.explanatory_graph import (
    GraphLayer,
    LayerConfig,
    LayerSource,
    _initial_layer,
    filter_normalizer,
    infer_layer,
    learn_layer,
)
from benchmarks.explanatory_graph_reference import reference_learn_lower_layer


def _grid(side: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([(ys.flatten() + 0.5) / side, (xs.flatten() + 0.5) / side], dim=1).float()


def _upper(rng, filters: int, per: int, side: int) -> GraphLayer:
    return GraphLayer(
        name="up",
        config=LayerConfig(nodes_per_filter=per),
        positions=_grid(side),
        normalizer=torch.ones(filters),
        mu=torch.from_numpy(rng.random((filters, per, 2))).float(),
        sigma2=torch.from_numpy(rng.uniform(0.002, 0.02, (filters, per))).float(),
        fit_sigma2=torch.ones(filters, per),
        edges=torch.zeros(filters * per, 0, dtype=torch.int64),
        mass=torch.zeros(filters, per),
        noise_mass=torch.zeros(filters),
    )


def against_reference() -> None:
    rng = np.random.default_rng(0)
    images, filters, per, side = 40, 8, 5, 8
    maps = np.maximum(rng.standard_normal((images, filters, side, side)), 0).astype(np.float32)
    upper = _upper(rng, 5, 4, 4)
    upper_units = rng.integers(0, 16, size=(images, 20)).astype(np.int32)
    config = LayerConfig(nodes_per_filter=per, neighbours=3, iterations=2, init_sigma=0.2)
    source = LayerSource("low", lambda rows: maps[rows], _grid(side), filters)
    rows = np.arange(images)
    start = time.perf_counter()
    learned = learn_layer(source, config, rows, upper=upper, upper_units=upper_units, seed=1, level=1, batch_size=16)
    ours = time.perf_counter() - start
    normalizer = filter_normalizer(source.read_maps, rows, filters, batch_size=16, device="cpu")
    mu0 = _initial_layer(source, config, normalizer, seed=1, level=1, device="cpu").mu.numpy()
    start = time.perf_counter()
    mu, edges = reference_learn_lower_layer(
        maps.reshape(images, filters, -1).astype(np.float64),
        _grid(side).numpy().astype(np.float64),
        mu0,
        upper.mu.reshape(-1, 2).numpy().astype(np.float64),
        upper.sigma2.reshape(-1).numpy().astype(np.float64),
        upper.positions.numpy()[upper_units].astype(np.float64),
        iterations=2,
        neighbours=3,
        tau=config.tau,
        beta=config.beta,
        init_sigma=config.init_sigma,
    )
    reference = time.perf_counter() - start
    same = np.array_equal(learned.edges.numpy(), edges) and np.allclose(learned.mu.numpy(), mu, atol=1e-4)
    print(
        f"Algorithm 1, 2 iterations, {filters * per} nodes × 20 candidates, {images} images: ours {ours:.3f} s, "
        f"reference {reference:.3f} s → {reference / ours:.0f}× faster; μ and E_V identical: {same}"
    )


def demo_shapes() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images, batch = 64, 32
    network = build_demo_network(num_classes=7).eval()
    x = torch.randn(batch, 3, 112, 112)
    with torch.no_grad():
        network(x)
        start = time.perf_counter()
        for _ in range(2):
            network(x)
    forward = (time.perf_counter() - start) / (2 * batch)
    conv5 = np.maximum(rng.standard_normal((images, 128, 13, 13)) - 1, 0).astype(np.float32)
    conv4 = np.maximum(rng.standard_normal((images, 128, 13, 13)) - 1, 0).astype(np.float32)
    positions = _grid(13)
    rows = np.arange(images)
    top_source = LayerSource("conv5", lambda r: conv5[r], positions, 128)
    start = time.perf_counter()
    top = learn_layer(top_source, LayerConfig(nodes_per_filter=10, iterations=1), rows, batch_size=batch)
    top_time = (time.perf_counter() - start) / images
    top.sigma2 = torch.full_like(top.sigma2, 0.01)
    top_units = np.zeros((images, top.n_nodes), dtype=np.int32)
    for first in range(0, images, batch):
        top_units[first : first + batch] = infer_layer(top, conv5[first : first + batch])[0].numpy()
    low_source = LayerSource("conv4", lambda r: conv4[r], positions, 128)
    start = time.perf_counter()
    learn_layer(
        low_source,
        LayerConfig(nodes_per_filter=20, iterations=1),
        rows,
        upper=top,
        upper_units=top_units,
        batch_size=batch,
    )
    low_time = (time.perf_counter() - start) / images
    start = time.perf_counter()
    for first in range(0, images, batch):
        infer_layer(top, conv5[first : first + batch])
    infer_time = (time.perf_counter() - start) / images
    print(
        f"one EM iteration per image: conv5 (1280 nodes) {top_time / forward:.1f} forward passes, conv4 (2560 "
        f"nodes, M=15 of 1280) {low_time / forward:.1f} forward passes (forward {forward * 1e3:.1f} ms/image)"
    )
    estimate = 300 * 10 * (top_time + low_time) + 3000 * infer_time * 3
    print(
        f"demo step estimate (300 learning images × 10 iterations + inference on 3000 images): {estimate:.0f} s "
        f"= {estimate / (3000 * forward):.0f}× the forward pass over the 3000 images"
    )


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference case is tiny: thread hand-offs would dominate our side
    against_reference()
    torch.set_num_threads(threads)
    demo_shapes()


if __name__ == "__main__":
    main()
