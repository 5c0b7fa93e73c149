"""Tests for analysis.engine.training on a tiny synthetic shape dataset."""

from __future__ import annotations

import json
import math

import pytest
import torch

from analysis.engine.demo_network import build_demo_network
from analysis.engine.training import (
    TensorBatches,
    TrainingError,
    augment_images,
    evaluate_classifier,
    train_classifier,
)

torch.set_num_threads(1)

SIZE = 48
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TINY = (16, 32, 32, 32, 32)


def make_shapes(n: int, seed: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``uint8 [n, 3, size, size]`` of 4 classes (disc, ring, horizontal bar,
    vertical bar) in a random bright colour at a random place and scale, on a noisy dark
    background; labels ``int64 [n]`` cycle through the classes."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.arange(size) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    labels = torch.arange(n) % 4
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        r = float(torch.empty(1).uniform_(size * 0.18, size * 0.3, generator=g))
        cy, cx = (float(v) for v in torch.empty(2).uniform_(r + 1, size - r - 1, generator=g))
        dy, dx = (yy - cy) / r, (xx - cx) / r
        d2 = dy**2 + dx**2
        mask = [
            d2 <= 1,
            (d2 <= 1) & (d2 >= 0.45),
            (dy.abs() <= 0.35) & (dx.abs() <= 1),
            (dx.abs() <= 0.35) & (dy.abs() <= 1),
        ][int(labels[i])]
        background = torch.rand(3, 1, 1, generator=g) * 0.5 + torch.randn(3, size, size, generator=g) * 0.08
        colour = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.5
        images[i] = (torch.where(mask, colour, background).clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


@pytest.fixture(scope="module")
def shapes() -> tuple[torch.Tensor, torch.Tensor]:
    return make_shapes(480, seed=0)


def test_training_learns_the_shapes(shapes) -> None:
    images, labels = shapes
    train = TensorBatches(images[:400], labels[:400], 16, shuffle=True, seed=0)
    val = TensorBatches(images[400:], labels[400:], 80)
    model = build_demo_network(4, seed=0, widths=TINY, hidden=64, dropout=0.0)
    _, acc_before, _ = evaluate_classifier(model, val(0), device="cpu", mean=MEAN, std=STD)
    calls: list[tuple[int, int]] = []
    report = train_classifier(
        model,
        train,
        val,
        epochs=6,
        lr=1e-3,
        seed=0,
        device="cpu",
        mean=MEAN,
        std=STD,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert len(report.epochs) == 6
    assert report.final_val_accuracy is not None and report.final_val_accuracy >= 0.8
    assert report.final_val_accuracy > acc_before + 0.4
    assert report.epochs[-1].train_loss < report.epochs[0].train_loss
    assert report.num_train_images == 400 and report.num_val_images == 80
    # progress: every train and val batch, ending at the total
    total = 6 * (len(train) + len(val))
    assert calls[-1] == (total, total) and len(calls) == total
    assert [d for d, _ in calls] == list(range(1, total + 1))
    assert not model.training
    data = json.loads(json.dumps(report.to_dict()))
    assert data["final_val_accuracy"] == report.final_val_accuracy
    assert len(data["epochs"]) == 6 and data["epochs"][0]["epoch"] == 1


def _train_small(images, labels, seed: int) -> dict[str, torch.Tensor]:
    model = build_demo_network(4, seed=0, widths=(8, 8, 8, 8, 8), hidden=16, dropout=0.2)
    batches = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, 64, 16)]
    train_classifier(model, batches, None, epochs=2, lr=1e-3, seed=seed, device="cpu", mean=MEAN, std=STD)
    return model.state_dict()


def test_same_seed_gives_identical_weights(shapes) -> None:
    images, labels = shapes
    rng_before = torch.get_rng_state()
    first = _train_small(images, labels, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    second = _train_small(images, labels, seed=3)
    other = _train_small(images, labels, seed=4)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert torch.are_deterministic_algorithms_enabled() is False  # restored


def test_factory_sources_and_no_augmentation(shapes) -> None:
    images, labels = shapes
    seen_epochs: list[int] = []

    def train_factory(epoch: int) -> list:
        seen_epochs.append(epoch)
        return [(images[:32], labels[:32])]

    model = build_demo_network(4, widths=(8, 8, 8, 8, 8), hidden=16)
    report = train_classifier(
        model,
        train_factory,
        [(images[400:420], labels[400:420])],
        epochs=3,
        lr=1e-3,
        seed=0,
        device="cpu",
        mean=MEAN,
        std=STD,
        augment=False,
    )
    assert seen_epochs == [0, 1, 2]
    assert report.augment is False and report.epochs[0].val_accuracy is not None


@pytest.mark.parametrize(
    "train, message",
    [
        (iter([]), "one-shot iterator"),
        ([], "empty"),
        (lambda epoch: (b for b in []), "must have a len"),
        ([(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64))], "uint8"),
        ([(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 9]))], r"0\.\.3"),
    ],
)
def test_bad_batches_are_reported(train, message: str) -> None:
    model = build_demo_network(4, widths=(8, 8, 8, 8, 8), hidden=16)
    with pytest.raises(TrainingError, match=message):
        train_classifier(model, train, None, epochs=1, lr=1e-3, seed=0, device="cpu", mean=MEAN, std=STD)


def test_diverging_loss_is_an_error(shapes) -> None:
    images, labels = shapes
    model = build_demo_network(4, widths=(8, 8, 8, 8, 8), hidden=16)
    with torch.no_grad():
        model.classifier[-1].weight.fill_(math.inf)
    with pytest.raises(TrainingError, match="loss became"):
        train_classifier(
            model, [(images[:8], labels[:8])], None, epochs=1, lr=1e-3, seed=0, device="cpu", mean=MEAN, std=STD
        )


def test_augment_images_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 6, 7, generator=g)
    out = augment_images(x, torch.Generator().manual_seed(1), flip=True, max_shift=2)
    replay = torch.Generator().manual_seed(1)
    flips = torch.rand(5, generator=replay) < 0.5
    shifts = torch.randint(0, 5, (5, 2), generator=replay)
    for b in range(5):
        img = x[b].flip(-1) if flips[b] else x[b]
        for i in range(6):
            for j in range(7):
                si = min(max(i + int(shifts[b, 0]) - 2, 0), 5)  # replicate padding = clamp
                sj = min(max(j + int(shifts[b, 1]) - 2, 0), 6)
                assert torch.equal(out[b, :, i, j], img[:, si, sj])
    assert torch.equal(augment_images(x, g, flip=False, max_shift=0), x)


def test_tensor_batches_shuffle_is_seeded() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2)
    labels = torch.arange(10)
    source = TensorBatches(images, labels, 4, shuffle=True, seed=5)
    assert len(source) == 3
    epoch0 = torch.cat([y for _, y in source(0)])
    assert sorted(epoch0.tolist()) == list(range(10))
    assert torch.equal(epoch0, torch.cat([y for _, y in source(0)]))
    assert not torch.equal(epoch0, torch.cat([y for _, y in source(1)]))
