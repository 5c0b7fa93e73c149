"""Receptive-field geometry of a network's layers.

Coordinates (the convention every other module uses):

* Input pixel ``p`` (row or column index) covers the interval ``[p, p + 1)`` of a continuous
  coordinate axis, so its centre is at ``p + 0.5`` — the convention of
  ``F.interpolate(align_corners=False)`` and ``torchvision.ops.roi_align(aligned=True)``.
* A layer's geometry per axis is ``size`` (receptive-field extent in input pixels, counting
  padding, i.e. the *theoretical* receptive field), ``stride`` (the jump: input pixels between
  neighbouring units) and ``offset`` (the continuous coordinate of the centre of unit 0's
  receptive field).
* Unit ``i`` of the layer has its receptive-field centre at ``offset + i * stride`` and covers
  ``[centre - size / 2, centre + size / 2)``; these box edges are whole numbers, i.e. pixel edges.
  Boxes of border units extend outside the image (padding) unless clipped.
* Everything is given per axis as ``(y, x)`` pairs.

Two independent ways to get it:

* :func:`receptive_fields` (analytic): traces the model with ``torch.fx`` and propagates
  ``(size, jump, centre)`` through the graph: through conv / pooling / padding with the usual
  formulas (kernel, stride, padding, dilation; ``ceil_mode`` does not move unit 0), through
  spatially pointwise ops unchanged, through ``add`` / ``mul`` / channel ``cat`` as the union of the
  inputs' fields (the jumps must agree). It works for sequential and non-sequential models
  (ResNet) alike. Norm layers are treated as pointwise, also instance/group/layer norm whose
  statistics span the whole map (my choice: the usual convention).
* :func:`probe_receptive_field` (numeric check): backpropagates from single units of a
  "flattened" copy of the model to the input and reads the extent of the non-zero gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .networks import (
    NetworkError,
    TracedNetwork,
    UnsupportedNetworkError,
    capture_forward,
    get_module,
    is_torchscript,
    record_shapes,
    trace_network,
)

__all__ = [
    "GeometryCheck",
    "LayerGeometry",
    "ReceptiveFieldError",
    "check_receptive_fields",
    "probe_receptive_field",
    "receptive_field",
    "receptive_fields",
    "unit_boxes",
    "unit_centers",
    "unit_positions",
]


class ReceptiveFieldError(NetworkError):
    """The geometry of a layer cannot be computed (unsupported op, untraceable model, ...)."""


class _ProbeNotDense(ReceptiveFieldError):
    """The probe copy produced an empty map or a zero gradient."""


class _InputTooSmall(ReceptiveFieldError):
    """The probe input is too small for the layer (or the model cannot run at that size)."""


@dataclass(frozen=True)
class LayerGeometry:
    """Receptive-field geometry of one layer, per axis ``(y, x)``; see the module docstring.

    Attributes:
        size: receptive-field extent in input pixels.
        stride: input pixels between the centres of neighbouring units.
        offset: continuous input coordinate of the centre of unit 0's receptive field
            (pixel ``p`` spans ``[p, p + 1)``).
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"size": list(self.size), "stride": list(self.stride), "offset": list(self.offset)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> LayerGeometry:
        return cls(
            size=(int(data["size"][0]), int(data["size"][1])),
            stride=(int(data["stride"][0]), int(data["stride"][1])),
            offset=(float(data["offset"][0]), float(data["offset"][1])),
        )


# --------------------------------------------------------------------------------------------
# Unit centres and boxes
# --------------------------------------------------------------------------------------------


def unit_centers(
    geometry: LayerGeometry, out_h: int, out_w: int, *, device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """Receptive-field centres of the units of an ``out_h x out_w`` map.

    Returns:
        ``(cy, cx)``: ``float32 [out_h]`` and ``float32 [out_w]`` on ``device``, continuous input
        coordinates (pixel ``p`` spans ``[p, p + 1)``): ``cy[i] = offset_y + i * stride_y``.
    """
    cy = geometry.offset[0] + geometry.stride[0] * torch.arange(out_h, dtype=torch.float32, device=device)
    cx = geometry.offset[1] + geometry.stride[1] * torch.arange(out_w, dtype=torch.float32, device=device)
    return cy, cx


def unit_positions(geometry: LayerGeometry, out_h: int, out_w: int) -> np.ndarray:
    """``float64 [out_h * out_w, 2]`` ``(y, x)`` receptive-field centres of every unit, row-major (row
    ``i * out_w + j`` is unit ``(i, j)``), in continuous input pixels; the float32 values of
    :func:`unit_centers`, widened."""
    cy, cx = unit_centers(geometry, out_h, out_w, device="cpu")
    yy, xx = np.meshgrid(cy.numpy().astype(np.float64), cx.numpy().astype(np.float64), indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def unit_boxes(
    geometry: LayerGeometry,
    out_h: int,
    out_w: int,
    *,
    device: torch.device | str,
    clip_to: tuple[int, int] | None = None,
) -> Tensor:
    """Receptive-field boxes of all units of an ``out_h x out_w`` map.

    Args:
        clip_to: optional input ``(H, W)``; boxes are then clipped to ``[0, W] x [0, H]``.

    Returns:
        ``float32 [out_h * out_w, 4]`` on ``device`` as ``(x1, y1, x2, y2)`` in continuous input
        coordinates (pixel edges; a box covers pixels ``x1 <= p < x2``), row-major: row
        ``i * out_w + j`` is unit ``(i, j)``. Unclipped boxes are ``size`` wide and may extend
        past the image.
    """
    cy, cx = unit_centers(geometry, out_h, out_w, device=device)
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    hy, hx = geometry.size[0] / 2.0, geometry.size[1] / 2.0
    boxes = torch.stack([xx - hx, yy - hy, xx + hx, yy + hy], dim=-1).reshape(-1, 4)
    if clip_to is not None:
        h, w = clip_to
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


# --------------------------------------------------------------------------------------------
# Analytic propagation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axis:
    size: float
    jump: float
    center: float  # of unit 0

    def conv(self, kernel: int, stride: int, pad_before: int, dilation: int = 1) -> _Axis:
        k_eff = dilation * (kernel - 1) + 1
        return _Axis(
            size=self.size + (k_eff - 1) * self.jump,
            jump=self.jump * stride,
            center=self.center + (-pad_before + (k_eff - 1) / 2.0) * self.jump,
        )


_Geo = tuple[_Axis, _Axis]  # (y, x)


@dataclass(frozen=True)
class _Unsupported:
    reason: str


class _Flat:
    """A value derived from the image that is not a feature map (flattened, pooled to a vector)."""


_FLAT = _Flat()

_POINTWISE_NAMES = frozenset(
    [
        "add",
        "iadd",
        "__add__",
        "__iadd__",
        "__radd__",
        "mul",
        "imul",
        "__mul__",
        "__imul__",
        "__rmul__",
        "sub",
        "isub",
        "__sub__",
        "__rsub__",
        "truediv",
        "itruediv",
        "__truediv__",
        "div",
        "div_",
        "add_",
        "mul_",
        "sub_",
        "neg",
        "abs",
        "relu",
        "relu_",
        "relu6",
        "leaky_relu",
        "leaky_relu_",
        "gelu",
        "silu",
        "mish",
        "sigmoid",
        "sigmoid_",
        "tanh",
        "tanh_",
        "hardswish",
        "hardsigmoid",
        "hardtanh",
        "hardtanh_",
        "elu",
        "elu_",
        "selu",
        "celu",
        "softplus",
        "dropout",
        "dropout2d",
        "feature_dropout",
        "alpha_dropout",
        "clamp",
        "clamp_",
        "clip",
        "contiguous",
        "clone",
        "float",
        "half",
        "double",
        "to",
        "type_as",
        "batch_norm",
        "instance_norm",
        "group_norm",
        "layer_norm",
        "local_response_norm",
        "cat",
        "concat",
        "concatenate",
    ]
)
_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
)
_PAD_MODULES: tuple[type[nn.Module], ...] = (
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return int(value[0]), int(value[0])
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _conv_geo(geo: _Geo, kernel: Any, stride: Any, padding: Any, dilation: Any = 1) -> _Geo:
    k, s, d = _pair(kernel), _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            p = (0, 0)
        elif padding == "same":  # PyTorch puts the smaller half first
            p = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
        else:
            raise ValueError(f"padding {padding!r}")
    else:
        p = _pair(padding)
    return (geo[0].conv(k[0], s[0], p[0], d[0]), geo[1].conv(k[1], s[1], p[1], d[1]))


def _conv2d_params(
    input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: Any = 1
) -> dict[str, Any]:
    """``F.conv2d``'s signature, to read a traced call's arguments."""
    return {"input": input, "weight": weight, "stride": stride, "padding": padding, "dilation": dilation}


def _max_pool_params(
    input: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: Any = False,
    return_indices: Any = False,
) -> dict[str, Any]:
    """``F.max_pool2d``'s signature."""
    return {"input": input, "kernel_size": kernel_size, "stride": stride, "padding": padding, "dilation": dilation}


def _avg_pool_params(
    input: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: Any = False,
    count_include_pad: Any = True,
    divisor_override: Any = None,
) -> dict[str, Any]:
    """``F.avg_pool2d``'s signature (no dilation)."""
    return {"input": input, "kernel_size": kernel_size, "stride": stride, "padding": padding}


def _target_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


# Ops that move tensor elements around without mixing positions; they keep a geometry when the
# last two dimensions (the spatial ones) come out unchanged (channel indexing, chunk, channel
# shuffle by view + transpose, unsqueeze).
_LAYOUT_NAMES = frozenset(
    ["getitem", "unsqueeze", "squeeze", "view", "reshape", "transpose", "permute", "chunk", "split", "contiguous"]
)


# Multiplying a map by a ``[B, C, 1, 1]`` tensor derived from the image (squeeze-excitation's gate)
# rescales channels: we treat it as the identity for geometry (our choice, the usual convention; the
# gate's own field is global). Adding such a tensor stays unsupported.
_GATE_NAMES = frozenset(["mul", "imul", "__mul__", "__imul__", "__rmul__", "mul_"])


class _Propagator:
    """Walks a traced graph once and gives each node a value: a geometry ``(y, x)`` for spatial
    tensors, ``None`` for values that do not depend on the image, ``_FLAT`` for image-dependent
    values without a spatial layout (flattened tensors, sizes), or ``_Unsupported(reason)``."""

    def __init__(self, gm: fx.GraphModule, recorder: Any) -> None:
        self.gm = gm
        self.shapes = recorder.shapes
        self.seq_shapes = recorder.seq_shapes
        self.constants = recorder.constants
        self.values: dict[fx.Node, Any] = {}

    def run(self) -> dict[fx.Node, Any]:
        image_seen = False
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if not image_seen:
                    image_seen = True
                    self.values[node] = (_Axis(1.0, 1.0, 0.5), _Axis(1.0, 1.0, 0.5))
                else:
                    self.values[node] = None
            elif node.op in ("get_attr", "output"):
                self.values[node] = None
            else:
                self.values[node] = self._visit(node)
        return self.values

    def _spatial(self, node: fx.Node) -> tuple[int, ...] | None:
        """The last two dimensions of a tensor (or of all tensors of a tuple) with >= 3 dims."""
        if node in self.shapes:
            shape = self.shapes[node]
            return shape[-2:] if len(shape) >= 3 else None
        shapes = self.seq_shapes.get(node)
        if shapes and all(len(sh) >= 3 for sh in shapes) and len({sh[-2:] for sh in shapes}) == 1:
            return shapes[0][-2:]
        return None

    def _is_map(self, node: fx.Node) -> bool:
        shape = self.shapes.get(node)
        return shape is not None and len(shape) == 4

    def _visit(self, node: fx.Node) -> Any:
        deps = [a for a in node.all_input_nodes if self.values.get(a) is not None]
        if not deps:
            return None  # does not depend on the image
        for a in deps:
            if isinstance(self.values[a], _Unsupported):
                return self.values[a]
        try:
            if node.op != "call_module" and _target_name(node) in _LAYOUT_NAMES:
                return self._layout(node, deps)
            if self._spatial(node) is None:
                return _FLAT
            return self._map_rule(node, deps)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            return _Unsupported(f"cannot read the parameters of {node.format_node()}: {exc}")

    def _describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module {node.target} ({type(self.gm.get_submodule(str(node.target))).__name__})"
        return f"{node.op} {_target_name(node)}"

    def _layout(self, node: fx.Node, deps: list[fx.Node]) -> Any:
        geo_inputs = [a for a in deps if isinstance(self.values[a], tuple)]
        tensor_flat = [a for a in deps if self.values[a] is _FLAT and a in self.shapes]
        out_hw = self._spatial(node)
        if len(geo_inputs) != 1 or tensor_flat:
            if out_hw is None and not geo_inputs:
                return _FLAT
            if geo_inputs or out_hw is not None:
                return _Unsupported(f"{self._describe(node)} rebuilds a map whose spatial layout was lost")
            return _FLAT
        src = geo_inputs[0]
        if out_hw is None or out_hw != self._spatial(src):
            return (
                _FLAT
                if out_hw is None
                else _Unsupported(
                    f"{self._describe(node)} changes the spatial size {self._spatial(src)} -> {out_hw} "
                    "(cropping or reshaping)"
                )
            )
        name = _target_name(node)
        if name in ("transpose", "permute"):
            ndim = len(self.shapes[src])
            dims = [d for d in (*node.args[1:], *node.kwargs.values()) if isinstance(d, int)]
            if name == "permute":
                if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)):
                    dims = list(node.args[1])
                moved = dims[-2:] != [ndim - 2, ndim - 1]
            else:
                moved = any(d % ndim >= ndim - 2 for d in dims)
            if moved:
                return _Unsupported(f"{self._describe(node)} moves the spatial dimensions")
        return self.values[src]

    def _map_rule(self, node: fx.Node, inputs: list[fx.Node]) -> Any:
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            src = node.args[0] if node.args else None
            geo = self.values.get(src) if isinstance(src, fx.Node) else None
            if isinstance(module, nn.Conv2d):
                return self._need(geo, node) or _conv_geo(
                    geo, module.kernel_size, module.stride, module.padding, module.dilation
                )
            if isinstance(module, nn.MaxPool2d):
                return self._need(geo, node) or _conv_geo(
                    geo,
                    module.kernel_size,
                    module.stride or module.kernel_size,
                    module.padding,
                    module.dilation,
                )
            if isinstance(module, nn.AvgPool2d):
                return self._need(geo, node) or _conv_geo(
                    geo, module.kernel_size, module.stride or module.kernel_size, module.padding
                )
            if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                return self._need(geo, node) or self._adaptive(geo, src, node)
            if isinstance(module, _PAD_MODULES):
                left, _right, top, _bottom = module.padding
                return self._need(geo, node) or _conv_geo(geo, 1, 1, (top, left))
            if isinstance(module, _POINTWISE_MODULES) or (type(module).__module__ == nn.modules.activation.__name__):
                return self._combine(node, inputs)
            return _Unsupported(f"no receptive-field rule for {self._describe(node)}")
        name = _target_name(node)
        if name == "conv2d":
            kw = _conv2d_params(*node.args, **node.kwargs)
            weight = kw["weight"]
            k = self.shapes[weight][2:] if isinstance(weight, fx.Node) else tuple(weight.shape[2:])
            geo = self.values.get(kw["input"])
            return self._need(geo, node) or _conv_geo(geo, k, kw["stride"], kw["padding"], kw["dilation"])
        if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
            params = _avg_pool_params if name == "avg_pool2d" else _max_pool_params
            kw = params(*node.args, **node.kwargs)
            geo = self.values.get(kw["input"])
            stride = kw["stride"] or kw["kernel_size"]
            return self._need(geo, node) or _conv_geo(
                geo, kw["kernel_size"], stride, kw["padding"], kw.get("dilation", 1)
            )
        if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
            src = node.args[0] if node.args else node.kwargs.get("input")
            return self._need(self.values.get(src), node) or self._adaptive(self.values[src], src, node)
        if name == "pad":  # F.pad, e.g. a dynamic SAME padding computed from the input's size
            src = node.args[0] if node.args else node.kwargs.get("input")
            amounts = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            amounts = fx.map_arg(amounts, lambda a: self.constants[a])
            if len(amounts) < 4:
                return _Unsupported(f"{node.format_node()} pads fewer than two dimensions")
            return self._need(self.values.get(src), node) or _conv_geo(
                self.values[src], 1, 1, (int(amounts[2]), int(amounts[0]))
            )
        if name in ("cat", "concat", "concatenate"):
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            ndim = len(self.shapes[node])
            if not isinstance(dim, int) or dim % ndim >= ndim - 2:
                return _Unsupported(f"concatenation along dim {dim} ({node.format_node()})")
        if name in _POINTWISE_NAMES:
            return self._combine(node, inputs)
        return _Unsupported(f"no receptive-field rule for {self._describe(node)}")

    def _need(self, geo: Any, node: fx.Node) -> Any:
        """None if ``geo`` is a geometry; otherwise the value to return for ``node``."""
        if isinstance(geo, tuple):
            return None
        if isinstance(geo, _Unsupported):
            return geo
        return _Unsupported(f"{self._describe(node)} reads a tensor that is not a feature map")

    def _adaptive(self, geo: _Geo, src: fx.Node, node: fx.Node) -> Any:
        in_hw = self.shapes[src][2:]
        out_hw = self.shapes[node][2:]
        if any(i % o for i, o in zip(in_hw, out_hw, strict=True)):
            return _Unsupported(f"{self._describe(node)} pools {tuple(in_hw)} to {tuple(out_hw)}: non-uniform bins")
        k = tuple(i // o for i, o in zip(in_hw, out_hw, strict=True))
        return _conv_geo(geo, k, k, 0)

    def _combine(self, node: fx.Node, inputs: list[fx.Node]) -> Any:
        """Spatially pointwise op: the union of the inputs' fields (equal strides required).
        Sizes and other non-tensor values among the inputs are ignored."""
        out_hw = self._spatial(node)
        geos: list[_Geo] = []
        for a in inputs:
            value = self.values[a]
            if value is _FLAT:
                if a in self.shapes or a in self.seq_shapes:
                    return _Unsupported(f"{self._describe(node)} mixes in a value that is not a feature map")
                continue
            in_hw = self._spatial(a)
            if in_hw == (1, 1) and out_hw != (1, 1) and _target_name(node) in _GATE_NAMES:
                continue  # a channel gate (squeeze-excitation): identity for geometry
            if in_hw != out_hw:
                return _Unsupported(
                    f"{self._describe(node)} broadcasts a {in_hw} map over {out_hw} "
                    "(e.g. squeeze-excitation): the receptive field is global"
                )
            geos.append(value)
        if not geos:
            return _Unsupported(f"{self._describe(node)} builds a map from values that are not feature maps")
        if len(geos) == 1:
            return geos[0]
        out = []
        for axis in range(2):
            jumps = {g[axis].jump for g in geos}
            if len(jumps) != 1:
                return _Unsupported(f"{self._describe(node)} combines maps of different strides {sorted(jumps)}")
            left = min(g[axis].center - g[axis].size / 2 for g in geos)
            right = max(g[axis].center + g[axis].size / 2 for g in geos)
            out.append(_Axis(right - left, geos[0][axis].jump, (left + right) / 2))
        return (out[0], out[1])


def _as_geometry(geo: _Geo, name: str) -> LayerGeometry:
    vals = [geo[0].size, geo[1].size, geo[0].jump, geo[1].jump]
    if any(abs(v - round(v)) > 1e-6 for v in vals):
        raise ReceptiveFieldError(f"layer {name!r} has a fractional receptive-field size or stride {vals}")
    return LayerGeometry(
        size=(round(geo[0].size), round(geo[1].size)),
        stride=(round(geo[0].jump), round(geo[1].jump)),
        offset=(float(geo[0].center), float(geo[1].center)),
    )


def receptive_fields(
    model: nn.Module,
    input_size: Sequence[int],
    device: torch.device | str,
    *,
    layers: Sequence[str] | None = None,
    in_channels: int = 3,
) -> dict[str, LayerGeometry]:
    """Analytic receptive-field geometry of named layers.

    Traces ``model`` with ``torch.fx`` (:func:`~.networks.trace_network`: custom modules, blocks
    and ``Conv2d`` subclasses are traced through, so a SAME-padding conv that holds a
    ``ZeroPad2d`` is seen as its pad and its ``F.conv2d``; ``torch.nn`` modules are leaves), runs
    one forward pass of zeros ``[1, in_channels, H, W]`` on ``device`` (the model must be there)
    to learn shapes and size-derived constants (adaptive pooling and dynamic padding depend on
    them), then propagates the geometry (module docstring). Exact for conv (grouped, depthwise,
    dilated), pooling and padding; batch norm, activations, dropout and squeeze-excitation gates
    are the identity; adaptive pooling with uniform bins is a pooling window (to 1x1: the whole
    input and its padding).

    Args:
        input_size: ``(H, W)``; geometry does not depend on it except through adaptive pooling
            and padding computed from the input's size.
        layers: layer names (node names or dotted names of modules that run once, see
            :mod:`.networks`) to return; ``None`` returns every layer whose output is a feature
            map with a known geometry.

    Returns:
        ``{name: LayerGeometry}`` in forward order.

    Raises:
        ReceptiveFieldError: the model cannot be traced, or a requested layer's geometry is
            unknown (the message gives the op that stopped the propagation).
        UnknownLayerError: a requested name is not a layer.
    """
    if is_torchscript(model):
        raise ReceptiveFieldError("TorchScript modules cannot be traced with torch.fx")
    try:
        traced = trace_network(model)
    except UnsupportedNetworkError as exc:
        raise ReceptiveFieldError(f"{exc}; use probe_receptive_field on a given layer instead") from exc
    targets = {name: traced.resolve(name) for name in layers} if layers is not None else None
    recorder = record_shapes(traced, input_size, device, in_channels)
    values = _Propagator(traced.graph_module, recorder).run()
    if targets is None:
        targets = {}
        for node in traced.graph_module.graph.nodes:
            if node.op not in ("placeholder", "get_attr", "output"):
                for name in traced.names_of(node):
                    targets.setdefault(name, node)
    result: dict[str, LayerGeometry] = {}
    for name, node in sorted(targets.items(), key=lambda item: traced.order(item[1])):
        value = values.get(node)
        problem = None
        if isinstance(value, _Unsupported):
            problem = value.reason
        elif not isinstance(value, tuple) or len(recorder.shapes.get(node, ())) != 4:
            problem = "its output is not a feature map"
        if problem is not None:
            if layers is not None:
                raise ReceptiveFieldError(f"no receptive field for layer {name!r}: {problem}")
            continue
        result[name] = _as_geometry(value, name)
    if layers is not None:
        return {name: result[name] for name in layers}
    return result


def receptive_field(
    model: nn.Module, layer: str, input_size: Sequence[int], device: torch.device | str
) -> LayerGeometry:
    """Analytic geometry of one layer (see :func:`receptive_fields`)."""
    return receptive_fields(model, input_size, device, layers=[layer])[layer]


# --------------------------------------------------------------------------------------------
# Numeric probe
# --------------------------------------------------------------------------------------------


# Constant probe inputs, tried in turn: small, so residual sums stay below saturating activations
# (ReLU6 in MobileNet); then 1, for models that shift their input (GoogLeNet's transform_input).
_PROBE_INPUTS = (1e-3, 1.0)


class _ChannelMeanConv(nn.Module):
    """Stand-in for a conv in a collapsed probe copy: mean over input channels, then one
    ``1 -> 1`` averaging kernel with the original kernel size, stride, padding and dilation."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.padding_mode = conv.padding_mode
        self.reversed_padding = conv._reversed_padding_repeated_twice
        kh, kw = conv.kernel_size
        self.weight = nn.Parameter(torch.full((1, 1, kh, kw), 1.0 / (kh * kw)), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.mean(dim=1, keepdim=True)
        if self.padding_mode != "zeros":
            x = nn.functional.pad(x, self.reversed_padding, mode=self.padding_mode)
            return nn.functional.conv2d(x, self.weight, None, self.stride, 0, self.dilation)
        return nn.functional.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)


def _max_pool_args(
    input: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> tuple[Tensor, Any, Any, Any, Any, bool, bool]:
    return input, kernel_size, stride, padding, dilation, ceil_mode, return_indices


class _MaxPoolAsAvgPool(TorchFunctionMode):
    """Within this mode every 2-D max pooling (module or functional) is an average pooling with
    the same window, so gradients reach every pixel of the window."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in (F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices):
            x, k, stride, padding, dilation, ceil_mode, return_indices = _max_pool_args(*args, **kwargs)
            if return_indices or func is F.max_pool2d_with_indices:
                raise ReceptiveFieldError("cannot probe max pooling that returns indices")
            if _pair(dilation) != (1, 1):
                raise ReceptiveFieldError("cannot probe dilated max pooling")
            return F.avg_pool2d(x, k, stride if stride else k, padding, ceil_mode=ceil_mode, count_include_pad=True)
        if func in (F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices):
            if kwargs.pop("return_indices", False) or func is F.adaptive_max_pool2d_with_indices:
                raise ReceptiveFieldError("cannot probe adaptive max pooling that returns indices")
            return F.adaptive_avg_pool2d(*args, **kwargs)
        return func(*args, **kwargs)


def _probe_copy(model: nn.Module, device: torch.device | str, dtype: torch.dtype, collapse: bool) -> nn.Module:
    """A copy of ``model`` whose input gradients are dense and positive.

    Convs average (weight ``1 / fan_in``, no bias), batch norms become identities (max pooling is
    handled at run time by :class:`_MaxPoolAsAvgPool`). With ``collapse`` every conv also reduces its input to
    one channel (:class:`_ChannelMeanConv`), all norms become identities, and the other weights are
    not copied at all (the forward pass must stop before any layer that needs them); so a model
    built on the ``meta`` device (no weights in memory) can be probed this way.
    """
    memo: dict[int, Any] = {}
    if collapse:  # do not copy weights that the collapsed copy never uses
        for t in list(model.parameters()) + list(model.buffers()):
            empty = torch.empty(0, dtype=dtype if t.is_floating_point() else t.dtype, device=device)
            memo[id(t)] = nn.Parameter(empty, requires_grad=False) if isinstance(t, nn.Parameter) else empty
    probe = copy.deepcopy(model, memo)
    for name, module in list(probe.named_modules()):
        replacement: nn.Module | None = None
        if collapse and isinstance(module, nn.Conv2d):
            replacement = _ChannelMeanConv(module)
        elif collapse and isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            replacement = nn.Identity()
        elif isinstance(module, nn.modules.conv._ConvNd):
            with torch.no_grad():
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                if module.affine:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                if module.track_running_stats:
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0 - module.eps)
        if replacement is not None:
            probe.set_submodule(name, replacement)
    probe = probe.to(device=device, dtype=dtype).eval()
    for p in probe.parameters():
        p.requires_grad_(False)
    return probe


def _unit_gradient_extents(
    probe: nn.Module,
    layer: str,
    input_size: Sequence[int],
    in_channels: int,
    device: torch.device | str,
    dtype: torch.dtype,
    value: float,
) -> tuple[list[int], list[int], list[tuple[int, int]], list[tuple[int, int]]]:
    """Rows/cols of units ``0, 1, n-2, n-1`` and the (first, last) input row/col where each
    unit's gradient is non-zero."""
    h, w = (int(v) for v in input_size)
    with torch.enable_grad():
        x = torch.full((4, in_channels, h, w), value, dtype=dtype, device=device, requires_grad=True)
        with _MaxPoolAsAvgPool():
            out = capture_forward(probe, x, [layer], stop_early=True, detach=False, clone=False)[layer]
        if out.ndim != 4:
            raise ReceptiveFieldError(f"layer {layer!r} output {tuple(out.shape)} is not a feature map")
        if out.shape[1] == 0:
            raise _ProbeNotDense(f"layer {layer!r} has no channels in the probe copy")
        oh, ow = out.shape[2:]
        if oh < 2 or ow < 2:
            raise _InputTooSmall(
                f"layer {layer!r} gives a {oh}x{ow} map at input {h}x{w}; probe at a larger input_size"
            )
        ys = [0, 1, oh - 2, oh - 1]
        xs = [0, 1, ow - 2, ow - 1]
        grad_out = torch.zeros_like(out)
        for k in range(4):
            grad_out[k, :, ys[k], xs[k]] = 1.0
        (grad,) = torch.autograd.grad(out, x, grad_out)
    support = grad.abs().sum(dim=1) > 0  # [4, H, W]
    extents_y, extents_x = [], []
    for k in range(4):
        rows = torch.nonzero(support[k].any(dim=1)).flatten()
        cols = torch.nonzero(support[k].any(dim=0)).flatten()
        if rows.numel() == 0:
            raise _ProbeNotDense(f"zero gradient probing layer {layer!r}: the probe copy is not dense")
        extents_y.append((int(rows[0]), int(rows[-1])))
        extents_x.append((int(cols[0]), int(cols[-1])))
    return ys, xs, extents_y, extents_x


def _solve_axis(
    indices: Sequence[int], extents: Sequence[tuple[int, int]], layer: str, axis: str
) -> tuple[int, int, float]:
    """(size, stride, offset) of one axis from the non-zero gradient extents of several units.

    Observed extents are the true fields cut to the pixels the network reads: ``[0, last]``, where
    ``last`` may be before the image's last pixel (a stride that does not divide the size). So a
    left edge is trusted only if it is greater than the smallest observed left edge, a right edge
    only if it is less than the largest observed right edge.
    """
    min_lo = min(lo for lo, _hi in extents)
    max_hi = max(hi for _lo, hi in extents)
    lows = [(i, lo) for i, (lo, _hi) in zip(indices, extents, strict=True) if lo > min_lo]
    highs = [(i, hi) for i, (_lo, hi) in zip(indices, extents, strict=True) if hi < max_hi]
    jumps = set()
    for edges in (lows, highs):
        for i1, e1 in edges:
            for i2, e2 in edges:
                if i2 > i1:
                    jumps.add((e2 - e1) / (i2 - i1))
    too_small = (
        f"the input is too small to probe layer {layer!r} along {axis}: no two units with an "
        "unclipped receptive-field edge; probe at a larger input_size"
    )
    if not jumps or not lows or not highs:
        raise _InputTooSmall(too_small)
    if len(jumps) != 1:
        raise ReceptiveFieldError(f"inconsistent strides {sorted(jumps)} probing {layer!r} along {axis}")
    jump = jumps.pop()
    starts = {lo - i * jump for i, lo in lows}
    ends = {hi - i * jump for i, hi in highs}
    if len(starts) != 1 or len(ends) != 1 or jump != int(jump):
        raise ReceptiveFieldError(f"irregular receptive fields probing {layer!r} along {axis}")
    start, end = starts.pop(), ends.pop()
    return int(end - start + 1), int(jump), (start + end + 1) / 2.0


def _probe_at_size(
    model: nn.Module,
    copies: dict[bool, nn.Module],
    layer: str,
    size: tuple[int, int],
    device: torch.device | str,
    in_channels: int,
    dtype: torch.dtype,
    collapse_channels: bool,
) -> LayerGeometry:
    extents = None
    failure: ReceptiveFieldError | None = None
    for collapse in (True, False) if collapse_channels else (False,):
        if collapse not in copies:
            copies[collapse] = _probe_copy(model, device, dtype, collapse=collapse)
        for value in _PROBE_INPUTS:
            try:
                extents = _unit_gradient_extents(copies[collapse], layer, size, in_channels, device, dtype, value)
                break
            except _ProbeNotDense as exc:
                failure = exc  # a saturated or dead activation: try the next input value
            except (RuntimeError, ValueError, IndexError) as exc:
                if not collapse:
                    raise _InputTooSmall(f"the model failed on a {size[0]}x{size[1]} probe input: {exc}") from exc
                failure = _ProbeNotDense(f"collapsed copy failed: {exc}")
                break  # code that depends on channel counts (or a too small input): full copy
        if extents is not None:
            break
    if extents is None:
        assert failure is not None
        raise ReceptiveFieldError(str(failure))
    ys, xs, extents_y, extents_x = extents
    sy, jy, oy = _solve_axis(ys, extents_y, layer, "y")
    sx, jx, ox = _solve_axis(xs, extents_x, layer, "x")
    return LayerGeometry(size=(sy, sx), stride=(jy, jx), offset=(oy, ox))


def probe_receptive_field(
    model: nn.Module,
    layer: str,
    input_size: Sequence[int] | None,
    device: torch.device | str,
    *,
    in_channels: int = 3,
    dtype: torch.dtype = torch.float64,
    collapse_channels: bool = True,
    max_input_size: int = 4096,
) -> LayerGeometry:
    """Measure a layer's receptive-field geometry by backpropagation (a check of the analytic one).

    Method (my choice): on a copy of the model, every conv becomes an average (weight
    ``1 / fan_in``, zero bias), max pooling (module or functional, through a
    ``TorchFunctionMode``) becomes average pooling with the same window, and batch norm becomes
    the identity; with a constant positive input (1e-3, else 1) every ReLU is then active and every
    path from an input pixel to a unit has a positive gradient. For units ``0, 1, n-2, n-1`` of
    the layer (along the diagonal, one batch item each) the gradient of the unit's channel sum
    w.r.t. the input is non-zero exactly on its receptive field, cut at the image border. Edges
    away from the border give the stride (difference between units) and the start and end of
    unit 0's field, so the input may be smaller than the field itself, but it must leave two
    units per axis with an uncut left edge and two with an uncut right edge. The forward pass
    stops at ``layer``. ``float64`` by default so tiny gradients of deep nets do not underflow.

    ``collapse_channels`` (default, my choice for speed): as all channels of such a copy carry the
    same values, each conv is replaced by a channel mean followed by a single-channel kernel of the
    same size, stride, padding and dilation; the model's own forward code still runs, so the
    spatial bookkeeping is checked while the cost drops by orders of magnitude. If the collapsed
    copy fails to run (code that depends on channel counts), the full copy is used (slow for big
    models at big inputs).

    Limits: non-zero padding modes (reflect, circular) fold the field at the border; other
    parametric modules (PReLU, LayerNorm in the full copy) keep their weights and may break the
    positivity the method needs (the result is then an error, not a wrong number, as long as a
    zero gradient or irregular edges result).

    Args:
        input_size: ``(H, W)`` of the probe input ``float [4, in_channels, H, W]`` (on ``device``),
            or ``None`` to try square sizes 64, 128, 256, ... up to ``max_input_size`` until the
            field fits.

    Returns:
        :class:`LayerGeometry` (``size`` counts padding like the analytic one).

    Raises:
        ReceptiveFieldError: input too small, map smaller than 2x2, or irregular results.
    """
    if is_torchscript(model):
        raise ReceptiveFieldError("TorchScript modules cannot be probed (modules cannot be replaced)")
    get_module(model, layer)
    if input_size is not None:
        h, w = (int(v) for v in input_size)
        sizes = [(h, w)]
    else:
        sizes = []
        side = 64
        while side <= max_input_size:
            sizes.append((side, side))
            side *= 2
    copies: dict[bool, nn.Module] = {}
    error: ReceptiveFieldError | None = None
    for size in sizes:
        try:
            return _probe_at_size(model, copies, layer, size, device, in_channels, dtype, collapse_channels)
        except _InputTooSmall as exc:
            error = exc
    if error is None:
        raise ReceptiveFieldError(f"max_input_size {max_input_size} is below the smallest probe size 64")
    raise ReceptiveFieldError(str(error))


# --------------------------------------------------------------------------------------------
# Sampled numeric check (what registration runs)
# --------------------------------------------------------------------------------------------


class _GeometryMode(_MaxPoolAsAvgPool):
    """Within this mode a network computes only geometry, whatever its weights.

    Every 2-D conv (module, functional, or a ``Conv2d`` subclass's own ``F.conv2d``) becomes a mean
    over input channels followed by one ``1 -> 1`` averaging kernel with the conv's kernel size,
    stride, padding and dilation, repeated to the conv's output channels; norms are the identity;
    max pooling is average pooling (:class:`_MaxPoolAsAvgPool`); a product with a ``[B, C, 1, 1]``
    tensor (a squeeze-excitation gate) does not pass gradients through the gate. With a small
    positive constant input every activation stays active, so a unit's input gradient is non-zero
    exactly on its receptive field (cut at the image border). No copy of the model is made and its
    weights are never read by the convs.
    """

    _NORMS = (F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm)

    def __init__(self, collapse: bool) -> None:
        super().__init__()
        self.collapse = collapse  # keep one channel everywhere (cheapest; code that needs the
        # channel counts then fails and the check reruns with the channels repeated)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.conv2d:
            p = _conv2d_params(*args, **kwargs)
            weight, x = p["weight"], p["input"]
            kh, kw = weight.shape[2:]
            mean = x.mean(dim=1, keepdim=True)
            padding = p["padding"]
            if (
                not isinstance(padding, str)
                and _pair(p["dilation"]) == (1, 1)
                and all(2 * q <= k for q, k in zip(_pair(padding), (kh, kw), strict=True))
            ):
                # the same averaging kernel as a pooling: much faster than a one-channel conv
                y = F.avg_pool2d(mean, (kh, kw), _pair(p["stride"]), _pair(padding), count_include_pad=True)
            else:
                kernel = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype, device=x.device)
                y = F.conv2d(mean, kernel, None, p["stride"], padding, p["dilation"])
            return y if self.collapse else y.expand(-1, weight.shape[0], -1, -1).contiguous()
        if func in self._NORMS:
            return args[0] if args else kwargs["input"]
        name = getattr(func, "__name__", "")
        if name in ("mul", "__mul__", "__rmul__") and len(args) == 2:
            a, b = args
            if isinstance(a, Tensor) and isinstance(b, Tensor) and a.ndim == b.ndim == 4:
                if a.shape[-2:] == (1, 1) and b.shape[-2:] != (1, 1):
                    a = a.detach()
                elif b.shape[-2:] == (1, 1) and a.shape[-2:] != (1, 1):
                    b = b.detach()
                return func(a, b, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)


def _sample_units(n: int, per_axis: int) -> list[int]:
    """``per_axis`` indices spread over ``0 .. n - 1`` (first, last and between), unique."""
    if per_axis <= 1 or n == 1:
        return [0]
    return sorted({round(i * (n - 1) / (per_axis - 1)) for i in range(per_axis)})


def _expected_extent(geometry: LayerGeometry, axis: int, index: int, length: int) -> tuple[int, int]:
    """First and last input pixel of a unit's field along an axis, cut to ``[0, length)``."""
    centre = geometry.offset[axis] + index * geometry.stride[axis]
    lo = int(round(centre - geometry.size[axis] / 2.0))
    hi = int(round(centre + geometry.size[axis] / 2.0)) - 1
    return max(lo, 0), min(hi, length - 1)


@dataclass(frozen=True)
class GeometryCheck:
    """Outcome of :func:`check_receptive_fields` for one layer.

    ``verified``: ``True`` when every sampled unit's measured field equals the analytic one,
    ``False`` when one differs (``detail`` says which), ``None`` when not checked (a 1x1 map,
    or the network would not run in the geometry mode; ``detail`` says why).
    """

    verified: bool | None
    detail: str = ""


def check_receptive_fields(
    model: nn.Module,
    geometry: dict[str, LayerGeometry],
    input_size: Sequence[int],
    device: torch.device | str,
    *,
    units_per_axis: int = 3,
    in_channels: int = 3,
    progress: Any = None,
) -> dict[str, GeometryCheck]:
    """Check analytic geometry numerically on a few units of each layer, in bounded memory.

    For each layer, the network (traced, ended at the layer) runs under :class:`_GeometryMode` on a
    constant input ``float32 [n, in_channels, H, W]`` (value 1e-3, then 1.0 if a gradient vanishes)
    at the network's own ``input_size`` — the size its SAME padding was built for — with one batch
    item per sampled unit: ``units_per_axis`` units along the map's diagonal (first, middle, last).
    The non-zero extent of each unit's input gradient must equal its analytic box cut to the image
    (edges outside the image are not observable there). Layers whose map is 1x1 are not checked.
    Memory is one forward/backward of ``n`` images of the network's input size with one-channel
    convs; nothing is copied.

    Args:
        geometry: ``{layer name: LayerGeometry}`` from :func:`receptive_fields`.
        progress: optional ``callable(done, total)`` called after each layer.

    Returns:
        ``{name: GeometryCheck}`` for every layer of ``geometry``.
    """
    if is_torchscript(model):
        raise ReceptiveFieldError("TorchScript modules cannot be checked (they cannot be traced)")
    traced = trace_network(model)
    h, w = (int(v) for v in input_size)
    shapes = record_shapes(traced, (h, w), device, in_channels).shapes
    results: dict[str, GeometryCheck] = {}
    by_node: dict[tuple[fx.Node, LayerGeometry], GeometryCheck] = {}  # names sharing a node run once
    was_training = model.training
    model.eval()
    try:
        for done, (name, geo) in enumerate(geometry.items(), start=1):
            node = traced.resolve(name)
            shape = shapes.get(node, ())
            if (node, geo) in by_node:
                results[name] = by_node[(node, geo)]
            elif len(shape) != 4:
                results[name] = GeometryCheck(None, "not a feature map")
            elif shape[2:] == (1, 1):
                results[name] = GeometryCheck(None, "a 1x1 map: its field is the whole image")
            else:
                results[name] = _check_layer(
                    traced, name, geo, (h, w), tuple(shape[2:]), device, units_per_axis, in_channels
                )
            by_node[(node, geo)] = results[name]
            if progress is not None:
                progress(done, len(geometry))
    finally:
        model.train(was_training)
    return results


def _check_layer(
    traced: TracedNetwork,
    name: str,
    geo: LayerGeometry,
    size: tuple[int, int],
    out_size: tuple[int, int],
    device: torch.device | str,
    units_per_axis: int,
    in_channels: int,
) -> GeometryCheck:
    extractor = traced.extractor([name])
    h, w = size
    ys, xs = _sample_units(out_size[0], units_per_axis), _sample_units(out_size[1], units_per_axis)
    if len(ys) == len(xs):
        pairs = list(zip(ys, xs, strict=True))  # along the diagonal
    else:
        pairs = [(y, xs[0]) for y in ys] + [(ys[0], x) for x in xs[1:]]
    detail = ""
    attempts = [(collapse, value) for collapse in (True, False) for value in _PROBE_INPUTS]
    for collapse, value in attempts:
        try:
            with torch.enable_grad(), _GeometryMode(collapse):
                x = torch.full(
                    (len(pairs) + 1, in_channels, h, w), value, dtype=torch.float32, device=device, requires_grad=True
                )
                out = extractor(x)[name]
                grad_out = torch.zeros_like(out)
                for k, (iy, ix) in enumerate(pairs):
                    grad_out[k, :, iy, ix] = 1.0
                grad_out[len(pairs)] = 1.0  # the whole map: the pixels the layer reads at all
                (grad,) = torch.autograd.grad(out, x, grad_out)
        except (RuntimeError, ValueError, IndexError, ReceptiveFieldError) as exc:
            detail = f"the network does not run in the geometry mode: {str(exc).splitlines()[0]}"
            continue
        support = grad.abs().sum(dim=1) > 0
        extents = []
        for k in range(len(pairs) + 1):
            rows = torch.nonzero(support[k].any(dim=1)).flatten()
            cols = torch.nonzero(support[k].any(dim=0)).flatten()
            extents.append(
                None if rows.numel() == 0 else ((int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])))
            )
        if None in extents:
            detail = f"zero gradient at input value {value}"
            continue  # a saturated or dead activation: try the next input value (or mode)
        read = extents[-1]  # a stride that does not divide the size leaves the last pixels unread
        problems = []
        for (iy, ix), seen in zip(pairs, extents, strict=False):
            expected = tuple(
                (max(lo, read[axis][0]), min(hi, read[axis][1]))
                for axis, (lo, hi) in enumerate((_expected_extent(geo, 0, iy, h), _expected_extent(geo, 1, ix, w)))
            )
            if seen != expected:
                problems.append(f"unit ({iy}, {ix}) reads rows/cols {seen}, expected {expected}")
        if problems:
            return GeometryCheck(False, "; ".join(problems))
        return GeometryCheck(True, f"{len(pairs)} units at {h}x{w}")
    return GeometryCheck(None, detail)
