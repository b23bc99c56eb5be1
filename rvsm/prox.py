"""Thresholding (proximal) operators of the sparsity penalties (SPEC §2).

Every operator is the exact componentwise minimiser

    T_mu(x) = argmin_u  mu * P(u) + 1/2 * ||u - x||^2

for the penalty ``P`` named by ``penalty``:

==========  ================================  =====================================================
penalty     P(u)                              T_mu(x)
==========  ================================  =====================================================
``l1``      sum |u_i|                         soft: sign(x) max(|x| - mu, 0)
``l0``      #{u_i != 0}                       hard: x where |x| > sqrt(2 mu), else 0
``tl1``     sum (a+1)|u_i| / (a + |u_i|)      Zhang & Xin's closed form (seed 000 §5, SPEC §2)
``group_l1`` sum_g ||u_g||_2                  block soft: max(1 - mu/||x_g||, 0) x_g
==========  ================================  =====================================================

The l0 threshold is ``sqrt(2 mu)``; seed 000's Lemma 5.2.2 prints ``lambda``, which is not the
minimiser (SPEC §2 settles it). ``mu`` (and ``a``) may be Python numbers or tensors that broadcast
against ``x``, so one call thresholds a whole batch of configurations with their own ``mu``.
Functions ending in ``_`` work in place and return their input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

PENALTIES = ("l0", "l1", "tl1", "group_l1")

Scalar = float | Tensor


def _check_mu(mu: Scalar) -> None:
    if isinstance(mu, Tensor):
        if mu.numel() and bool((mu < 0).any()):
            raise ValueError(f"mu must be >= 0, got a tensor with minimum {mu.min().item()}")
    elif not mu >= 0:  # also rejects NaN
        raise ValueError(f"mu must be >= 0, got {mu}")


def _check_a(a: Scalar) -> None:
    if isinstance(a, Tensor):
        if a.numel() and not bool((a > 0).all()):
            raise ValueError(f"a must be > 0, got a tensor with minimum {a.min().item()}")
    elif not a > 0:
        raise ValueError(f"a must be > 0, got {a}")


def check_penalty(penalty: str) -> str:
    """Return ``penalty`` if it is one of :data:`PENALTIES`, else raise ``ValueError``."""
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
    return penalty


# --------------------------------------------------------------------------- l1
def _soft(x: Tensor, mu: Scalar) -> Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - mu, min=0)


def soft_threshold(x: Tensor, mu: Scalar) -> Tensor:
    """Soft thresholding, the prox of ``mu*||u||_1``: ``sign(x) * max(|x| - mu, 0)``."""
    _check_mu(mu)
    return _soft(x, mu)


def soft_threshold_(x: Tensor, mu: Scalar) -> Tensor:
    """In-place :func:`soft_threshold`."""
    _check_mu(mu)
    shrunk = torch.clamp(x.abs() - mu, min=0)
    return x.copy_(torch.sign(x).mul_(shrunk))


# --------------------------------------------------------------------------- l0
def hard_threshold(x: Tensor, mu: Scalar) -> Tensor:
    """Hard thresholding, the prox of ``mu*||u||_0``: keeps ``x_i`` where ``|x_i| > sqrt(2 mu)``.

    At ``|x_i| = sqrt(2 mu)`` both 0 and ``x_i`` minimise; 0 is returned (the sparser one).
    """
    _check_mu(mu)
    return _hard(x, mu)


def _hard(x: Tensor, mu: Scalar) -> Tensor:
    thr = torch.sqrt(2 * mu) if isinstance(mu, Tensor) else math.sqrt(2 * mu)
    return torch.where(x.abs() > thr, x, torch.zeros((), dtype=x.dtype, device=x.device))


def hard_threshold_(x: Tensor, mu: Scalar) -> Tensor:
    """In-place :func:`hard_threshold`."""
    _check_mu(mu)
    thr = torch.sqrt(2 * mu) if isinstance(mu, Tensor) else math.sqrt(2 * mu)
    return x.mul_(x.abs() > thr)


# --------------------------------------------------------------------------- tl1
def tl1_threshold_value(mu: Scalar, a: Scalar) -> Scalar:
    """The TL1 threshold ``t``: ``|x| <= t`` maps to 0.

    ``t = mu (a+1)/a`` when ``mu <= a^2 / (2(a+1))`` (sub-critical, the operator is continuous),
    else ``t = sqrt(2 mu (a+1)) - a/2`` (super-critical, the operator jumps at ``t``).
    """
    if isinstance(mu, Tensor) or isinstance(a, Tensor):
        mu_t = torch.as_tensor(mu)
        a_t = torch.as_tensor(a, dtype=mu_t.dtype if mu_t.is_floating_point() else None)
        sub = mu_t * (a_t + 1) / a_t
        sup = torch.sqrt(2 * mu_t * (a_t + 1)) - a_t / 2
        return torch.where(mu_t <= a_t * a_t / (2 * (a_t + 1)), sub, sup)
    if mu <= a * a / (2 * (a + 1)):
        return mu * (a + 1) / a
    return math.sqrt(2 * mu * (a + 1)) - a / 2


def tl1_threshold(x: Tensor, mu: Scalar, *, a: Scalar = 1.0) -> Tensor:
    """Transformed-l1 thresholding, the prox of ``mu * sum (a+1)|u_i|/(a+|u_i|)``.

    For ``|x| > t`` (see :func:`tl1_threshold_value`)::

        T(x) = sign(x) * ( 2/3 (a+|x|) cos(phi/3) - 2a/3 + |x|/3 ),
        phi  = arccos( 1 - 27 mu a (a+1) / (2 (a+|x|)^3) ),

    and 0 otherwise (Zhang & Xin, ref. [44] of seed 000; SPEC §2).
    """
    _check_mu(mu)
    _check_a(a)
    return _tl1(x, mu, a)


def _tl1(x: Tensor, mu: Scalar, a: Scalar) -> Tensor:
    ax = x.abs()
    apx = a + ax
    arg = 1 - 27 * mu * a * (a + 1) / (2 * apx**3)
    phi = torch.arccos(torch.clamp(arg, -1.0, 1.0))
    mag = (2.0 / 3.0) * apx * torch.cos(phi / 3) - (2.0 / 3.0) * a + ax / 3
    t = tl1_threshold_value(mu, a)
    keep = ax > t
    return torch.where(keep, torch.sign(x) * mag, torch.zeros((), dtype=x.dtype, device=x.device))


def tl1_threshold_(x: Tensor, mu: Scalar, *, a: Scalar = 1.0) -> Tensor:
    """In-place :func:`tl1_threshold`."""
    return x.copy_(tl1_threshold(x, mu, a=a))


# --------------------------------------------------------------------------- group l1
def _group_dims(x: Tensor, dims: int | Sequence[int] | None) -> list[int]:
    if dims is None:
        return list(range(1, x.dim())) if x.dim() > 1 else [0]
    if isinstance(dims, int):
        return [dims]
    return list(dims)


def group_soft_threshold(x: Tensor, mu: Scalar, *, dims: int | Sequence[int] | None = None) -> Tensor:
    """Block soft thresholding, the prox of ``mu * sum_g ||u_g||_2``: ``u_g = max(1 - mu/||x_g||, 0) x_g``.

    A group is everything that shares an index outside ``dims``: the default (``dims=None``)
    reduces over all dimensions but the first, so the groups of a conv or linear weight are its
    output channels (rows), and a 1-D vector is one group. ``mu`` must broadcast against the
    group norms (kept dimensions).
    """
    _check_mu(mu)
    return _group(x, mu, dims)


def _group(x: Tensor, mu: Scalar, dims: int | Sequence[int] | None) -> Tensor:
    norms = torch.linalg.vector_norm(x, dim=_group_dims(x, dims), keepdim=True)
    safe = torch.where(norms > 0, norms, torch.ones((), dtype=x.dtype, device=x.device))
    scale = torch.clamp(1 - mu / safe, min=0)
    return x * torch.where(norms > 0, scale, torch.zeros((), dtype=x.dtype, device=x.device))


def group_soft_threshold_(x: Tensor, mu: Scalar, *, dims: int | Sequence[int] | None = None) -> Tensor:
    """In-place :func:`group_soft_threshold`."""
    return x.copy_(group_soft_threshold(x, mu, dims=dims))


# --------------------------------------------------------------------------- dispatch
def threshold(
    x: Tensor,
    mu: Scalar,
    *,
    penalty: str,
    a: Scalar = 1.0,
    dims: int | Sequence[int] | None = None,
) -> Tensor:
    """``T_mu(x)`` for ``penalty`` (one of :data:`PENALTIES`); out of place."""
    check_penalty(penalty)
    _check_mu(mu)
    if penalty == "tl1":
        _check_a(a)
    return apply_threshold(x, mu, penalty, a, dims)


def apply_threshold(
    x: Tensor, mu: Scalar, penalty: str, a: Scalar = 1.0, dims: int | Sequence[int] | None = None
) -> Tensor:
    """:func:`threshold` without validating ``mu`` and ``a``: for hot loops that validated once.

    (Validating a tensor ``mu`` costs a device synchronisation per call.)
    """
    if penalty == "l1":
        return _soft(x, mu)
    if penalty == "l0":
        return _hard(x, mu)
    if penalty == "tl1":
        return _tl1(x, mu, a)
    if penalty == "group_l1":
        return _group(x, mu, dims)
    raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")


def threshold_(
    x: Tensor,
    mu: Scalar,
    *,
    penalty: str,
    a: Scalar = 1.0,
    dims: int | Sequence[int] | None = None,
) -> Tensor:
    """``x <- T_mu(x)`` in place; returns ``x``."""
    check_penalty(penalty)
    if penalty == "l1":
        return soft_threshold_(x, mu)
    if penalty == "l0":
        return hard_threshold_(x, mu)
    if penalty == "tl1":
        return tl1_threshold_(x, mu, a=a)
    return group_soft_threshold_(x, mu, dims=dims)


def penalty_value(
    u: Tensor,
    *,
    penalty: str,
    a: Scalar = 1.0,
    dim: int | Sequence[int] | None = None,
    dims: int | Sequence[int] | None = None,
) -> Tensor:
    """``P(u)`` summed over ``dim`` (all dimensions when ``None``).

    ``dims`` are the group dimensions of ``group_l1`` as in :func:`group_soft_threshold`; for a
    batch of vectors ``(B, d)`` pass ``dim=-1, dims=-1`` to get one value per row.
    """
    check_penalty(penalty)
    if penalty == "l1":
        per = u.abs()
    elif penalty == "l0":
        per = (u != 0).to(u.dtype)
    elif penalty == "tl1":
        _check_a(a)
        au = u.abs()
        per = (a + 1) * au / (a + au)
    else:
        per = torch.linalg.vector_norm(u, dim=_group_dims(u, dims), keepdim=True)
        if dim is None:
            return per.sum()
        # the group dims are reduced already: sum the remaining ``dim`` that are left
        return per.sum(dim=dim if isinstance(dim, int) else tuple(dim))
    if dim is None:
        return per.sum()
    return per.sum(dim=dim if isinstance(dim, int) else tuple(dim))


# ----------------------------------------------------------------------------- projection onto s-sparse
def top_s_mask(x: Tensor, s: Tensor) -> Tensor:
    """Boolean mask of the ``s`` largest ``|x|`` per row (``s``: ``(B,)``); ties by position (the earlier entry
    is kept). The one top-k magnitude rule: the toy's ``H_s`` and the pruning masks of :mod:`rvsm.optim` use it."""
    order = torch.argsort(x.abs(), dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(x.shape[-1], device=x.device).expand_as(order))
    return ranks < s.unsqueeze(-1)


def hard_threshold_s(x: Tensor, s: Tensor) -> Tensor:
    """``H_s``: keep the ``s`` largest entries in magnitude of each row, zero the rest."""
    return x * top_s_mask(x, s)


class Threshold:
    """A penalty bound to its parameters, callable as ``T_mu``: ``Threshold("tl1", a=1.0)(x, mu)``."""

    def __init__(self, penalty: str, *, a: float = 1.0, dims: int | Sequence[int] | None = None) -> None:
        self.penalty = check_penalty(penalty)
        _check_a(a)
        self.a = a
        self.dims = dims

    def __call__(self, x: Tensor, mu: Scalar) -> Tensor:
        return threshold(x, mu, penalty=self.penalty, a=self.a, dims=self.dims)

    def value(self, u: Tensor, *, dim: int | Sequence[int] | None = None) -> Tensor:
        return penalty_value(u, penalty=self.penalty, a=self.a, dim=dim, dims=self.dims)

    def __repr__(self) -> str:
        return f"Threshold({self.penalty!r}, a={self.a})"
