"""Discriminativeness of filters and parts (GG'18 §5–6): ablate a layer's feature maps or black out part pixels
and measure how much an object class's score drops.

* Filter ablation (§5, eq. 3): ``δ_j = 1/|I| Σ_{i∈I} (s_i − s_i^j)`` where ``s_i`` is the network's score of the
  class on image ``I_i`` and ``s_i^j`` the score with filter ``j``'s feature map zeroed (``a = 0`` everywhere on
  ``x_j``), over the class's images I. A filter is discriminative for the class when ``δ_j > k σ`` with ``σ``
  the standard deviation of δ over the layer's filters and ``k = 2`` (population standard deviation, our
  choice: the paper says only "standard deviation of the distribution of δ").
* Set ablation: the same with every filter of a set zeroed at once (all discriminative vs all the others).
* Part blackout (§6): the part's pixels set to 0 in the *normalised* input (after mean subtraction), so they
  carry the mean colour; ``δ`` over the images that contain the part.
* Score ``s``: the class's softmax probability (``score="softmax"``, our default: the paper's average score of
  69.2 reads as a percentage) or its logit (``score="logit"``).

Re-running only the part of the network after the layer: :class:`LayerAblator` splits the model's
``torch.fx`` trace (:func:`~.networks.trace_network`, so a layer may be one call site of a shared module) at the
layer into a prefix (input → the layer's output and any earlier value used later, e.g. a
skip connection) and a suffix; each batch runs the prefix once and the suffix once per ablation. Models that
``torch.fx`` cannot trace fall back to a forward hook that masks the layer's output (the prefix then reruns).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from .networks import UnsupportedNetworkError, get_module, trace_network

__all__ = ["LayerAblator", "blackout", "class_scores", "discriminative_filters", "pearson"]


def _split(model: nn.Module, layer: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Prefix and suffix graphs of ``model`` cut after ``layer``'s node (any layer name that
    :meth:`~.networks.TracedNetwork.resolve` knows: a call site such as ``layer1.0.relu_1``, or a module)."""
    traced = trace_network(model)
    cut_node = traced.resolve(layer)
    graph = traced.graph_module.graph
    root = traced.graph_module
    nodes = list(graph.nodes)
    cut = nodes.index(cut_node)
    before, after = nodes[: cut + 1], nodes[cut + 1 :]
    after_set = set(after)
    frontier = [nodes[cut]] + [n for n in before[:-1] if any(user in after_set for user in n.users)]
    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in before:
        env[node] = prefix_graph.node_copy(node, lambda arg: env[arg])
    prefix_graph.output(tuple(env[n] for n in frontier))
    suffix_graph = fx.Graph()
    env2: dict[fx.Node, fx.Node] = {n: suffix_graph.placeholder(f"frontier_{k}") for k, n in enumerate(frontier)}
    for node in after:
        env2[node] = suffix_graph.node_copy(node, lambda arg: env2[arg])
    return fx.GraphModule(root, prefix_graph), fx.GraphModule(root, suffix_graph)


class LayerAblator:
    """Class scores of a model with chosen channels of ``layer``'s output zeroed.

    ``frontier = ablator.prefix(x)`` once per batch, then ``ablator.logits(frontier, keep)`` for a stack of
    channel masks ``keep`` ``float [M, C]`` (1 keeps, 0 zeroes) returns logits ``[M, B, K]``. The model must be
    in eval mode; everything runs on the inputs' device.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.model = model
        self.layer = layer
        try:
            self._prefix, self._suffix = _split(model, layer)  # unknown names raise a readable error
            self.traced = True
        except UnsupportedNetworkError:  # untraceable models (data-dependent control flow ...): hooks
            get_module(model, layer)
            self._prefix = self._suffix = None
            self.traced = False

    @torch.no_grad()
    def prefix(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.traced:
            return tuple(self._prefix(x))
        return (x,)

    @torch.no_grad()
    def logits(self, frontier: tuple[Tensor, ...], keep: Tensor) -> Tensor:
        m = keep.shape[0]
        if self.traced:
            layer_out = frontier[0]
            b = layer_out.shape[0]
            shape = (1,) * (layer_out.dim() - 2)
            masked = layer_out[None] * keep.to(layer_out).view(m, 1, -1, *shape)
            if any(not isinstance(value, Tensor) for value in frontier[1:]):
                # a value read from the input's shape (x.size(0) for a later view) would not match a stacked
                # batch: run the suffix once per mask instead
                return torch.stack([self._suffix(masked[i], *frontier[1:]) for i in range(m)]).reshape(m, b, -1)
            inputs = [masked.reshape(m * b, *layer_out.shape[1:])]
            inputs += [
                value.repeat(m, *([1] * (value.dim() - 1))) if isinstance(value, Tensor) else value
                for value in frontier[1:]
            ]
            out = self._suffix(*inputs)
            return out.reshape(m, b, -1)
        x = frontier[0]
        b = x.shape[0]
        module = get_module(self.model, self.layer)
        mask = keep.to(x).repeat_interleave(b, dim=0)

        def hook(_module, _inputs, output):
            return output * mask.view(m * b, -1, *((1,) * (output.dim() - 2)))

        handle = module.register_forward_hook(hook)
        try:
            out = self.model(x.repeat(m, *([1] * (x.dim() - 1))))
        finally:
            handle.remove()
        return out.reshape(m, b, -1)


def class_scores(logits: Tensor, class_index: Tensor | int, score: str = "softmax") -> Tensor:
    """The score of each image's class: ``logits [..., B, K]`` -> ``[..., B]`` (softmax probability or logit)."""
    values = torch.softmax(logits.to(torch.float64), dim=-1) if score == "softmax" else logits.to(torch.float64)
    if isinstance(class_index, int):
        return values[..., class_index]
    index = class_index.to(values.device).view(*([1] * (values.dim() - 2)), -1, 1)
    return values.gather(-1, index.expand(*values.shape[:-1], 1))[..., 0]


def discriminative_filters(deltas: np.ndarray, k: float = 2.0) -> tuple[np.ndarray, float]:
    """``(bool [F], σ)``: filters with ``δ_j > k σ``, σ the (population) standard deviation of δ over the layer."""
    deltas = np.asarray(deltas, dtype=np.float64)
    sigma = float(deltas.std()) if len(deltas) else 0.0
    return deltas > k * sigma, sigma


def blackout(normalised: Tensor, mask: Tensor) -> Tensor:
    """Images ``[B, C, H, W]`` (already mean-subtracted) with the pixels of ``mask`` ``bool [B, H, W]`` set to 0."""
    return normalised.masked_fill(mask[:, None], 0.0)


def pearson(x: Sequence[float], y: Sequence[float]) -> dict[str, float | int | None]:
    """Pearson's r with its two-sided p-value (``scipy.stats.pearsonr``) over the pairs where both are finite;
    ``r``/``p`` None with fewer than 3 pairs or a constant variable."""
    from scipy import stats

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"r": None, "p": None, "n": int(len(a))}
    result = stats.pearsonr(a, b)
    return {"r": float(result.statistic), "p": float(result.pvalue), "n": int(len(a))}
