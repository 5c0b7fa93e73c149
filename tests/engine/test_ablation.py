"""Discriminativeness (GG'18 §5–6): δ of a filter that feeds nothing is 0; a planted discriminative filter is found;
the fx split reproduces the model; set ablations, blackout and Pearson correlations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis.engine.ablation import LayerAblator, blackout, class_scores, discriminative_filters, pearson
from analysis.engine.demo_network import build_demo_network


class Planted(nn.Module):
    """conv (6 channels) -> ReLU -> global average -> linear. Channel 2 drives class 1 strongly; channel 5 has zero
    outgoing weights (feeds nothing); the others add small noise to every class."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(6, 3, 3, 3, generator=gen) * 0.3)
            self.conv.bias.fill_(0.5)
            self.fc.weight.copy_(torch.randn(3, 6, generator=gen) * 0.05)
            self.fc.weight[1, 2] = 8.0
            self.fc.weight[:, 5] = 0.0

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def test_split_reproduces_the_model_and_ablation_matches_a_hook():
    model = build_demo_network(5, seed=1).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ablator = LayerAblator(model, "conv4")
    assert ablator.traced
    frontier = ablator.prefix(x)
    keep = torch.ones(2, 128)
    keep[1, 7] = 0
    logits = ablator.logits(frontier, keep)
    with torch.no_grad():
        assert torch.allclose(logits[0], model(x), atol=1e-5)
        handle = model.conv4.register_forward_hook(lambda m, i, out: out * keep[1].view(1, -1, 1, 1))
        expected = model(x)
        handle.remove()
    assert torch.allclose(logits[1], expected, atol=1e-5)


def test_a_filter_that_feeds_nothing_has_zero_delta_and_the_planted_one_is_found():
    model = Planted().eval()
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for score in ("softmax", "logit"):
        ablator = LayerAblator(model, "relu")
        frontier = ablator.prefix(x)
        keep = torch.ones(7, 6)
        keep[1:] -= torch.eye(6)
        s = class_scores(ablator.logits(frontier, keep), 1, score=score)
        deltas = (s[0:1] - s[1:]).mean(dim=1).numpy()
        assert deltas[5] == 0.0
        flags, sigma = discriminative_filters(deltas)
        assert np.flatnonzero(flags).tolist() == [2]
        assert deltas[2] > 2 * sigma > 0


def test_hook_fallback_equals_the_split():
    model = Planted().eval()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    keep = torch.ones(3, 6)
    keep[1, 2] = 0
    keep[2, [0, 3, 4]] = 0  # a set ablation
    traced = LayerAblator(model, "relu")
    fallback = LayerAblator(model, "relu")
    fallback.traced = False
    assert torch.allclose(traced.logits(traced.prefix(x), keep), fallback.logits(fallback.prefix(x), keep), atol=1e-6)


def test_class_scores_gather_per_image_classes():
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]])
    assert class_scores(logits, torch.tensor([1, 2]), score="logit").tolist() == [[2.0, 3.0]]
    probabilities = class_scores(logits, torch.tensor([1, 2]))
    assert probabilities[0, 0] == pytest.approx(np.exp(2) / (np.exp(1) + np.exp(2) + 1))


def test_blackout_and_pearson():
    images = torch.ones(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    out = blackout(images, mask)
    assert out[0, :, 1:3, 1:3].abs().sum() == 0 and out[1].sum() == 48 and out[0].sum() == 36
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    result = pearson(x, [2.0, 4.1, 5.9, 8.2, 9.9])
    from scipy import stats

    expected = stats.pearsonr(x, [2.0, 4.1, 5.9, 8.2, 9.9])
    assert result["r"] == pytest.approx(expected.statistic) and result["p"] == pytest.approx(expected.pvalue)
    assert pearson([1, 2], [3, 4])["r"] is None
    assert pearson([1, 2, 3, float("nan")], [1, 1, 1, 2])["r"] is None
