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
"""

from __future__ import annotations

import math

import torch

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


def hypotheses(run: ToyRun) -> dict:
    """Theorem 1's hypotheses for the run's ``delta`` (each a boolean, with the numbers used)."""
    c = run.config
    theta0 = problems.angle(c.w0, c.w_star).item()
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


def _monotone(name: str, iters: list[int], values: list[float | None], rel_tol: float) -> dict:
    """First iteration where ``values`` rises above ``rel_tol`` (relative), and the largest rise."""
    first = None
    largest = 0.0
    prev = None
    for it, v in zip(iters, values, strict=True):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if prev is not None:
            rise = v - prev
            largest = max(largest, rise)
            if first is None and rise > rel_tol * max(abs(prev), 1e-300):
                first = it
        prev = v
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


def bound_checks(run: ToyRun, hyp: dict | None = None) -> list[dict]:
    """Every bound of SPEC §6 as ``{name, formula, lhs, rhs, holds, hypotheses_met, ...}``."""
    c = run.config
    hyp = hyp if hyp is not None else hypotheses(run)
    tol = _tolerances(c.dtype)
    w = run.w.double()
    ws = c.w_star.double()
    u = run.u.double()  # T_mu(w) for rvsm / rvscgd / gd, the algorithm's sparse answer otherwise
    theta = problems.angle(w, ws).item()
    gamma = problems.angle(w, u).item()
    gamma_ok = not math.isnan(gamma)
    sin_g = math.sin(gamma) if gamma_ok else math.nan
    nu = torch.linalg.vector_norm(u).item()
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

    err_w = torch.linalg.vector_norm(ws - w).item()
    err_u = torch.linalg.vector_norm(ws - u).item()
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

    # eq. 12: w* - const beta (w - T(w)) = C w: C is the projection on w, the residual the rest
    def parallel(cst: float) -> tuple[float, float]:
        if not math.isfinite(cst):
            return math.nan, math.nan
        v = ws - cst * c.beta * (w - u)
        cc = (v @ w / (w @ w)).item()
        return cc, torch.linalg.vector_norm(v - cc * w).item()

    cc, resid = parallel(const)
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
        cc3, resid3 = parallel(2 * math.pi / c.k)
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
        m = _monotone(name, run.trace["iter"], run.trace[key], tol["monotone_rel"])
        m["formula"] = f"{'L_beta' if key == 'lagrangian' else 'theta(w^t, w*)'} non-increasing along the trace"
        m["hypotheses_met"] = met
        out.append(m)
    if not gamma_ok:
        for b in out:
            if b["name"] in ("w_error_eq13", "u_error_eq14", "fixed_point_identity"):
                b["note"] = "u is the zero vector, so gamma = theta(w, u) is undefined"
    return out
