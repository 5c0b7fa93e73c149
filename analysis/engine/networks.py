"""Loading networks and finding their layers.

A network is described by a :class:`NetworkSpec` (what to build, which weights, how inputs are
normalised) and built by :func:`load_network`. Layers are addressed by their *dotted module name*
as ``model.named_modules()`` spells it (``features.10``, ``layer3.1.conv2``, ``layer4``, ``conv5``);
:func:`discover_layers` lists the ones whose output is a feature map, and :func:`capture_layers` /
:func:`capture_forward` record their outputs during a forward pass.

Conventions:

* Images enter as ``uint8`` ``[B, 3, H, W]`` (or float in ``[0, 1]``) and are normalised with the
  spec's per-channel ``mean`` / ``std``, both on the ``[0, 1]`` scale, in the spec's
  ``channel_order`` (:func:`normalize_images`).
* Nothing here picks a device: every function that allocates takes ``device``.

Layer names (capture by graph node). A network is traced once with ``torch.fx`` using torchvision's
``NodePathTracer`` (the tracer behind ``torchvision.models.feature_extraction``), so every call
site is its own layer, named as ``get_graph_node_names`` names it: a module called once keeps its
dotted module name (``conv5``, ``layer3.1.conv2``), a module called again gets ``_1``, ``_2``...
(torchvision's ``BasicBlock`` runs ``self.relu`` twice: ``layer1.0.relu`` is the first call,
``layer1.0.relu_1`` the second; the EfficientNet-Lite package's one ``_swish`` ReLU6 is ``_swish`` at
the stem and ``_swish_1`` at the head), and functional ops are ``<module>.<op>`` (``layer1.0.add``).
A module that is traced through (a block, a ``Conv2d`` subclass with its own ``forward``) is also
addressable by its dotted name when it runs once: its layer is its output node. Capture
(:func:`capture_forward`) builds a graph that returns copies of the requested nodes and ends at the
last one. Models that ``torch.fx`` cannot trace (data-dependent control flow) fall back to forward
hooks on modules (:func:`capture_layers`): then a module that runs more than once has no
capturable output, which :class:`TracedNetwork` avoids. TorchScript archives load and run but can be
neither traced nor hooked (``register_forward_hook is not supported on ScriptModules``): layer
discovery and capture raise :class:`UnsupportedNetworkError`, which says to register the eager
module (``"pkg.mod:callable"``) with a state dict (``torch.jit.load(path).state_dict()`` gives one).
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import hashlib
import importlib
import os
import warnings
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import NodePathTracer

__all__ = [
    "DEFAULT_LAYER_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LayerCapture",
    "LayerInfo",
    "LayerKind",
    "NetworkError",
    "NetworkKind",
    "NetworkLoadError",
    "NetworkSpec",
    "TracedNetwork",
    "UnknownLayerError",
    "UnsupportedNetworkError",
    "capture_forward",
    "capture_layers",
    "discover_layers",
    "get_module",
    "is_torchscript",
    "layer_kind",
    "load_network",
    "load_state_dict_file",
    "normalize_images",
    "state_dict_sha256",
    "torchvision_preprocessing",
    "trace_network",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class NetworkError(Exception):
    """Base class of the errors raised here; ``str(error)`` is a message for people."""


class NetworkLoadError(NetworkError):
    """A network could not be built or its weights could not be applied."""


class UnknownLayerError(NetworkError, LookupError):
    """A dotted layer name does not name a module of the network."""


class UnsupportedNetworkError(NetworkError):
    """The operation is not possible for this kind of network (e.g. hooks on TorchScript)."""


def _suggest(name: str, candidates: Sequence[str], n: int = 5) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


class NetworkKind(enum.StrEnum):
    """Where a network's structure comes from (stored values: ``torchvision``, ``torchscript``,
    ``module``; ``"callable"`` is accepted as another spelling of ``module``)."""

    TORCHVISION = "torchvision"  # target: architecture name, e.g. "alexnet"
    TORCHSCRIPT = "torchscript"  # target: path of a TorchScript archive
    MODULE = "module"  # target: "pkg.mod:callable" returning an nn.Module
    CALLABLE = "module"  # alias of MODULE

    @classmethod
    def _missing_(cls, value: object) -> NetworkKind | None:
        return cls.MODULE if value == "callable" else None


@dataclass(frozen=True)
class NetworkSpec:
    """What to build, which weights to load, and how inputs are prepared.

    Attributes:
        kind: :class:`NetworkKind` (or its value).
        target: torchvision architecture name, TorchScript file path, or ``"pkg.mod:callable"``
            (the callable may be a dotted attribute path: ``"pkg.mod:Class.build"``).
        weights: optional path of a state dict (torchvision and callable kinds only); a checkpoint
            dict holding the state dict under ``"state_dict"`` or ``"model"`` is accepted, and a
            ``"module."`` prefix (DataParallel) is stripped.
        kwargs: keyword arguments for the architecture builder or callable
            (e.g. ``{"num_classes": 16}``); JSON-compatible values only if the spec is stored.
        input_size: ``(H, W)`` the network expects.
        mean, std: per-channel normalisation on the ``[0, 1]`` scale (default: ImageNet's), in
            the network's channel order.
        class_names: optional names of the output classes, index-aligned with the logits.
        channel_order: ``"RGB"`` (torchvision and most PyTorch models) or ``"BGR"`` (Caffe ports):
            the order of the colour channels the network reads.

    Resizing (one policy for every step, our choice): the whole image is resized to ``input_size``
    (bilinear, antialiased), never cropped, so a unit's map covers the whole image and its
    upsampled mask lines up with the image's segmentation, as NetDissect does. torchvision's
    ImageNet evaluation transform (resize to 256, centre crop 224) would leave the map covering
    only the crop.
    """

    kind: NetworkKind
    target: str
    weights: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    class_names: tuple[str, ...] | None = None
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", NetworkKind(self.kind))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not self.target:
            raise ValueError("NetworkSpec.target must not be empty")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be two positive ints (H, W), got {self.input_size}")
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean and std must be non-empty and of equal length")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.kind is NetworkKind.TORCHSCRIPT and self.weights is not None:
            raise ValueError("a TorchScript archive carries its own weights; weights must be None")
        if self.kind is NetworkKind.MODULE and ":" not in self.target:
            raise ValueError(f"callable target must look like 'pkg.mod:callable', got {self.target!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (inverse of :meth:`from_dict`)."""
        data = asdict(self)
        data["kind"] = str(self.kind)
        data["kwargs"] = dict(self.kwargs)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["class_names"] = None if self.class_names is None else list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        """Rebuild a spec from :meth:`to_dict` output."""
        data = dict(data)
        for key in ("input_size", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        if data.get("class_names") is not None:
            data["class_names"] = tuple(data["class_names"])
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict with ``torch.load(weights_only=True, map_location="cpu")``.

    Accepts a plain state dict or a checkpoint dict with the state dict under ``"state_dict"`` or
    ``"model"``; strips a leading ``"module."`` from keys. A TorchScript archive is accepted too:
    its parameters and buffers are the state dict. Returns CPU tensors.

    Raises:
        NetworkLoadError: file missing, unreadable as weights, or not a mapping of tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NetworkLoadError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        scripted = _torchscript_state_dict(path)
        if scripted is not None:
            return scripted
        raise NetworkLoadError(
            f"could not read {path} as a state dict (torch.load with weights_only=True): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise NetworkLoadError(f"{path} holds a {type(obj).__name__}, not a state dict")
    state: dict[str, Tensor] = {}
    bad: list[str] = []
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            bad.append(str(key))
            continue
        key = str(key)
        state[key[len("module.") :] if key.startswith("module.") else key] = value
    if bad:
        raise NetworkLoadError(
            f"{path} is not a state dict: {len(bad)} entries are not tensors (e.g. {', '.join(bad[:5])})"
        )
    return state


def _torchscript_state_dict(path: str) -> dict[str, Tensor] | None:
    """The state dict of a TorchScript archive (its parameters and buffers), or None if the file is
    not one. Lets a TorchScript model be studied through its eager class without re-saving it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(path, map_location="cpu")
    except Exception:  # not a TorchScript archive either
        return None
    return {key: value.detach().clone() for key, value in scripted.state_dict().items()}


def _apply_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` strictly, explaining any mismatch in plain words."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {label} key(s): {', '.join(keys[:5])}{more}")
    if problems:
        raise NetworkLoadError(f"weights in {source} do not match the network: " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NetworkLoadError(f"weights in {source} do not match the network: {exc}") from exc


def _resolve_callable(target: str) -> Any:
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise NetworkLoadError(f"callable target must look like 'pkg.mod:callable', got {target!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise NetworkLoadError(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise NetworkLoadError(f"callable not found: {target!r} ({part!r} is not defined)")
        obj = getattr(obj, part)
    if not callable(obj):
        raise NetworkLoadError(f"{target!r} is not callable")
    return obj


def _build_torchvision(spec: NetworkSpec) -> nn.Module:
    names = torchvision.models.list_models()
    if spec.target not in names:
        raise NetworkLoadError(f"unknown torchvision architecture {spec.target!r}." + _suggest(spec.target, names))
    kwargs = dict(spec.kwargs)
    if "weights" in kwargs:
        raise NetworkLoadError("pass a local weights file in NetworkSpec.weights; downloads are disabled")
    try:
        return torchvision.models.get_model(spec.target, weights=None, **kwargs)
    except (TypeError, ValueError) as exc:
        raise NetworkLoadError(f"cannot build torchvision {spec.target!r} with {kwargs}: {exc}") from exc


def torchvision_preprocessing(arch: str) -> dict[str, Any]:
    """torchvision's own evaluation preprocessing for an architecture, read from its weights
    enum's metadata (no download): ``{"input_size": (H, W), "mean": (...), "std": (...)}``, or
    ImageNet's mean/std at 224 px when the architecture has no weights enum.

    Only the crop size is taken as the input size: UnitScope resizes the whole image to it rather
    than resizing to ``resize_size`` and cropping (see :class:`NetworkSpec`).
    """
    try:
        transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        size = int(transforms.crop_size[0])
        return {
            "input_size": (size, size),
            "mean": tuple(float(v) for v in transforms.mean),
            "std": tuple(float(v) for v in transforms.std),
        }
    except (ValueError, KeyError, AttributeError, TypeError, IndexError):
        return {"input_size": (224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def load_network(spec: NetworkSpec, *, device: torch.device | str) -> nn.Module:
    """Build the network a spec describes, load its weights, move it to ``device``, eval mode.

    torchvision architectures are built with ``weights=None`` (never downloaded) and then get the
    local ``spec.weights`` if given; without weights they keep their random initialisation.

    Raises:
        NetworkLoadError: unknown architecture, missing file, unreadable or mismatched weights,
            callable not found or not returning an ``nn.Module``.
    """
    if spec.kind is NetworkKind.TORCHVISION:
        model = _build_torchvision(spec)
    elif spec.kind is NetworkKind.TORCHSCRIPT:
        if not os.path.isfile(spec.target):
            raise NetworkLoadError(f"TorchScript file not found: {spec.target}")
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(spec.target, map_location="cpu")
        except Exception as exc:  # torch.jit.load raises RuntimeError/ValueError variants
            raise NetworkLoadError(f"cannot load TorchScript archive {spec.target}: {exc}") from exc
    else:
        factory = _resolve_callable(spec.target)
        try:
            model = factory(**spec.kwargs)
        except Exception as exc:  # the callable is user code: report whatever it raised
            raise NetworkLoadError(f"calling {spec.target!r} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise NetworkLoadError(f"{spec.target!r} returned {type(model).__name__}, not an nn.Module")
    if spec.weights is not None:
        _apply_state_dict(model, load_state_dict_file(spec.weights), spec.weights)
    return model.to(device).eval()


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers: the identity of its weights, however loaded.

    Hashes, for each state-dict key in sorted order, the key, dtype, shape and the tensor's bytes
    (CPU, contiguous). Two models with the same builder but different weights never share it; the
    same weights loaded from a file, by the builder itself or from TorchScript give the same hash.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if not isinstance(value, Tensor):
            digest.update(repr(value).encode())
            continue
        value = value.detach().to("cpu").contiguous()
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float], channel_order: str = "RGB") -> Tensor:
    """Turn images into network input.

    Args:
        images: ``uint8 [B, C, H, W]`` (0..255) or floating ``[B, C, H, W]`` in ``[0, 1]``, RGB.
        mean, std: ``C`` values on the ``[0, 1]`` scale, in the network's channel order.
        channel_order: ``"BGR"`` reverses the channels before normalising.

    Returns:
        ``float32 [B, C, H, W]`` on ``images.device``: ``(images / 255 - mean) / std``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(f"{images.shape[1]} channels but mean/std have {len(mean)}/{len(std)} values")
    x = images.to(torch.float32)
    if channel_order == "BGR":
        x = x.flip(1)
    if images.dtype == torch.uint8:
        x = x / 255.0
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class LayerKind(enum.StrEnum):
    """What a named module is, for listing layers to people."""

    CONV = "conv"
    POOL = "pool"
    ACTIVATION = "activation"  # ReLU and the other nn activation modules
    NORM = "norm"
    BLOCK = "block"  # a module with children: Sequential, ResNet block, DemoNet conv stage
    OTHER = "other"  # leaf modules of no listed kind (Dropout, Identity, LocalResponseNorm, ...)


DEFAULT_LAYER_KINDS: frozenset[LayerKind] = frozenset(
    {LayerKind.CONV, LayerKind.POOL, LayerKind.ACTIVATION, LayerKind.BLOCK}
)

_POOL_TYPES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
)
_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def layer_kind(module: nn.Module) -> LayerKind:
    """Classify a module (see :class:`LayerKind`)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return LayerKind.CONV
    if isinstance(module, _POOL_TYPES):
        return LayerKind.POOL
    if isinstance(module, nn.LocalResponseNorm):
        return LayerKind.NORM
    if type(module).__module__ == nn.modules.activation.__name__:
        return LayerKind.ACTIVATION
    if isinstance(module, _NORM_TYPES):
        return LayerKind.NORM
    if next(iter(module.children()), None) is not None:
        return LayerKind.BLOCK
    return LayerKind.OTHER


@dataclass(frozen=True)
class LayerInfo:
    """A module whose output is a feature map ``[B, channels, height, width]``.

    ``calls`` is how many times the module runs per forward pass; modules reused within one
    forward (torchvision's ``BasicBlock.relu`` runs twice) have an ambiguous output.
    """

    name: str
    kind: LayerKind
    module_type: str
    channels: int
    height: int
    width: int
    calls: int = 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        return data


def is_torchscript(model: nn.Module) -> bool:
    """True for TorchScript (scripted or traced) modules."""
    return isinstance(model, torch.jit.ScriptModule)


TORCHSCRIPT_LIMIT = (
    "TorchScript modules cannot be studied unit by unit: PyTorch runs no forward hooks on them and "
    "torch.fx cannot trace them. Register the eager class instead ('pkg.mod:callable') and pass the "
    "TorchScript file itself as its weights: its parameters are read from the archive, no re-saving"
)


def _require_eager(model: nn.Module, what: str) -> None:
    if is_torchscript(model):
        raise UnsupportedNetworkError(f"{what}: {TORCHSCRIPT_LIMIT}")


def get_module(model: nn.Module, dotted_name: str) -> nn.Module:
    """Return the submodule called ``dotted_name`` (``"features.10"``, ``"layer3.1.conv2"``).

    Raises:
        UnknownLayerError: no such submodule (the message suggests close names).
    """
    if not dotted_name:
        raise UnknownLayerError("a layer name must not be empty")
    try:
        return model.get_submodule(dotted_name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise UnknownLayerError(f"the network has no layer {dotted_name!r}." + _suggest(dotted_name, names)) from None


def _example_input(model: nn.Module, input_size: Sequence[int], device: torch.device | str, in_channels: int) -> Tensor:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    h, w = (int(v) for v in input_size)
    return torch.zeros(1, in_channels, h, w, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# Tracing: one torch.fx graph per network, a layer per call site
# --------------------------------------------------------------------------------------------

_ACTIVATION_FUNCTIONS = frozenset(
    [
        "relu",
        "relu_",
        "relu6",
        "leaky_relu",
        "leaky_relu_",
        "hardtanh",
        "hardtanh_",
        "gelu",
        "silu",
        "mish",
        "sigmoid",
        "sigmoid_",
        "tanh",
        "tanh_",
        "hardswish",
        "hardsigmoid",
        "elu",
        "elu_",
        "selu",
        "celu",
        "softplus",
        "prelu",
    ]
)
_POOL_FUNCTIONS = frozenset(
    [
        "max_pool2d",
        "max_pool2d_with_indices",
        "avg_pool2d",
        "adaptive_avg_pool2d",
        "adaptive_max_pool2d",
        "adaptive_max_pool2d_with_indices",
        "lp_pool2d",
    ]
)
_NORM_FUNCTIONS = frozenset(["batch_norm", "instance_norm", "group_norm", "layer_norm", "local_response_norm"])


def node_op_name(node: fx.Node) -> str:
    """The bare name of what a call_function / call_method node calls (``conv2d``, ``add``)."""
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


class _LayerTracer(NodePathTracer):
    """torchvision's node-naming tracer (no leaf modules beyond ``torch.nn``'s, so blocks and
    ``Conv2d`` subclasses with their own ``forward`` are traced through), also recording each
    module's calls and the node that is its output."""

    def __init__(self) -> None:
        super().__init__()
        self.module_calls: Counter[str] = Counter()
        self.module_outputs: dict[str, fx.Node] = {}

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        out = super().call_module(m, forward, args, kwargs)
        self.module_calls[name] += 1
        if isinstance(out, fx.Proxy):
            self.module_outputs[name] = out.node
        else:
            self.module_outputs.pop(name, None)
        return out


class TracedNetwork:
    """An eval-mode ``torch.fx`` trace of a network with torchvision's node names.

    Attributes:
        graph_module: ``fx.GraphModule`` sharing the network's submodules and parameters.
        node_names: ``{node: name}`` for every traced operation (``get_graph_node_names`` names).
        module_calls: how often each module (dotted name) runs per forward pass.
        module_outputs: ``{dotted module name: output node}`` of every module call traced.
    """

    def __init__(self, model: nn.Module, tracer: _LayerTracer, graph: fx.Graph) -> None:
        self._model = weakref.ref(model)  # the trace cache is keyed weakly by the model
        self.graph_module = fx.GraphModule(tracer.root, graph, type(model).__name__)
        self.node_names: dict[fx.Node, str] = dict(tracer.node_to_qualname)
        self.module_calls: Counter[str] = tracer.module_calls
        self.module_outputs: dict[str, fx.Node] = tracer.module_outputs
        self._by_name: dict[str, fx.Node] = {name: node for node, name in self.node_names.items()}
        self._order = {node: i for i, node in enumerate(self.graph_module.graph.nodes)}
        self._extractors: dict[tuple[str, ...], fx.GraphModule] = {}
        self._shapes: dict[tuple[Any, ...], Any] = {}  # record_shapes results (shapes do not depend on weights)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise NetworkError("the traced network no longer exists")
        return model

    def names_of(self, node: fx.Node) -> list[str]:
        """Every layer name that resolves to ``node``, outermost first (``layer4``, ``layer4.1``,
        ``layer4.1.relu_1``)."""
        names = [m for m, n in self.module_outputs.items() if n is node and self.module_calls[m] == 1]
        own = self.node_names.get(node)
        if own is not None and own not in names:
            names.append(own)
        return sorted(names, key=lambda name: name.count("."))

    def module_name_of(self, name: str) -> str | None:
        """The dotted module a layer name belongs to (for a call-module node or a block), else None."""
        node = self._by_name.get(name)
        if node is not None and node.op == "call_module":
            return str(node.target)
        if name in self.module_outputs:
            return name
        return None

    def resolve(self, name: str) -> fx.Node:
        """The graph node of a layer name: a node name, or the dotted name of a module that runs
        once (its output node).

        Raises:
            UnknownLayerError: no such name, or a module that runs more than once per forward
                (the message lists its call sites).
        """
        node = self._by_name.get(name)
        if node is not None:
            return node
        calls = self.module_calls.get(name, 0)
        if calls > 1:
            sites = [n for n in self._by_name if n == name or n.startswith(name + "_")]
            raise UnknownLayerError(
                f"module {name!r} runs {calls} times per forward pass, so it has no single output; "
                f"name one call site instead" + (f": {', '.join(sites[:8])}" if sites else "")
            )
        node = self.module_outputs.get(name)
        if node is not None:
            return node
        if name:
            with contextlib.suppress(AttributeError):
                self.model.get_submodule(name)
                raise UnknownLayerError(f"module {name!r} does not run in the forward pass")
        candidates = list(self._by_name) + list(self.module_outputs)
        raise UnknownLayerError(f"the network has no layer {name!r}." + _suggest(name, candidates))

    def order(self, node: fx.Node) -> int:
        return self._order[node]

    def extractor(self, names: Sequence[str], *, full: bool = False) -> fx.GraphModule:
        """A ``GraphModule`` returning ``{name: copy of the node's output}`` for ``names``.

        The copy is taken right after the node runs, so an in-place op that follows (torchvision's
        ``ReLU(inplace=True)``) cannot change it. Without ``full`` the graph ends at the last
        requested node (nothing after it runs); with ``full`` the whole network runs and its own
        output is returned under the key ``""`` too.
        """
        key = (*names, "\0full" if full else "")
        if key in self._extractors:
            return self._extractors[key]
        targets = [self.resolve(name) for name in names]
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        copies: dict[fx.Node, fx.Node] = {}
        last = max(self._order[t] for t in targets)
        original_output = None
        for node in self.graph_module.graph.nodes:
            if node.op == "output":
                original_output = node
                break
            if not full and self._order[node] > last:
                break
            env[node] = graph.node_copy(node, lambda arg: env[arg])
            if node in targets:
                copies[node] = graph.call_method("clone", (env[node],))
        outputs: dict[str, Any] = {name: copies[t] for name, t in zip(names, targets, strict=True)}
        if full and original_output is not None:
            outputs[""] = fx.map_arg(original_output.args[0], lambda arg: env[arg])
        graph.output(outputs)
        module = fx.GraphModule(self.graph_module, graph, "LayerExtractor")
        module.graph.eliminate_dead_code()  # in-place ops on kept values are impure and stay
        module.recompile()
        self._extractors[key] = module
        return module


_TRACES: weakref.WeakKeyDictionary[nn.Module, TracedNetwork | NetworkError] = weakref.WeakKeyDictionary()


def trace_network(model: nn.Module) -> TracedNetwork:
    """The (cached) :class:`TracedNetwork` of an eager model, traced in eval mode.

    Raises:
        UnsupportedNetworkError: TorchScript, or ``torch.fx`` cannot trace the model (the message
            says why; :func:`capture_forward` then falls back to forward hooks).
    """
    _require_eager(model, "tracing")
    cached = _TRACES.get(model)
    if isinstance(cached, TracedNetwork):
        return cached
    if isinstance(cached, NetworkError):
        raise cached
    tracer = _LayerTracer()
    was_training = model.training
    model.eval()
    try:
        graph = tracer.trace(model)
        traced = TracedNetwork(model, tracer, graph)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError...)
        error = UnsupportedNetworkError(
            f"torch.fx cannot trace this model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        )
        _TRACES[model] = error
        raise error from exc
    finally:
        model.train(was_training)
    _TRACES[model] = traced
    return traced


def is_traceable(model: nn.Module) -> bool:
    """True when :func:`trace_network` works (eager and fx-traceable)."""
    try:
        trace_network(model)
    except UnsupportedNetworkError:
        return False
    return True


class _ShapeRecorder(fx.Interpreter):
    """Runs a traced graph once, recording every tensor's shape and every small constant
    (ints, floats, tuples of them: sizes, padding amounts computed from them)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.seq_shapes: dict[fx.Node, list[tuple[int, ...]]] = {}
        self.constants: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, Tensor):
            self.shapes[n] = tuple(out.shape)
        elif isinstance(out, (tuple, list)) and out and all(isinstance(t, Tensor) for t in out):
            self.seq_shapes[n] = [tuple(t.shape) for t in out]
        elif isinstance(out, (int, float)) or (
            isinstance(out, (tuple, list)) and all(isinstance(v, (int, float)) for v in out)
        ):
            self.constants[n] = out
        return out


@torch.no_grad()
def record_shapes(
    traced: TracedNetwork,
    input_size: Sequence[int],
    device: torch.device | str,
    in_channels: int = 3,
) -> _ShapeRecorder:
    """Run the traced graph once on zeros ``[1, in_channels, H, W]`` and record shapes (cached per
    trace, input size and device: shapes do not depend on the weights).

    The pass runs in the receptive-field module's geometry mode (every shape kept, the arithmetic
    of convs skipped: a VGG16 pass costs milliseconds, not seconds); if the model fails there, it
    reruns plainly.
    """
    from .receptive_field import _GeometryMode  # the engine's own module; imported here to avoid a cycle

    def cheap_mode() -> Any:
        return _GeometryMode(collapse=False)

    key = (tuple(int(v) for v in input_size), str(device), in_channels)
    if key in traced._shapes:
        return traced._shapes[key]
    model = traced.model
    was_training = model.training
    model.eval()
    try:
        recorder = None
        if cheap_mode is not None:
            try:
                with cheap_mode():
                    recorder = _ShapeRecorder(traced.graph_module)
                    recorder.run(_example_input(model, input_size, device, in_channels))
            except Exception:  # any failure of the shortcut: the plain pass decides
                recorder = None
        if recorder is None:
            recorder = _ShapeRecorder(traced.graph_module)
            recorder.run(_example_input(model, input_size, device, in_channels))
    finally:
        model.train(was_training)
    traced._shapes[key] = recorder
    return recorder


def _node_kind(traced: TracedNetwork, node: fx.Node, name: str) -> tuple[LayerKind, str]:
    module_name = traced.module_name_of(name)
    if module_name is not None:
        module = traced.model.get_submodule(module_name)
        return layer_kind(module), type(module).__name__
    op = node_op_name(node)
    if op in ("conv2d", "conv_transpose2d"):
        return LayerKind.CONV, op
    if op in _POOL_FUNCTIONS:
        return LayerKind.POOL, op
    if op in _ACTIVATION_FUNCTIONS:
        return LayerKind.ACTIVATION, op
    if op in _NORM_FUNCTIONS:
        return LayerKind.NORM, op
    return LayerKind.OTHER, op


@torch.no_grad()
def discover_layers(
    model: nn.Module,
    input_size: Sequence[int],
    device: torch.device | str,
    *,
    kinds: frozenset[LayerKind] | set[LayerKind] = DEFAULT_LAYER_KINDS,
    include_reused: bool = False,
    in_channels: int = 3,
) -> list[LayerInfo]:
    """List the layers whose output is a 4-D feature map, in forward-pass order.

    Traceable models (:func:`trace_network`): every call site whose output is a single 4-D tensor,
    by node name (so a module run twice gives two layers, ``relu`` and ``relu_1``), plus every
    traced-through module that runs once (blocks, ``Conv2d`` subclasses), by its dotted name; one
    forward pass of zeros ``[1, in_channels, H, W]`` learns the shapes. Several names can share a
    node (``layer4``, ``layer4.1`` and ``layer4.1.relu_1`` are one tensor); inner names come first.
    Untraceable models fall back to forward hooks on named modules, where a module run more than
    once per forward is left out unless ``include_reused`` (its output is then ambiguous).

    Args:
        model: an eager ``nn.Module`` on ``device`` (TorchScript raises
            :class:`UnsupportedNetworkError`).
        input_size: ``(H, W)``.
        kinds: which :class:`LayerKind` values to list (default: conv, pool, activation, block).

    Returns:
        ``list[LayerInfo]`` in forward order.
    """
    _require_eager(model, "discover_layers")
    try:
        traced = trace_network(model)
    except UnsupportedNetworkError:
        return _discover_layers_by_hooks(
            model, input_size, device, kinds=kinds, include_reused=include_reused, in_channels=in_channels
        )
    shapes = record_shapes(traced, input_size, device, in_channels).shapes
    entries: list[tuple[int, int, LayerInfo]] = []
    seen: set[str] = set()
    for node in traced.graph_module.graph.nodes:
        shape = shapes.get(node)
        if node.op in ("placeholder", "get_attr", "output") or shape is None or len(shape) != 4:
            continue
        for name in traced.names_of(node):
            if name in seen:
                continue
            seen.add(name)
            kind, type_name = _node_kind(traced, node, name)
            if kind not in kinds:
                continue
            info = LayerInfo(name, kind, type_name, shape[1], shape[2], shape[3], 1)
            entries.append((traced.order(node), -name.count("."), info))
    return [info for _, _, info in sorted(entries, key=lambda e: (e[0], e[1]))]


@torch.no_grad()
def _discover_layers_by_hooks(
    model: nn.Module,
    input_size: Sequence[int],
    device: torch.device | str,
    *,
    kinds: frozenset[LayerKind] | set[LayerKind] = DEFAULT_LAYER_KINDS,
    include_reused: bool = False,
    in_channels: int = 3,
) -> list[LayerInfo]:
    """Hook fallback of :func:`discover_layers`: named modules whose output is a 4-D feature map.

    Runs one forward pass of a zero input ``[1, in_channels, H, W]`` (the model's parameter dtype)
    on ``device`` with forward hooks on every named module. The model must already be on
    ``device``. Modules whose output is not a single 4-D tensor (classifier layers, tuples) are
    left out, as are modules run more than once per forward unless ``include_reused`` (their output
    is ambiguous and :func:`capture_layers` refuses them).

    Args:
        model: an eager ``nn.Module`` (TorchScript raises :class:`UnsupportedNetworkError`).
        input_size: ``(H, W)``.
        kinds: which :class:`LayerKind` values to list (default: conv, pool, activation, block).

    Returns:
        ``list[LayerInfo]`` ordered by the first time each module finished in the forward pass.
    """
    _require_eager(model, "discover_layers")
    seen: dict[str, list[Any]] = {}  # name -> [shape, calls]
    order: list[str] = []
    handles = []

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            shape = tuple(output.shape) if isinstance(output, Tensor) else None
            if name in seen:
                seen[name][1] += 1
                seen[name][0] = shape
            else:
                seen[name] = [shape, 1]
                order.append(name)

        return hook

    modules = dict(model.named_modules())
    try:
        for name, module in modules.items():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        was_training = model.training
        model.eval()
        try:
            model(_example_input(model, input_size, device, in_channels))
        finally:
            model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()

    layers = []
    for name in order:
        shape, calls = seen[name]
        if shape is None or len(shape) != 4:
            continue
        if calls > 1 and not include_reused:
            continue
        kind = layer_kind(modules[name])
        if kind not in kinds:
            continue
        layers.append(LayerInfo(name, kind, type(modules[name]).__name__, shape[1], shape[2], shape[3], calls))
    return layers


class LayerCapture(Mapping[str, Tensor]):
    """Read-only mapping ``layer name -> output tensor`` filled during forward passes.

    Each forward pass overwrites the previous outputs. A tensor is present once its layer has run.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names: tuple[str, ...] = tuple(names)
        self._outputs: dict[str, Tensor] = {}
        self._seen_this_pass: set[str] = set()

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._outputs:
            if name in self.names:
                raise KeyError(f"layer {name!r} has not run yet in this capture")
            raise KeyError(f"layer {name!r} is not captured (captured: {', '.join(self.names)})")
        return self._outputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)

    def complete(self) -> bool:
        """True when every requested layer has an output."""
        return len(self._outputs) == len(self.names)

    def clear(self) -> None:
        """Forget outputs (call between forward passes when reusing one capture)."""
        self._outputs.clear()
        self._seen_this_pass.clear()


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once every requested layer has run."""


@contextlib.contextmanager
def capture_layers(
    model: nn.Module,
    names: Sequence[str],
    *,
    detach: bool = True,
    clone: bool = True,
    _stop_when_complete: bool = False,
) -> Iterator[LayerCapture]:
    """Record the outputs of the named layers during forward passes inside the ``with`` block.

    ``with capture_layers(model, ["conv5", "pool5"]) as out: model(x); out["conv5"]``

    Args:
        model: an eager ``nn.Module`` (TorchScript raises :class:`UnsupportedNetworkError`).
        names: dotted module names; unknown ones raise :class:`UnknownLayerError` before anything
            runs. Each must run at most once per forward pass (a second call raises
            :class:`NetworkError`), see :func:`discover_layers`.
        detach: store ``output.detach()`` (default); ``False`` keeps the graph for gradients.
        clone: store a copy (default), so a following in-place op (``ReLU(inplace=True)`` after a
            conv in torchvision's AlexNet/VGG) cannot change the stored map. Turning it off saves
            a copy per layer when no in-place op follows.

    Yields:
        :class:`LayerCapture`, the tensors as the modules returned them (``[B, C, h, w]`` for
        feature maps, same device and dtype). Each call of ``model`` itself starts a new record;
        calling submodules directly does not.
    """
    _require_eager(model, "capture_layers")
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("capture_layers needs at least one layer name")
    modules = [get_module(model, name) for name in names]
    capture = LayerCapture(names)

    def pre_hook(_module: nn.Module, _args: Any) -> None:
        capture.clear()  # every call of the root module is a new forward pass

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise NetworkError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; capture a "
                    "module that returns a feature map"
                )
            if name in capture._seen_this_pass:
                raise NetworkError(
                    f"layer {name!r} runs more than once per forward pass, so its output is "
                    "ambiguous; capture the enclosing block or another module"
                )
            capture._seen_this_pass.add(name)
            value = output.detach() if detach else output
            capture._outputs[name] = value.clone() if clone else value
            if _stop_when_complete and capture.complete():
                raise _StopForward

        return hook

    handles = [model.register_forward_pre_hook(pre_hook)]
    try:
        for name, module in zip(names, modules, strict=True):
            handles.append(module.register_forward_hook(make_hook(name)))
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def capture_forward(
    model: nn.Module,
    inputs: Tensor,
    names: Sequence[str],
    *,
    stop_early: bool = True,
    detach: bool = True,
    clone: bool = True,
) -> dict[str, Tensor]:
    """Run ``model`` on ``inputs`` and return the outputs of the named layers.

    Traceable models run a graph built by :meth:`TracedNetwork.extractor`: each requested node's
    output is copied as soon as it is computed, and with ``stop_early`` (default) the graph ends at
    the last requested layer, so extracting ``conv2`` does not pay for ``conv5`` or the classifier.
    Untraceable ones use forward hooks (:func:`capture_layers`), where a module that runs more than
    once per forward cannot be captured. Gradients are not disabled here: wrap in
    ``torch.no_grad()`` for extraction, or pass ``detach=False`` to backpropagate from the outputs.

    Args:
        inputs: ``[B, C, H, W]`` already normalised, on the model's device.
        names: layer names (see the module docstring); unknown ones raise
            :class:`UnknownLayerError` before anything runs.
        clone: (hook fallback only) store copies; the traced path always copies.

    Returns:
        ``{name: Tensor}`` in the order of ``names``; shapes as the layers return them.

    Raises:
        UnknownLayerError, NetworkError: unknown names, a layer that did not run.
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("capture_forward needs at least one layer name")
    _require_eager(model, "capture_forward")
    try:
        traced = trace_network(model)
    except UnsupportedNetworkError:
        return _capture_forward_by_hooks(model, inputs, names, stop_early=stop_early, detach=detach, clone=clone)
    extractor = traced.extractor(names, full=not stop_early)
    out = extractor(inputs)
    return {name: (out[name].detach() if detach else out[name]) for name in names}


def _capture_forward_by_hooks(
    model: nn.Module,
    inputs: Tensor,
    names: Sequence[str],
    *,
    stop_early: bool = True,
    detach: bool = True,
    clone: bool = True,
) -> dict[str, Tensor]:
    """Hook fallback of :func:`capture_forward` (layer names are dotted module names)."""
    names = list(dict.fromkeys(names))
    with capture_layers(model, names, detach=detach, clone=clone, _stop_when_complete=stop_early) as capture:
        try:
            model(inputs)
        except _StopForward:
            pass
        missing = [n for n in names if n not in capture]
        if missing:
            raise NetworkError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
        return {name: capture[name] for name in names}
