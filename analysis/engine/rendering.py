"""Exemplar grids for people to judge. Returns ``PIL.Image`` objects; never writes files.

Inputs:

* ``images``: ``uint8[N, H, W, 3]`` RGB (numpy array or CPU tensor).
* ``maps``: ``float[N, H, W]`` activation maps ALREADY UPSAMPLED to the images' resolution (use
  :mod:`analysis.engine.upsample`, the same upsampling as dissection, so that what people see is what
  was scored). A map of another size is refused rather than silently resized.
* ``peaks``: ``float[N, 2]`` ``(y, x)`` in the images' continuous pixel coordinates (pixel ``k``
  covers ``[k, k + 1)``, centre ``k + 0.5``), e.g. :func:`analysis.engine.upsample.peak_coordinates` of
  the top-k peaks; NaN = no peak.

Grid layout (exact, in output pixels): tiles of ``th x tw`` (the images' size, or scaled so that the
longer side is ``tile``) in ``rows = ceil(num_slots / columns)`` rows of ``columns``; a gutter of
``gutter`` pixels between tiles and around the border, filled with :data:`BACKGROUND`. Slot ``s``
(row-major) has its top-left corner at ``(y, x) = (gutter + (s // columns) * (th + gutter),
gutter + (s % columns) * (tw + gutter))``; the image is
``(rows * th + (rows + 1) * gutter)`` high and ``(columns * tw + (columns + 1) * gutter)`` wide.
Slots without an image (fewer images than slots) are filled with :data:`EMPTY_TILE`.
:func:`render_unit_grid` is the one entry point for a unit's grid (exemplar grids and crowd purity grids alike):
it upsamples the unit's raw maps with the upsampler that scored them, places the peak square and treats silent
units the same way everywhere.

Resizing uses PIL's bilinear filter (antialiased when shrinking). The activation grid resizes images
and maps to the tile size first and shades at that size (4x less work for 224 -> 112 px; shading is a
smooth per-pixel product, so the result looks the same); the peak square is drawn last, so it stays
crisp. The threshold grid applies the threshold at the images' resolution, where ND'18's rule is
defined, and resizes the finished tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "BACKGROUND",
    "EMPTY_TILE",
    "PEAK_COLOUR",
    "grid_shape",
    "render_activation_grid",
    "render_image_grid",
    "render_threshold_grid",
    "render_unit_grid",
    "tile_origin",
]

BACKGROUND = (255, 255, 255)
EMPTY_TILE = (224, 224, 224)
PEAK_COLOUR = (0, 255, 0)

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _tile_size(h: int, w: int, tile: int | None) -> tuple[int, int]:
    if tile is None:
        return h, w
    s = tile / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def grid_shape(num_slots: int, columns: int, tile_hw: tuple[int, int], gutter: int) -> tuple[int, int]:
    """``(height, width)`` of a grid (see the module docstring)."""
    rows = max(1, math.ceil(num_slots / columns))
    th, tw = tile_hw
    return rows * th + (rows + 1) * gutter, columns * tw + (columns + 1) * gutter


def tile_origin(slot: int, columns: int, tile_hw: tuple[int, int], gutter: int) -> tuple[int, int]:
    """Top-left ``(y, x)`` of ``slot`` (row-major) in a grid."""
    th, tw = tile_hw
    return gutter + (slot // columns) * (th + gutter), gutter + (slot % columns) * (tw + gutter)


def _check(images: np.ndarray, maps: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError("images must be uint8[N, H, W, 3]")
    if maps.shape != images.shape[:3]:
        raise ValueError(f"maps {maps.shape} must match the images {images.shape[:3]}: upsample them first")


def _assemble(
    tiles: np.ndarray, columns: int, num_slots: int | None, tile: int | None, gutter: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Place ``uint8[N, H, W, 3]`` tiles into a grid canvas; returns ``(canvas, (th, tw))``."""
    n, h, w, _ = tiles.shape
    if columns < 1:
        raise ValueError("columns must be positive")
    slots = columns * max(1, math.ceil(n / columns)) if num_slots is None else int(num_slots)
    if slots < n:
        raise ValueError(f"{n} images do not fit in {slots} slots")
    th, tw = _tile_size(h, w, tile)
    gh, gw = grid_shape(slots, columns, (th, tw), gutter)
    canvas = np.empty((gh, gw, 3), dtype=np.uint8)
    canvas[...] = BACKGROUND
    for s in range(slots):  # at most a few dozen tiles: one paste each
        y0, x0 = tile_origin(s, columns, (th, tw), gutter)
        if s < n:
            t = tiles[s]
            if (th, tw) != (h, w):
                t = np.asarray(Image.fromarray(t).resize((tw, th), Image.Resampling.BILINEAR))
            canvas[y0 : y0 + th, x0 : x0 + tw] = t
        else:
            canvas[y0 : y0 + th, x0 : x0 + tw] = EMPTY_TILE
    return canvas, (th, tw)


def render_image_grid(
    images: ArrayLike, *, columns: int, num_slots: int | None = None, tile: int | None = None, gutter: int = 2
) -> Image.Image:
    """Plain images (``uint8[N, H, W, 3]``, one size) in the grid layout above, without any overlay: the natural
    exemplars and query images of forced-choice trials."""
    canvas, _ = _assemble(_np(images).astype(np.uint8), columns, num_slots, tile, gutter)
    return Image.fromarray(canvas)


def _shade(images: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``uint8`` of ``images * factor[..., None]`` rounded half up (``factor`` in ``[0, 1]``)."""
    out = images.astype(np.float32)
    np.multiply(out, factor[..., None], out=out)
    out += 0.5
    np.minimum(out, 255.0, out=out)
    return out.astype(np.uint8)


def _resize_all(arrays: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """PIL bilinear resize of every ``[H, W, 3]`` uint8 or ``[H, W]`` float32 array."""
    th, tw = size_hw
    return np.stack([np.asarray(Image.fromarray(a).resize((tw, th), Image.Resampling.BILINEAR)) for a in arrays])


def render_activation_grid(
    images: ArrayLike,
    maps: ArrayLike,
    peaks: ArrayLike | None = None,
    *,
    vmax: float | ArrayLike | None = None,
    columns: int = 10,
    num_slots: int | None = None,
    shade: float = 0.75,
    tile: int | None = None,
    gutter: int = 2,
    peak_size: int | None = None,
    peak_width: int = 2,
) -> Image.Image:
    """GG'18 Fig. 7 style grid: shaded images, the shading transparent where the unit fires, and a
    green square on each map's maximum.

    GG'18 §4.1: "We show the image shaded and overlay the activation map by setting the transparency
    value of the shading proportionally to the activation value at a pixel ... We also indicate the
    maximum of the activation map with a green square". Per pixel, with ``a = clip(map / vmax, 0, 1)``
    the black shading layer has opacity ``shade * (1 - a)``, so the output is
    ``image * (1 - shade * (1 - a))``: full brightness where ``a = 1``, ``1 - shade`` of it where the
    unit is silent. ``shade`` (0.75) and the square's size are our choices; the paper gives none.

    Args:
        images: ``uint8[N, H, W, 3]``.
        maps: ``float[N, H, W]`` upsampled activation maps.
        peaks: ``float[N, 2]`` ``(y, x)`` image coordinates of each map's maximum (e.g. the
            receptive-field centre of the top-k peak). ``None``: the argmax pixel of each upsampled map
            (first in row-major order), at its centre.
        vmax: activation shown fully unshaded: a float for the whole grid, or ``float[N]`` per tile.
            ``None``: the largest value over all maps of the grid (tiles stay comparable). Pass the
            unit's top-1 score to compare a unit's grids across classes.
        columns: tiles per row (GG'18's 10 images: 10 for one row, 5 for 2 x 5).
        num_slots: slots in the grid (default: ``N`` rounded up to whole rows); missing images are
            neutral tiles.
        shade: opacity of the shading where the activation is zero, in ``[0, 1]``.
        tile: longer side of a tile in output pixels (``None``: the images' size).
        gutter: pixels between tiles and around the border.
        peak_size: outer side of the green square in output pixels (odd; default
            ``max(5, tile_side // 10)`` made odd, 11 at 112 px).
        peak_width: line width of the square in pixels (drawn inwards from its outer edge).
    """
    imgs, mp = _np(images), _np(maps).astype(np.float32, copy=False)
    _check(imgs, mp)
    n, h, w, _ = imgs.shape
    if not 0.0 <= shade <= 1.0:
        raise ValueError("shade must lie in [0, 1]")
    if vmax is None:
        top = float(np.nanmax(mp)) if mp.size else 0.0
        v = np.full((n, 1, 1), top, dtype=np.float32)
    else:
        v = np.broadcast_to(_np(vmax).astype(np.float32).reshape(-1, 1, 1), (n, 1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(v > 0, mp / v, 0.0)
    a = np.nan_to_num(np.clip(a, 0.0, 1.0), nan=0.0)
    th, tw = _tile_size(h, w, tile)
    if (th, tw) != (h, w) and n:
        imgs, a = _resize_all(imgs, (th, tw)), _resize_all(a.astype(np.float32), (th, tw))
    keep = (1.0 - shade) + shade * a  # == 1 - shade * (1 - a): brightness retained
    canvas, _ = _assemble(_shade(imgs, keep), columns, num_slots, tile, gutter)

    if peaks is None:
        flat = mp.reshape(n, -1).argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
        pk = np.stack((flat // w + 0.5, flat % w + 0.5), axis=1).astype(np.float64)
    else:
        pk = _np(peaks).astype(np.float64).reshape(n, 2)
    side = peak_size if peak_size is not None else max(5, min(th, tw) // 10)
    side += 1 - side % 2  # odd, so the square has a centre pixel
    half = side // 2
    for s in range(n):  # one square per tile
        y, x = pk[s]
        if not (np.isfinite(y) and np.isfinite(x)):
            continue
        py = min(max(int(math.floor(y * th / h)), 0), th - 1)
        px = min(max(int(math.floor(x * tw / w)), 0), tw - 1)
        y0, x0 = tile_origin(s, columns, (th, tw), gutter)
        _square(canvas[y0 : y0 + th, x0 : x0 + tw], py, px, half, peak_width)
    return Image.fromarray(canvas)


def _square(tile: np.ndarray, cy: int, cx: int, half: int, width: int) -> None:
    """Outline of the square with rows/cols ``[c - half, c + half]``, ``width`` px thick, clipped."""
    th, tw = tile.shape[:2]
    t, b, l, r = cy - half, cy + half, cx - half, cx + half  # noqa: E741 — top, bottom, left, right
    width = max(1, min(width, half + 1))
    ct, cb, cl, cr = max(t, 0), min(b, th - 1), max(l, 0), min(r, tw - 1)
    if ct > cb or cl > cr:
        return
    for y in range(t, t + width):  # top and bottom bands
        if 0 <= y < th:
            tile[y, cl : cr + 1] = PEAK_COLOUR
    for y in range(b - width + 1, b + 1):
        if 0 <= y < th:
            tile[y, cl : cr + 1] = PEAK_COLOUR
    for x in range(l, l + width):  # left and right bands
        if 0 <= x < tw:
            tile[ct : cb + 1, x] = PEAK_COLOUR
    for x in range(r - width + 1, r + 1):
        if 0 <= x < tw:
            tile[ct : cb + 1, x] = PEAK_COLOUR


def render_threshold_grid(
    images: ArrayLike,
    maps: ArrayLike,
    threshold: float | ArrayLike,
    *,
    columns: int = 5,
    num_slots: int | None = None,
    dim: float = 0.25,
    outline: Sequence[int] | None = None,
    tile: int | None = None,
    gutter: int = 2,
) -> Image.Image:
    """ND'18 Fig. 4 style grid: the region where the unit is above its threshold at full brightness,
    the rest dimmed.

    The region is ``maps >= threshold`` (ND'18 §2.2: ``M_k = S_k >= T_k``), evaluated on the maps
    upsampled to the images' resolution. Pixels inside keep their exact value; pixels outside are
    multiplied by ``dim`` (rounded half up). ND'18 §3.1's raters saw fifteen images: use
    ``num_slots=15`` (3 rows of 5 with the default ``columns``). ``dim`` (0.25) is our choice.

    Args:
        images: ``uint8[N, H, W, 3]``.
        maps: ``float[N, H, W]`` upsampled activation maps.
        threshold: the unit's ``T_k`` (float), or ``float[N]`` per tile.
        columns, num_slots, tile, gutter: layout (module docstring).
        dim: brightness kept outside the region, in ``[0, 1]``.
        outline: optional RGB colour for the region's boundary: region pixels with a 4-neighbour
            outside the region (the image border does not count as outside).
    """
    imgs, mp = _np(images), _np(maps)
    _check(imgs, mp)
    n = imgs.shape[0]
    thr_dtype = mp.dtype if mp.dtype.kind == "f" else np.float64
    thr = np.broadcast_to(_np(threshold).astype(thr_dtype).reshape(-1, 1, 1), (n, 1, 1))
    mask = mp >= thr
    factor = np.where(mask, np.float32(1.0), np.float32(dim))
    tiles = _shade(imgs, factor)
    if outline is not None:
        p = np.pad(mask, ((0, 0), (1, 1), (1, 1)), mode="edge")
        inner = p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
        tiles[mask & ~inner] = np.asarray(outline, dtype=np.uint8)
    canvas, _ = _assemble(tiles, columns, num_slots, tile, gutter)
    return Image.fromarray(canvas)


def render_unit_grid(
    images: ArrayLike,
    maps: torch.Tensor,
    *,
    upsample,
    geometry,
    input_size: tuple[int, int],
    vmax: float,
    columns: int,
    num_slots: int,
    tile: int | None = None,
    peaks: ArrayLike | None = None,
    threshold: float | None = None,
) -> Image.Image:
    """One unit's grid from its raw maps: the rule every exemplar and purity grid follows.

    Args:
        images: ``uint8[N, H, W, 3]`` the images shown, in slot order (one size).
        maps: ``float32 Tensor[N, h, w]`` the unit's raw (cached) maps on those images.
        upsample: ``upsample(maps, (H, W))`` from :func:`analysis.engine.upsample.upsampler_for` (the upsampling
            the unit was scored with).
        geometry: the layer's ``LayerGeometry`` or ``None`` (untraced model).
        input_size: ``(H_in, W_in)`` of the network input.
        vmax: activation shown unshaded (callers pass the unit's top-1 score, so its grids compare).
        peaks: ``int[N, 2]`` ``(i, j)`` map position of the square per image (an exemplar set's top-k peaks);
            ``None``: each raw map's maximum (first in row-major order).
        threshold: with a value, ND'18's threshold grid (:func:`render_threshold_grid`) at ``T_k`` instead of
            the activation grid; a unit silent on more than the top quantile's share of positions has
            ``T_k = 0``, and "at or above 0" would light every pixel, so such a unit shows where it fires at all
            (``> 0``, the next float32 above 0). Our choice.

    The square (activation grid) sits at the peak's receptive-field centre scaled to the image when ``geometry``
    is known, else at the upsampled map's brightest pixel; an image where the unit is silent (raw maximum ≤ 0)
    gets no square — its "maximum" would be an arbitrary position.
    """
    from analysis.engine.upsample import peak_pixels

    pictures = _np(images)
    unit_maps = maps.to(torch.float32)
    size = pictures.shape[1:3]
    upsampled = upsample(unit_maps, size).numpy()
    if threshold is not None:
        level = threshold if threshold > 0 else float(np.nextafter(np.float32(0), 1))
        return render_threshold_grid(pictures, upsampled, level, columns=columns, num_slots=num_slots, tile=tile)
    if peaks is not None:
        positions = torch.as_tensor(np.asarray(peaks), dtype=torch.int64)
    else:
        flat = unit_maps.flatten(1).argmax(dim=1)
        positions = torch.stack((flat // unit_maps.shape[2], flat % unit_maps.shape[2]), dim=1)
    if geometry is not None:
        peak_array = peak_pixels(
            positions, geometry, input_size=input_size, image_size=size, map_size=unit_maps.shape[1:]
        ).numpy()
    else:
        peak_array = upsampled.reshape(len(pictures), -1).argmax(axis=1)
        peak_array = np.stack(np.unravel_index(peak_array, size), axis=1).astype(np.float64) + 0.5
    peak_array[unit_maps.flatten(1).amax(dim=1).numpy() <= 0] = np.nan
    return render_activation_grid(
        pictures, upsampled, peak_array, vmax=vmax, columns=columns, num_slots=num_slots, tile=tile
    )
