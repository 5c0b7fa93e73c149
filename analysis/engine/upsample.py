"""Upsampling activation maps to mask or image resolution.

Pixel-coordinate convention (continuous coordinates, used by every function here): pixel ``k`` of an
image or mask covers ``[k, k + 1)`` and its centre is ``k + 0.5``. The receptive-field helper gives
the centre of unit ``i`` (map row ``i``) at ``offset_y + i * stride_y`` in these continuous input
pixel coordinates (likewise for columns), which is what ``rf_offset`` / ``rf_stride`` mean below:
the ``offset`` and ``stride`` of :class:`analysis.engine.receptive_field.LayerGeometry`.

Two methods (DESIGN §8):

* :func:`upsample_plain` — ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``:
  the map is stretched over the image as if unit ``i`` sat at ``(i + 0.5) * H_in / h``.
* :func:`upsample_anchored` — ND'18 §2.2, "bilinear interpolation, anchoring interpolants at the
  center of each unit's receptive field": the same bilinear scheme with unit ``i`` at its
  receptive-field centre. With ``stride = H_in / h`` and ``offset = stride / 2`` both coincide.

Maps are ``Tensor[..., h, w]`` (typically ``[N, C, h, w]``), floating point; the result has the same
leading dimensions, dtype and device.

Coordinate convention (the project's, stated once here and in :mod:`analysis.engine.receptive_field`): every
pair is ``(y, x)`` — map positions ``(row, column)``, sizes ``(height, width)``, strides, offsets and pixel
points. Only boxes are ``(x1, y1, x2, y2)`` (``torchvision.ops``).

One factory, :func:`upsampler_for`, turns a layer's geometry (or its absence) and a method name into the
upsampler every run and every grid uses; :func:`peak_pixels` places map positions on an image. Nothing else in
the project converts receptive-field fields by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ANCHORED",
    "PLAIN",
    "GeometryUnknown",
    "anchored_axis_weights",
    "peak_coordinates",
    "peak_pixels",
    "upsample_anchored",
    "upsample_plain",
    "upsampler_for",
]

#: The two upsampling methods (DESIGN §8): ND'18's receptive-field anchoring (our default) and plain bilinear.
ANCHORED = "anchored"
PLAIN = "plain"

Pair = int | float | Sequence[int] | Sequence[float]


def _pair(v: Pair, name: str) -> tuple[float, float]:
    if isinstance(v, (int, float)):
        return float(v), float(v)
    t = tuple(float(x) for x in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be a number or a (y, x) pair")
    return t[0], t[1]


def _size(v: int | Sequence[int], name: str) -> tuple[int, int]:
    y, x = _pair(v, name)
    if y != int(y) or x != int(x) or y < 1 or x < 1:
        raise ValueError(f"{name} must be positive integers")
    return int(y), int(x)


@torch.no_grad()
def upsample_plain(maps: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinear resize ``Tensor[..., h, w] -> Tensor[..., H, W]`` with ``align_corners=False``.

    Exactly ``F.interpolate(maps, size, mode="bilinear", align_corners=False)`` (leading dimensions
    are flattened around the call). ``size`` is ``(H, W)`` or an int for a square.
    """
    out_h, out_w = _size(size, "size")
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, 1, h, w)
    up = F.interpolate(flat, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return up.reshape(*lead, out_h, out_w)


def anchored_axis_weights(
    out_len: int,
    map_len: int,
    *,
    stride: float,
    offset: float,
    input_len: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Interpolation indices and weights along one axis for :func:`upsample_anchored`.

    Output pixel ``r`` (centre ``r + 0.5`` in output coordinates) sits at input coordinate
    ``(r + 0.5) * input_len / out_len``, i.e. at fractional map index
    ``u = ((r + 0.5) * input_len / out_len - offset) / stride``. ``u`` is clamped to
    ``[0, map_len - 1]``: outside the hull of the receptive-field centres the edge value is repeated
    (no extrapolation), as ``align_corners=False`` resizing does at its borders.

    Returns ``(i0, i1, w0, w1)``, each ``Tensor[out_len]``: ``value(r) = w0 * m[i0] + w1 * m[i1]``
    with ``i1 = min(i0 + 1, map_len - 1)``, ``w1 = u - i0`` and ``w0 = 1 - w1`` (computed in float64,
    then cast to ``dtype``).
    """
    if stride <= 0:
        raise ValueError("stride must be positive")
    r = torch.arange(out_len, dtype=torch.float64, device=device)
    u = (((r + 0.5) * (float(input_len) / out_len)) - float(offset)) / float(stride)
    u = u.clamp(0.0, float(map_len - 1))
    i0 = torch.floor(u).to(torch.int64).clamp(max=map_len - 1)
    i1 = (i0 + 1).clamp(max=map_len - 1)
    w1 = u - i0.to(torch.float64)
    return i0, i1, (1.0 - w1).to(dtype), w1.to(dtype)


@torch.no_grad()
def upsample_anchored(
    maps: Tensor,
    size: int | Sequence[int],
    *,
    rf_stride: Pair,
    rf_offset: Pair,
    input_size: int | Sequence[int],
) -> Tensor:
    """Bilinear upsampling anchored at receptive-field centres (ND'18 §2.2).

    Args:
        maps: ``Tensor[..., h, w]``, floating point.
        size: target ``(H, W)`` (mask or image grid), or an int for a square.
        rf_stride: ``(stride_y, stride_x)`` in input pixels between neighbouring units.
        rf_offset: ``(offset_y, offset_x)``: continuous input coordinate of unit ``(0, 0)``'s centre
            (unit ``(i, j)`` is at ``(offset_y + i * stride_y, offset_x + j * stride_x)``).
        input_size: ``(H_in, W_in)`` of the network input the maps were computed from; target pixel
            centres are mapped to input coordinates by the ratio ``input_size / size``.

    Returns:
        ``Tensor[..., H, W]``, same dtype and device as ``maps``. Separable bilinear interpolation
        with the weights of :func:`anchored_axis_weights`, applied as two small matrix products
        ``Wy @ maps @ Wx^T`` (each row of ``Wy``/``Wx`` holds the two weights; the products run in
        BLAS instead of gathering); beyond the outermost centres the edge values are held constant.
    """
    if not maps.is_floating_point():
        raise TypeError("maps must be floating point")
    out_h, out_w = _size(size, "size")
    in_h, in_w = _pair(input_size, "input_size")
    sy, sx = _pair(rf_stride, "rf_stride")
    oy, ox = _pair(rf_offset, "rf_offset")
    h, w = maps.shape[-2:]
    kw = {"device": maps.device, "dtype": maps.dtype}
    yi0, yi1, yw0, yw1 = anchored_axis_weights(out_h, h, stride=sy, offset=oy, input_len=in_h, **kw)
    xi0, xi1, xw0, xw1 = anchored_axis_weights(out_w, w, stride=sx, offset=ox, input_len=in_w, **kw)
    return _interpolation_matrix(yi0, yi1, yw0, yw1, h) @ maps @ _interpolation_matrix(xi0, xi1, xw0, xw1, w).T


def _interpolation_matrix(i0: Tensor, i1: Tensor, w0: Tensor, w1: Tensor, map_len: int) -> Tensor:
    """``Tensor[out_len, map_len]`` with ``w0`` at column ``i0`` and ``w1`` added at column ``i1``."""
    matrix = torch.zeros(i0.shape[0], map_len, dtype=w0.dtype, device=w0.device)
    rows = torch.arange(i0.shape[0], device=w0.device)
    matrix.index_put_((rows, i0), w0, accumulate=True)
    matrix.index_put_((rows, i1), w1, accumulate=True)
    return matrix


def peak_coordinates(positions: Tensor, *, rf_stride: Pair, rf_offset: Pair) -> Tensor:
    """Map positions ``LongTensor[..., 2]`` ``(i, j)`` -> input coordinates ``Tensor[..., 2]``
    ``(y, x)`` (float64): ``(offset_y + i * stride_y, offset_x + j * stride_x)``. Negative positions
    (empty top-k slots) give NaN."""
    sy, sx = _pair(rf_stride, "rf_stride")
    oy, ox = _pair(rf_offset, "rf_offset")
    p = positions.to(torch.float64)
    out = torch.stack((oy + p[..., 0] * sy, ox + p[..., 1] * sx), dim=-1)
    return out.masked_fill((positions < 0).any(dim=-1, keepdim=True), math.nan)


class GeometryUnknown(ValueError):
    """Anchoring needs a layer's receptive-field geometry and there is none (the model could not be traced)."""


def upsampler_for(geometry, method: str, input_size: int | Sequence[int]):
    """The upsampler of ``method`` for a layer: ``upsample(maps Tensor[..., h, w], (H, W)) -> Tensor[..., H, W]``.

    ``method="anchored"`` (ND'18, default of every run) anchors interpolants at the receptive-field centres of
    ``geometry`` (a :class:`analysis.engine.receptive_field.LayerGeometry`; ``offset + i * stride`` per axis in
    input pixels of a network input of ``input_size`` ``(H_in, W_in)``); ``"plain"`` is ``F.interpolate``
    bilinear. Both returned objects also offer the sparse ``active(raw, thresholds, size)`` path of
    :mod:`analysis.engine.dissection_sparse` (identical counts, far less work). Raises :class:`GeometryUnknown`
    for ``"anchored"`` without a geometry and ``ValueError`` for an unknown method.
    """
    # dissection_sparse builds on this module (its upsamplers call upsample_anchored), so it is imported here.
    from analysis.engine.dissection_sparse import AnchoredUpsample, PlainUpsample

    if method == PLAIN:
        return PlainUpsample()
    if method != ANCHORED:
        raise ValueError(f"upsample method must be {ANCHORED!r} or {PLAIN!r}, not {method!r}")
    if geometry is None:
        raise GeometryUnknown(
            "no receptive-field geometry (the model could not be traced), so maps cannot be "
            "anchored at receptive-field centres; use upsample=plain"
        )
    return AnchoredUpsample(
        rf_stride=geometry.stride, rf_offset=geometry.offset, input_size=_size(input_size, "input_size")
    )


def peak_pixels(
    positions: Tensor,
    geometry,
    *,
    input_size: int | Sequence[int],
    image_size: int | Sequence[int],
    map_size: int | Sequence[int],
    clip: bool = False,
) -> Tensor:
    """Map positions ``LongTensor[..., 2]`` ``(i, j)`` -> points ``float64 Tensor[..., 2]`` ``(y, x)`` in the
    continuous pixel coordinates of an image of ``image_size`` ``(H, W)`` (pixel ``k`` spans ``[k, k + 1)``).

    With ``geometry``: the receptive-field centre (:func:`peak_coordinates`) scaled from the network input
    ``input_size`` to the image. Without (an untraceable model): the centre of the map cell,
    ``(i + 0.5) * H / h``. ``clip`` keeps points inside the image (``[0, H)``, ``[0, W)``). Negative positions
    give NaN when ``geometry`` is given.
    """
    height, width = _size(image_size, "image_size")
    p = positions.to(torch.float64)
    if geometry is not None:
        in_h, in_w = _pair(input_size, "input_size")
        points = peak_coordinates(positions, rf_stride=geometry.stride, rf_offset=geometry.offset)
        points = points * torch.tensor([height / in_h, width / in_w], dtype=torch.float64, device=p.device)
    else:
        map_h, map_w = _size(map_size, "map_size")
        points = (p + 0.5) * torch.tensor([height / map_h, width / map_w], dtype=torch.float64, device=p.device)
    if clip:
        points = torch.stack(
            (points[..., 0].clamp(0.0, height - 1e-6), points[..., 1].clamp(0.0, width - 1e-6)), dim=-1
        )
    return points
