"""RVSM, RVSCGD, adaptive hard thresholding, GD and ADMM on the toy problems, batched (SPEC §4-5).

Every configuration of a run is a row of a ``(B, d)`` tensor; rows that share the discrete
choices (network, algorithm, penalty, ...) and ``d`` advance together, one tensor operation per
step for all of them, each with its own ``k``, ``lam``, ``beta``, ``eta``, ``a``, teacher and start.
A single configuration is a batch of one, through the same code, so a sweep and the same
configurations run one at a time give the same answers.

Algorithms (``mu = lam / beta``, ``T_mu`` from :mod:`rvsm.prox`):

- ``rvsm`` / ``rvscgd`` (seed 000 Algorithm 1; seed 001 with the coarse gradient)::

      u <- T_mu(w);  w_hat <- w - eta grad f(w) - eta beta (w - u);  w <- w_hat / |w_hat|

  without the last step when ``normalize=False`` (seed 002 Algorithm 1). Output ``u = T_mu(w)``.
- ``aht`` (seed 000 Algorithm 2, ``s``-sparse target)::

      w_hat <- w - eta grad f(w);  w <- H_s(w_hat) if supp H_s(w) != supp H_s(w_hat) else w_hat

- ``gd``: ``w <- w - eta grad f(w)`` (normalised when ``normalize``); ``u = T_mu(w)`` is the one-shot
  thresholded answer.
- ``admm`` (empirical variant of SPEC §4, ``rho = beta``)::

      w <- w - eta (grad f(w) + beta (w - z + y));  z <- H_s(w + y);  y <- y + w - z;  u = z

Stopping per row: ``max_iters``, ``|w^{t+1} - w^t| < tol``, NaN/Inf (diverged, with the iteration),
or the wall-clock budget of the call.

Whatever the run's ``dtype``, the metrics of SPEC §5 (losses, angles, ``L_beta``, ``|u|_0``) are
computed in float64 from the iterates: the closed-form losses cancel catastrophically near the limit
in float32. The trace keeps at most ``max_trace_points`` points per run (:data:`TRACE_POINTS_PER_RUN`,
and :data:`TRACE_POINTS_TOTAL` shared by a batch): ``log_every`` is raised to fit, and the run says so.
"""

from __future__ import annotations

import bisect
import gc
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import isfinite
from typing import Any

import torch
from torch import Tensor

from . import problems
from .prox import PENALTIES, apply_threshold, hard_threshold_s, penalty_value, top_s_mask

ALGORITHMS = ("rvsm", "rvscgd", "aht", "gd", "admm")
GRADIENTS = ("population", "empirical")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
METRICS = ("lagrangian", "theta_w", "theta_u", "f_w", "f_u", "f_u_normalized", "nnz_u")
TRACE_POINTS_PER_RUN = 10_000  # most trace points one run keeps
TRACE_POINTS_TOTAL = 1_000_000  # most trace points a batch keeps, shared by its runs
TRACE_POINTS_MIN = 10  # fewest points per run that the total budget may leave
REPORT_INTERVAL_S = 0.5  # longest time between progress callbacks when the trace interval was raised

ProgressCallback = Callable[[dict], None]


@dataclass(kw_only=True, eq=False)
class ToyConfig:
    """One fully resolved toy run. ``w_star`` (unit) and ``w0`` are float64 CPU vectors of length ``d``."""

    network: str = "relu"
    k: int
    d: int
    w_star: Tensor
    w0: Tensor
    algorithm: str = "rvsm"
    normalize: bool = True
    penalty: str = "l0"
    a: float = 1.0
    lam: float
    beta: float
    eta: float
    max_iters: int = 20000
    tol: float = 0.0
    gradient: str = "population"
    samples: int | None = None
    batch_size: int | None = None
    data_seed: int = 0
    s: int | None = None
    log_every: int = 10
    dtype: str = "float64"

    def __post_init__(self) -> None:
        _choice("network", self.network, problems.NETWORKS)
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _choice("penalty", self.penalty, PENALTIES)
        _choice("gradient", self.gradient, GRADIENTS)
        _choice("dtype", self.dtype, tuple(DTYPES))
        for name in ("k", "d", "max_iters", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, ok, rule in (
            ("lam", self.lam >= 0, ">= 0"),
            ("beta", self.beta > 0, "> 0"),
            ("eta", self.eta > 0, "> 0"),
            ("a", self.a > 0, "> 0"),
            ("tol", self.tol >= 0, ">= 0"),
        ):
            if not (ok and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be finite and {rule}, got {getattr(self, name)}")
        for name in ("w_star", "w0"):
            v = getattr(self, name)
            if v.shape != (self.d,):
                raise ValueError(f"{name} must have shape ({self.d},), got {tuple(v.shape)}")
        bad = number_rule(
            dtype=self.dtype,
            k=self.k,
            lam=self.lam,
            beta=self.beta,
            eta=self.eta,
            a=self.a,
            w0_norm=math.hypot(*self.w0.tolist()),
        )
        if bad is not None:
            raise ValueError(f"{bad[0]} {bad[1]}")
        if self.algorithm == "rvscgd" and self.network != "binary":
            raise ValueError("algorithm 'rvscgd' needs network 'binary' (use 'rvsm' for the ReLU network)")
        if self.algorithm in ("aht", "admm"):
            if self.s is None:
                raise ValueError(f"algorithm {self.algorithm!r} needs the target sparsity s")
            if not 1 <= self.s <= self.d:
                raise ValueError(f"s must be in [1, d={self.d}], got {self.s}")
        if self.gradient == "empirical":
            if self.samples is None and self.batch_size is None:
                raise ValueError("gradient 'empirical' needs samples (a fixed set) or batch_size (fresh batches)")
            for name in ("samples", "batch_size"):
                v = getattr(self, name)
                if v is not None and v < 1:
                    raise ValueError(f"{name} must be >= 1, got {v}")
            if self.samples is not None and self.batch_size is not None and self.batch_size > self.samples:
                raise ValueError(f"batch_size must be <= samples={self.samples}, got {self.batch_size}")

    @property
    def mu(self) -> float:
        return self.lam / self.beta

    def group_key(self) -> tuple:
        """The discrete choices that rows of one batch share.

        With the population gradient, rows of different ``d`` share a batch, zero-padded to the
        largest ``d``: padded coordinates of ``w``, ``w*`` and ``u`` stay exactly 0 (every
        gradient, threshold and projection maps 0 to 0 there), so norms, angles, losses and
        penalties are unchanged. Sampled inputs have the shape of ``(k, d)``, so the empirical
        mode groups by them.
        """
        empirical = (self.k, self.d, self.samples, self.batch_size) if self.gradient == "empirical" else None
        return (
            self.network,
            self.algorithm,
            self.penalty,
            self.normalize,
            self.gradient,
            self.dtype,
            self.log_every,
            empirical,
        )


def _choice(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def number_rule(
    *, dtype: str, k: int, lam: float, beta: float, eta: float, a: float, w0_norm: float | None
) -> tuple[str, str] | None:
    """The first ``(field, rule broken)`` that makes a run meaningless in ``dtype``, or ``None``.

    Every parameter is used as a ``dtype`` number, so ``beta``, ``eta``, ``a`` and a non-zero ``lam``
    must be normal numbers of that type (a subnormal ``a`` is 0 in float32; a huge one is Inf), and so
    must the products the step forms: ``mu = lam/beta`` (the threshold parameter), ``eta beta`` (the
    splitting step) and ``k^2`` (in the loss). ``|w0|^2`` must be a normal number too, or the first
    step's norm underflows to 0 (``w0 = 0``: ``theta(w0, w*)`` is undefined and the normalised step
    is 0/0) or overflows.
    """
    fi = torch.finfo(DTYPES[dtype])
    lo, hi = fi.tiny, fi.max
    span = f"[{lo:.4g}, {hi:.4g}], the normal {dtype} numbers"
    for name, v in (("beta", beta), ("eta", eta), ("a", a), ("lam", lam)):
        if name == "lam" and v == 0:
            continue
        if not lo <= v <= hi:
            return name, f"must be in {span} (dtype {dtype}), got {v!r}"
    if lam / beta > hi:
        return "lam", f"lam/beta (mu, the threshold parameter) must be <= {hi:.4g} in {dtype}, got {lam / beta!r}"
    if eta * beta > hi:
        return "eta", f"eta*beta (the splitting step) must be <= {hi:.4g} in {dtype}, got {eta * beta!r}"
    if k > math.sqrt(hi):  # exact for any int
        shown = k if k < 10**20 else f"an integer of {len(str(k))} digits"
        return "k", f"k^2 must be <= {hi:.4g} in {dtype}, got k={shown}"
    if w0_norm is not None:
        if w0_norm == 0:
            return "w0", "must not be all zeros (theta(w0, w*) is undefined and the normalised step is 0/0)"
        if not math.sqrt(lo) <= w0_norm <= math.sqrt(hi):
            return "w0", (
                f"its norm must be in [{math.sqrt(lo):.4g}, {math.sqrt(hi):.4g}] so that |w0|^2 is a normal "
                f"{dtype} number, got {w0_norm!r}"
            )
    return None


@dataclass(eq=False)
class ToyRun:
    """What one configuration produced. Tensors are float64 on the CPU."""

    config: ToyConfig
    w: Tensor
    u: Tensor
    iters: int
    converged: bool
    diverged: bool
    diverged_at: int | None
    stopped_by: str  # "max_iters" | "tol" | "diverged" | "time_budget"
    final: dict[str, float]
    trace: dict[str, list]
    max_step_norm: float  # max_t |eta grad f(w^t) + eta beta (w^t - u^{t+1})| (Theorem 1 (i))
    wall_time_s: float
    trace_log_every: int = 0  # the logging interval used: log_every, raised when the trace would be too long
    max_trace_points: int = 0  # the cap that interval keeps the trace under


# --------------------------------------------------------------------------- helpers
def _norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=-1)


class _Group:
    """The tensors of one batch of rows that share :meth:`ToyConfig.group_key`."""

    def __init__(self, cfgs: list[ToyConfig], device: torch.device) -> None:
        c0 = cfgs[0]
        self.cfgs = cfgs
        self.network, self.algorithm, self.penalty = c0.network, c0.algorithm, c0.penalty
        self.normalize, self.gradient, self.log_every = c0.normalize, c0.gradient, c0.log_every
        self.dtype = DTYPES[c0.dtype]
        self.device = device
        dt: dict[str, Any] = dict(dtype=self.dtype, device=device)

        def col(name: str) -> Tensor:
            return torch.tensor([float(getattr(c, name)) for c in cfgs], **dt).unsqueeze(-1)

        self.k = torch.tensor([float(c.k) for c in cfgs], **dt)
        self.lam, self.beta, self.eta, self.a = col("lam"), col("beta"), col("eta"), col("a")
        f64: dict[str, Any] = dict(dtype=torch.float64, device=device)  # the metrics' copies
        self.k64 = torch.tensor([float(c.k) for c in cfgs], **f64)
        self.lam64 = torch.tensor([c.lam for c in cfgs], **f64)
        self.beta64 = torch.tensor([c.beta for c in cfgs], **f64)
        self.a64 = torch.tensor([c.a for c in cfgs], **f64).unsqueeze(-1)
        self.mu = self.lam / self.beta
        self.tol = torch.tensor([c.tol for c in cfgs], **dt)
        self.max_iters = torch.tensor([c.max_iters for c in cfgs], device=device)
        self.s = torch.tensor([c.s or c.d for c in cfgs], device=device)
        self.dmax = max(c.d for c in cfgs)

        def padded(name: str) -> Tensor:
            if all(c.d == self.dmax for c in cfgs):  # one stack instead of a slice copy per row (large sweeps)
                return torch.stack([getattr(c, name).to(torch.float64) for c in cfgs]).to(device)
            out = torch.zeros(len(cfgs), self.dmax, dtype=torch.float64)
            for i, c in enumerate(cfgs):
                out[i, : c.d] = getattr(c, name)
            return out.to(device)

        self.w_star64 = padded("w_star")  # the metrics' teacher: exact, not rounded to the run's dtype
        self.w_star, self.w0 = self.w_star64.to(self.dtype), padded("w0").to(self.dtype)
        self.generators = [torch.Generator().manual_seed(int(c.data_seed)) for c in cfgs]
        self.fixed: Tensor | None = None
        if self.gradient == "empirical" and c0.samples is not None:
            self.fixed = torch.stack(
                [problems.sample_inputs(c0.samples, c0.k, c0.d, generator=g, dtype=self.dtype) for g in self.generators]
            ).to(device)

    # -- gradient
    def samples(self) -> Tensor:
        c0 = self.cfgs[0]
        if self.fixed is not None:
            if c0.batch_size is None:
                return self.fixed
            m = self.fixed.shape[1]  # the fixed sample set's size (``samples``)
            idx = torch.stack([torch.randperm(m, generator=g)[: c0.batch_size] for g in self.generators]).to(
                self.device
            )
            return torch.gather(self.fixed, 1, idx[:, :, None, None].expand(-1, -1, c0.k, c0.d))
        if c0.batch_size is None:
            raise ValueError("an empirical gradient needs samples or batch_size")
        b = c0.batch_size
        return torch.stack(
            [problems.sample_inputs(b, c0.k, c0.d, generator=g, dtype=self.dtype) for g in self.generators]
        ).to(self.device)

    def grad(self, w: Tensor) -> Tensor:
        if self.gradient == "population":
            return problems.population_grad(self.network, w, self.w_star, self.k)
        return problems.empirical_grad(self.network, w, self.w_star, self.samples())

    def threshold(self, w: Tensor) -> Tensor:
        return apply_threshold(w, self.mu, self.penalty, self.a, -1)

    # -- one step: returns (new state, |eta grad + eta beta (w - u)| or None)
    def step(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
        w = state["w"]
        g = self.grad(w)
        alg = self.algorithm
        if alg in ("rvsm", "rvscgd"):
            delta = self.eta * (g + self.beta * (w - self.threshold(w)))
            w_hat = w - delta
            if self.normalize:
                w_hat = w_hat / _norm(w_hat).unsqueeze(-1)
            return {"w": w_hat}, _norm(delta)
        if alg == "gd":
            w_hat = w - self.eta * g
            if self.normalize:
                w_hat = w_hat / _norm(w_hat).unsqueeze(-1)
            return {"w": w_hat}, None
        if alg == "aht":
            w_hat = w - self.eta * g
            moved = (top_s_mask(w, self.s) != top_s_mask(w_hat, self.s)).any(dim=-1, keepdim=True)
            return {"w": torch.where(moved, hard_threshold_s(w_hat, self.s), w_hat)}, None
        # admm
        z, y = state["z"], state["y"]
        w_new = w - self.eta * (g + self.beta * (w - z + y))
        z_new = hard_threshold_s(w_new + y, self.s)
        return {"w": w_new, "z": z_new, "y": y + w_new - z_new}, None

    def advance(self, state: dict[str, Tensor], book: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """One iteration for every row still active; stopped rows keep their state.

        ``book`` holds the per-row bookkeeping: ``active``, ``iters``, ``converged``, ``diverged``,
        ``last_step`` (``|w^{t+1} - w^t|``) and ``max_delta`` (Theorem 1 (i)'s step norm, max over t).
        A step is finite exactly when its norm is (the state was finite before it).
        """
        new, delta_norm = self.step(state)
        step = _norm(new["w"] - state["w"])
        active = book["active"]
        finite = torch.isfinite(step)
        take = active & finite
        keep = take.unsqueeze(-1)
        state = {name: torch.where(keep, v, state[name]) for name, v in new.items()}
        max_delta = book["max_delta"]
        if delta_norm is not None:
            max_delta = torch.where(take, torch.maximum(max_delta, delta_norm), max_delta)
        iters = book["iters"] + take
        conv_now = take & (step < self.tol)
        return state, {
            "active": take & ~conv_now & (iters < self.max_iters),
            "iters": iters,
            "converged": book["converged"] | conv_now,
            "diverged": book["diverged"] | (active & ~finite),
            "last_step": torch.where(take, step, book["last_step"]),
            "max_delta": max_delta,
        }

    def initial_state(self) -> dict[str, Tensor]:
        w = self.w0.clone()
        if self.algorithm == "aht":
            w = hard_threshold_s(w, self.s)
        state = {"w": w}
        if self.algorithm == "admm":
            state["z"] = hard_threshold_s(w, self.s)
            state["y"] = torch.zeros_like(w)
        return state

    def sparse_answer(self, state: dict[str, Tensor]) -> Tensor:
        if self.algorithm == "admm":
            return state["z"]
        if self.algorithm == "aht":
            return state["w"]
        return self.threshold(state["w"])

    def metrics(self, w: Tensor, u: Tensor) -> dict[str, Tensor]:
        """SPEC §5 metrics per row, with ``L_beta(u, w) = f(w) + lam P(u) + beta/2 |w - u|^2``,
        in float64 whatever the run's dtype (the iterates are exact in float64)."""
        net = self.network
        w, u, ws, k = w.to(torch.float64), u.to(torch.float64), self.w_star64, self.k64
        f_w = problems.population_loss(net, w, ws, k)
        f_u = problems.population_loss(net, u, ws, k)
        nu = _norm(u).unsqueeze(-1)
        u_hat = u / torch.where(nu > 0, nu, torch.ones_like(nu))
        f_un = problems.population_loss(net, u_hat, ws, k)
        pen = penalty_value(u, penalty=self.penalty, a=self.a64, dim=-1, dims=-1)
        lag = f_w + self.lam64 * pen + 0.5 * self.beta64 * _norm(w - u) ** 2
        return {
            "lagrangian": lag,
            "theta_w": problems.angle(w, ws),
            "theta_u": problems.angle(u, ws),
            "f_w": f_w,
            "f_u": f_u,
            "f_u_normalized": f_un,
            "nnz_u": (u != 0).sum(dim=-1).to(torch.float64),
        }


def _compiled_advance(group: _Group) -> Callable:
    """``group.advance`` fused by ``torch.compile`` (population gradient only: the empirical mode
    draws samples from per-row CPU generators, which do not trace)."""
    if group.gradient != "population":
        return group.advance
    return torch.compile(group.advance, dynamic=False, fullgraph=True)


def trace_interval(log_every: int, max_iters: int, max_points: int) -> int:
    """``log_every``, raised so that a run of ``max_iters`` keeps at most ``max_points`` trace points
    (iteration 0, every ``log_every``-th and an off-grid last one: ``max_iters/log_every + 2``)."""
    if max_points < 3:
        raise ValueError(f"max_points must be >= 3, got {max_points}")
    return max(log_every, math.ceil(max_iters / (max_points - 2)))


def _finite_or_nan(v: Tensor) -> list[float]:
    return torch.where(torch.isfinite(v), v, torch.full_like(v, math.nan)).tolist()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a block that builds many lists and dicts and no cycles (a
    sweep's per-run results): otherwise its full collections rescan every object built so far, and for a
    10,000-run sweep they took as long as the assembly itself. Restored afterwards (if it was on)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _run_group(
    group: _Group,
    *,
    deadline: float | None,
    callback: ProgressCallback | None,
    group_index: int,
    groups: int,
    rows: list[int],
    compile: bool = False,
    max_points: int = TRACE_POINTS_PER_RUN,
    stepper: Any = None,
) -> list[ToyRun]:
    t_start = time.perf_counter()
    n = len(group.cfgs)
    dev = group.device
    state = group.initial_state()
    flag = torch.zeros(n, dtype=torch.bool, device=dev)
    book = {
        "active": ~flag,
        "iters": torch.zeros(n, dtype=torch.long, device=dev),
        "converged": flag.clone(),  # each its own: the Triton path writes them in place
        "diverged": flag.clone(),
        "last_step": torch.full((n,), math.nan, dtype=group.dtype, device=dev),
        "max_delta": torch.zeros(n, dtype=group.dtype, device=dev),
    }
    active, last_step = book["active"], book["last_step"]
    snap_iters: list[int] = []
    snaps: list[dict[str, Tensor]] = []
    snap_steps: list[Tensor] = []

    def snapshot(t: int) -> None:
        w = state["w"]
        snap_iters.append(t)
        snaps.append(group.metrics(w, group.sparse_answer(state)))
        snap_steps.append(last_step.clone())

    snapshot(0)
    limit = int(group.max_iters.max())
    check_every = group.log_every  # the requested interval: stopping, the time budget and progress
    keep_every = trace_interval(check_every, limit, max_points)  # the trace's interval (>= check_every)
    timed_out = False
    t = 0
    last_report = time.perf_counter()
    advance = _compiled_advance(group) if compile else group.advance
    # The Triton path advances to the next check point in one launch; with no callback and no time budget
    # to consult, to the next trace point (the break when every row has stopped only saves work: the
    # snapshots it skips lie past every row's last iteration, and the kernel's programs stop by themselves).
    stride = check_every if callback is not None or deadline is not None else math.lcm(check_every, keep_every)
    while t < limit:
        if stepper is None:
            state, book = advance(state, book)
            t += 1
        else:
            nxt = min(limit, (t // stride + 1) * stride)
            stepper.advance(state, book, nxt - t)
            t = nxt
        active, last_step = book["active"], book["last_step"]
        if t % check_every and t != limit:
            continue
        on_grid = t % keep_every == 0 or t == limit
        if on_grid:
            snapshot(t)
        now = time.perf_counter()
        if deadline is not None and now > deadline:
            timed_out = bool(active.any())
            break
        if not bool(active.any()):
            break
        # progress on the trace's grid, and between its points at least every REPORT_INTERVAL_S (the
        # callback is how a caller stops the run, so a raised trace interval must not delay it)
        if callback is not None and (on_grid or now - last_report >= REPORT_INTERVAL_S):
            last_report = now
            metrics = snaps[-1] if on_grid else group.metrics(state["w"], group.sparse_answer(state))
            elapsed = now - t_start
            callback(
                {
                    "group": group_index,
                    "groups": groups,
                    "iteration": t,
                    "max_iters": limit,
                    "active": int(active.sum()),
                    "configs": n,
                    "rows": rows,
                    "running": active.tolist(),
                    "elapsed_s": elapsed,
                    "eta_s": elapsed * (limit - t) / t,
                    "metrics": {k: _finite_or_nan(v) for k, v in metrics.items()},  # NaN: undefined
                }
            )
    wall = time.perf_counter() - t_start
    with gc_paused():
        return _runs(
            group,
            state,
            book,
            snaps=snaps,
            snap_iters=snap_iters,
            snap_steps=snap_steps,
            timed_out=timed_out,
            wall=wall,
            keep_every=keep_every,
            max_points=max_points,
        )


def _runs(
    group: _Group,
    state: dict[str, Tensor],
    book: dict[str, Tensor],
    *,
    snaps: list[dict[str, Tensor]],
    snap_iters: list[int],
    snap_steps: list[Tensor],
    timed_out: bool,
    wall: float,
    keep_every: int,
    max_points: int,
) -> list[ToyRun]:
    """Each row's :class:`ToyRun` from a finished group: the final state and the per-row traces, on the CPU in
    float64, turned into Python lists once for the whole batch and cut per row."""
    iters, converged, diverged, max_delta = book["iters"], book["converged"], book["diverged"], book["max_delta"]
    active, last_step = book["active"], book["last_step"]
    w = state["w"]
    u = group.sparse_answer(state)
    final = {k: v.double().cpu().tolist() for k, v in group.metrics(w, u).items()}
    iters_l = iters.tolist()
    converged_l, diverged_l = converged.tolist(), diverged.tolist()
    active_l = active.tolist()
    steps_final = last_step.double().cpu().tolist()
    traced = [name for name in METRICS if name != "f_u_normalized"]
    snap_m = {k: torch.stack([s[k] for s in snaps], dim=1).double().cpu().tolist() for k in traced}
    snap_s = torch.stack(snap_steps, dim=1).double().cpu().tolist()
    w_cpu, u_cpu = w.double().cpu(), u.double().cpu()
    max_delta_l = max_delta.double().cpu().tolist()
    runs = []
    for i, cfg in enumerate(group.cfgs):
        it = iters_l[i]
        kept = bisect.bisect_right(snap_iters, it)  # the snapshots up to this row's last iteration
        trace: dict[str, list] = {"iter": snap_iters[:kept]}
        for name in traced:
            trace[name] = snap_m[name][i][:kept]
        trace["step"] = snap_s[i][:kept]
        if trace["iter"][-1] != it:  # a final point off the logging grid
            trace["iter"].append(it)
            for name in traced:
                trace[name].append(final[name][i])
            trace["step"].append(steps_final[i])
        for name in ("lagrangian", "theta_w", "theta_u", "f_w", "f_u", "step"):
            trace[name] = [x if isfinite(x) else None for x in trace[name]]
        trace["nnz_u"] = [int(x) for x in trace["nnz_u"]]
        if diverged_l[i]:
            stopped = "diverged"
        elif converged_l[i]:
            stopped = "tol"
        elif timed_out and active_l[i]:
            stopped = "time_budget"
        else:
            stopped = "max_iters"
        runs.append(
            ToyRun(
                config=cfg,
                w=w_cpu[i, : cfg.d].clone(),
                u=u_cpu[i, : cfg.d].clone(),
                iters=it,
                converged=bool(converged_l[i]),
                diverged=bool(diverged_l[i]),
                diverged_at=it + 1 if diverged_l[i] else None,
                stopped_by=stopped,
                final={k: final[k][i] for k in METRICS} | {"step": steps_final[i]},
                trace=trace,
                max_step_norm=max_delta_l[i],
                wall_time_s=wall,
                trace_log_every=keep_every,
                max_trace_points=max_points,
            )
        )
    return runs


def default_device() -> torch.device:
    """``cuda`` when present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


TOY_BACKENDS = ("auto", "eager", "triton")
TOY_BACKEND_ENV = "RVSM_TOY_BACKEND"


def toy_backend(backend: str | None, *, device: torch.device, compile: bool = False) -> str:
    """``"eager"`` or ``"triton"``: the path :func:`run_toy` takes for ``backend`` (``None``: the
    ``RVSM_TOY_BACKEND`` environment variable, else ``"auto"``) on ``device``. Triton is imported only when
    it may be used (``auto`` on CUDA, or asked for)."""
    choice = backend if backend is not None else (os.environ.get(TOY_BACKEND_ENV) or "auto")
    if choice not in TOY_BACKENDS:
        raise ValueError(f"backend must be one of {TOY_BACKENDS}, got {choice!r}")
    if choice == "eager" or (choice == "auto" and (device.type != "cuda" or compile)):
        return "eager"
    from . import triton_toy

    return triton_toy.choose_backend(choice, device=device, compile=compile)


def run_toy(
    configs: list[ToyConfig],
    *,
    device: str | torch.device | None = None,
    callback: ProgressCallback | None = None,
    time_budget_s: float | None = None,
    compile: bool = False,
    max_trace_points: int | None = None,
    backend: str | None = None,
) -> list[ToyRun]:
    """Run ``configs`` batched: rows sharing :meth:`ToyConfig.group_key` advance as one tensor.

    ``callback(progress)`` is called at each trace point (every ``log_every`` iterations) with a plain
    dict (iteration, max_iters, active rows, elapsed and estimated remaining seconds, the latest
    metrics, NaN where undefined or not finite, one entry per row of the group; ``rows``: which of
    ``configs`` those rows are; ``running``: whether each is still iterating); it may raise to stop the
    run. Stopping, the time budget and (when the trace interval was raised) the callback, at least every
    :data:`REPORT_INTERVAL_S`, are still checked every requested ``log_every`` iterations.
    Results come back in the order of ``configs``. ``compile=True`` fuses each iteration with
    ``torch.compile`` (worth it for large batches, mostly on a GPU; the first call of each batch shape
    pays the compilation).

    Each run's trace keeps at most ``max_trace_points`` points (default: :data:`TRACE_POINTS_PER_RUN`,
    lowered to ``TRACE_POINTS_TOTAL / len(configs)``, at least :data:`TRACE_POINTS_MIN`, so that a large
    sweep's traces stay bounded too); ``log_every`` is raised to fit and each run reports the interval used.

    ``backend``: ``"auto"`` (the default, or the ``RVSM_TOY_BACKEND`` environment variable when ``backend`` is
    ``None``) runs the groups that :func:`rvsm.triton_toy.supports` on the persistent Triton kernel when the
    device is CUDA, triton imports and ``compile`` is off, every other group eagerly; ``"eager"`` forces the
    eager path (the oracle); ``"triton"`` asks for the kernel wherever it applies (on a CPU, only under
    ``TRITON_INTERPRET=1``). On a CPU ``auto`` is eager: nothing changes there.
    """
    if not configs:
        raise ValueError("configs must not be empty")
    if max_trace_points is None:
        max_trace_points = max(TRACE_POINTS_MIN, min(TRACE_POINTS_PER_RUN, TRACE_POINTS_TOTAL // len(configs)))
    elif max_trace_points < 3:
        raise ValueError(f"max_trace_points must be >= 3, got {max_trace_points}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be > 0, got {time_budget_s}")
    dev = torch.device(device) if device is not None else default_device()
    use_triton = toy_backend(backend, device=dev, compile=compile) == "triton"
    deadline = time.perf_counter() + time_budget_s if time_budget_s is not None else None
    order: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        order.setdefault(c.group_key(), []).append(i)
    out: list[ToyRun | None] = [None] * len(configs)
    with torch.no_grad():
        for gi, idx in enumerate(order.values()):
            group = _Group([configs[i] for i in idx], dev)
            stepper = None
            if use_triton:
                from . import triton_toy

                if triton_toy.supports(group):
                    stepper = triton_toy.TritonStepper(group)
            runs = _run_group(
                group,
                deadline=deadline,
                callback=callback,
                group_index=gi,
                groups=len(order),
                rows=idx,
                compile=compile,
                max_points=max_trace_points,
                stepper=stepper,
            )
            for i, run in zip(idx, runs, strict=True):
                out[i] = run
    return out  # type: ignore[return-value]


def run_one(config: ToyConfig, **kwargs) -> ToyRun:
    """:func:`run_toy` on a single configuration."""
    return run_toy([config], **kwargs)[0]
