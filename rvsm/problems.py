"""The seeds' toy problems: a no-overlap one-hidden-layer CNN with Gaussian input (SPEC §3).

Input ``x = (x[1], ..., x[k])``, ``k`` patches of size ``d`` with i.i.d. N(0, 1) entries; one shared
filter ``w`` in R^d; the teacher ``w*`` labels the data. Every function takes batches: vectors have
shape ``(..., d)`` and scalars come back with shape ``(...)``; ``k`` is a number or a tensor that
broadcasts against the batch shape.

ReLU network (RVSM, seed 002 eq. 5): ``f(x; w) = (1/k) sum_i relu(w . x[i])``, squared loss
``E[(f(x; w) - f(x; w*))^2]`` with the closed form of :func:`relu_loss`.

Binarized network (RVSCGD, seed 001): ``h(w, Z) = sum_i 1{Z_i . w > 0}``, sample loss
``1/2 (h(w, Z) - h(w*, Z))^2`` with population value ``k theta / (2 pi)`` and the coarse
(straight-through) gradient of seed 001 eq. 8, whose expectation is seed 001 eq. 15.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

NETWORKS = ("relu", "binary")
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

Number = float | int | Tensor


def _vec(k: Number) -> Number:
    """``k`` shaped to broadcast against ``(..., d)`` vectors."""
    return k.unsqueeze(-1) if isinstance(k, Tensor) and k.dim() > 0 else k


def angle(u: Tensor, v: Tensor) -> Tensor:
    """``theta(u, v)`` in ``[0, pi]`` over the last dimension; NaN where either vector is zero.

    Uses Kahan's ``2 atan2(||u/|u| - v/|v|||, ||u/|u| + v/|v|||)``, accurate near 0 and pi where
    ``arccos`` of the cosine loses half the digits.
    """
    nu = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    nv = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    uh, vh = u / nu, v / nv
    diff = torch.linalg.vector_norm(uh - vh, dim=-1)
    summ = torch.linalg.vector_norm(uh + vh, dim=-1)
    theta = 2 * torch.atan2(diff, summ)
    zero = (nu.squeeze(-1) == 0) | (nv.squeeze(-1) == 0)
    return torch.where(zero, torch.full_like(theta, math.nan), theta)


# --------------------------------------------------------------------------- ReLU network
def relu_loss(w: Tensor, w_star: Tensor, k: Number) -> Tensor:
    """Population loss of the ReLU network (seed 002 eq. 5)::

        f(w) = (1/k^2) [ a (|w|^2 + |w*|^2) - 2k g(w, w*) - 2b |w| |w*| ],
        b = (k^2 - k) / (2 pi),  a = b + k/2,
        g(u, v) = |u| |v| (sin theta + (pi - theta) cos theta) / (2 pi).

    At ``w = 0`` this is ``a |w*|^2 / k^2``.
    """
    nw = torch.linalg.vector_norm(w, dim=-1)
    ns = torch.linalg.vector_norm(w_star, dim=-1)
    theta = torch.nan_to_num(angle(w, w_star), nan=0.0)  # g carries |w|, so theta is moot at 0
    b = (k * k - k) / (2 * math.pi)
    a = b + k / 2
    g = nw * ns * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
    return (a * (nw**2 + ns**2) - 2 * k * g - 2 * b * nw * ns) / (k * k)


def relu_grad(w: Tensor, w_star: Tensor, k: Number) -> Tensor:
    """Gradient of :func:`relu_loss` for ``w != 0`` (SPEC §3a)::

    grad f(w) = (1/k^2) [ (k + (k^2-k)/pi - (k |w*| / (pi |w|)) sin theta
                           - ((k^2-k)/pi) |w*|/|w|) w  -  (k/pi)(pi - theta) w* ].

    ``f`` is not differentiable at ``w = 0`` (it has a ``|w|`` term); there this returns 0, the
    value autograd gives the empirical loss at 0 (``relu'(0) = 0``: every patch response is 0).
    """
    nw = torch.linalg.vector_norm(w, dim=-1)
    ns = torch.linalg.vector_norm(w_star, dim=-1)
    zero = nw == 0
    theta = torch.nan_to_num(angle(w, w_star), nan=0.0)
    nw_safe = torch.where(zero, torch.ones_like(nw), nw)
    kk = k * k - k
    coef_w = k + kk / math.pi - (k * ns / (math.pi * nw_safe)) * torch.sin(theta) - (kk / math.pi) * (ns / nw_safe)
    coef_w = coef_w / (k * k)
    coef_s = (k / math.pi) * (math.pi - theta) / (k * k)
    grad = coef_w.unsqueeze(-1) * w - coef_s.unsqueeze(-1) * w_star
    return torch.where(zero.unsqueeze(-1), torch.zeros_like(grad), grad)


def relu_forward(w: Tensor, z: Tensor) -> Tensor:
    """``f(Z; w) = (1/k) sum_i relu(w . Z_i)`` for samples ``z`` of shape ``(..., m, k, d)``."""
    return torch.relu(torch.einsum("...mkd,...d->...mk", z, w)).mean(dim=-1)


def relu_empirical_loss(w: Tensor, w_star: Tensor, z: Tensor) -> Tensor:
    """Sample mean of ``(f(Z; w) - f(Z; w*))^2`` over ``z`` of shape ``(..., m, k, d)``."""
    return (relu_forward(w, z) - relu_forward(w_star, z)).pow(2).mean(dim=-1)


def relu_empirical_grad(w: Tensor, w_star: Tensor, z: Tensor) -> Tensor:
    """Gradient of :func:`relu_empirical_loss` in ``w`` by autograd (one per batch row)."""
    with torch.enable_grad():
        wg = w.detach().requires_grad_(True)
        loss = relu_empirical_loss(wg, w_star.detach(), z).sum()
        (grad,) = torch.autograd.grad(loss, wg)
    return grad


# --------------------------------------------------------------------------- binarized network
def binary_loss(w: Tensor, w_star: Tensor, k: Number) -> Tensor:
    """Population loss of the binarized network, ``k theta(w, w*) / (2 pi)`` (seed 001 eq. 3).

    At ``w = 0``, ``h(0, Z) = 0`` and the loss is ``E[h(w*, Z)^2] / 2 = k (k + 1) / 8``.
    """
    theta = angle(w, w_star)
    at_zero = torch.linalg.vector_norm(w, dim=-1) == 0
    value = k * theta / (2 * math.pi)
    return torch.where(at_zero, k * (k + 1) / 8 + torch.zeros_like(value), value)


def binary_coarse_grad(w: Tensor, w_star: Tensor, k: Number) -> Tensor:
    """Expected coarse gradient (seed 001 eq. 15; it contains the sqrt(2/pi) of eq. 8)::

        E[g(w, Z)] = (k/pi) [ w_hat - cos(theta/2) (w_hat + w*) / |w_hat + w*| ],  w_hat = w/|w|.

    For unit ``w_hat`` and ``w*``, ``|w_hat + w*| = 2 cos(theta/2)``, so eq. 15 is exactly
    ``(k/(2 pi)) (w_hat - w*)``, which is what is computed: it needs no division by
    ``|w_hat + w*|``, which is 0 at ``w = -w*`` (eq. 15 is 0/0 there; its limit, and the Monte Carlo
    mean, is ``(k/pi) w_hat``). At ``w = 0`` every indicator ``1{Z_i . w > 0}`` is 0, so ``g = 0``
    for every sample and the expectation is 0. ``w*`` is taken unit length.
    """
    nw = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    zero = nw == 0
    wh = w / torch.where(zero, torch.ones_like(nw), nw)
    ws = w_star / torch.linalg.vector_norm(w_star, dim=-1, keepdim=True)
    grad = (_vec(k) / (2 * math.pi)) * (wh - ws)
    return torch.where(zero, torch.zeros_like(grad), grad)


def binary_forward(w: Tensor, z: Tensor) -> Tensor:
    """``h(w, Z) = sum_i 1{Z_i . w > 0}`` for samples ``z`` of shape ``(..., m, k, d)``."""
    return (torch.einsum("...mkd,...d->...mk", z, w) > 0).to(z.dtype).sum(dim=-1)


def binary_empirical_loss(w: Tensor, w_star: Tensor, z: Tensor) -> Tensor:
    """Sample mean of ``1/2 (h(w, Z) - h(w*, Z))^2``."""
    return 0.5 * (binary_forward(w, z) - binary_forward(w_star, z)).pow(2).mean(dim=-1)


def binary_empirical_coarse_grad(w: Tensor, w_star: Tensor, z: Tensor) -> Tensor:
    """Sample mean of the coarse gradient (seed 001 eq. 8)::

    g(w, Z) = sqrt(2/pi) sum_i Z_i 1{Z_i.w > 0} (1{Z_i.w > 0} - 1{Z_i.w* > 0}).
    """
    on_w = (torch.einsum("...mkd,...d->...mk", z, w) > 0).to(z.dtype)
    on_s = (torch.einsum("...mkd,...d->...mk", z, w_star) > 0).to(z.dtype)
    weight = on_w * (on_w - on_s)  # (..., m, k)
    per_sample = torch.einsum("...mk,...mkd->...md", weight, z)
    return SQRT_2_OVER_PI * per_sample.mean(dim=-2)


# --------------------------------------------------------------------------- dispatch
_FUNCTIONS = {
    # network: (population loss, population (coarse) gradient, empirical gradient)
    "relu": (relu_loss, relu_grad, relu_empirical_grad),
    "binary": (binary_loss, binary_coarse_grad, binary_empirical_coarse_grad),
}


def _functions(network: str) -> tuple:
    if network not in _FUNCTIONS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    return _FUNCTIONS[network]


def population_loss(network: str, w: Tensor, w_star: Tensor, k: Number) -> Tensor:
    """The closed-form population loss of ``network`` (``"relu"`` or ``"binary"``)."""
    return _functions(network)[0](w, w_star, k)


def population_grad(network: str, w: Tensor, w_star: Tensor, k: Number) -> Tensor:
    """The closed-form gradient (ReLU) or expected coarse gradient (binarized)."""
    return _functions(network)[1](w, w_star, k)


def empirical_grad(network: str, w: Tensor, w_star: Tensor, z: Tensor) -> Tensor:
    """Sample gradient: autograd for ReLU, the coarse gradient for the binarized net."""
    return _functions(network)[2](w, w_star, z)


def loss_at_zero(network: str, k: Number, w_star_norm: Number = 1.0) -> Number:
    """``f(0)``: ``a |w*|^2 / k^2`` (ReLU) or ``k (k+1) / 8`` (binarized)."""
    if network == "relu":
        a = (k * k - k) / (2 * math.pi) + k / 2
        return a * w_star_norm**2 / (k * k)
    if network == "binary":
        return k * (k + 1) / 8
    raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")


def lipschitz_constant(network: str, k: Number, w_star_norm: Number = 1.0, *, m: float = 0.5) -> Number:
    """``L`` of Theorem 1: ReLU ``1 + 3 |w*| / M`` (seed 002 Lemma 4, ``M = 1/2``), binarized ``k/pi``."""
    if network == "relu":
        return 1 + 3 * w_star_norm / m
    if network == "binary":
        return k / math.pi
    raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")


# --------------------------------------------------------------------------- data and vectors
def sample_inputs(m: int, k: int, d: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """``m`` Gaussian inputs of shape ``(m, k, d)``, drawn on the CPU from ``generator``."""
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    return torch.randn(m, k, d, generator=generator, dtype=torch.float64).to(dtype)


def make_teacher(
    d: int,
    *,
    seed: int | None = None,
    w_star: list[float] | Tensor | None = None,
    sparsity: int | None = None,
    values: str = "equal",
) -> Tensor:
    """The unit teacher ``w*`` (float64, CPU).

    - ``w_star`` given: normalised to unit length (scaled by its largest entry first, so that a
      subnormal or huge ``w_star`` normalises correctly).
    - ``sparsity`` ``s`` given: ``values="equal"`` is ``s^{-1/2}(1,...,1,0,...,0)`` (seed 003);
      ``values="gaussian"`` puts N(0,1) values on a random support of size ``s`` (from ``seed``), normalised.
    - otherwise uniform on the sphere from ``seed``.
    """
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if w_star is not None:
        v = _given_vector("w_star", w_star, d)
        scale = v.abs().max()
        if scale == 0:
            raise ValueError("w_star must not be all zeros")
        v = v / scale  # first to max |v_i| = 1: the norm of a subnormal or huge w_star neither underflows nor overflows
        return v / torch.linalg.vector_norm(v)
    gen = stream("teacher", seed)
    if sparsity is not None:
        if not 1 <= sparsity <= d:
            raise ValueError(f"sparsity must be in [1, d={d}], got {sparsity}")
        v = torch.zeros(d, dtype=torch.float64)
        if values == "equal":
            v[:sparsity] = 1.0
        elif values == "gaussian":
            support = torch.randperm(d, generator=gen)[:sparsity]
            v[support] = torch.randn(sparsity, generator=gen, dtype=torch.float64)
        else:
            raise ValueError(f"values must be 'equal' or 'gaussian', got {values!r}")
        return v / torch.linalg.vector_norm(v)
    return _unit_gaussian(d, stream("teacher", seed))


def make_init(d: int, *, seed: int | None = None, w0: list[float] | Tensor | None = None) -> Tensor:
    """``w0`` (float64, CPU): as given, or uniform on the unit sphere from ``seed``.

    The start draws from its own stream (:func:`stream`), so ``init.seed == teacher.seed`` does not
    give ``w0 = w*``."""
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if w0 is not None:
        return _given_vector("w0", w0, d).clone()
    return _unit_gaussian(d, stream("init", seed))


def stream(name: str, seed: int | None) -> torch.Generator:
    """A generator for the random stream ``name`` (``"teacher"``, ``"init"``) at ``seed``.

    The torch seed is the first 8 bytes of ``blake2b(name:seed)``, so streams with different names never
    share a seed even when the user's seeds are equal (the teacher and the start of one spec would
    otherwise be the same unit vector)."""
    if seed is not None and not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    digest = hashlib.blake2b(f"{name}:{int(seed or 0)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _given_vector(name: str, values: list[float] | Tensor, d: int) -> Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() != d:
        raise ValueError(f"{name} must have d={d} entries, got {v.numel()}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite")
    return v


def _unit_gaussian(d: int, gen: torch.Generator) -> Tensor:
    """Uniform on the unit sphere (a normalised N(0, I) draw from ``gen``)."""
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v)


class ToyProblem:
    """One toy problem: ``network``, ``k``, teacher ``w_star`` (``(..., d)``).

    ``loss(w)`` is the population loss; ``grad(w)`` the population (coarse) gradient, or with
    ``samples`` (``(..., m, k, d)``) the empirical one.
    """

    def __init__(self, network: str, *, k: Number, w_star: Tensor) -> None:
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
        if not isinstance(k, Tensor) and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.network = network
        self.k = k
        self.w_star = w_star

    def loss(self, w: Tensor) -> Tensor:
        return population_loss(self.network, w, self.w_star, self.k)

    def grad(self, w: Tensor, samples: Tensor | None = None) -> Tensor:
        if samples is None:
            return population_grad(self.network, w, self.w_star, self.k)
        return empirical_grad(self.network, w, self.w_star, samples)
