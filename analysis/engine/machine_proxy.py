"""The machine proxy of the forced-choice task (issue 17; the spirit of Zimmermann et al. 2024, "Measuring
mechanistic interpretability at scale without humans"): a simulated observer that answers each trial from a fixed
feature embedding of the images, giving a score for every unit without people. Pure torch; ``device`` follows the
inputs.
"""

from __future__ import annotations

import torch

__all__ = ["penultimate_embeddings", "proxy_correct", "proxy_observer"]


@torch.no_grad()
def proxy_observer(
    embeddings: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, query_a: torch.Tensor, query_b: torch.Tensor
) -> torch.Tensor:
    """A simulated observer of the 2-AFC task (after Zimmermann et al. 2024's machine interpretability score).

    ``embeddings``: ``float[N, D]`` one feature vector per dataset image; ``top``/``bottom``: ``int64[T, R]``
    image indices of each trial's reference sets; ``query_a``/``query_b``: ``int64[T]``. Each query's evidence
    is ``cos(e_q, mean(top)) − cos(e_q, mean(bottom))``; the observer picks the query with more evidence.
    Returns ``float[T]`` on the embeddings' device: evidence(a) − evidence(b) (> 0: picks ``a``; 0: a tie, which
    scores as half right). The mean reference embedding (not the mean similarity to each reference) is our
    choice; Zimmermann et al. 2024 fit a model to human answers instead, which needs human data.
    """
    embeddings = embeddings.float()
    top_mean = embeddings[top].mean(dim=1)
    bottom_mean = embeddings[bottom].mean(dim=1)

    def evidence(query: torch.Tensor) -> torch.Tensor:
        e = embeddings[query]
        return torch.nn.functional.cosine_similarity(e, top_mean, dim=1) - torch.nn.functional.cosine_similarity(
            e, bottom_mean, dim=1
        )

    return evidence(query_a) - evidence(query_b)


@torch.no_grad()
def penultimate_embeddings(model: torch.nn.Module, inputs: torch.Tensor, *, layer: str | None = None) -> torch.Tensor:
    """``float[B, D]`` feature vectors of ``inputs`` (``float[B, C, H, W]``, normalised, on the model's device).

    ``layer=None``: the input of the network's last module with parameters (its classifier), i.e. the
    penultimate layer's output, flattened — the issue's default embedding. A module name: that module's output,
    averaged over space when it is a feature map.
    """
    captured: list[torch.Tensor] = []
    if layer is None:
        module = [m for m in model.modules() if not list(m.children()) and any(True for _ in m.parameters(False))][-1]
        handle = module.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    else:
        module = dict(model.named_modules())[layer]
        handle = module.register_forward_hook(lambda _m, _args, out: captured.append(out))
    try:
        model(inputs)
    finally:
        handle.remove()
    features = captured[0].float()
    if features.ndim == 4:
        features = features.mean(dim=(2, 3))
    return features.flatten(1)


def proxy_correct(margins: torch.Tensor, strong_is_a: torch.Tensor) -> torch.Tensor:
    """``float[T]``: 1 where the proxy picked the strong query, 0 where not, 0.5 on a tie."""
    signed = torch.where(strong_is_a, margins, -margins)
    return (torch.sign(signed) + 1) / 2
