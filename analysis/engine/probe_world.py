"""The probe world: a procedural, deterministic dataset with pixel truth (DESIGN.md §10).

Each image shows exactly one object, centred with jitter, drawn from named parts on a background
of one to three material bands (sky above grass, brick above asphalt, ...). The generator writes,
in the Broden on-disk format (:mod:`analysis.engine.broden`):

* categories ``object`` (one layer), ``part`` (one layer, or two where a part lies on another:
  an eye on a head, a window on a car body), ``material`` (background materials and the materials
  of object parts), ``color`` (the eleven Broden colour names with Broden's ``-c`` suffix, one per
  pixel), and whole-image ``scene`` labels (Broden's ``-s`` suffix) derived from the background;
* sidecar ``boxes.csv`` (``image,kind,label,instance,x1,y1,x2,y2``; kind ``object`` or ``part``;
  boxes at image resolution, ``(x1, y1, x2, y2)`` with ``x2`` one past the last covered column),
  ``classes.csv`` (``image,object_class``) and ``probe_world.json`` (the parameters).

Masks are rendered at image resolution and sub-sampled to the segmentation size at pixel centres
(nearest neighbour, like Broden's builder), so every mask, colour name and box derives from the
same pixels. All drawing is vectorised numpy on a pixel grid; every image has its own random
stream ``default_rng([seed, index])``, so the same seed gives identical bytes in every file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from analysis.engine.broden import BrodenWriter, ProgressCallback
from analysis.engine.pascal_part import masks_to_boxes

__all__ = [
    "BACKGROUND_MATERIALS",
    "CATEGORIES",
    "CLASS_PARTS",
    "COLOR_NAMES",
    "COLOR_PROTOTYPES",
    "GENERATOR_VERSION",
    "OBJECT_CLASSES",
    "OBJECT_MATERIALS",
    "SCENES",
    "SHARED_PARTS",
    "ProbeImage",
    "ProbeWorldSummary",
    "generate_probe_world",
    "name_colors",
    "render_probe_image",
]

GENERATOR_VERSION = 1

OBJECT_CLASSES: tuple[str, ...] = ("bicycle", "bird", "car", "fish", "house", "person", "tree")

CLASS_PARTS: dict[str, tuple[str, ...]] = {
    "bicycle": ("wheel", "frame", "saddle", "handlebar"),
    "bird": ("leg", "torso", "wing", "head", "beak", "eye"),
    "car": ("body", "wheel", "window", "door", "headlight"),
    "fish": ("tail", "fin", "body", "eye"),
    "house": ("chimney", "roof", "wall", "window", "door"),
    "person": ("leg", "torso", "arm", "head", "eye"),
    "tree": ("trunk", "crown", "fruit"),
}
"""Part names of each class (a class draws all of them; counts of instances vary)."""

SHARED_PARTS: dict[str, tuple[str, ...]] = {
    part: tuple(c for c in OBJECT_CLASSES if part in CLASS_PARTS[c])
    for part in sorted({p for parts in CLASS_PARTS.values() for p in parts})
    if sum(part in CLASS_PARTS[c] for c in OBJECT_CLASSES) > 1
}
"""Parts that occur in several classes, like wheels in PASCAL-Part: wheel, window, door, head,
leg, eye, torso, body."""

BACKGROUND_MATERIALS: tuple[str, ...] = (
    "sky",
    "grass",
    "asphalt",
    "water",
    "sand",
    "brick",
    "snow",
)
OBJECT_MATERIALS: tuple[str, ...] = (
    "metal", "rubber", "glass", "leather", "feather", "fabric", "skin", "paint", "tile", "wood",
    "foliage",
)  # fmt: skip

SCENES: dict[str, tuple[str, ...]] = {
    "meadow-s": ("sky", "grass"),
    "street-s": ("brick", "asphalt"),
    "highway-s": ("sky", "asphalt"),
    "beach-s": ("sky", "water", "sand"),
    "lake-s": ("sky", "water"),
    "snowfield-s": ("sky", "snow"),
    "desert-s": ("sky", "sand"),
    "underwater-s": ("water",),
}
"""Scene label → background material bands from top to bottom. Scene names carry Broden's
``-s`` suffix. Object class and scene are drawn independently."""

COLOR_NAMES: tuple[str, ...] = (
    "black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red", "white", "yellow",
)  # fmt: skip

COLOR_PROTOTYPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((20, 20, 20),),
    "blue": ((40, 70, 190), (110, 160, 230)),
    "brown": ((110, 70, 35), (165, 115, 70)),
    "grey": ((100, 100, 100), (160, 160, 160)),
    "green": ((40, 120, 40), (120, 190, 90)),
    "orange": ((240, 140, 30),),
    "pink": ((240, 150, 190),),
    "purple": ((120, 50, 150),),
    "red": ((190, 30, 30),),
    "white": ((240, 240, 240),),
    "yellow": ((240, 220, 50),),
}
"""sRGB prototypes of the colour names. Our choice: a pixel is named after the prototype nearest
to its rendered RGB in CIELAB (D65), a perceptual distance; light and dark variants of blue,
brown, grey and green make, e.g., a pale sky "blue" rather than "grey"."""

CATEGORIES: tuple[str, ...] = ("object", "part", "material", "color", "scene")

# Base colours (sRGB) the objects are painted from; each draw adds a little jitter.
_PAINT: dict[str, tuple[int, int, int]] = {
    "red": (200, 35, 35), "blue": (45, 80, 200), "yellow": (235, 205, 45),
    "white": (235, 235, 230), "black": (35, 35, 38), "grey": (130, 130, 135),
    "green": (50, 140, 60), "orange": (235, 130, 35), "purple": (125, 55, 155),
    "pink": (235, 150, 185), "brown": (120, 75, 40), "lightblue": (160, 200, 235),
    "tan": (200, 160, 110), "darkgreen": (35, 95, 40),
}  # fmt: skip

_SKIN: tuple[tuple[int, int, int], ...] = (
    (240, 200, 170),
    (205, 150, 110),
    (150, 100, 70),
    (95, 65, 45),
)

_CLASS_FRAME: dict[str, tuple[float, float]] = {
    "bicycle": (1.0, 0.62),
    "bird": (1.0, 0.9),
    "car": (1.0, 0.55),
    "fish": (1.0, 0.6),
    "house": (0.92, 1.0),
    "person": (0.5, 1.0),
    "tree": (0.8, 1.0),
}
"""Width and height of each class's drawing frame in object units (longest side 1)."""


# ------------------------------------------------------------------------------------------------
# Public dataclasses


@dataclass(frozen=True, eq=False)
class ProbeImage:
    """One rendered image with its pixel truth, at image resolution ``size x size``.

    ``rgb``: ``uint8[H, W, 3]``. ``part_layers``: ``int16[2, H, W]`` of 1-based indices into
    ``part_names`` (0 = none); layer 0 holds parts on the object, layer 1 parts lying on other
    parts (eyes, windows, doors, headlights, fruit). ``part_boxes``: ``float64[P, 4]`` tight boxes
    of each instance's mask in its layer (NaN if fully hidden). ``object_mask``: ``bool[H, W]``,
    the union of the parts. ``material``: ``int16[H, W]`` 1-based index into ``materials``
    (0 = none: a part without a material, e.g. an eye). ``part_names[k]`` names instance ``k + 1``.
    """

    object_class: str
    scene: str
    rgb: np.ndarray
    object_mask: np.ndarray
    part_layers: np.ndarray
    part_names: tuple[str, ...]
    part_boxes: np.ndarray
    material: np.ndarray
    materials: tuple[str, ...]


@dataclass(frozen=True)
class ProbeWorldSummary:
    """What :func:`generate_probe_world` wrote."""

    out_dir: str
    n_images: int
    n_train: int
    n_val: int
    size: int
    seg_size: int
    seed: int
    class_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------
# Noise and colour helpers


@lru_cache(maxsize=32)
def _bilinear_taps(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid indices and smoothstep weights to upsample a ``(cells+1)^2`` grid to ``size^2``."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    low = np.minimum(np.floor(coords).astype(np.intp), cells - 1)
    frac = coords - low
    weight = (frac * frac * (3.0 - 2.0 * frac)).astype(np.float32)
    return low, low + 1, weight


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise ``float32[size, size]`` in [0, 1] with about ``cells`` blobs per side."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    low, high, w = _bilinear_taps(size, cells)
    top = grid[low][:, low] * (1 - w)[None, :] + grid[low][:, high] * w[None, :]
    bottom = grid[high][:, low] * (1 - w)[None, :] + grid[high][:, high] * w[None, :]
    return top * (1 - w)[:, None] + bottom * w[:, None]


def _jitter_colour(rng: np.random.Generator, rgb: tuple[int, int, int], spread: float = 12.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0.0, spread, 3), 0, 255).astype(np.float32)


def _paint(rng: np.random.Generator, choices: tuple[str, ...], spread: float = 12.0) -> np.ndarray:
    return _jitter_colour(rng, _PAINT[choices[rng.integers(len(choices))]], spread)


_RGB_TO_XYZ = np.array(
    [[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]], np.float32
) / np.array([0.95047, 1.0, 1.08883], np.float32)  # columns scaled by the D65 white point


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


_LINEAR_LUT = _srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``[..., 3]`` in 0..255 → CIELAB (D65) ``float32[..., 3]``.

    uint8 input is linearised through an exact 256-entry table (the per-pixel power is the cost).
    """
    rgb = np.asarray(rgb)
    linear = _LINEAR_LUT[rgb] if rgb.dtype == np.uint8 else _srgb_to_linear(rgb.astype(np.float32) / 255.0)
    xyz = linear @ _RGB_TO_XYZ
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lab = np.empty(f.shape, np.float32)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


@lru_cache(maxsize=1)
def _prototype_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prototype Lab values ``float32[P, 3]``, their squared norms and colour-name indices."""
    rgb, names = [], []
    for index, name in enumerate(COLOR_NAMES):
        for prototype in COLOR_PROTOTYPES[name]:
            rgb.append(prototype)
            names.append(index)
    lab = _srgb_to_lab(np.array(rgb, np.uint8))
    return lab, (lab.astype(np.float64) ** 2).sum(axis=1), np.array(names, np.intp)


def name_colors(rgb: np.ndarray) -> np.ndarray:
    """Colour name of every pixel: ``uint8[H, W, 3]`` → ``intp[H, W]`` indices into COLOR_NAMES.

    Nearest prototype of :data:`COLOR_PROTOTYPES` in CIELAB (Euclidean, i.e. ΔE*76). The distance
    is expanded as ``|p|^2 - 2 x.p`` (the pixel's own ``|x|^2`` does not change the argmin).
    """
    lab = _srgb_to_lab(rgb).astype(np.float64)
    prototypes, norms, names = _prototype_table()
    scores = norms - 2.0 * (lab @ prototypes.T.astype(np.float64))
    return names[scores.argmin(axis=-1)]


# ------------------------------------------------------------------------------------------------
# Shapes in object coordinates


class _Shapes:
    """Boolean shape masks on a pixel grid expressed in object units ``(u, v)`` (v points down)."""

    def __init__(self, u: np.ndarray, v: np.ndarray) -> None:
        self.u, self.v = u, v

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        du, dv = self.u - cx, self.v - cy
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            du, dv = c * du + s * dv, -s * du + c * dv
        return (du / rx) ** 2 + (dv / ry) ** 2 <= 1.0

    def circle(self, cx: float, cy: float, r: float) -> np.ndarray:
        return (self.u - cx) ** 2 + (self.v - cy) ** 2 <= r * r

    def ring(self, cx: float, cy: float, r_out: float, r_in: float) -> np.ndarray:
        d2 = (self.u - cx) ** 2 + (self.v - cy) ** 2
        return (d2 <= r_out * r_out) & (d2 >= r_in * r_in)

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.u >= x0) & (self.u <= x1) & (self.v >= y0) & (self.v <= y1)

    def round_rect(self, x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
        dx = np.maximum(np.maximum(x0 + r - self.u, self.u - (x1 - r)), 0.0)
        dy = np.maximum(np.maximum(y0 + r - self.v, self.v - (y1 - r)), 0.0)
        return self.rect(x0, y0, x1, y1) & (dx * dx + dy * dy <= r * r)

    def polygon(self, points: list[tuple[float, float]]) -> np.ndarray:
        """Convex polygon, vertices in either winding order."""
        pts = np.asarray(points, np.float64)
        area = np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1])
        sign = 1.0 if area >= 0 else -1.0
        inside = np.ones(self.u.shape, bool)
        for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
            inside &= sign * ((x1 - x0) * (self.v - y0) - (y1 - y0) * (self.u - x0)) >= 0
        return inside

    def capsule(self, p0: tuple[float, float], p1: tuple[float, float], r: float) -> np.ndarray:
        """Thick segment from ``p0`` to ``p1`` with radius ``r``."""
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        length2 = dx * dx + dy * dy or 1e-12
        t = np.clip(((self.u - x0) * dx + (self.v - y0) * dy) / length2, 0.0, 1.0)
        ex, ey = self.u - (x0 + t * dx), self.v - (y0 + t * dy)
        return ex * ex + ey * ey <= r * r


@dataclass
class _Part:
    """A part instance to paint: its mask, base colour, material and an optional detail."""

    name: str
    layer: int
    mask: np.ndarray
    colour: np.ndarray
    material: str | None = None
    detail: np.ndarray | None = None  # pixels (within mask) painted in detail_colour
    detail_colour: np.ndarray | None = None


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


# ------------------------------------------------------------------------------------------------
# Object classes (object units: frame centred on 0, longest side 1, facing +u)


def _draw_car(rng: np.random.Generator, s: _Shapes) -> list[_Part]:
    colour = _paint(rng, ("red", "blue", "yellow", "white", "black", "grey", "green", "orange"))
    top, bottom = _u(rng, -0.06, 0.0), _u(rng, 0.13, 0.17)
    cab_top = top - _u(rng, 0.14, 0.19)
    cab_x0, cab_x1 = _u(rng, -0.34, -0.24), _u(rng, 0.18, 0.3)
    slant_back, slant_front = _u(rng, 0.05, 0.12), _u(rng, 0.08, 0.15)
    cabin = [(cab_x0, top + 0.01), (cab_x0 + slant_back, cab_top), (cab_x1 - slant_front, cab_top),
             (cab_x1, top + 0.01)]  # fmt: skip
    body = s.round_rect(-0.5, top, 0.5, bottom, _u(rng, 0.03, 0.07)) | s.polygon(cabin)
    parts = [_Part("body", 0, body, colour, "metal")]
    radius = _u(rng, 0.085, 0.115)
    tyre = _paint(rng, ("black",), 6)
    hub = _paint(rng, ("grey", "white"), 10)
    for x in (-_u(rng, 0.27, 0.34), _u(rng, 0.27, 0.34)):
        wheel = s.circle(x, bottom, radius)
        parts.append(_Part("wheel", 0, wheel, tyre, "rubber", s.circle(x, bottom, radius * 0.5), hub))
    glass = _paint(rng, ("lightblue", "grey", "black"), 10)
    inset = 0.025
    window_region = s.polygon(
        [(cab_x0 + inset * 2, top - 0.005), (cab_x0 + slant_back + inset, cab_top + inset),
         (cab_x1 - slant_front - inset, cab_top + inset), (cab_x1 - inset * 2, top - 0.005)]
    )  # fmt: skip
    pillar = (cab_x0 + cab_x1) / 2 + _u(rng, -0.04, 0.04)
    if rng.random() < 0.7:
        parts.append(_Part("window", 1, window_region & (s.u < pillar - 0.015), glass, "glass"))
        parts.append(_Part("window", 1, window_region & (s.u > pillar + 0.015), glass, "glass"))
    else:
        parts.append(_Part("window", 1, window_region, glass, "glass"))
    door_x0 = _u(rng, -0.22, -0.1)
    door = s.rect(door_x0, top + 0.02, door_x0 + _u(rng, 0.2, 0.28), bottom - 0.03)
    parts.append(_Part("door", 1, door, colour * np.float32(0.78), "metal"))
    light = _paint(rng, ("yellow", "white", "orange"), 8)
    parts.append(_Part("headlight", 1, s.ellipse(0.47, top + 0.045, 0.035, 0.025), light, "glass"))
    return parts


def _draw_bicycle(rng: np.random.Generator, s: _Shapes) -> list[_Part]:
    frame_colour = _paint(rng, ("red", "blue", "green", "black", "orange", "purple", "pink", "yellow"))
    r_out = _u(rng, 0.19, 0.23)
    tyre_width = _u(rng, 0.025, 0.04)
    hub_y = _u(rng, 0.09, 0.13)
    rear, front = (-_u(rng, 0.27, 0.31), hub_y), (_u(rng, 0.27, 0.31), hub_y)
    tyre = _paint(rng, ("black",), 6)
    spoke_colour = _paint(rng, ("grey", "white"), 10)
    parts = []
    for cx, cy in (rear, front):
        angle = _u(rng, 0, math.pi)
        c, sn = math.cos(angle) * r_out, math.sin(angle) * r_out
        spokes = (s.capsule((cx - c, cy - sn), (cx + c, cy + sn), 0.008)
                  | s.capsule((cx + sn, cy - c), (cx - sn, cy + c), 0.008)
                  | s.circle(cx, cy, 0.03))  # fmt: skip
        wheel = s.ring(cx, cy, r_out, r_out - tyre_width) | spokes
        parts.append(_Part("wheel", 0, wheel, tyre, "rubber", spokes, spoke_colour))
    crank = (_u(rng, -0.03, 0.04), hub_y + _u(rng, -0.01, 0.02))
    seat = (_u(rng, -0.13, -0.07), _u(rng, -0.21, -0.15))
    head = (front[0] - _u(rng, 0.07, 0.12), _u(rng, -0.21, -0.15))
    tube = _u(rng, 0.016, 0.022)
    frame = np.zeros_like(s.u, dtype=bool)
    for p0, p1 in (
        (rear, seat),
        (rear, crank),
        (crank, seat),
        (seat, head),
        (crank, head),
        (head, front),
    ):
        frame |= s.capsule(p0, p1, tube)
    parts.append(_Part("frame", 0, frame, frame_colour, "metal"))
    saddle_centre = (seat[0] - 0.01, seat[1] - _u(rng, 0.035, 0.05))
    saddle = s.ellipse(saddle_centre[0], saddle_centre[1], _u(rng, 0.06, 0.08), 0.022) | s.capsule(
        seat, saddle_centre, tube * 0.8
    )
    parts.append(_Part("saddle", 0, saddle, _paint(rng, ("black", "brown"), 8), "leather"))
    stem_top = (head[0] + _u(rng, 0.0, 0.03), head[1] - _u(rng, 0.07, 0.1))
    handlebar = s.capsule(head, stem_top, tube * 0.9) | s.capsule(
        (stem_top[0] - 0.04, stem_top[1]), (stem_top[0] + 0.06, stem_top[1] + 0.01), 0.016
    )
    parts.append(_Part("handlebar", 0, handlebar, _paint(rng, ("grey", "black"), 10), "metal"))
    return parts


def _draw_bird(rng: np.random.Generator, s: _Shapes) -> list[_Part]:
    plumage = _paint(rng, ("brown", "yellow", "red", "blue", "grey", "black", "white", "orange"))
    wing_colour = _paint(rng, ("brown", "black", "grey", "white", "blue", "green"))
    beak_colour = _paint(rng, ("orange", "yellow", "black"), 10)
    leg_colour = _paint(rng, ("orange", "yellow", "grey"), 10)
    parts = []
    for x in (-0.05, 0.05):
        top = (x + _u(rng, -0.02, 0.02), 0.1)
        foot = (x + _u(rng, -0.04, 0.04), _u(rng, 0.36, 0.42))
        leg = s.capsule(top, foot, 0.016) | s.capsule(foot, (foot[0] + 0.06, foot[1]), 0.012)
        parts.append(_Part("leg", 0, leg, leg_colour))
    tilt = _u(rng, -0.4, -0.1)
    rx, ry = _u(rng, 0.25, 0.31), _u(rng, 0.14, 0.19)
    tail = s.polygon([(-0.2, -0.02), (-0.46, _u(rng, -0.1, 0.0)), (-0.46, _u(rng, 0.06, 0.14)),
                      (-0.2, 0.1)])  # fmt: skip
    parts.append(_Part("torso", 0, s.ellipse(-0.04, 0.02, rx, ry, tilt) | tail, plumage, "feather"))
    wing = s.ellipse(-0.08, 0.0, rx * _u(rng, 0.6, 0.8), ry * _u(rng, 0.45, 0.6), tilt + _u(rng, -0.2, 0.1))
    parts.append(_Part("wing", 0, wing, wing_colour, "feather"))
    hx, hy, hr = _u(rng, 0.2, 0.27), _u(rng, -0.2, -0.13), _u(rng, 0.095, 0.125)
    head_colour = plumage if rng.random() < 0.6 else _paint(rng, ("black", "red", "white", "grey"))
    parts.append(_Part("head", 0, s.circle(hx, hy, hr), head_colour, "feather"))
    droop = _u(rng, -0.01, 0.04)
    beak = s.polygon([(hx + hr * 0.75, hy - 0.035), (hx + hr + _u(rng, 0.07, 0.13), hy + droop),
                      (hx + hr * 0.75, hy + 0.035)])  # fmt: skip
    parts.append(_Part("beak", 0, beak, beak_colour))
    eye = s.circle(hx + hr * 0.35, hy - hr * 0.25, hr * 0.25)
    parts.append(_Part("eye", 1, eye, _paint(rng, ("black",), 5)))
    return parts


def _draw_fish(rng: np.random.Generator, s: _Shapes) -> list[_Part]:
    colour = _paint(rng, ("orange", "yellow", "blue", "purple", "grey", "pink", "green", "red"))
    fin_colour = colour * np.float32(0.75) if rng.random() < 0.5 else _paint(rng, ("orange", "yellow", "red", "blue"))
    rx, ry = _u(rng, 0.32, 0.38), _u(rng, 0.14, 0.2)
    spread = _u(rng, 0.15, 0.23)
    if rng.random() < 0.4:  # forked tail
        tail = s.polygon([(-0.28, 0.0), (-0.5, -spread), (-0.42, 0.0)]) | s.polygon(
            [(-0.28, 0.0), (-0.42, 0.0), (-0.5, spread)]
        )
    else:
        tail = s.polygon([(-0.28, 0.0), (-0.5, -spread), (-0.5, spread)])
    parts = [_Part("tail", 0, tail, fin_colour)]
    dorsal = s.polygon([(-0.14, -ry * 0.6), (0.1, -ry * 0.7), (-0.16, -ry - _u(rng, 0.07, 0.12))])
    parts.append(_Part("fin", 0, dorsal, fin_colour))
    if rng.random() < 0.6:
        ventral = s.polygon([(-0.05, ry * 0.6), (0.08, ry * 0.6), (-0.06, ry + _u(rng, 0.05, 0.09))])
        parts.append(_Part("fin", 0, ventral, fin_colour))
    body = s.ellipse(0.03, 0.0, rx, ry)
    stripes = None
    if rng.random() < 0.4:
        stripes = body & (np.sin(s.u * _u(rng, 25, 40) + _u(rng, 0, 6.3)) > 0.55)
    stripe_colour = _paint(rng, ("white", "black", "orange", "yellow"), 8)
    parts.append(_Part("body", 0, body, colour, None, stripes, stripe_colour))
    ex, ey, er = 0.03 + rx * 0.62, -ry * 0.2, _u(rng, 0.03, 0.042)
    pupil = s.circle(ex + er * 0.15, ey, er * 0.55)
    parts.append(_Part("eye", 1, s.circle(ex, ey, er), _paint(rng, ("white",), 6), None, pupil,
                       _paint(rng, ("black",), 5)))  # fmt: skip
    return parts


def _draw_person(rng: np.random.Generator, s: _Shapes) -> list[_Part]:
    skin = _jitter_colour(rng, _SKIN[rng.integers(len(_SKIN))], 8)
    shirt = _paint(rng, ("red", "blue", "green", "yellow", "white", "purple", "pink", "orange", "grey"))
    trousers = _paint(rng, ("blue", "black", "brown", "grey", "tan"))
    parts = []
    for side in (-1, 1):
        hip = (side * _u(rng, 0.04, 0.06), 0.08)
        foot = (side * _u(rng, 0.05, 0.11), _u(rng, 0.44, 0.48))
        parts.append(_Part("leg", 0, s.capsule(hip, foot, _u(rng, 0.04, 0.052)), trousers, "fabric"))
    half_width = _u(rng, 0.1, 0.14)
    parts.append(_Part("torso", 0, s.round_rect(-half_width, -0.22, half_width, 0.12, 0.05), shirt, "fabric"))
    long_sleeves = rng.random() < 0.5
    for side in (-1, 1):
        shoulder = (side * (half_width - 0.01), -0.18)
        hand = (side * (half_width + _u(rng, 0.03, 0.1)), _u(rng, 0.0, 0.1))
        arm = s.capsule(shoulder, hand, 0.034)
        parts.append(_Part("arm", 0, arm, shirt if long_sleeves else skin, "fabric" if long_sleeves else "skin"))
    hr = _u(rng, 0.095, 0.12)
    hy = -0.22 - hr * 0.85
    head = s.circle(0.0, hy, hr)
    hair = head & (s.v < hy - hr * _u(rng, 0.2, 0.5)) if rng.random() < 0.75 else None
    hair_colour = _paint(rng, ("black", "brown", "yellow", "orange"), 10)
    parts.append(_Part("head", 0, head, skin, "skin", hair, hair_colour))
    for side in (-1, 1):
        eye = s.circle(side * hr * 0.38, hy + hr * 0.05, hr * 0.16)
        parts.append(_Part("eye", 1, eye, _paint(rng, ("black",), 5)))
    return parts


def _draw_house(rng: np.random.Generator, s: _Shapes) -> list[_Part]:
    wall_colour = _paint(rng, ("white", "yellow", "pink", "lightblue", "grey", "orange", "tan"))
    roof_colour = _paint(rng, ("red", "brown", "grey", "black", "blue"))
    half_width = _u(rng, 0.3, 0.42)
    eave = _u(rng, -0.12, -0.05)
    chimney_x = _u(rng, 0.08, half_width - 0.14) * (1 if rng.random() < 0.5 else -1)
    parts = [
        _Part(
            "chimney",
            0,
            s.rect(chimney_x, -0.42, chimney_x + 0.08, eave),
            _paint(rng, ("red", "grey", "brown")),
            "brick",
        )
    ]
    overhang = _u(rng, 0.03, 0.08)
    roof = s.polygon([(-half_width - overhang, eave + 0.02), (0.0, -_u(rng, 0.42, 0.5)),
                      (half_width + overhang, eave + 0.02)])  # fmt: skip
    parts.append(_Part("roof", 0, roof, roof_colour, "tile"))
    parts.append(_Part("wall", 0, s.rect(-half_width, eave, half_width, 0.46), wall_colour, "paint"))
    glass = _paint(rng, ("lightblue", "yellow", "blue"), 10)
    frame_colour = _paint(rng, ("white", "brown"), 6)
    side = _u(rng, 0.09, 0.12)
    window_y = eave + _u(rng, 0.04, 0.1)  # windows end above the door's top (>= 0.2)
    for sign in (-1, 1):
        wide = half_width > 0.36 and rng.random() < 0.5
        for centre in (0.33, 0.75) if wide else (0.55,):
            x0 = sign * centre * half_width - side / 2
            window = s.rect(x0, window_y, x0 + side, window_y + side)
            bars = (np.abs(s.u - (x0 + side / 2)) < 0.01) | (np.abs(s.v - (window_y + side / 2)) < 0.01)
            parts.append(_Part("window", 1, window, glass, "glass", window & bars, frame_colour))
    door_x = _u(rng, -0.08, 0.08)
    door_colour = _paint(rng, ("brown", "red", "green", "blue", "purple"))
    door = s.rect(door_x - 0.07, _u(rng, 0.2, 0.26), door_x + 0.07, 0.46)
    parts.append(_Part("door", 1, door, door_colour, "wood"))
    return parts


def _draw_tree(rng: np.random.Generator, s: _Shapes) -> list[_Part]:
    autumn = rng.random() < 0.2
    crown_colour = _paint(rng, ("orange", "yellow", "red") if autumn else ("green", "darkgreen"), 10)
    trunk_half = _u(rng, 0.045, 0.075)
    trunk = s.polygon([(-trunk_half, 0.5), (trunk_half, 0.5), (trunk_half * 0.6, -0.1), (-trunk_half * 0.6, -0.1)])
    parts = [_Part("trunk", 0, trunk, _paint(rng, ("brown",), 10), "wood")]
    cy, rx, ry = _u(rng, -0.25, -0.15), _u(rng, 0.26, 0.34), _u(rng, 0.22, 0.28)
    crown = s.ellipse(0.0, cy, rx, ry)
    for _ in range(int(rng.integers(2, 4))):
        crown |= s.circle(_u(rng, -rx, rx) * 0.8, cy + _u(rng, -ry, ry) * 0.6, _u(rng, 0.1, 0.16))
    # Leaf clusters: a darker interference pattern of two random plane waves.
    k1, k2, phase = _u(rng, 30, 45), _u(rng, 30, 45), _u(rng, 0, 6.3)
    dark = crown & (np.sin(s.u * k1 + phase) * np.sin(s.v * k2 + s.u * 10) > 0.35)
    parts.append(_Part("crown", 0, crown, crown_colour, "foliage", dark, crown_colour * np.float32(0.7)))
    fruit_colour = _paint(rng, ("red", "orange", "yellow") if not autumn else ("red",), 10)
    for _ in range(int(rng.integers(2, 6))):
        angle, radius = _u(rng, 0, 2 * math.pi), math.sqrt(_u(rng, 0, 1)) * 0.75
        fx, fy = radius * rx * math.cos(angle), cy + radius * ry * math.sin(angle)
        parts.append(_Part("fruit", 1, s.circle(fx, fy, _u(rng, 0.028, 0.04)), fruit_colour))
    return parts


_DRAWERS: dict[str, Callable[..., list[_Part]]] = {
    "bicycle": _draw_bicycle,
    "bird": _draw_bird,
    "car": _draw_car,
    "fish": _draw_fish,
    "house": _draw_house,
    "person": _draw_person,
    "tree": _draw_tree,
}


# ------------------------------------------------------------------------------------------------
# Background materials


def _sky(rng: np.random.Generator, size: int, y: np.ndarray) -> np.ndarray:
    kind = rng.random()
    if kind < 0.65:  # clear blue
        top, horizon = (
            _jitter_colour(rng, (70, 130, 215), 15),
            _jitter_colour(rng, (165, 200, 235), 12),
        )
    elif kind < 0.85:  # overcast
        top, horizon = (
            _jitter_colour(rng, (150, 155, 165), 12),
            _jitter_colour(rng, (205, 205, 210), 10),
        )
    else:  # dusk
        top, horizon = (
            _jitter_colour(rng, (90, 80, 160), 15),
            _jitter_colour(rng, (240, 160, 120), 15),
        )
    t = (y / size)[..., None]
    sky = top * (1 - t) + horizon * t
    clouds = np.clip((_value_noise(rng, size, int(rng.integers(3, 6))) - _u(rng, 0.5, 0.75)) * 4.0, 0, 1)
    return sky * (1 - clouds[..., None]) + np.float32(245.0) * clouds[..., None]


def _grass(rng: np.random.Generator, size: int, y: np.ndarray) -> np.ndarray:
    base = _jitter_colour(rng, (70, 145, 55), 15)
    # Vertical streaks: one random value per 6-pixel run of a column.
    blades = rng.random((-(-size // 6), size), dtype=np.float32).repeat(6, axis=0)[:size]
    shade = 0.65 + 0.3 * blades + 0.25 * _value_noise(rng, size, 4) + 0.1 * rng.random((size, size), dtype=np.float32)
    dry = _value_noise(rng, size, 3)[..., None] * np.array([0.35, 0.05, -0.1], np.float32) * _u(rng, 0, 1)
    return base * shade[..., None] * (1 + dry)


def _asphalt(rng: np.random.Generator, size: int, y: np.ndarray) -> np.ndarray:
    grey = _u(rng, 60, 110)
    noise = rng.normal(0.0, 12.0, (size, size)).astype(np.float32) + 15 * _value_noise(rng, size, 6)
    road = np.repeat((grey + noise)[..., None], 3, axis=2) * np.array([1.0, 1.0, 1.04], np.float32)
    if rng.random() < 0.6:  # lane marking
        x = np.arange(size, dtype=np.float32)[None, :]
        line_y = _u(rng, 0.72, 0.9) * size
        period = _u(rng, 12, 24)
        marking = (np.abs(y - line_y) < max(size / 80, 0.8)) & ((x % period) < period * 0.55)
        colour = _paint(rng, ("white", "yellow"), 6)
        road = np.where(marking[..., None], colour, road)
    return road


def _water(rng: np.random.Generator, size: int, y: np.ndarray) -> np.ndarray:
    deep, light = _jitter_colour(rng, (25, 80, 140), 15), _jitter_colour(rng, (70, 150, 190), 15)
    x = np.arange(size, dtype=np.float32)[None, :]
    warp = 6.0 * _value_noise(rng, size, 4)
    ripple = 0.5 + 0.5 * np.sin(y * _u(rng, 0.5, 0.9) + warp + 0.15 * np.sin(x * _u(rng, 0.1, 0.3)))
    t = np.clip(0.6 * ripple + 0.4 * _value_noise(rng, size, 5), 0, 1)[..., None]
    return deep * (1 - t) + light * t


def _sand(rng: np.random.Generator, size: int, y: np.ndarray) -> np.ndarray:
    base = _jitter_colour(rng, (215, 185, 130), 12)
    x = np.arange(size, dtype=np.float32)[None, :]
    dunes = np.sin((y * _u(rng, 0.15, 0.3) + x * _u(rng, -0.05, 0.05)) + 4 * _value_noise(rng, size, 3))
    grain = rng.normal(0.0, 0.05, (size, size)).astype(np.float32)
    return base * (0.9 + 0.07 * dunes + grain)[..., None]


def _brick(rng: np.random.Generator, size: int, y: np.ndarray) -> np.ndarray:
    height = _u(rng, size / 18, size / 10)
    width = height * _u(rng, 2.0, 2.6)
    x = np.arange(size, dtype=np.float32)[None, :]
    row = np.floor(y / height)
    shifted = x + (row % 2) * width / 2
    column = np.floor(shifted / width)
    mortar = ((y % height) < 1.0) | ((shifted % width) < 1.0)
    rows, columns = int(size / height) + 2, int(size / width) + 3
    tint = rng.normal(1.0, 0.08, (rows, columns)).astype(np.float32)
    base = _paint(rng, ("red", "brown", "orange"), 10) * np.float32(0.85)
    bricks = base * tint[row.astype(np.intp), column.astype(np.intp)][..., None]
    mortar_colour = _jitter_colour(rng, (185, 180, 170), 8)
    return np.where(mortar[..., None], mortar_colour, bricks)


def _snow(rng: np.random.Generator, size: int, y: np.ndarray) -> np.ndarray:
    base = _jitter_colour(rng, (238, 240, 246), 5)
    shade = 1.0 - 0.1 * _value_noise(rng, size, 4) - 0.03 * rng.random((size, size), dtype=np.float32)
    return base * shade[..., None] * np.array([0.98, 0.99, 1.0], np.float32)


_MATERIAL_TEXTURES: dict[str, Callable[[np.random.Generator, int, np.ndarray], np.ndarray]] = {
    "sky": _sky,
    "grass": _grass,
    "asphalt": _asphalt,
    "water": _water,
    "sand": _sand,
    "brick": _brick,
    "snow": _snow,
}


def _band_map(rng: np.random.Generator, size: int, n_bands: int) -> np.ndarray:
    """``int[H, W]`` band index (0 = top) with gently wavy boundaries."""
    bands = np.zeros((size, size), np.intp)
    if n_bands == 1:
        return bands
    x = np.arange(size, dtype=np.float32)[None, :]
    y = np.arange(size, dtype=np.float32)[:, None] + 0.5
    if n_bands == 2:
        levels = [_u(rng, 0.3, 0.62)]
    else:
        first = _u(rng, 0.25, 0.42)
        levels = [first, first + _u(rng, 0.12, 0.25)]
    for level in levels:
        amplitude, wavelength = _u(rng, 0.0, 0.035) * size, _u(rng, 0.4, 1.5) * size
        boundary = level * size + amplitude * np.sin(2 * math.pi * x / wavelength + _u(rng, 0, 6.3))
        bands += (y >= boundary).astype(np.intp)
    return bands


# ------------------------------------------------------------------------------------------------
# Rendering one image


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``float32[H, 1]`` (y) and ``float32[1, W]`` (x)."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    return centres[:, None], centres[None, :]


def render_probe_image(object_class: str, scene: str, size: int, rng: np.random.Generator) -> ProbeImage:
    """Render one probe image of ``object_class`` on the background of ``scene``.

    The object is placed at a random scale (its frame's longest side 55–88% of the image),
    rotation (±0.15 rad), horizontal flip and position (centre within the middle 30% of the image,
    kept inside the image when possible). Parts are painted in order; a part of layer 1 is clipped
    to the silhouette of the layer-0 parts below it, so it lies on another part.
    """
    if object_class not in OBJECT_CLASSES:
        raise ValueError(f"unknown object class {object_class!r}; choose from {OBJECT_CLASSES}")
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; choose from {tuple(SCENES)}")
    ys, xs = _pixel_grid(size)
    y_full = np.broadcast_to(ys, (size, size))

    # Background: material bands, each with its own texture.
    band_materials = SCENES[scene]
    bands = _band_map(rng, size, len(band_materials))
    rgb = np.zeros((size, size, 3), np.float32)
    for index, material in enumerate(band_materials):
        texture = _MATERIAL_TEXTURES[material](rng, size, y_full)
        rgb = np.where((bands == index)[..., None], texture, rgb) if len(band_materials) > 1 else texture
    materials = BACKGROUND_MATERIALS + OBJECT_MATERIALS
    material_index = {name: k + 1 for k, name in enumerate(materials)}
    band_lut = np.array([material_index[m] for m in band_materials], np.int16)
    material_map = band_lut[bands]

    # Object placement: pixel → object units (u right/forward, v down).
    frame_w, frame_h = _CLASS_FRAME[object_class]
    scale = _u(rng, 0.55, 0.88) * size
    angle = _u(rng, -0.15, 0.15)
    flip = rng.random() < 0.5
    half_w, half_h = frame_w * scale / 2, frame_h * scale / 2
    cx = _u(rng, max(half_w, 0.35 * size), min(size - half_w, 0.65 * size)) if half_w < 0.5 * size else size / 2
    cy = _u(rng, max(half_h, 0.35 * size), min(size - half_h, 0.65 * size)) if half_h < 0.5 * size else size / 2
    dx, dy = xs - np.float32(cx), ys - np.float32(cy)
    cos_a, sin_a = np.float32(math.cos(angle) / scale), np.float32(math.sin(angle) / scale)
    u = cos_a * dx + sin_a * dy
    v = -sin_a * dx + cos_a * dy
    if flip:
        u = -u
    shapes = _Shapes(u, v)
    parts = _DRAWERS[object_class](rng, shapes)

    # Paint: layer-0 parts, then layer-1 parts clipped to the layer-0 silhouette.
    parts = [p for p in parts if p.layer == 0] + [p for p in parts if p.layer == 1]
    light = (0.92 + 0.16 * _value_noise(rng, size, 3) - 0.08 * (ys / size)).astype(np.float32)
    grain = (1.0 + rng.normal(0.0, 0.025, (size, size))).astype(np.float32)
    shading = (light * grain)[..., None]
    layers = np.zeros((2, size, size), np.int16)
    top = np.zeros((size, size), np.int16)
    silhouette = np.zeros((size, size), bool)
    for instance, part in enumerate(parts, start=1):
        mask = part.mask if part.layer == 0 else part.mask & silhouette
        layers[part.layer][mask] = instance
        top[mask] = instance
        if part.layer == 0:
            silhouette |= mask
        rgb[mask] = part.colour
        if part.detail is not None:
            rgb[part.detail & mask] = part.detail_colour
    on_object = top > 0
    rgb[on_object] *= shading[on_object]
    # Outline: object pixels next to something painted earlier (or the background) are darkened.
    outline = np.zeros((size, size), bool)
    outline[:, 1:] |= top[:, 1:] > top[:, :-1]
    outline[:, :-1] |= top[:, :-1] > top[:, 1:]
    outline[1:, :] |= top[1:, :] > top[:-1, :]
    outline[:-1, :] |= top[:-1, :] > top[1:, :]
    rgb[outline] *= np.float32(0.6)
    part_material = np.array([0] + [material_index[p.material] if p.material else 0 for p in parts], np.int16)
    material_map = np.where(on_object, part_material[top], material_map).astype(np.int16)

    part_masks = np.stack([layers[p.layer] == k for k, p in enumerate(parts, start=1)])
    return ProbeImage(
        object_class=object_class,
        scene=scene,
        rgb=np.clip(rgb + 0.5, 0, 255).astype(np.uint8),
        object_mask=silhouette,
        part_layers=layers,
        part_names=tuple(p.name for p in parts),
        part_boxes=masks_to_boxes(part_masks),
        material=material_map,
        materials=materials,
    )


# ------------------------------------------------------------------------------------------------
# The dataset


def _centre_indices(size: int, seg_size: int) -> np.ndarray:
    """Image rows/columns sampled for each segmentation row/column (pixel-centre nearest)."""
    return np.minimum(((np.arange(seg_size) + 0.5) * (size / seg_size)).astype(np.intp), size - 1)


def generate_probe_world(
    out_dir: str | os.PathLike[str],
    n_images: int = 3000,
    seed: int = 0,
    size: int = 112,
    seg_size: int | None = None,
    val_fraction: float = 0.2,
    progress: ProgressCallback | None = None,
) -> ProbeWorldSummary:
    """Generate the probe world in Broden format under ``out_dir`` (created; must be empty).

    ``size``: image side in pixels; ``seg_size``: mask side (default ``size // 2``, Broden's
    half-size convention). Classes are balanced (``n_images`` spread evenly over
    :data:`OBJECT_CLASSES`, shuffled); ``round(n_images * val_fraction)`` random images form the
    ``val`` split, the rest ``train``. Scenes are uniform and independent of the class. Label
    numbers: object classes, then parts, materials, colours and scenes, each in the order of the
    module constants. ``progress(done, total)`` is called after each image.
    """
    started = time.perf_counter()
    if n_images < 1 or size < 8:
        raise ValueError("need n_images >= 1 and size >= 8")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError("val_fraction must lie in [0, 1]")
    seg_size = size // 2 if seg_size is None else seg_size
    if not 1 <= seg_size <= size:
        raise ValueError("seg_size must lie in 1..size")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    root.mkdir(parents=True, exist_ok=True)

    master = np.random.default_rng(seed)
    classes = master.permutation(np.arange(n_images) % len(OBJECT_CLASSES))
    n_val = int(round(n_images * val_fraction))
    is_val = np.zeros(n_images, bool)
    is_val[master.permutation(n_images)[:n_val]] = True
    scene_names = tuple(SCENES)
    part_vocabulary = tuple(sorted({p for parts in CLASS_PARTS.values() for p in parts}))
    sample = _centre_indices(size, seg_size)

    # Two writer threads overlap PNG encoding and file creation with rendering.
    with BrodenWriter(root, CATEGORIES, write_threads=2) as writer:
        object_ids = np.array([writer.add_label(name) for name in OBJECT_CLASSES], np.int32)
        part_ids = {name: writer.add_label(name) for name in part_vocabulary}
        materials = BACKGROUND_MATERIALS + OBJECT_MATERIALS
        material_lut = np.array([0] + [writer.add_label(name) for name in materials], np.int32)
        color_lut = np.array([writer.add_label(f"{name}-c") for name in COLOR_NAMES], np.int32)
        scene_ids = {name: writer.add_label(name) for name in scene_names}
        with (
            open(root / "boxes.csv", "w", newline="", encoding="utf-8") as boxes_handle,
            open(root / "classes.csv", "w", newline="", encoding="utf-8") as classes_handle,
        ):
            boxes = csv.writer(boxes_handle, lineterminator="\n")
            boxes.writerow(["image", "kind", "label", "instance", "x1", "y1", "x2", "y2"])
            class_rows = csv.writer(classes_handle, lineterminator="\n")
            class_rows.writerow(["image", "object_class"])
            for index in range(n_images):
                rng = np.random.default_rng([seed, index])
                object_class = OBJECT_CLASSES[classes[index]]
                scene = scene_names[rng.integers(len(scene_names))]
                image = render_probe_image(object_class, scene, size, rng)
                name = f"probe/{index:06d}"
                part_lut = np.array([0] + [part_ids[p] for p in image.part_names], np.int32)
                seg_rgb = image.rgb[sample][:, sample]
                relative = writer.add_image(
                    name,
                    image.rgb,
                    split="val" if is_val[index] else "train",
                    segmentations={
                        "object": np.where(image.object_mask, object_ids[classes[index]], 0)[sample][:, sample],
                        "part": part_lut[image.part_layers[:, sample][:, :, sample]],
                        "material": material_lut[image.material[sample][:, sample]],
                        "color": color_lut[name_colors(seg_rgb)],
                    },
                    image_labels={"scene": [scene_ids[scene]]},
                )
                class_rows.writerow([relative, object_class])
                object_box = masks_to_boxes(image.object_mask[None])[0]
                boxes.writerow([relative, "object", object_class, 0, *(int(c) for c in object_box)])
                seen: dict[str, int] = {}
                for part_name, box in zip(image.part_names, image.part_boxes):
                    if np.isnan(box[0]):
                        continue  # fully hidden instance: no mask, no box
                    instance = seen.get(part_name, 0)
                    seen[part_name] = instance + 1
                    boxes.writerow([relative, "part", part_name, instance, *(int(c) for c in box)])
                if progress is not None:
                    progress(index + 1, n_images)

    parameters = {
        "generator": "analysis.engine.probe_world",
        "version": GENERATOR_VERSION,
        "n_images": n_images,
        "seed": seed,
        "size": size,
        "seg_size": seg_size,
        "val_fraction": val_fraction,
        "object_classes": list(OBJECT_CLASSES),
        "class_parts": {k: list(v) for k, v in CLASS_PARTS.items()},
        "scenes": {k: list(v) for k, v in SCENES.items()},
    }
    (root / "probe_world.json").write_text(json.dumps(parameters, indent=2, sort_keys=True) + "\n")
    counts = np.bincount(classes, minlength=len(OBJECT_CLASSES))
    return ProbeWorldSummary(
        out_dir=str(root),
        n_images=n_images,
        n_train=n_images - n_val,
        n_val=n_val,
        size=size,
        seg_size=seg_size,
        seed=seed,
        class_counts={name: int(c) for name, c in zip(OBJECT_CLASSES, counts)},
        seconds=time.perf_counter() - started,
    )
