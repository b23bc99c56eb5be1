"""The toy sweep's RVSM iterations as one persistent Triton kernel (issue 19, item 2).

:func:`rvsm.algorithms.run_toy` runs a group of configurations on this path when the device is CUDA, triton
imports, and the group is one the kernel supports (:func:`supports`: ``rvsm`` / ``rvscgd``, population
gradient, ReLU or binarized network, penalty ``l0`` / ``l1`` / ``tl1`` / ``group_l1``, normalised or not).
Everything else, and every CPU run, stays on the eager path, which is the oracle: the kernel computes the same
formulas as ``_Group.step`` and ``_Group.advance`` (the same grouping of the operations; the reductions and
the transcendental functions may differ from torch's by a rounding), and ``tests/lib/test_triton_toy.py`` checks
the two against each other under the Triton interpreter (``TRITON_INTERPRET=1``) to 1e-12 in float64.

One launch advances every row ``n_steps`` iterations: each program owns ``ROWS`` configurations, keeps their
``w``, ``w*`` and parameters in registers for the whole launch and writes back only the final ``w`` and the
per-row bookkeeping (``active``, ``iters``, ``converged``, ``diverged``, ``last_step``, ``max_delta``); a
program whose rows have all stopped leaves its loop. ``run_toy`` launches once per trace point (or per
``log_every`` iterations when a callback or a time budget needs to look in), and computes the trace's
metrics from ``w`` with the eager code, so the trace and the final result are assembled as before.

``atan2`` and ``arccos`` are not ``tl`` operations (CUDA's libdevice has them, the interpreter does not), so
the kernel carries Cephes' double-precision ``atan`` (relative error ~1e-16). Constants that float32 cannot
hold exactly (pi, the polynomial coefficients) come in through a small tensor of the run's dtype, never as
literals: older triton versions materialise a Python float literal as float32 before widening it.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor

try:  # the interpreter must be chosen (TRITON_INTERPRET=1) before triton is imported
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None
    HAVE_TRITON = False

BACKENDS = ("auto", "eager", "triton")
ALGORITHMS = ("rvsm", "rvscgd")
NETWORKS = {"relu": 0, "binary": 1}
PENALTIES = {"l1": 0, "l0": 1, "tl1": 2, "group_l1": 3}

# Cephes atan (double): P, Q of its rational approximation on |x| <= 0.66, and the constants that float32
# cannot hold. Index = position in the constant tensor handed to the kernel.
_ATAN_P = (
    -8.750608600031904122785e-01,
    -1.615753718733365076637e01,
    -7.500855792314704667340e01,
    -1.228866684490136173410e02,
    -6.485021904942025371773e01,
)
_ATAN_Q = (
    2.485846490142306297962e01,
    1.650270098316988542046e02,
    4.328810604912902668951e02,
    4.853903996359136964868e02,
    1.945506571482613964425e02,
)
CONSTANTS = (
    math.pi,
    math.pi / 2,
    math.pi / 4,
    6.123233995736765886130e-17,
    2.0 / 3.0,
    2 * math.pi,
    2.41421356237309504880,
    0.66,
    *_ATAN_P,
    *_ATAN_Q,
)


def available() -> bool:
    """Whether triton imports here (on a CPU, the kernel runs only under ``TRITON_INTERPRET=1``)."""
    return HAVE_TRITON


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def supports(group: Any) -> bool:
    """Whether the kernel computes what ``group`` (an ``rvsm.algorithms._Group``) asks for."""
    return (
        group.algorithm in ALGORITHMS
        and group.gradient == "population"
        and group.network in NETWORKS
        and group.penalty in PENALTIES
        and group.dtype in (torch.float64, torch.float32)
    )


def choose_backend(backend: str, *, device: torch.device, compile: bool) -> str:
    """``"triton"`` or ``"eager"`` for ``backend`` (one of :data:`BACKENDS`; ``rvsm.algorithms.toy_backend``
    resolves ``None`` from ``RVSM_TOY_BACKEND``). ``auto`` is triton on CUDA when it imports and ``compile``
    was not asked for; ``triton`` needs triton (on a CPU, the interpreter)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "eager":
        return "eager"
    if backend == "triton":
        if not HAVE_TRITON:
            raise RuntimeError("backend 'triton' asked for, but triton does not import here")
        if device.type != "cuda" and not interpreted():
            raise RuntimeError(f"backend 'triton' on {device.type} needs TRITON_INTERPRET=1 (set before import)")
        return "triton"
    return "triton" if HAVE_TRITON and device.type == "cuda" and not compile else "eager"


if HAVE_TRITON:

    @triton.jit
    def _atan(x, c_ptr):
        """Cephes atan: reduction to |x| <= 0.66, rational approximation, the bits pi/2 and pi/4 lose."""
        pio2 = tl.load(c_ptr + 1)
        pio4 = tl.load(c_ptr + 2)
        morebits = tl.load(c_ptr + 3)
        t3p8 = tl.load(c_ptr + 6)
        lo = tl.load(c_ptr + 7)
        ax = tl.abs(x)
        big = ax > t3p8
        mid = (ax > lo) & ~big
        xr = tl.where(big, -(1.0 / ax), tl.where(mid, (ax - 1.0) / (ax + 1.0), ax))
        y0 = tl.where(big, pio2, tl.where(mid, pio4, 0.0 * ax))
        z = xr * xr
        p = tl.load(c_ptr + 8) * z + tl.load(c_ptr + 9)
        p = p * z + tl.load(c_ptr + 10)
        p = p * z + tl.load(c_ptr + 11)
        p = p * z + tl.load(c_ptr + 12)
        q = z + tl.load(c_ptr + 13)
        q = q * z + tl.load(c_ptr + 14)
        q = q * z + tl.load(c_ptr + 15)
        q = q * z + tl.load(c_ptr + 16)
        q = q * z + tl.load(c_ptr + 17)
        z = z * p / q
        z = xr * z + xr
        z = tl.where(big, z + morebits, tl.where(mid, z + 0.5 * morebits, z))
        y = y0 + z
        return tl.where(x < 0, -y, y)

    @triton.jit
    def _rowsum(x):
        return tl.sum(x, axis=1)

    @triton.jit
    def _threshold(x, mu, a, c_ptr, PENALTY: tl.constexpr):
        """``T_mu(x)`` per row (``mu``, ``a``: ``(ROWS, 1)``), as ``rvsm.prox.apply_threshold``."""
        zero = 0.0 * x
        if PENALTY == 0:  # l1: sign(x) max(|x| - mu, 0)
            sgn = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(x.dtype)
            shr = tl.abs(x) - mu
            out = sgn * tl.where(shr > 0, shr, zero)
        elif PENALTY == 1:  # l0: x where |x| > sqrt(2 mu)
            thr = tl.sqrt(2 * mu)
            out = tl.where(tl.abs(x) > thr, x, zero)
        elif PENALTY == 2:  # tl1 (Zhang & Xin), rvsm.prox._tl1
            two_thirds = tl.load(c_ptr + 4)
            ax = tl.abs(x)
            apx = a + ax
            arg = 1 - 27 * mu * a * (a + 1) / (2 * (apx * apx * apx))
            arg = tl.where(arg < -1.0, -1.0, tl.where(arg > 1.0, 1.0, arg))
            phi = 2 * _atan(tl.sqrt((1 - arg) / (1 + arg)), c_ptr)  # arccos(arg)
            mag = two_thirds * apx * tl.cos(phi / 3) - two_thirds * a + ax / 3
            sub = mu * (a + 1) / a
            sup = tl.sqrt(2 * mu * (a + 1)) - a / 2
            t = tl.where(mu <= a * a / (2 * (a + 1)), sub, sup)
            sgn = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(x.dtype)
            out = tl.where(ax > t, sgn * mag, zero)
        else:  # group_l1 over the row: max(1 - mu/|x|, 0) x
            nrm = tl.sqrt(_rowsum(x * x))[:, None]
            safe = tl.where(nrm > 0, nrm, 1.0)
            scale = 1 - mu / safe
            scale = tl.where(scale > 0, scale, 0.0)
            out = x * tl.where(nrm > 0, scale, 0.0)
        return out

    @triton.jit
    def _rvsm_steps(
        w_ptr,
        ws_ptr,
        k_ptr,
        mu_ptr,
        eta_ptr,
        beta_ptr,
        a_ptr,
        tol_ptr,
        max_iters_ptr,
        active_ptr,
        iters_ptr,
        converged_ptr,
        diverged_ptr,
        last_step_ptr,
        max_delta_ptr,
        c_ptr,
        n_rows,
        d,
        stride,
        n_steps,
        NETWORK: tl.constexpr,
        PENALTY: tl.constexpr,
        NORMALIZE: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < n_rows
        m2 = rmask[:, None] & (cols[None, :] < d)
        offs = rows[:, None].to(tl.int64) * stride + cols[None, :]
        w = tl.load(w_ptr + offs, mask=m2, other=0.0)
        ws = tl.load(ws_ptr + offs, mask=m2, other=0.0)
        k = tl.load(k_ptr + rows, mask=rmask, other=1.0)
        mu = tl.load(mu_ptr + rows, mask=rmask, other=0.0)[:, None]
        eta = tl.load(eta_ptr + rows, mask=rmask, other=0.0)[:, None]
        beta = tl.load(beta_ptr + rows, mask=rmask, other=0.0)[:, None]
        a = tl.load(a_ptr + rows, mask=rmask, other=1.0)[:, None]
        tol = tl.load(tol_ptr + rows, mask=rmask, other=0.0)
        max_iters = tl.load(max_iters_ptr + rows, mask=rmask, other=0)
        active = tl.load(active_ptr + rows, mask=rmask, other=0) != 0
        iters = tl.load(iters_ptr + rows, mask=rmask, other=0)
        converged = tl.load(converged_ptr + rows, mask=rmask, other=0) != 0
        diverged = tl.load(diverged_ptr + rows, mask=rmask, other=0) != 0
        last_step = tl.load(last_step_ptr + rows, mask=rmask, other=0.0)
        max_delta = tl.load(max_delta_ptr + rows, mask=rmask, other=0.0)
        pi = tl.load(c_ptr + 0)
        two_pi = tl.load(c_ptr + 5)
        # the teacher's terms are the same every iteration (the eager step recomputes the same values)
        ns = tl.sqrt(_rowsum(ws * ws))
        vh = ws / ns[:, None]
        kk = k * k - k
        t = 0
        while (t < n_steps) & (tl.sum(active.to(tl.int32), axis=0) > 0):
            nw = tl.sqrt(_rowsum(w * w))
            zero = nw == 0
            nw_safe = tl.where(zero, 1.0, nw)
            if NETWORK == 0:  # relu: rvsm.problems.relu_grad, theta by Kahan's atan2 form of problems.angle
                uh = w / nw[:, None]
                diff = tl.sqrt(_rowsum((uh - vh) * (uh - vh)))
                summ = tl.sqrt(_rowsum((uh + vh) * (uh + vh)))
                theta = 2 * _atan(diff / summ, c_ptr)
                theta = tl.where(zero | (theta != theta), 0.0, theta)
                coef_w = k + kk / pi - (k * ns / (pi * nw_safe)) * tl.sin(theta) - (kk / pi) * (ns / nw_safe)
                coef_w = coef_w / (k * k)
                coef_s = (k / pi) * (pi - theta) / (k * k)
                g = coef_w[:, None] * w - coef_s[:, None] * ws
            else:  # binary: rvsm.problems.binary_coarse_grad
                wh = w / nw_safe[:, None]
                g = (k / two_pi)[:, None] * (wh - vh)
            g = tl.where(zero[:, None], 0.0, g)
            u = _threshold(w, mu, a, c_ptr, PENALTY)
            delta = eta * (g + beta * (w - u))
            w_hat = w - delta
            if NORMALIZE:
                w_hat = w_hat / tl.sqrt(_rowsum(w_hat * w_hat))[:, None]
            delta_norm = tl.sqrt(_rowsum(delta * delta))
            dw = w_hat - w
            step = tl.sqrt(_rowsum(dw * dw))
            finite = (step - step) == 0  # neither NaN nor Inf
            take = active & finite
            w = tl.where(take[:, None], w_hat, w)
            bigger = tl.where(delta_norm > max_delta, delta_norm, max_delta)
            max_delta = tl.where(take, bigger, max_delta)
            iters = iters + take.to(iters.dtype)
            conv_now = take & (step < tol)
            converged = converged | conv_now
            diverged = diverged | (active & ~finite)
            last_step = tl.where(take, step, last_step)
            active = take & ~conv_now & (iters < max_iters)
            t += 1
        tl.store(w_ptr + offs, w, mask=m2)
        tl.store(active_ptr + rows, active.to(tl.int8), mask=rmask)
        tl.store(iters_ptr + rows, iters, mask=rmask)
        tl.store(converged_ptr + rows, converged.to(tl.int8), mask=rmask)
        tl.store(diverged_ptr + rows, diverged.to(tl.int8), mask=rmask)
        tl.store(last_step_ptr + rows, last_step, mask=rmask)
        tl.store(max_delta_ptr + rows, max_delta, mask=rmask)


def launch_shape(dmax: int) -> tuple[int, int, int]:
    """``(BLOCK_D, ROWS, num_warps)`` for rows of ``dmax`` values: a warp's worth of columns per row, and
    about 256 values of each register tensor per program. ``RVSM_TRITON_ROWS`` / ``RVSM_TRITON_WARPS``
    override the last two (for tuning on a GPU)."""
    block_d = max(16, triton.next_power_of_2(dmax))
    rows = max(1, min(16, 256 // block_d))
    warps = max(1, min(8, rows * block_d // 64))
    rows = int(os.environ.get("RVSM_TRITON_ROWS", rows))
    warps = int(os.environ.get("RVSM_TRITON_WARPS", warps))
    return block_d, rows, warps


class TritonStepper:
    """Advances a group's state and bookkeeping in place, ``n`` iterations per call, on the kernel.

    The per-row parameters are the eager group's own tensors (``k``, ``mu = lam/beta``, ``eta``, ``beta``,
    ``a``, ``tol`` in the run's dtype), so both paths start from the same numbers."""

    def __init__(self, group: Any) -> None:
        if not supports(group):
            raise ValueError("the Triton kernel does not support this group")
        self.group = group
        dt = group.dtype

        def flat(x: Tensor) -> Tensor:
            return x.reshape(-1).to(dt).contiguous()

        self.k, self.mu, self.eta = flat(group.k), flat(group.mu), flat(group.eta)
        self.beta, self.a, self.tol = flat(group.beta), flat(group.a), flat(group.tol)
        self.max_iters = group.max_iters.to(torch.int64).contiguous()
        self.w_star = group.w_star.contiguous()
        self.consts = torch.tensor(CONSTANTS, dtype=torch.float64).to(dtype=dt, device=group.device)
        self.block_d, self.rows, self.warps = launch_shape(group.dmax)

    def advance(self, state: dict[str, Tensor], book: dict[str, Tensor], n: int) -> None:
        """``n`` iterations of ``_Group.advance`` on ``state["w"]`` and ``book``, in place (``book``'s flags
        are bool tensors, each its own; ``w`` is contiguous)."""
        g = self.group
        w = state["w"]
        b = w.shape[0]
        grid = (triton.cdiv(b, self.rows),)
        _rvsm_steps[grid](
            w,
            self.w_star,
            self.k,
            self.mu,
            self.eta,
            self.beta,
            self.a,
            self.tol,
            self.max_iters,
            book["active"].view(torch.int8),
            book["iters"],
            book["converged"].view(torch.int8),
            book["diverged"].view(torch.int8),
            book["last_step"],
            book["max_delta"],
            self.consts,
            b,
            g.dmax,
            w.stride(0),
            n,
            NETWORK=NETWORKS[g.network],
            PENALTY=PENALTIES[g.penalty],
            NORMALIZE=bool(g.normalize),
            ROWS=self.rows,
            BLOCK_D=self.block_d,
            num_warps=self.warps,
        )
