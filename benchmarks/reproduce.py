"""Reproduce the seeds' toy tables with rvsm and write docs/reproduction.md (and its figures).

    python benchmarks/reproduce.py

Seed 000 Tables 1-3 (RVSM, ReLU, k=2, lam=1e-4, beta=4e-3, d=10..50; l0 / TL1(a=1) / l1) and seed 003
Table 1 (RVSCGD, binarized, k=20, d=50, beta=1e-3, lam=1e-4, l0, s=2..10, equal-valued s-sparse w*).
Every sweep is one batched rvsm run.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rvsm.toy import run_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reproduction.md"
FIG = ROOT / "docs" / "figures"
SEEDS = list(range(10))
DS = [10, 20, 30, 40, 50]

# seed 000, Tables 1-3 (rows: theta_w, f_w, theta_u, f_u, f_u_normalized, d - nnz_u)
PAPER_000 = {
    "l0": [
        [8.75685e-03, 6.68412e-03, 6.04336e-03, 5.32728e-03, 4.94954e-03],
        [1.91348e-05, 1.11535e-05, 9.11881e-06, 7.08694e-06, 6.11803e-06],
        [3.37294e-01, 5.28306e-01, 6.58853e-01, 7.03679e-01, 8.68654e-01],
        [2.57150e-02, 5.83579e-02, 8.56018e-02, 9.56203e-02, 1.34753e-01],
        [2.61605e-02, 6.05623e-02, 9.01282e-02, 1.01181e-01, 1.44854e-01],
        [6, 15, 25, 34, 46],
    ],
    "tl1": [
        [2.89468e-02, 2.03823e-02, 2.03790e-02, 1.64539e-02, 1.37370e-02],
        [2.08177e-04, 1.03407e-04, 1.03373e-04, 6.74448e-05, 4.70379e-05],
        [1.05764e-01, 1.42955e-01, 1.70723e-01, 1.93306e-01, 2.09155e-01],
        [3.94756e-03, 8.38579e-03, 1.25855e-02, 1.74556e-02, 2.18136e-02],
        [2.73123e-03, 4.94569e-03, 7.00566e-03, 8.93097e-03, 1.04133e-02],
        [1, 4, 9, 10, 13],
    ],
    "l1": [
        [5.57468e-02, 3.98867e-02, 3.57740e-02, 2.95779e-02, 2.56507e-02],
        [7.67536e-04, 3.94319e-04, 3.17482e-04, 2.17325e-04, 1.63585e-04],
        [7.52479e-02, 9.48354e-02, 1.00794e-01, 1.01500e-01, 1.02384e-01],
        [2.51967e-03, 4.44921e-03, 5.79414e-03, 7.15888e-03, 8.44975e-03],
        [1.39230e-03, 2.20154e-03, 2.48343e-03, 2.51794e-03, 2.56144e-03],
        [0, 1, 2, 4, 6],
    ],
}
ROWS_000 = [
    ("θ(w̄, w*)", "theta_w"),
    ("f(w̄)", "f_w"),
    ("θ(ū, w*)", "theta_u"),
    ("f(ū)", "f_u"),
    ("f(ū/‖ū‖)", "f_u_normalized"),
    ("d − ‖ū‖₀", "zeros"),
]
# seed 003, Table 1 (rows: theta_u, theta_w, f_u, nnz_u) for s = 2, 4, 6, 8, 10
SS = [2, 4, 6, 8, 10]
PAPER_003 = {
    "theta_u": [0.0076, 0.0122, 0.0126, 0.0133, 0.0143],
    "theta_w": [0.0492, 0.0498, 0.0499, 0.0497, 0.0493],
    "f_u": [0.0243, 0.0388, 0.0402, 0.0423, 0.0456],
    "nnz_u": [2, 4, 6, 8, 10],
}
SS_WIDE = [12, 16, 19, 20, 24]  # run D beyond the table: where 1/sqrt(s) meets the threshold 0.224
BETA_001 = 4e-3  # seed 001 section 6: k=20, d=50, beta=4e-3, lam=1e-4, eta=1e-5, l0
ROWS_003 = [("θ(ū, w*)", "theta_u"), ("θ(w̄, w*)", "theta_w"), ("f(ū)", "f_u"), ("‖ū‖₀", "nnz_u")]


def value(run: dict, key: str) -> float:
    f = run["final"]
    if key == "zeros":
        return len(f["w"]) - f["nnz_u"]
    v = f[key]
    return math.nan if v is None else float(v)


def stats(xs: list[float]) -> tuple[float, float, float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return (math.nan,) * 4
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return statistics.fmean(xs), sd, min(xs), max(xs)


def fmt(x: float, integer: bool = False) -> str:
    if math.isnan(x):
        return "—"
    return f"{x:.1f}" if integer else f"{x:.3e}"


def cell(paper: float, xs: list[float], integer: bool) -> str:
    m, sd, lo, hi = stats(xs)
    p = str(int(paper)) if integer else f"{paper:.3e}"
    return f"{p} / {fmt(m, integer)} ± {fmt(sd, integer)}"


def theta_max_at_fixed_point(k: int, beta: float, relu: bool) -> float:
    """Largest theta(w, w*) a fixed point allows: lhs(theta) = beta |u| sin(gamma) <= beta (|u| <= 1)."""

    def lhs(t: float) -> float:
        return (math.pi - t) / (k * math.pi) * math.sin(t) if relu else k / (2 * math.pi) * math.sin(t)

    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if lhs(mid) <= beta else (lo, mid)
    return lo


def seed000(lines: list[str]) -> None:
    base = {
        "k": 2,
        "lam": 1e-4,
        "beta": 4e-3,
        "eta": 0.1,
        "a": 1.0,
        "max_iters": 200_000,
        "tol": 1e-14,
        "log_every": 100,
        "d": 10,
    }
    spec = base | {"sweep": {"penalty": ["l0", "tl1", "l1"], "d": DS, "teacher.seed": SEEDS}}
    t = time.perf_counter()
    runs = run_spec(spec)["runs"]
    wall = time.perf_counter() - t
    by = {(r["config"]["penalty"], r["config"]["d"]): [] for r in runs}
    for r in runs:
        by[(r["config"]["penalty"], r["config"]["d"])].append(r)
    conv = sum(r["final"]["converged"] for r in runs)
    fp = max(next(b for b in r["bounds"] if b["name"] == "fixed_point_identity")["residual"] or 0 for r in runs)
    hyp = sum(r["hypotheses"]["all"] for r in runs)
    lam_mono = sum(next(b for b in r["bounds"] if b["name"] == "lagrangian_monotone")["holds"] for r in runs)
    eq13 = sum(next(b for b in r["bounds"] if b["name"] == "w_error_eq13")["holds"] for r in runs)
    iters = [r["final"]["iters"] for r in runs]
    tmax = theta_max_at_fixed_point(2, 4e-3, relu=True)
    ratios = [
        PAPER_000[pen][0][j] / stats([value(r, "theta_w") for r in by[(pen, d)]])[0]
        for pen in PAPER_000
        for j, d in enumerate(DS)
    ]
    lines += [
        "## Seed 000, Tables 1-3: RVSM on the ReLU network",
        "",
        f"Setting: k=2, λ=1e-4, β=4e-3, d ∈ {DS}, population gradient, normalised RVSM, w* uniform on the sphere "
        f"(teacher seeds {SEEDS[0]}..{SEEDS[-1]}), w⁰ uniform on the sphere (init seed 1), TL1 with a=1. "
        "The paper gives no step size or iteration count; we use η=0.1 (Theorem 1 needs η ≤ 1/(β+L) = 0.1428) "
        "and run to ‖w^{t+1} − w^t‖ < 1e-14.",
        "",
        f"All {len(runs)} runs in one batched call: {wall:.1f} s. Converged: {conv}/{len(runs)} "
        f"(iterations {min(iters)}..{max(iters)}). Theorem 1's hypotheses hold in {hyp}/{len(runs)}; "
        f"L_β non-increasing in {lam_mono}/{len(runs)}; eq. 13 holds in {eq13}/{len(runs)}; the fixed-point "
        f"identity's largest residual is {fp:.1e}.",
        "",
        "Each cell: **paper / ours (mean ± standard deviation over the 10 teacher seeds)**.",
        "",
    ]
    for pen, title in (("l0", "Table 1: ℓ0"), ("tl1", "Table 2: TL1 (a=1)"), ("l1", "Table 3: ℓ1")):
        lines += [f"### {title}", "", "| | " + " | ".join(f"d={d}" for d in DS) + " |", "|---" * 6 + "|"]
        for i, (label, key) in enumerate(ROWS_000):
            integer = key == "zeros"
            cells = [
                cell(PAPER_000[pen][i][j], [value(r, key) for r in by[(pen, d)]], integer) for j, d in enumerate(DS)
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "### Where ours differ, and why",
        "",
        f"- **θ(w̄, w*) and f(w̄) are smaller in ours**: the paper's θ(w̄, w*) is {min(ratios):.1f}x to "
        f"{max(ratios):.0f}x our mean (ℓ0 closest, ℓ1 furthest). At a limit point of normalised RVSM the exact "
        "fixed-point relation (seed 000 eq. 17, SPEC §6) holds: ((π−θ)/(kπ))·sin θ = β‖ū‖·sin γ. Every "
        "thresholding operator shrinks, so ‖ū‖ ≤ ‖w̄‖ = 1, and sin γ ≤ 1: at any limit, "
        f"((π−θ)/(2π))·sin θ ≤ β = 4e-3, i.e. **θ(w̄, w*) ≤ {tmax:.3e}**. The paper reports θ(w̄, w*) from "
        "1.4e-2 to 5.6e-2 for TL1 and ℓ1 and 4.9e-3 to 8.8e-3 for ℓ0; every value above that ceiling "
        f"({sum(v > tmax for pen in PAPER_000 for v in PAPER_000[pen][0])} of 15) cannot be a limit point of "
        "Algorithm 1 with these λ, β. Its runs had not reached the limit (the paper states no stopping rule). "
        "Ours reach it: the identity holds to the residual above, and θ(w̄, w*) sits under the ceiling.",
        "- **Sparsity d − ‖ū‖₀ agrees for ℓ0 within about 1.5 standard deviations over teachers** (the paper uses "
        "the correct ℓ0 threshold √(2λ/β) in these runs, as its §5 text says) and is of the same order for TL1 and "
        "ℓ1; the differences follow from w̄ being closer to w* in "
        "ours, and from the spread over teachers (the paper reports one draw; the ± column is ours).",
        "- θ(ū, w*), f(ū) and f(ū/‖ū‖) are driven by the thresholding of a vector close to w*, so they agree with "
        "the paper in order of magnitude and in the ranking the paper draws: ℓ1 gives the best ū, ℓ0 the "
        "sparsest, TL1 lies between.",
        "",
    ]


def seed003(lines: list[str]) -> None:
    base = {
        "network": "binary",
        "algorithm": "rvscgd",
        "k": 20,
        "d": 50,
        "beta": 1e-3,
        "lam": 1e-4,
        "penalty": "l0",
        "teacher": {"seed": 0, "sparsity": 2, "values": "equal"},
    }
    sweep = {"teacher.sparsity": SS, "init.seed": SEEDS[:5]}
    runs_paper_eta = run_spec(base | {"eta": 1e-5, "max_iters": 200_000, "log_every": 1000, "sweep": sweep})["runs"]
    runs_limit = run_spec(base | {"eta": 0.05, "max_iters": 200_000, "tol": 1e-14, "log_every": 100, "sweep": sweep})[
        "runs"
    ]
    # the paper's l0 threshold, if it thresholded at lam/beta = 0.1 instead of sqrt(2 lam/beta): lam' = 5e-6
    runs_mu = run_spec(
        base | {"eta": 0.05, "lam": 5e-6, "max_iters": 200_000, "tol": 1e-14, "log_every": 100, "sweep": sweep}
    )["runs"]
    # seed 001 section 6 runs the same toy with beta = 4e-3 (and lam = 1e-4): l0 threshold sqrt(2 lam/beta) = 0.224
    to_limit = {"eta": 0.05, "max_iters": 200_000, "tol": 1e-14, "log_every": 100}
    runs_beta = run_spec(base | to_limit | {"beta": BETA_001, "sweep": sweep})["runs"]
    runs_beta_wide = run_spec(
        base | to_limit | {"beta": BETA_001, "sweep": {"teacher.sparsity": SS_WIDE, "init.seed": SEEDS[:5]}}
    )["runs"]
    tmax = theta_max_at_fixed_point(20, 1e-3, relu=False)
    lines += [
        "## Seed 003, Table 1: RVSCGD on the binarized network",
        "",
        "Setting: k=20, d=50, β=1e-3, λ=1e-4, ℓ0, w* = s^{-1/2}(1,…,1,0,…,0), random starts (init seeds 0..4), "
        "expected coarse gradient (population mode). Three runs per cell group:",
        "",
        "- **A**: the paper's η = 1e-5, 200,000 iterations (the paper gives no iteration count);",
        "- **B**: η = 0.05 (inside Theorem 1's η ≤ min{1/(β+L), 2√(2π)/k} = 0.157) run to the limit (tol 1e-14);",
        "- **C**: as B, but with the ℓ0 threshold at λ/β = 0.1 (λ' = 5e-6 so that √(2λ'/β) = 0.1), "
        "which is what the paper's ‖ū‖₀ = s for s ≥ 6 needs;",
        f"- **D**: as B, but with β = {BETA_001:g}, the β of seed 001 §6 (the same toy, k=20, d=50, λ=1e-4, ℓ0), "
        f"so that the correct ℓ0 threshold is √(2λ/β) = {math.sqrt(2 * 1e-4 / BETA_001):.3f}.",
        "",
        "Each cell: **paper / A / B / C / D** (mean over the 5 starts); — where ū = 0, so θ(ū, w*) is undefined.",
        "",
        "| | " + " | ".join(f"s={s}" for s in SS) + " |",
        "|---" * 6 + "|",
    ]
    thr_d = math.sqrt(2 * 1e-4 / BETA_001)

    def mean_of(runs: list[dict], s: int, key: str) -> float:
        return stats([value(r, key) for r in runs if r["config"]["teacher.sparsity"] == s])[0]

    for label, key in ROWS_003:
        integer = key == "nnz_u"
        cells = []
        for j, s in enumerate(SS):
            vals = [fmt(mean_of(rs, s, key), integer) for rs in (runs_paper_eta, runs_limit, runs_mu, runs_beta)]
            p = str(PAPER_003[key][j]) if not integer else str(PAPER_003[key][j])
            cells.append(" / ".join([p, *vals]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    conv = sum(r["final"]["converged"] for r in runs_limit)
    fp = max(next(b for b in r["bounds"] if b["name"] == "fixed_point_identity")["residual"] or 0 for r in runs_limit)
    a_theta = [r["final"]["theta_w"] for r in runs_paper_eta]
    crossing = []  # the iteration at which run A passes the paper's theta(w, w*) for its s
    for r in runs_paper_eta:
        target = PAPER_003["theta_w"][SS.index(r["config"]["teacher.sparsity"])]
        tr = r["trace"]
        crossing.append(next((i for i, th in zip(tr["iter"], tr["theta_w"], strict=True) if th <= target), None))
    known = [c for c in crossing if c is not None]
    wide = {s: [r for r in runs_beta_wide if r["config"]["teacher.sparsity"] == s] for s in SS_WIDE}
    conv_d = sum(r["final"]["converged"] for r in runs_beta + runs_beta_wide)
    d_exact = sum(int(value(r, "nnz_u")) == r["config"]["teacher.sparsity"] for r in runs_beta)
    lines += [
        "",
        f"D beyond the table (β = {BETA_001:g}, threshold {thr_d:.4f}; the teacher's entries 1/√s against it; "
        "‖ū‖₀ per start):",
        "",
        "| s | 1/√s | ‖ū‖₀ (5 starts) | θ(ū, w*) (mean) |",
        "|---|---|---|---|",
    ]
    for s_, rs in wide.items():
        nnz = [int(value(r, "nnz_u")) for r in rs]
        lines.append(f"| {s_} | {1 / math.sqrt(s_):.4f} | {nnz} | {fmt(mean_of(runs_beta_wide, s_, 'theta_u'))} |")
    lines += [
        "",
        "### Where ours differ, and why",
        "",
        f"- **The paper's θ(w̄, w*) ≈ 0.049 is not a limit point.** With the expected coarse gradient the fixed "
        "point satisfies (k/2π)·sin θ = β‖ū‖·sin γ ≤ β, so at any limit "
        f"θ(w̄, w*) ≤ {tmax:.2e} (k=20, β=1e-3). Runs B converge ({conv}/{len(runs_limit)}, largest identity "
        f"residual {fp:.1e}) to θ(w̄, w*) under that ceiling. With the paper's η = 1e-5, runs A after 200,000 "
        f"iterations are at θ(w̄, w*) = {min(a_theta):.4f}..{max(a_theta):.4f}, still descending; they pass the "
        f"paper's θ(w̄, w*) for their s between iterations {min(known)} and {max(known)} "
        f"({len(known)}/{len(crossing)} runs; trace every 1,000 iterations). The paper's table matches an "
        "unconverged iterate of this kind (the paper states no iteration count or stopping rule).",
        "- **s ≥ 6 with the correct ℓ0 threshold.** μ = λ/β = 0.1, so the ℓ0 prox keeps |w_i| > √(2μ) = 0.447. "
        "The teacher's entries are s^{-1/2}: 0.707 (s=2), 0.5 (s=4) survive; 0.408 (s=6), 0.354 (s=8), 0.316 "
        "(s=10) do not. As w̄ → w*, every entry falls under the threshold and ū = 0 (B: ‖ū‖₀ = 0, θ(ū, w*) "
        "undefined, f(ū) = f(0) = k(k+1)/8 = 52.5). The paper's ‖ū‖₀ = s for s ≥ 6 needs a threshold below "
        "0.316: thresholding at λ/β = 0.1 (C) reproduces ‖ū‖₀ = s for every s, as seed 000's Lemma 5.2.2 "
        "misprint (λ in place of √(2λ)) would.",
        f"- **Or β = {BETA_001:g}, as in seed 001 §6.** Seed 001 runs the same toy (k=20, d=50, λ=1e-4, ℓ0) with "
        f"β = {BETA_001:g}, not seed 003's 1e-3. With that β the correct ℓ0 threshold is √(2λ/β) = {thr_d:.3f}, "
        f"and a teacher entry 1/√s is above it exactly when s < β/(2λ) = {BETA_001 / 2e-4:g}, i.e. for s up to "
        f"{math.ceil(BETA_001 / 2e-4) - 1}. Runs D ({conv_d}/{len(runs_beta) + len(runs_beta_wide)} converged to "
        f"tol 1e-14): ‖ū‖₀ = s in {d_exact}/{len(runs_beta)} runs of the table's s = 2..10"
        + (" — the paper's row, with the correct threshold and no misprint in it" if d_exact == len(runs_beta) else "")
        + "; the runs beyond the table show where the entries reach the threshold. So seed 003's ‖ū‖₀ = s for "
        "s ≥ 6 is explained as well by its runs having used seed 001's β = 4e-3 (a misprinted β in its text) as by "
        "the misprinted threshold (C); its ‖ū‖₀ row alone cannot tell which.",
        "- θ(ū, w*) is larger in the paper than at our limits for the same reason as θ(w̄, w*): "
        "the runs had not converged.",
        "",
    ]


def figure(lines: list[str]) -> None:
    FIG.mkdir(parents=True, exist_ok=True)
    spec = {
        "k": 2,
        "d": 30,
        "lam": 1e-4,
        "beta": 4e-3,
        "eta": 0.01,
        "max_iters": 6000,
        "log_every": 10,
        "teacher": {"seed": 3},
        "init": {"seed": 7},
        "sweep": {"penalty": ["l0", "tl1", "l1"]},
    }
    runs = run_spec(spec)["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        tr = r["trace"]
        axes[0].plot(tr["iter"], tr["lagrangian"], label=r["config"]["penalty"])
        axes[1].semilogy(tr["iter"], tr["theta_w"], label=r["config"]["penalty"])
    axes[0].set(xlabel="iteration t", ylabel="L_β(u^t, w^t)", title="Lagrangian", yscale="log")
    axes[1].set(xlabel="iteration t", ylabel="θ(w^t, w*)", title="angle to the teacher")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("RVSM, ReLU network, k=2, d=30, λ=1e-4, β=4e-3, η=0.01 (as seed 000 Fig. 7)")
    fig.tight_layout()
    fig.savefig(FIG / "convergence.png", dpi=110)
    lines += [
        "## Convergence",
        "",
        "L_β(u^t, w^t) and θ(w^t, w*) against t, one run per penalty (teacher seed 3, init seed 7, η=0.01):",
        "",
        "![convergence](figures/convergence.png)",
        "",
    ]


def main() -> None:
    lines = [
        "# Reproduction of the seeds' toy tables",
        "",
        "Generated by `python benchmarks/reproduce.py` (it rewrites this file and `docs/figures/convergence.png`).",
        "",
    ]
    t = time.perf_counter()
    seed000(lines)
    seed003(lines)
    figure(lines)
    lines.append(f"_Total run time: {time.perf_counter() - t:.0f} s on the CPU._")
    DOC.write_text("\n".join(lines) + "\n")
    print(DOC.read_text())


if __name__ == "__main__":
    sys.exit(main())
