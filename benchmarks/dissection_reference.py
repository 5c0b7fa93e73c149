"""Straightforward Network Dissection tally (ND'18 §2.2) and a speed benchmark against the engine.

The reference loops over images and units with numpy boolean masks and follows exactly the rule of
:mod:`analysis.engine.dissection` (same conventions, see its module docstring):

* ``M_k = S_k >= T_k`` (``>`` with ``strict=True``);
* ``L_c`` = set of pixels carrying label ``c`` in any layer, or the whole image for a whole-image label;
* an image has category ``g`` iff it carries any label whose primary category is ``g``;
* ``union[k, c]`` = activation of ``k`` summed over the images having ``category[c]``
  + ``|L_c|`` - intersection.

The tests import :func:`reference_tally` and :func:`reference_iou`; run this file to print the speed
ratio of the vectorised tally over this reference (and against a small CNN's forward pass)::

    python benchmarks/dissection_reference.py [--images 64 --units 128 --size 56 --concepts 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def reference_tally(
    activations: np.ndarray,
    thresholds: np.ndarray,
    pixel_labels: np.ndarray,
    image_labels: list[tuple[int, int]],
    label_category: np.ndarray,
    n_categories: int,
    *,
    strict: bool = False,
) -> dict[str, np.ndarray]:
    """Per-image, per-unit tally.

    Args:
        activations: ``float[N, U, H, W]`` upsampled maps.
        thresholds: ``float[U]``.
        pixel_labels: ``int[N, L, H, W]`` label ids, 0 = unlabeled.
        image_labels: ``(image, label)`` whole-image labels.
        label_category: ``int[C]`` primary category per label, -1 = not a concept.
        n_categories: ``G``.

    Returns:
        ``intersection[U, C]``, ``activation_cat[U, G]``, ``truth[C]``, ``activation[U]``,
        ``category_images[G]``, ``label_images[C]`` (all int64).
    """
    n_img, n_units, h, w = activations.shape
    n_labels = len(label_category)
    inter = np.zeros((n_units, n_labels), np.int64)
    act_cat = np.zeros((n_units, n_categories), np.int64)
    truth = np.zeros(n_labels, np.int64)
    activation = np.zeros(n_units, np.int64)
    category_images = np.zeros(n_categories, np.int64)
    label_images = np.zeros(n_labels, np.int64)
    for i in range(n_img):
        whole = {lab for img, lab in image_labels if img == i and label_category[lab] >= 0}
        pix = {int(v) for v in np.unique(pixel_labels[i]) if v != 0 and label_category[v] >= 0}
        here = sorted(whole | pix)
        masks = {}
        for c in here:
            if c in whole:
                lc = np.ones((h, w), bool)
            else:
                lc = np.zeros((h, w), bool)
                for layer in pixel_labels[i]:
                    lc |= layer == c
            masks[c] = lc
            truth[c] += lc.sum()
            label_images[c] += 1
        cats = sorted({int(label_category[c]) for c in here})
        for g in cats:
            category_images[g] += 1
        for u in range(n_units):
            m = activations[i, u] > thresholds[u] if strict else activations[i, u] >= thresholds[u]
            a = int(m.sum())
            activation[u] += a
            for g in cats:
                act_cat[u, g] += a
            for c in here:
                inter[u, c] += int((m & masks[c]).sum())
    return {
        "intersection": inter,
        "activation_cat": act_cat,
        "truth": truth,
        "activation": activation,
        "category_images": category_images,
        "label_images": label_images,
    }


def reference_iou(counts: dict[str, np.ndarray], label_category: np.ndarray) -> np.ndarray:
    """``float64[U, C]`` IoU, 0 where the union is empty or the label is not a concept."""
    inter = counts["intersection"]
    out = np.zeros(inter.shape, np.float64)
    for u in range(inter.shape[0]):
        for c in range(inter.shape[1]):
            g = label_category[c]
            if g < 0:
                continue
            union = counts["activation_cat"][u, g] + counts["truth"][c] - inter[u, c]
            if union > 0:
                out[u, c] = inter[u, c] / union
    return out


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------


def synthetic_probe(n_images: int, n_units: int, size: int, n_concepts: int, *, seed: int, low: int = 7):
    """Blob-like synthetic labels in Broden's shape and smooth random activations.

    Categories: 0 object (one layer), 1 part (one sparse layer inside objects), 2 colour (covers
    every pixel), 3 scene (whole-image). Returns ``(raw[N, U, low, low] float32, pixel[N, 3, S, S]
    int64, image_pairs[P, 2] int64, label_category[C] int64)`` with ``C = n_concepts + 1``.
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    c = n_concepts
    bounds = np.linspace(1, c + 1, 5).astype(int)  # 4 categories of ids
    label_category = torch.full((c + 1,), -1, dtype=torch.int64)
    for g in range(4):
        label_category[bounds[g] : bounds[g + 1]] = g

    def blocks(lo: int, hi: int, grid: int) -> torch.Tensor:
        ids = torch.randint(lo, hi, (n_images, 1, grid, grid), generator=gen)
        return F.interpolate(ids.float(), size=(size, size), mode="nearest").long()[:, 0]

    obj = blocks(bounds[0], bounds[1], 4)
    obj[blocks(0, 5, 4) == 0] = 0  # about a fifth unlabeled
    part = blocks(bounds[1], bounds[2], 8)
    part[blocks(0, 3, 8) != 0] = 0  # parts cover about a third of the image
    colour = blocks(bounds[2], bounds[3], 16)
    pixel = torch.stack([obj, part, colour], dim=1)
    scene = torch.randint(bounds[3], bounds[4], (n_images,), generator=gen)
    pairs = torch.stack([torch.arange(n_images), scene], dim=1)
    raw = F.interpolate(
        torch.randn(n_images, n_units, 3, 3, generator=gen), size=(low, low), mode="bilinear", align_corners=False
    )
    raw = raw + 0.3 * torch.randn(raw.shape, generator=gen)
    return raw.float(), pixel, pairs, label_category


def _small_cnn(n_units: int):
    import torch.nn as nn

    # AlexNet-like, five conv layers, no batch norm; the dissected layer has n_units channels.
    return nn.Sequential(
        nn.Conv2d(3, 48, 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(48, 96, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 192, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(192, 192, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(192, n_units, 3, padding=1),
        nn.ReLU(),
    ).eval()


def main(argv: list[str] | None = None) -> None:
    """Print the timings and ratios; ``argv=None`` means all defaults (as ``python -m benchmarks``
    calls it), the command line passes ``sys.argv[1:]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--size", type=int, default=56, help="mask size (square)")
    parser.add_argument("--concepts", type=int, default=100)
    parser.add_argument("--input", type=int, default=224, help="CNN input size for the forward pass")
    parser.add_argument(
        "--quantile", type=float, default=0.995, help="threshold quantile (ND'18: 0.995); lower values give dense masks"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args([] if argv is None else argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    import torch.nn.functional as F

    from analysis.engine.dissection import BatchLabels, DissectionTally

    try:
        from analysis.engine.upsample import upsample_plain as upsample
    except ImportError:  # pragma: no cover - the sibling module is optional here

        def upsample(maps, size):
            return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)

    torch.set_num_threads(args.threads)
    raw, pixel, pairs, label_category = synthetic_probe(args.images, args.units, args.size, args.concepts, seed=0)
    flat = raw.transpose(0, 1).reshape(args.units, -1).numpy()
    thresholds = torch.from_numpy(np.quantile(flat, args.quantile, axis=1)).float()
    labels = BatchLabels(pixel, pairs)
    size = (args.size, args.size)

    def fast() -> DissectionTally:
        tally = DissectionTally(thresholds, label_category)
        tally.add(upsample(raw, size), labels)
        return tally

    def best_of(fn, repeats):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    t_fast, tally = best_of(fast, args.repeats)
    up = upsample(raw, size)
    t_up, _ = best_of(lambda: upsample(raw, size), args.repeats)
    t_tally, _ = best_of(lambda: DissectionTally(thresholds, label_category).add(up, labels), args.repeats)
    t0 = time.perf_counter()
    ref = reference_tally(
        up.numpy(), thresholds.numpy(), pixel.numpy(), [tuple(map(int, r)) for r in pairs], label_category.numpy(), 4
    )
    t_ref = time.perf_counter() - t0
    same = all(np.array_equal(getattr(tally, k).numpy(), v) for k, v in ref.items())

    net = _small_cnn(args.units)
    x = torch.randn(args.images, 3, args.input, args.input)
    with torch.no_grad():
        t_fwd, feat = best_of(lambda: net(x), args.repeats)
    res = tally.result()
    print(
        f"{args.images} images x {args.units} units x {args.size}x{args.size} masks x "
        f"{args.concepts} concepts, {args.threads} thread(s); active fraction "
        f"{tally.activation.sum().item() / (tally.pixels * args.units):.4f}"
    )
    print(f"reference (per image, per unit, numpy): {t_ref:.3f} s")
    print(f"engine tally:                           {t_tally:.3f} s")
    print(f"engine upsample + tally:                {t_fast:.3f} s  (upsample {t_up:.3f} s)")
    print(f"small CNN forward ({args.input}px -> {tuple(feat.shape[1:])}): {t_fwd:.3f} s")
    print(f"counts identical: {same}; detectors {res.summary().n_detectors}")
    print(f"ratio reference / engine tally:         {t_ref / t_tally:.1f}x")
    print(f"ratio (upsample + tally) / forward:     {t_fast / t_fwd:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
