"""Random changes of basis of a layer's representation (ND'18 §3.2, "axis-aligned interpretability").

ND'18 rotates AlexNet conv5, ``f(x) -> Q^alpha f(x)``, with ``Q`` drawn uniformly from ``SO(n)`` and
``Q^alpha`` (``0 <= alpha <= 1``) the minimal geodesic from ``I`` to ``Q``, then dissects the rotated
representation exactly like the original one. Fewer unique detectors under rotation means that
interpretability is a property of the network's own axes, not of the space they span.

Procedure a driver must follow (the rotated representation is a new layer):

1. ``R = rotation_power(random_rotation(U, seed=s), alpha)`` — ``float64[U, U]``.
2. **New thresholds**: ``T'_k`` is the exact top-0.005 quantile of the *rotated raw* maps
   ``rotate_activations(A, R)`` over all images and positions (ND'18 §2.2 defines ``T_k`` on the
   representation being dissected; rotated units have other distributions, including negative
   values, so the original ``T_k`` are meaningless for them). This needs a full pass over the data
   before the tally pass, as for an unrotated layer.
3. Tally with ``T'``: rotate the raw maps, then upsample, then threshold (e.g.
   ``dissection.dissect(..., transform=partial(rotate_activations, rotation=R))``). Rotation (a mix
   of channels at each position) and bilinear upsampling (per-channel, linear, value-independent
   weights — plain or anchored) commute mathematically, so rotating at the low resolution is the
   cheaper, equivalent order; use the same order in steps 2 and 3.
4. Repeat for several seeds (ND'18 repeats ``alpha = 1`` ten times) and report the spread.

``alpha = 0`` gives the identity exactly, so it reproduces the unrotated dissection exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_rotation", "rotate_activations", "rotation_log", "rotation_power"]


@torch.no_grad()
def random_rotation(
    n: int,
    *,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """A Haar-uniform rotation ``Q`` in ``SO(n)``, ``Tensor[n, n]``.

    Mezzadri (2007), ND'18's reference [45]: ``A`` with i.i.d. standard normal entries, ``A = QR``
    (Householder QR, equivalent to Gram-Schmidt), signs fixed so that ``R`` has a positive diagonal
    (``Q <- Q diag(sign(diag R))``): this ``Q`` is Haar on ``O(n)``. Our addition for ``SO(n)``: if
    ``det Q = -1`` the first column is negated — right-multiplication by a fixed reflection preserves
    Haar measure, so the result is Haar on ``SO(n)``.

    The draw is made on the CPU in float64 with ``torch.Generator().manual_seed(seed)``, so one seed
    gives the same ``Q`` on every machine and device; it is then cast to ``dtype`` and moved to
    ``device`` (default: torch's default device — this function never picks one).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randn((n, n), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    q = q * torch.where(d == 0, torch.ones_like(d), d).unsqueeze(0)
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype=dtype, device=device)


@torch.no_grad()
def rotation_log(q: Tensor, *, atol: float = 1e-9) -> Tensor:
    """Principal logarithm of a rotation: skew-symmetric ``L`` (float64) with ``expm(L) = Q`` and
    every rotation angle in ``(-pi, pi)``.

    Computed from the eigendecomposition ``Q = V diag(e^{i theta}) V^{-1}`` (the complex form of the
    real Schur decomposition of an orthogonal matrix): ``L = Re(V diag(i theta) V^{-1})``, then
    projected onto the skew-symmetric matrices (``(L - L^T) / 2``) to remove rounding.

    Raises ``ValueError`` if ``Q`` is not orthogonal with ``det = +1``, or has an eigenvalue ``-1``
    (a rotation by exactly ``pi``: the minimal geodesic is then not unique; probability zero for a
    Haar draw).
    """
    if q.dim() != 2 or q.shape[0] != q.shape[1]:
        raise ValueError(f"expected a square matrix, got {tuple(q.shape)}")
    q64 = q.to(torch.float64)
    eye = torch.eye(q.shape[0], dtype=torch.float64, device=q.device)
    tol = 1e-8 if q.dtype == torch.float64 else 1e-4
    if not torch.allclose(q64 @ q64.T, eye, atol=tol) or torch.linalg.det(q64) < 0:
        raise ValueError("Q must be a rotation (orthogonal with determinant +1)")
    lam, vec = torch.linalg.eig(q64)
    if bool(((lam + 1).abs() < atol).any()):
        raise ValueError("Q has eigenvalue -1; its fractional powers are not unique")
    theta = torch.angle(lam)
    log = vec @ torch.diag_embed(1j * theta.to(vec.dtype)) @ torch.linalg.inv(vec)
    log = log.real
    return (log - log.T) / 2


@torch.no_grad()
def rotation_power(q: Tensor, alpha: float) -> Tensor:
    """Fractional power ``Q^alpha`` (``0 <= alpha <= 1``) on the minimal geodesic from ``I`` to ``Q``.

    ``Q^alpha = expm(alpha L)`` with ``L`` = :func:`rotation_log` — mathematically
    ``V diag(e^{i alpha theta}) V^H`` (real part), as in ND'18's Schur-decomposition construction;
    going through the skew-symmetric generator makes every power exactly a one-parameter subgroup,
    orthogonal with determinant +1 to rounding. ``alpha = 0`` returns the identity exactly and
    ``alpha = 1`` returns ``Q`` up to rounding (~1e-13). Returns ``q``'s dtype and device.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must lie in [0, 1]")
    n = q.shape[0]
    if alpha == 0.0:
        return torch.eye(n, dtype=q.dtype, device=q.device)
    out = torch.linalg.matrix_exp(alpha * rotation_log(q))
    return out.to(q.dtype)


@torch.no_grad()
def rotate_activations(acts: Tensor, rotation: Tensor) -> Tensor:
    """Change of basis across units at every position.

    ``out[b, i, y, x] = sum_j R[i, j] * acts[b, j, y, x]``, i.e. ``r = R f(x)`` per position.

    Args:
        acts: ``Tensor[B, U, h, w]`` (or ``[B, U]``), floating point.
        rotation: ``Tensor[U, U]`` on the same device; cast to ``acts``' dtype (so the product is
            computed in the activations' precision — our choice; pass float64 maps for more).

    Returns:
        ``Tensor`` of ``acts``' shape, dtype and device. With ``R = I`` the result equals ``acts``
        exactly.
    """
    if rotation.dim() != 2 or rotation.shape != (acts.shape[1], acts.shape[1]):
        raise ValueError(f"rotation must be [U, U] with U = {acts.shape[1]}, got {tuple(rotation.shape)}")
    if rotation.device != acts.device:
        raise ValueError(f"rotation is on {rotation.device}, activations on {acts.device}")
    r = rotation.to(acts.dtype)
    flat = acts.reshape(acts.shape[0], acts.shape[1], -1)  # [B, U, h*w]
    return torch.matmul(r, flat).reshape(acts.shape)
