"""ND'18 §3.2 random rotations: Haar draw, fractional powers, rotating activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.engine.dissection import BatchLabels, DissectionTally
from analysis.engine.rotation import (
    random_rotation,
    rotate_activations,
    rotation_log,
    rotation_power,
)
from tests.devices import cpu_and_cuda

torch.set_num_threads(1)

DEVICES = cpu_and_cuda()


def eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 33])
def test_random_rotation_is_in_so_n_and_seeded(n):
    q = random_rotation(n, seed=11)
    assert q.dtype == torch.float64 and q.shape == (n, n)
    torch.testing.assert_close(q @ q.T, eye(n), atol=1e-12, rtol=0)
    assert torch.linalg.det(q).item() == pytest.approx(1.0, abs=1e-10)
    assert torch.equal(q, random_rotation(n, seed=11))
    if n > 1:
        assert not torch.equal(q, random_rotation(n, seed=12))


def test_random_rotation_moments_look_haar():
    # Haar on SO(3): E[Q_ij] = 0, E[Q_ij^2] = 1/3, E[trace] = 0 (checked loosely)
    qs = torch.stack([random_rotation(3, seed=s) for s in range(400)])
    assert qs.mean(0).abs().max().item() < 0.1
    assert (qs**2).mean(0).sub(1 / 3).abs().max().item() < 0.06
    assert abs(qs.diagonal(dim1=1, dim2=2).sum(1).mean().item()) < 0.15


@pytest.mark.parametrize("n", [2, 3, 16, 17])
def test_fractional_powers(n):
    q = random_rotation(n, seed=n)
    assert torch.equal(rotation_power(q, 0.0), eye(n))
    torch.testing.assert_close(rotation_power(q, 1.0), q, atol=1e-12, rtol=0)
    for a in (0.25, 0.5, 0.9):
        qa = rotation_power(q, a)
        torch.testing.assert_close(qa @ qa.T, eye(n), atol=1e-12, rtol=0)
        assert torch.linalg.det(qa).item() == pytest.approx(1.0, abs=1e-10)
    # one-parameter subgroup: Q^a Q^b = Q^(a+b); geodesic: distance from I grows linearly
    torch.testing.assert_close(
        rotation_power(q, 0.3) @ rotation_power(q, 0.5), rotation_power(q, 0.8), atol=1e-12, rtol=0
    )
    log = rotation_log(q)
    torch.testing.assert_close(log, -log.T, atol=0, rtol=0)
    d = torch.linalg.matrix_norm(rotation_log(rotation_power(q, 0.5)))
    assert d.item() == pytest.approx(0.5 * torch.linalg.matrix_norm(log).item(), rel=1e-9)


def test_fractional_power_of_a_plane_rotation_is_the_angle_fraction():
    t = 2.0
    q = torch.tensor([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]], dtype=torch.float64)
    qa = rotation_power(q, 0.25)
    want = torch.tensor([[np.cos(t / 4), -np.sin(t / 4)], [np.sin(t / 4), np.cos(t / 4)]], dtype=torch.float64)
    torch.testing.assert_close(qa, want, atol=1e-13, rtol=0)


def test_rejects_non_rotations_and_half_turns():
    with pytest.raises(ValueError):
        rotation_power(torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64)), 0.5)
    with pytest.raises(ValueError):
        rotation_power(-eye(2), 0.5)  # rotation by pi: no unique geodesic
    with pytest.raises(ValueError):
        rotation_power(eye(2), 1.5)


@pytest.mark.parametrize("device", DEVICES)
def test_rotate_activations_matches_a_naive_loop(device):
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64).to(device)
    r = random_rotation(4, seed=1, device=device)
    out = rotate_activations(acts, r)
    want = torch.zeros_like(acts)
    for b in range(2):
        for y in range(3):
            for x in range(5):
                want[b, :, y, x] = r @ acts[b, :, y, x]
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    # a rotation preserves the norm of the unit vector at every position
    torch.testing.assert_close(out.norm(dim=1), acts.norm(dim=1), atol=1e-12, rtol=0)
    assert torch.equal(rotate_activations(acts, torch.eye(4, dtype=torch.float64, device=device)), acts)


def test_alpha_zero_reproduces_unrotated_counts_exactly():
    g = torch.Generator().manual_seed(3)
    n_units, size = 8, (6, 6)
    acts = torch.randn(5, n_units, *size, generator=g)
    pixel = torch.randint(0, 5, (5, 2, *size), generator=g)
    labels = BatchLabels(pixel, torch.tensor([[0, 5], [3, 5]]))
    cats = torch.tensor([-1, 0, 0, 1, 1, 2])

    def counts(a: torch.Tensor) -> DissectionTally:
        # thresholds recomputed on the (rotated) representation, as ND'18 §3.2 requires
        thr = np.quantile(a.transpose(0, 1).reshape(n_units, -1).numpy(), 0.9, axis=1)
        tally = DissectionTally(torch.from_numpy(thr).float(), cats)
        tally.add(a, labels)
        return tally

    plain = counts(acts)
    r0 = rotation_power(random_rotation(n_units, seed=0), 0.0)
    rotated = counts(rotate_activations(acts, r0))
    for name in ("intersection", "activation_cat", "truth", "activation"):
        assert torch.equal(getattr(rotated, name), getattr(plain, name)), name
    # a full rotation changes them (sanity: the rotation is applied at all)
    full = counts(rotate_activations(acts, random_rotation(n_units, seed=0).float()))
    assert not torch.equal(full.intersection, plain.intersection)
