"""Upsampling: vectorised anchored bilinear against a naive per-pixel loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from analysis.engine.receptive_field import LayerGeometry
from analysis.engine.upsample import (
    ANCHORED,
    PLAIN,
    GeometryUnknown,
    anchored_axis_weights,
    peak_coordinates,
    peak_pixels,
    upsample_anchored,
    upsample_plain,
    upsampler_for,
)
from tests.devices import cpu_and_cuda

torch.set_num_threads(1)

DEVICES = cpu_and_cuda()


def naive_anchored(m, size, stride, offset, input_size):
    """One pixel at a time, straight from the definition (float64 Python arithmetic)."""
    h, w = m.shape
    out_h, out_w = size
    out = torch.empty(out_h, out_w, dtype=torch.float64)

    def axis(r, out_len, in_len, s, o, n):
        u = ((r + 0.5) * (in_len / out_len) - o) / s
        u = min(max(u, 0.0), n - 1.0)
        i0 = min(math.floor(u), n - 1)
        return i0, min(i0 + 1, n - 1), u - i0

    for r in range(out_h):
        y0, y1, wy = axis(r, out_h, input_size[0], stride[0], offset[0], h)
        for c in range(out_w):
            x0, x1, wx = axis(c, out_w, input_size[1], stride[1], offset[1], w)
            v0 = m[y0, x0].item() * (1 - wy) + m[y1, x0].item() * wy
            v1 = m[y0, x1].item() * (1 - wy) + m[y1, x1].item() * wy
            out[r, c] = v0 * (1 - wx) + v1 * wx
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "h, w, size, stride, offset, input_size",
    [
        (5, 7, (23, 31), (8.0, 8.0), (11.5, 3.5), (40, 56)),  # AlexNet-like, off-centre anchors
        (3, 3, (17, 17), (16.0, 16.0), (-4.0, 40.0), (64, 64)),  # both edges clamped
        (4, 2, (9, 13), (4.5, 11.0), (2.25, 6.0), (18, 26)),  # fractional strides, target != input
        (1, 6, (5, 12), (32.0, 2.0), (8.0, 1.0), (10, 12)),  # a single row
    ],
)
def test_anchored_equals_naive_loop(device, h, w, size, stride, offset, input_size):
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 2, h, w, generator=g, dtype=torch.float64)
    got = upsample_anchored(maps.to(device), size, rf_stride=stride, rf_offset=offset, input_size=input_size)
    assert got.shape == (2, 2, *size) and got.dtype == torch.float64 and got.device.type == device
    for n in range(2):
        for c in range(2):
            expected = naive_anchored(maps[n, c], size, stride, offset, input_size)
            torch.testing.assert_close(got[n, c].cpu(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_anchored_with_centred_units_equals_plain_resize(device):
    # unit i at (i + 0.5) * stride with stride = input / map: the align_corners=False convention
    maps = torch.randn(2, 4, 6, 9, generator=torch.Generator().manual_seed(1)).to(device)
    anchored = upsample_anchored(maps, (48, 36), rf_stride=(8.0, 4.0), rf_offset=(4.0, 2.0), input_size=(48, 36))
    plain = upsample_plain(maps, (48, 36))
    torch.testing.assert_close(anchored, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_plain_is_interpolate_and_keeps_leading_dims(device):
    maps = torch.tensor([[0.0, 4.0], [8.0, 12.0]], device=device)
    up = upsample_plain(maps, 4)  # [h, w] -> [H, W]
    # align_corners=False: output pixel r samples u = (r + 0.5) / 2 - 0.5, clamped at 0
    assert up[0].tolist() == [0.0, 1.0, 3.0, 4.0]
    assert up[:, 0].tolist() == [0.0, 2.0, 6.0, 8.0]
    batch = torch.rand(2, 3, 5, 4, 4, device=device)
    expected = F.interpolate(batch.reshape(30, 1, 4, 4), size=(7, 9), mode="bilinear", align_corners=False)
    assert torch.equal(upsample_plain(batch, (7, 9)), expected.reshape(2, 3, 5, 7, 9))


@pytest.mark.parametrize("device", DEVICES)
def test_anchored_hits_unit_values_at_centres_and_clamps_outside(device):
    # stride 4, offset 1.5: unit i at 1.5 + 4 i, i.e. the centre of input pixel 1 + 4 i
    maps = torch.arange(12.0, device=device).reshape(1, 3, 4)
    up = upsample_anchored(maps, (16, 16), rf_stride=4, rf_offset=1.5, input_size=16)
    assert torch.equal(up[0, [1, 5, 9]][:, [1, 5, 9, 13]], maps[0])
    assert torch.equal(up[0, 0], up[0, 1]) and torch.equal(up[0, 10:], up[0, 9].expand(6, 16))
    assert torch.equal(up[0, :, 0], up[0, :, 1]) and torch.equal(up[0, :, 14], up[0, :, 13])
    # halfway between two centres: the mean
    assert up[0, 3, 3].item() == pytest.approx((0 + 1 + 4 + 5) / 4)


def test_axis_weights_sum_to_one_and_stay_in_range():
    i0, i1, w0, w1 = anchored_axis_weights(50, 7, stride=9.0, offset=-3.0, input_len=71, dtype=torch.float64)
    assert torch.all((i0 >= 0) & (i1 <= 6) & (i1 - i0 <= 1))
    assert torch.all((w1 >= 0) & (w1 <= 1))
    torch.testing.assert_close(w0 + w1, torch.ones(50, dtype=torch.float64))


def test_peak_coordinates_and_empty_slots():
    pos = torch.tensor([[0, 0], [2, 3], [-1, -1]])
    got = peak_coordinates(pos, rf_stride=(8, 16), rf_offset=(3.5, 7.5))
    assert got[:2].tolist() == [[3.5, 7.5], [19.5, 55.5]]
    assert torch.isnan(got[2]).all()


# -- the one factory and the one peak placement ------------------------------------------------------------

GEOMETRY = LayerGeometry(size=(11, 7), stride=(8, 4), offset=(3.5, 1.5))


def test_upsampler_for_is_the_anchored_or_plain_upsampling_of_the_layer():
    maps = torch.rand(2, 3, 5, 9, generator=torch.Generator().manual_seed(0))
    anchored = upsampler_for(GEOMETRY, ANCHORED, (40, 36))
    expected = upsample_anchored(maps, (20, 18), rf_stride=(8, 4), rf_offset=(3.5, 1.5), input_size=(40, 36))
    assert torch.equal(anchored(maps, (20, 18)), expected)
    assert torch.equal(upsampler_for(None, PLAIN, (40, 36))(maps, (20, 18)), upsample_plain(maps, (20, 18)))
    with pytest.raises(GeometryUnknown):
        upsampler_for(None, ANCHORED, (40, 36))
    with pytest.raises(ValueError):
        upsampler_for(GEOMETRY, "nearest", (40, 36))


def test_peak_pixels_are_y_then_x_on_a_non_square_layer_and_image():
    """Stride, offset, input and image all differ between the axes, so a point written (x, y) — as one hand
    conversion once did — fails here."""
    positions = torch.tensor([[1, 3], [0, 0], [-1, -1]])
    points = peak_pixels(positions, GEOMETRY, input_size=(40, 36), image_size=(80, 18), map_size=(5, 9))
    y, x = (3.5 + 1 * 8) * 80 / 40, (1.5 + 3 * 4) * 18 / 36
    assert points[0].tolist() == pytest.approx([y, x])
    assert points[1].tolist() == pytest.approx([3.5 * 2, 1.5 / 2])
    assert torch.isnan(points[2]).all()
    clipped = peak_pixels(
        torch.tensor([[6, 20]]), GEOMETRY, input_size=(40, 36), image_size=(80, 18), map_size=(5, 9), clip=True
    )[0]  # centre (103, 40.75): past both edges
    assert clipped.tolist() == pytest.approx([80 - 1e-6, 18 - 1e-6], abs=1e-9)
    cells = peak_pixels(torch.tensor([[1, 3]]), None, input_size=(40, 36), image_size=(80, 18), map_size=(5, 9))
    assert cells[0].tolist() == pytest.approx([1.5 * 80 / 5, 3.5 * 18 / 9])
