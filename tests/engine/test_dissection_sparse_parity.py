"""The sparse dissection path (only the pixels that can pass their threshold are upsampled) finds exactly the
dense path's active pixels, for both upsamplers, on geometries whose scale is not an integer (113 px from a
14-cell map, 57 from 6) and on float16-rounded maps as the activation cache holds them. The module docstring of
:mod:`analysis.engine.dissection_sparse` claims bit-identical values; this is the check, across shapes."""

from __future__ import annotations

import itertools

import pytest
import torch

from analysis.engine.dissection_sparse import AnchoredUpsample, PlainUpsample, dense_active

GEOMETRIES = [(7, 56, 32, 15.5), (13, 112, 16, 7.5), (14, 113, 16, 8.0), (6, 57, 37, 18.0)]


def _triples(active) -> set[tuple[int, int, int]]:
    return set(zip(active.image.tolist(), active.unit.tolist(), active.pixel.tolist()))


@pytest.mark.parametrize(("seed", "geometry"), list(itertools.product(range(3), GEOMETRIES)))
@pytest.mark.parametrize("strict", [False, True])
def test_sparse_active_pixels_equal_the_dense_ones(seed, geometry, strict):
    h, out, stride, offset = geometry
    generator = torch.Generator().manual_seed(seed)
    # Sparse maps, as ND'18's top-0.005 threshold sees them: most cells 0, a few strong responses.
    raw = (torch.randn(6, 24, h, h, generator=generator) - 1.8).relu()
    raw = (raw * torch.rand(1, 24, 1, 1, generator=generator) * 40).half().float()
    thresholds = torch.quantile(raw.transpose(0, 1).reshape(24, -1), 0.995, dim=1)
    checked = 0
    for upsampler in (
        AnchoredUpsample(rf_stride=(stride, stride), rf_offset=(offset, offset), input_size=(224, 224)),
        PlainUpsample(),
    ):
        sparse = upsampler.active(raw, thresholds, (out, out), strict=strict)
        if sparse is None:  # too dense for the sparse path: the tally falls back to the dense one itself
            continue
        checked += 1
        dense = dense_active(upsampler(raw, (out, out)), thresholds, strict=strict)
        assert _triples(sparse) == _triples(dense)
    assert checked >= 1
