"""The straightforward Net2Vec segmentation-probe trainer UnitScope had before (kept for ``bench_net2vec``): one probe
at a time, autograd for the gradient of eq. 4, the top-F probes trained one after another."""

from __future__ import annotations

import torch

from analysis.engine.net2vec import LinearProbe, ProbeConfig, weighted_bce


def reference_train_probe(
    features: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float,
    config: ProbeConfig,
    units: torch.Tensor | None = None,
) -> LinearProbe:
    """SGD with momentum on ``weighted_bce`` through autograd, raw 0/1 inputs (no standardisation)."""
    device = features.device
    units = torch.arange(features.shape[1], device=device) if units is None else units.to(device)
    x = features.index_select(1, units).to(torch.float32)
    y = target.to(device=device, dtype=torch.float32)
    weight = torch.zeros(x.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(1, device=device, requires_grad=config.bias)
    params = [weight, bias] if config.bias else [weight]
    velocity = [torch.zeros_like(param) for param in params]
    generator = torch.Generator().manual_seed(int(config.seed))
    n = x.shape[0]
    for _ in range(int(config.epochs)):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, config.batch_pixels):
            batch = order[start : start + config.batch_pixels]
            loss = weighted_bce(x[batch] @ weight + bias, y[batch], alpha)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for param, grad, v in zip(params, grads, velocity):
                    v.mul_(config.momentum).add_(grad)
                    param.sub_(config.lr * v)
    return LinearProbe(units=units.detach().cpu(), weight=weight.detach().cpu(), bias=float(bias.detach()))


def reference_fit(
    features: torch.Tensor, target: torch.Tensor, *, alpha: float, config: ProbeConfig
) -> dict[int, LinearProbe]:
    """``{0: full probe, F: top-F probe}``, each trained separately."""
    full = reference_train_probe(features, target, alpha=alpha, config=config)
    order = sorted(range(features.shape[1]), key=lambda unit: (-float(full.weight[unit].abs()), unit))
    probes = {0: full}
    for f in config.top_f:
        probes[f] = reference_train_probe(
            features, target, alpha=alpha, config=config, units=torch.tensor(sorted(order[:f]))
        )
    return probes
