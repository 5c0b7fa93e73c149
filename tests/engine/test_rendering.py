"""Exemplar grids: layout, the peak square, shading and threshold dimming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.engine.receptive_field import LayerGeometry
from analysis.engine.rendering import (
    BACKGROUND,
    EMPTY_TILE,
    PEAK_COLOUR,
    grid_shape,
    render_activation_grid,
    render_threshold_grid,
    render_unit_grid,
    tile_origin,
)
from analysis.engine.upsample import ANCHORED, PLAIN, peak_coordinates, upsample_anchored, upsampler_for

torch.set_num_threads(1)

NO_PEAK = np.nan


def grey(n, h, w, value=128):
    return np.full((n, h, w, 3), value, dtype=np.uint8)


def tile_of(grid, slot, columns, th, tw, gutter=2):
    y0, x0 = tile_origin(slot, columns, (th, tw), gutter)
    return grid[y0 : y0 + th, x0 : x0 + tw]


def green_box(tile):
    ys, xs = np.nonzero(np.all(tile == PEAK_COLOUR, axis=-1))
    return ys.min(), ys.max(), xs.min(), xs.max()


def test_layout_gutters_and_empty_slots():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 20, 30, 3), dtype=np.uint8)
    maps = rng.random((7, 20, 30), dtype=np.float32)
    grid = np.asarray(render_threshold_grid(images, maps, 2.0, columns=5, dim=1.0))  # nothing dimmed
    assert grid.shape == (2 * 20 + 3 * 2, 5 * 30 + 6 * 2, 3) == (*grid_shape(7, 5, (20, 30), 2), 3)
    for s in range(10):
        t = tile_of(grid, s, 5, 20, 30)
        if s < 7:
            assert np.array_equal(t, images[s])
        else:
            assert np.all(t == EMPTY_TILE)
    gutter_mask = np.ones(grid.shape[:2], dtype=bool)
    for s in range(10):
        y0, x0 = tile_origin(s, 5, (20, 30), 2)
        gutter_mask[y0 : y0 + 20, x0 : x0 + 30] = False
    assert np.all(grid[gutter_mask] == BACKGROUND)


def test_fixed_slot_count_and_tile_scaling():
    images, maps = grey(2, 40, 20), np.zeros((2, 40, 20), np.float32)
    grid = render_activation_grid(images, maps, np.full((2, 2), NO_PEAK), columns=5, num_slots=10, tile=20, gutter=1)
    assert grid.size == (5 * 10 + 6, 2 * 20 + 3)  # PIL: (width, height); tiles 20 x 10
    arr = np.asarray(grid)
    assert np.all(tile_of(arr, 9, 5, 20, 10, gutter=1) == EMPTY_TILE)
    with pytest.raises(ValueError, match="do not fit"):
        render_activation_grid(grey(3, 8, 8), np.zeros((3, 8, 8)), columns=2, num_slots=2)


def test_maps_must_be_upsampled_first():
    with pytest.raises(ValueError, match="upsample"):
        render_activation_grid(grey(2, 16, 16), np.zeros((2, 4, 4)))


@pytest.mark.parametrize("tile", [None, 56])
def test_green_square_sits_on_the_argmax(tile):
    rng = np.random.default_rng(1)
    maps = rng.random((10, 112, 112), dtype=np.float32) * 0.5
    spots = [(3, 5), (50, 60), (111, 0), (20, 100), (70, 70), (0, 111), (90, 10), (56, 56), (33, 77), (101, 44)]
    for n, (y, x) in enumerate(spots):
        maps[n, y, x] = 1.0
    grid = np.asarray(render_activation_grid(grey(10, 112, 112), maps, columns=5, tile=tile, peak_size=9))
    side = 112 if tile is None else tile
    scale = side / 112
    for n, (y, x) in enumerate(spots):
        cy, cx = int((y + 0.5) * scale), int((x + 0.5) * scale)
        top, bottom, left, right = green_box(tile_of(grid, n, 5, side, side))
        # the square (rows/cols c - 4 .. c + 4) is centred on the peak pixel unless clipped at a border
        assert top == max(cy - 4, 0) and bottom == min(cy + 4, side - 1)
        assert left == max(cx - 4, 0) and right == min(cx + 4, side - 1)
        if 4 <= cy < side - 4 and 4 <= cx < side - 4:
            assert ((top + bottom) / 2, (left + right) / 2) == (cy, cx)


def test_explicit_peaks_are_image_coordinates():
    maps = np.zeros((2, 64, 64), np.float32)
    peaks = np.array([[20.5, 40.5], [NO_PEAK, NO_PEAK]])  # receptive-field centres
    grid = np.asarray(render_activation_grid(grey(2, 64, 64), maps, peaks, columns=2, peak_size=7))
    assert green_box(tile_of(grid, 0, 2, 64, 64)) == (17, 23, 37, 43)
    assert not np.any(np.all(tile_of(grid, 1, 2, 64, 64) == PEAK_COLOUR, axis=-1))


def test_brightness_retained_is_monotone_in_activation():
    ramp = np.linspace(-0.5, 3.0, 100, dtype=np.float32)  # below 0, inside [0, vmax], above vmax
    maps = np.broadcast_to(ramp, (1, 8, 100)).copy()
    images = grey(1, 8, 100, value=200)
    grid = np.asarray(render_activation_grid(images, maps, np.full((1, 2), NO_PEAK), vmax=2.0, shade=0.75, columns=1))
    row = tile_of(grid, 0, 1, 8, 100)[4, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0) and row[-1] > row[0]
    assert row[ramp <= 0].tolist() == [50] * int((ramp <= 0).sum())  # 200 * (1 - 0.75)
    assert row[ramp >= 2.0].tolist() == [200] * int((ramp >= 2.0).sum())  # unshaded
    mid = np.argmin(np.abs(ramp - 1.0))
    assert row[mid] == pytest.approx(200 * (0.25 + 0.75 * ramp[mid] / 2.0), abs=0.51)


def test_default_vmax_is_shared_across_the_grid():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0] += 1.0
    maps[1] += 2.0  # the grid maximum
    grid = np.asarray(render_activation_grid(grey(2, 4, 4, 100), maps, np.full((2, 2), NO_PEAK), columns=2, shade=0.5))
    assert tile_of(grid, 0, 2, 4, 4)[0, 0, 0] == 75 and tile_of(grid, 1, 2, 4, 4)[0, 0, 0] == 100


@pytest.mark.parametrize("as_tensor", [False, True])
def test_threshold_grid_dims_exactly_the_sub_threshold_pixels(as_tensor):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    maps = rng.random((3, 24, 24), dtype=np.float32)
    thr = np.float32(maps[0, 5, 5])  # a pixel exactly at the threshold is inside (>=)
    args = (torch.from_numpy(images), torch.from_numpy(maps)) if as_tensor else (images, maps)
    grid = np.asarray(render_threshold_grid(*args, thr, columns=3, dim=0.3))
    for n in range(3):
        t = tile_of(grid, n, 3, 24, 24)
        inside = maps[n] >= thr
        assert np.array_equal(t[inside], images[n][inside])
        dimmed = np.floor(images[n][~inside].astype(np.float32) * np.float32(0.3) + 0.5).astype(np.uint8)
        assert np.array_equal(t[~inside], dimmed)
    assert np.array_equal(tile_of(grid, 0, 3, 24, 24)[5, 5], images[0, 5, 5])


def test_threshold_outline_marks_only_the_region_boundary():
    images = grey(1, 10, 10, 90)
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 2:6, 3:8] = 1.0  # a 4 x 5 block
    maps[0, 7:, :] = 1.0  # a band touching the image border
    grid = np.asarray(render_threshold_grid(images, maps, 0.5, columns=1, outline=(255, 255, 0)))
    t = tile_of(grid, 0, 1, 10, 10)
    yellow = np.all(t == (255, 255, 0), axis=-1)
    expected = np.zeros((10, 10), bool)
    expected[2:6, 3:8] = True
    expected[3:5, 4:7] = False  # block interior
    expected[7, :] = True  # the band's inner edge; the image border is not outlined
    assert np.array_equal(yellow, expected)
    assert np.all(t[8:, :] == 90) and np.all(t[0, :] == 23)  # 90 * 0.25 rounded


# -- one unit's grid: the rule exemplar grids and purity grids share ---------------------------------------

UNIT_GEOMETRY = LayerGeometry(size=(9, 9), stride=(4, 4), offset=(1.5, 1.5))


def _unit_inputs():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    maps = torch.from_numpy(rng.random((3, 6, 6)).astype(np.float32))
    maps[1] = 0.0  # silent on the second image
    return images, maps


def test_unit_grid_is_the_anchored_upsampling_with_peaks_at_receptive_field_centres():
    images, maps = _unit_inputs()
    upsample = upsampler_for(UNIT_GEOMETRY, ANCHORED, (24, 24))
    peaks = np.array([[2, 3], [0, 0], [5, 1]])
    got = render_unit_grid(
        images,
        maps,
        upsample=upsample,
        geometry=UNIT_GEOMETRY,
        input_size=(24, 24),
        vmax=1.0,
        columns=3,
        num_slots=3,
        peaks=peaks,
    )
    centres = peak_coordinates(torch.from_numpy(peaks), rf_stride=(4, 4), rf_offset=(1.5, 1.5)).numpy()
    centres[1] = np.nan  # the silent image has no square
    expected = render_activation_grid(
        images,
        upsample_anchored(maps, (24, 24), rf_stride=4, rf_offset=1.5, input_size=24).numpy(),
        centres,
        vmax=1.0,
        columns=3,
        num_slots=3,
    )
    assert np.array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("geometry", [UNIT_GEOMETRY, None], ids=["anchored", "untraced"])
def test_a_silent_image_gets_no_square_with_or_without_geometry(geometry):
    images, maps = _unit_inputs()
    upsample = upsampler_for(geometry, ANCHORED if geometry else PLAIN, (24, 24))
    grid = np.asarray(
        render_unit_grid(
            images, maps, upsample=upsample, geometry=geometry, input_size=(24, 24), vmax=1.0, columns=3, num_slots=3
        )
    )
    green = [bool(np.all(tile_of(grid, slot, 3, 24, 24) == PEAK_COLOUR, axis=-1).any()) for slot in range(3)]
    assert green == [True, False, True]
    top, bottom, left, right = green_box(tile_of(grid, 0, 3, 24, 24))
    row, col = np.unravel_index(int(maps[0].argmax()), (6, 6))  # the square is centred on the map's maximum
    if geometry is not None:
        centre = (1.5 + 4 * row, 1.5 + 4 * col)
        assert (top + bottom) / 2 == pytest.approx(np.floor(centre[0]), abs=0.5)
        assert (left + right) / 2 == pytest.approx(np.floor(centre[1]), abs=0.5)


def test_unit_threshold_grid_lights_only_where_a_zero_threshold_unit_fires():
    images = grey(1, 8, 8, 200)
    maps = torch.zeros(1, 2, 2)
    maps[0, 0, 0] = 1.0
    grid = np.asarray(
        render_unit_grid(
            images,
            maps,
            upsample=upsampler_for(None, PLAIN, (8, 8)),
            geometry=None,
            input_size=(8, 8),
            vmax=1.0,
            columns=1,
            num_slots=1,
            threshold=0.0,
        )
    )
    tile = tile_of(grid, 0, 1, 8, 8)
    assert (tile == 200).all(axis=-1).any() and (tile == 50).all(axis=-1).any()  # lit where > 0, dimmed elsewhere
    assert (tile[7, 7] == 50).all()
