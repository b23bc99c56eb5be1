"""Checks of the seeds' theorem hypotheses and bounds on a finished toy run (SPEC §6).

RVSM, seed 000 Theorem 1, hypotheses: (i) ``eta <= 1/(beta+L)`` and
``|eta grad f(w^t) + eta beta (w^t - u^{t+1})| <= 1/2`` for all t; (ii) ``theta(w^0, w*) <= pi - delta``;
(iii) ``beta <= delta sin(delta)/(k pi)`` and ``lam/beta < 1/sqrt(d)``; with ``L = 1 + 3|w*|/M``,
``M = 1/2`` (seed 002 Lemma 4). Conclusions: eq. 12 (limit equation), eq. 13
``|w* - w| <= 4 k beta sin(gamma)``, eq. 14 ``|w* - u| <= 4 k beta sin(gamma) + (lam/beta) sqrt(d)``
(l1 only: Corollary 1.1 carries 12 and 13 to l0 and TL1), ``theta(w, w*) < delta``, and the exact
fixed point of normalised RVSM (seed 000 eq. 17) ``((pi - theta)/(k pi)) sin(theta) = beta |u| sin(gamma)``.

RVSCGD, seed 001 Theorem 1: ``beta <= k sin(delta)/(2 sqrt(2 pi))``, ``lam < k/(2 sqrt(2 pi) d)``,
``eta <= min(1/(beta+L), 2 sqrt(2 pi)/k)`` with ``L = k/pi`` (seed 001 Lemma 4), the 1/2 condition;
eq. 13 ``|w* - w| <= 4 sqrt(2 pi) beta sin(gamma) / k``, eq. 12 with the constant ``2 sqrt(2 pi)/k`` and
``C >= (k - 2 lam sqrt(2 pi) d)/k``; seed 003 (eq. 10) states eq. 12 with the constant ``2 pi / k`` and
``0 < C <= k/(k - 2 pi lam sqrt(d))``: both are reported (SPEC §6). With the exact expected coarse
gradient the fixed point is ``(k/(2 pi)) sin(theta) = beta |u| sin(gamma)`` (the seed 003 constant).

``delta = pi - theta(w^0, w*)``, ``gamma = theta(w, u)`` at the limit. A bound whose hypotheses
fail is still evaluated and marked ``hypotheses_met: False``. A number that is undefined or not finite
(``theta = pi`` makes the ReLU constant ``k pi / (pi - theta)`` infinite) is reported as ``None``, and
a check that needs it has ``holds: None``; nothing here raises on a finished run.

The tensor work (angles, norms, the eq. 12 projections, the monotonicity of the traces) is done for a
whole batch of runs at once by :func:`batch_numbers` (rows grouped by ``d``); :func:`hypotheses` and
:func:`bound_checks` then only assemble each run's report from those numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import problems
from .algorithms import ToyRun

SQRT_2PI = math.sqrt(2 * math.pi)


def _finite(x: float) -> float | None:
    """``x``, or ``None`` where it is NaN or infinite (JSON has neither)."""
    return x if math.isfinite(x) else None


def _tolerances(dtype: str) -> dict[str, float]:
    if dtype == "float64":
        return {"identity": 1e-8, "parallel": 1e-6, "monotone_rel": 1e-12}
    return {"identity": 1e-4, "parallel": 1e-3, "monotone_rel": 1e-5}


def _stack(rows: list[Tensor]) -> Tensor:
    return torch.stack([r.double().cpu() for r in rows])


def _parallel(ws: Tensor, w: Tensor, u: Tensor, cst: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """eq. 12 per row: ``v = w* - cst beta (w - u) = C w + r``; returns ``C`` and ``|r|`` (NaN where ``cst`` is not
    finite)."""
    v = ws - (cst * beta).unsqueeze(-1) * (w - u)
    cc = (v * w).sum(-1) / (w * w).sum(-1)
    resid = torch.linalg.vector_norm(v - cc.unsqueeze(-1) * w, dim=-1)
    bad = ~torch.isfinite(cst)
    return cc.masked_fill(bad, math.nan), resid.masked_fill(bad, math.nan)


def _padded(rows: list[list], fill: float, dtype: torch.dtype) -> Tensor:
    """Lists of numbers (or ``None``) as one ``(rows, longest)`` tensor, ``fill`` past each end and for ``None``.
    Rows of one length without ``None`` (the usual case) convert in one call."""
    out = torch.full((len(rows), max(len(r) for r in rows)), fill, dtype=dtype)
    by_length: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_length.setdefault(len(r), []).append(i)
    for length, idx in by_length.items():
        if length == 0:
            continue
        block = [rows[i] if None not in rows[i] else [fill if x is None else x for x in rows[i]] for i in idx]
        out[idx, :length] = torch.tensor(block, dtype=dtype)
    return out


def trace_matrix(runs: list[ToyRun], name: str) -> Tensor:
    """``trace[name]`` of every run as a ``(runs, most points)`` tensor: float64 with NaN past each end and for
    ``None``; ``iter`` as int64 with -1 past each end."""
    if name == "iter":
        return _padded([r.trace["iter"] for r in runs], -1, torch.long)
    return _padded([r.trace[name] for r in runs], math.nan, torch.float64)


def _monotone_batch(iters: Tensor, vals: Tensor, rel_tol: Tensor) -> tuple[list[int | None], list[float]]:
    """Per row: the first iteration where ``vals`` rises above ``rel_tol`` (relative to the last defined value
    before it), and the largest rise (at least 0). Undefined (non-finite) points are skipped."""
    n, t = vals.shape
    valid = torch.isfinite(vals)
    pos = torch.arange(t).expand(n, t)
    last = torch.where(valid, pos, -1).cummax(dim=1).values  # the last defined point at or before each t
    prev = torch.cat([torch.full((n, 1), -1, dtype=torch.long), last[:, :-1]], dim=1)
    has_prev = valid & (prev >= 0)
    before = vals.gather(1, prev.clamp(min=0))
    rise = torch.where(has_prev, vals - before, -math.inf)
    largest = rise.amax(dim=1).clamp(min=0.0) if t else torch.zeros(n, dtype=vals.dtype)
    worse = has_prev & (rise > rel_tol.unsqueeze(-1) * before.abs().clamp(min=1e-300))
    first_at = worse.to(torch.int8).argmax(dim=1)
    firsts = iters.gather(1, first_at.unsqueeze(-1)).squeeze(-1).tolist()
    return [f if w else None for f, w in zip(firsts, worse.any(dim=1).tolist(), strict=True)], largest.tolist()


def batch_numbers(runs: list[ToyRun], traces: dict[str, Tensor] | None = None) -> list[dict]:
    """The tensor-derived numbers of every run's checks, computed over the batch (one pass per ``d``):
    ``theta0``, ``theta``, ``gamma``, ``norm_u``, ``err_w``, ``err_u``, eq. 12's ``C`` / residual with the
    run's constant (``C12``, ``resid12``) and with ``2 pi / k`` (``C3``, ``resid3``), and the monotonicity of
    the Lagrangian and the angle along the trace. ``traces``: ``iter``, ``lagrangian``, ``theta_w`` as
    :func:`trace_matrix` makes them, if the caller has them already."""
    out: list[dict] = [{} for _ in runs]
    dims = [r.config.d for r in runs]
    for d in sorted(set(dims)):
        idx = [i for i, x in enumerate(dims) if x == d]
        cfgs = [runs[i].config for i in idx]
        w, u = _stack([runs[i].w for i in idx]), _stack([runs[i].u for i in idx])
        ws, w0 = _stack([c.w_star for c in cfgs]), _stack([c.w0 for c in cfgs])
        k = torch.tensor([float(c.k) for c in cfgs], dtype=torch.float64)
        beta = torch.tensor([c.beta for c in cfgs], dtype=torch.float64)
        relu = torch.tensor([c.network == "relu" for c in cfgs])
        theta = problems.angle(w, ws)
        const = torch.where(relu, k * math.pi / (math.pi - theta), 2 * SQRT_2PI / k)
        const = torch.where(relu & ~(theta < math.pi), math.nan, const)  # theta = pi (or NaN): no constant
        c12, r12 = _parallel(ws, w, u, const, beta)
        c3, r3 = _parallel(ws, w, u, 2 * math.pi / k, beta)
        cols = {
            "theta0": problems.angle(w0, ws),
            "theta": theta,
            "gamma": problems.angle(w, u),
            "norm_u": torch.linalg.vector_norm(u, dim=-1),
            "err_w": torch.linalg.vector_norm(ws - w, dim=-1),
            "err_u": torch.linalg.vector_norm(ws - u, dim=-1),
            "C12": c12,
            "resid12": r12,
            "C3": c3,
            "resid3": r3,
        }
        values = {name: col.tolist() for name, col in cols.items()}
        for j, i in enumerate(idx):
            out[i] = {name: vals[j] for name, vals in values.items()}
    traces = traces if traces is not None else {n: trace_matrix(runs, n) for n in ("iter", "lagrangian", "theta_w")}
    rel = torch.tensor([_tolerances(r.config.dtype)["monotone_rel"] for r in runs], dtype=torch.float64)
    for key in ("lagrangian", "theta_w"):
        firsts, largest = _monotone_batch(traces["iter"], traces[key], rel)
        for i in range(len(runs)):
            out[i][f"monotone_{key}"] = (firsts[i], largest[i])
    return out


def hypotheses(run: ToyRun, nums: dict | None = None) -> dict:
    """Theorem 1's hypotheses for the run's ``delta`` (each a boolean, with the numbers used); ``nums``: the
    run's :func:`batch_numbers` (computed for this run alone when not given)."""
    c = run.config
    nums = nums if nums is not None else batch_numbers([run])[0]
    theta0 = nums["theta0"]
    delta = math.pi - theta0 if not math.isnan(theta0) else math.nan
    L = problems.lipschitz_constant(c.network, c.k, 1.0)
    half = run.max_step_norm
    h: dict = {
        "delta": delta,
        "L": L,
        "theta0": theta0,
        "max_step_norm": half,
        "normalized_splitting_run": c.algorithm in ("rvsm", "rvscgd") and c.normalize,
        "population_gradient": c.gradient == "population",
        "delta_positive": delta > 0,
        "step_norm_le_half": half <= 0.5,
    }
    if c.network == "relu":
        h["eta_le_1_over_beta_plus_L"] = c.eta <= 1 / (c.beta + L)
        h["beta_le_delta_sin_delta_over_k_pi"] = c.beta <= delta * math.sin(delta) / (c.k * math.pi)
        h["lam_over_beta_lt_1_over_sqrt_d"] = c.lam / c.beta < 1 / math.sqrt(c.d)
    else:
        h["eta_le_min_1_over_beta_plus_L_2sqrt2pi_over_k"] = c.eta <= min(1 / (c.beta + L), 2 * SQRT_2PI / c.k)
        h["beta_le_k_sin_delta_over_2sqrt2pi"] = c.beta <= c.k * math.sin(delta) / (2 * SQRT_2PI)
        h["lam_lt_k_over_2sqrt2pi_d"] = c.lam < c.k / (2 * SQRT_2PI * c.d)
    h["all"] = all(v for k, v in h.items() if isinstance(v, bool))
    return h


def _monotone(name: str, first: int | None, largest: float, rel_tol: float) -> dict:
    """The check that a quantity never rises along the trace, from :func:`_monotone_batch`'s numbers."""
    return {
        "name": name,
        "formula": f"{name.split('_')[0]}(t+1) <= {name.split('_')[0]}(t) along the trace",
        "lhs": _finite(largest),
        "rhs": 0.0,
        "holds": first is None,
        "first_violation": first,
        "max_increase": _finite(largest),
        "tolerance": rel_tol,
    }


def bound_checks(run: ToyRun, hyp: dict | None = None, nums: dict | None = None) -> list[dict]:
    """Every bound of SPEC §6 as ``{name, formula, lhs, rhs, holds, hypotheses_met, ...}``; ``nums``: the run's
    :func:`batch_numbers` (computed for this run alone when not given)."""
    c = run.config
    nums = nums if nums is not None else batch_numbers([run])[0]
    hyp = hyp if hyp is not None else hypotheses(run, nums)
    tol = _tolerances(c.dtype)
    theta, gamma = nums["theta"], nums["gamma"]
    gamma_ok = not math.isnan(gamma)
    sin_g = math.sin(gamma) if gamma_ok else math.nan
    nu = nums["norm_u"]
    met = bool(hyp["all"]) and hyp["normalized_splitting_run"] and hyp["population_gradient"]
    relu = c.network == "relu"
    out: list[dict] = []

    def add(name: str, formula: str, lhs: float, rhs: float, holds: bool | None, hyp_met: bool, **extra) -> None:
        ok = None if (math.isnan(lhs) or math.isnan(rhs)) else holds
        out.append(
            {
                "name": name,
                "formula": formula,
                "lhs": _finite(lhs),
                "rhs": _finite(rhs),
                "holds": ok,
                "hypotheses_met": hyp_met,
                **extra,
            }
        )

    err_w, err_u = nums["err_w"], nums["err_u"]
    if relu:
        rhs13 = 4 * c.k * c.beta * sin_g
        add("w_error_eq13", "|w* - w| <= 4 k beta sin(gamma)", err_w, rhs13, err_w <= rhs13, met)
        rhs14 = rhs13 + c.mu * math.sqrt(c.d)
        add(
            "u_error_eq14",
            "|w* - u| <= 4 k beta sin(gamma) + (lam/beta) sqrt(d)",
            err_u,
            rhs14,
            err_u <= rhs14,
            met and c.penalty == "l1",
            note="Theorem 1 proves eq. 14 for l1; Corollary 1.1 carries only eqs. 12-13 to l0 and TL1",
        )
        const = c.k * math.pi / (math.pi - theta) if theta < math.pi else math.nan  # NaN theta: NaN too
        const_name = "k pi / (pi - theta)"
    else:
        rhs13 = 4 * SQRT_2PI * c.beta * sin_g / c.k
        add("w_error_eq13", "|w* - w| <= 4 sqrt(2 pi) beta sin(gamma) / k", err_w, rhs13, err_w <= rhs13, met)
        const = 2 * SQRT_2PI / c.k
        const_name = "2 sqrt(2 pi) / k"

    # eq. 12: w* - const beta (w - T(w)) = C w: C is the projection on w, the residual the rest (batch_numbers)
    cc, resid = nums["C12"], nums["resid12"]
    ok_resid = resid <= tol["parallel"]
    extra: dict = {"C": _finite(cc), "parallel_residual": _finite(resid), "parallel_tolerance": tol["parallel"]}
    if relu:  # seed 000: 0 < C <= 1/(1 - 2 k lam sqrt(d)); no upper bound (rhs None) when 1 - 2 k lam sqrt(d) <= 0
        denom = 1 - 2 * c.k * c.lam * math.sqrt(c.d)
        c_max = 1 / denom if denom > 0 else math.inf
        formula = f"w* - ({const_name}) beta (w - T(w)) = C w, 0 < C <= 1/(1 - 2 k lam sqrt(d))"
        holds = bool(0 < cc <= c_max and ok_resid)
        lhs12, rhs12 = cc, c_max
        if math.isnan(const):
            extra["note"] = "theta(w, w*) = pi: the constant k pi / (pi - theta) is infinite"
    else:
        # seed 001 (Theorem 1, eq. 12): constant 2 sqrt(2 pi)/k and C >= (k - 2 lam sqrt(2 pi) d)/k
        c_min = (c.k - 2 * c.lam * SQRT_2PI * c.d) / c.k
        formula = f"w* - ({const_name}) beta (w - T(w)) = C w, C >= (k - 2 lam sqrt(2 pi) d)/k (seed 001)"
        holds = bool(cc >= c_min and ok_resid)
        lhs12, rhs12 = cc, c_min
        # seed 003 (eq. 10): constant 2 pi/k and 0 < C <= k/(k - 2 pi lam sqrt(d)) (no upper bound when <= 0)
        cc3, resid3 = nums["C3"], nums["resid3"]
        denom3 = c.k - 2 * math.pi * c.lam * math.sqrt(c.d)
        c_max3 = c.k / denom3 if denom3 > 0 else math.inf
        holds3 = None if math.isnan(cc3) else bool(0 < cc3 <= c_max3 and resid3 <= tol["parallel"])
        extra |= {
            "C_min_seed001": _finite(c_min),
            "seed003": {
                "formula": "w* - (2 pi / k) beta (w - T(w)) = C w, 0 < C <= k/(k - 2 pi lam sqrt(d))",
                "C": _finite(cc3),
                "C_max": _finite(c_max3),
                "parallel_residual": _finite(resid3),
                "holds": holds3,
            },
            "note": "seeds 001 and 003 state eq. 12 with different constants and ranges of C; both are checked",
        }
    add("limit_equation_eq12", formula, lhs12, rhs12, holds, met, **extra)
    add("theta_below_delta", "theta(w, w*) < delta", theta, hyp["delta"], theta < hyp["delta"], met)

    if relu:
        lhs = (math.pi - theta) / (c.k * math.pi) * math.sin(theta)
        formula = "((pi - theta)/(k pi)) sin(theta) = beta |u| sin(gamma)"
    else:
        lhs = c.k / (2 * math.pi) * math.sin(theta)
        formula = "(k/(2 pi)) sin(theta) = beta |u| sin(gamma)"
    rhs = c.beta * nu * sin_g
    add(
        "fixed_point_identity",
        formula,
        lhs,
        rhs,
        abs(lhs - rhs) <= tol["identity"],
        hyp["normalized_splitting_run"] and hyp["population_gradient"] and run.stopped_by in ("tol", "max_iters"),
        residual=_finite(abs(lhs - rhs)),
        tolerance=tol["identity"],
        note="exact at a fixed point of normalised RVSM; the residual measures how far the run is from it",
    )
    for name, key in (("lagrangian_monotone", "lagrangian"), ("angle_monotone", "theta_w")):
        first, largest = nums[f"monotone_{key}"]
        m = _monotone(name, first, largest, tol["monotone_rel"])
        m["formula"] = f"{'L_beta' if key == 'lagrangian' else 'theta(w^t, w*)'} non-increasing along the trace"
        m["hypotheses_met"] = met
        out.append(m)
    if not gamma_ok:
        for b in out:
            if b["name"] in ("w_error_eq13", "u_error_eq14", "fixed_point_identity"):
                b["note"] = "u is the zero vector, so gamma = theta(w, u) is undefined"
    return out
