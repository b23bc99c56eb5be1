"""RVSM and friends on the toy problems: Theorem 1's conclusions, batching, stopping."""

import math

import pytest
import torch

from rvsm import algorithms, problems, prox
from rvsm.toy import SpecError, config_from_spec, run_spec

PAPER = {"k": 2, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "tol": 1e-14, "max_iters": 20000, "log_every": 1}


def by_name(result: dict) -> dict:
    return {b["name"]: b for b in result["bounds"]}


@pytest.fixture(scope="module")
def theorem_runs():
    """Normalised RVSM, population gradient, seed 000's parameters: Theorem 1's hypotheses hold."""
    spec = PAPER | {"d": 10, "sweep": {"penalty": ["l0", "l1", "tl1"], "d": [10, 30], "teacher.seed": [0, 2]}}
    return run_spec(spec)["runs"]


def test_hypotheses_hold_on_these_runs(theorem_runs):
    for r in theorem_runs:
        h = r["hypotheses"]
        assert h["all"], (r["config"], h)
        assert h["L"] == 7.0 and 0 < h["delta"] <= math.pi


def test_runs_reach_the_limit(theorem_runs):
    for r in theorem_runs:
        assert r["final"]["converged"] and r["final"]["stopped_by"] == "tol", r["config"]


def test_lagrangian_non_increasing(theorem_runs):
    for r in theorem_runs:
        m = by_name(r)["lagrangian_monotone"]
        assert m["holds"] and m["first_violation"] is None, (r["config"], m)
        lag = r["trace"]["lagrangian"]
        assert all(b <= a + 1e-12 * abs(a) for a, b in zip(lag, lag[1:], strict=False))


def test_theta_below_delta_and_fixed_point_identity(theorem_runs):
    for r in theorem_runs:
        b = by_name(r)
        assert b["theta_below_delta"]["holds"] and b["theta_below_delta"]["hypotheses_met"]
        fp = b["fixed_point_identity"]
        assert fp["residual"] <= 1e-8 and fp["holds"], (r["config"], fp)
        # the identity, recomputed here from the returned vectors
        w, u, ws = (torch.tensor(r["final"][n], dtype=torch.float64) for n in ("w", "u", "w_star"))
        theta, gamma = problems.angle(w, ws).item(), problems.angle(w, u).item()
        lhs = (math.pi - theta) / (2 * math.pi) * math.sin(theta)
        rhs = 4e-3 * torch.linalg.vector_norm(u).item() * math.sin(gamma)
        assert abs(lhs - rhs) <= 1e-8
        eq12 = b["limit_equation_eq12"]
        assert eq12["parallel_residual"] < 1e-9 and eq12["holds"]


def test_bounds_13_and_14_hold(theorem_runs):
    for r in theorem_runs:
        b = by_name(r)
        assert b["w_error_eq13"]["holds"] and b["w_error_eq13"]["hypotheses_met"], r["config"]
        if r["config"]["penalty"] == "l1":
            assert b["u_error_eq14"]["holds"] and b["u_error_eq14"]["hypotheses_met"]
        else:  # Corollary 1.1 does not carry eq. 14 to l0 / TL1: evaluated, flagged
            assert b["u_error_eq14"]["hypotheses_met"] is False


def test_broken_hypothesis_is_reported_not_hidden():
    r = run_spec(PAPER | {"d": 10, "beta": 2.0, "lam": 1.0, "max_iters": 200, "log_every": 10})
    h = r["hypotheses"]
    assert h["beta_le_delta_sin_delta_over_k_pi"] is False and h["all"] is False
    assert all(b["hypotheses_met"] is False for b in r["bounds"] if b["name"] != "fixed_point_identity")
    assert all("lhs" in b and "rhs" in b for b in r["bounds"])


def test_binary_rvscgd_fixed_point_uses_the_exact_constant():
    r = run_spec(PAPER | {"d": 20, "network": "binary", "algorithm": "rvscgd", "penalty": "l1"})
    assert r["final"]["converged"]
    fp = by_name(r)["fixed_point_identity"]
    assert fp["residual"] <= 1e-8
    eq12 = by_name(r)["limit_equation_eq12"]
    assert eq12["seed003"]["parallel_residual"] < 1e-9  # 2 pi / k: exact
    assert eq12["parallel_residual"] > 1e-6  # the stated 2 sqrt(2 pi) / k is not a fixed point
    assert by_name(r)["w_error_eq13"]["lhs"] is not None


def test_batched_sweep_equals_one_at_a_time():
    sweep = {
        "d": [7, 12],
        "penalty": ["l0", "tl1", "group_l1"],
        "algorithm": ["rvsm", "gd", "aht", "admm"],
        "teacher.seed": [0, 1],
    }
    base = PAPER | {"d": 7, "max_iters": 300, "tol": 0.0, "log_every": 25, "s": 3, "eta": 0.05}
    batched = run_spec(base | {"sweep": sweep})["runs"]
    assert len(batched) == 2 * 3 * 4 * 2
    for r in batched:
        c = r["config"]
        single = run_spec(
            base
            | {
                "d": c["d"],
                "penalty": c["penalty"],
                "algorithm": c["algorithm"],
                "teacher": {"seed": c["teacher.seed"]},
            }
        )
        for name in ("w", "u"):
            torch.testing.assert_close(
                torch.tensor(r["final"][name]), torch.tensor(single["final"][name]), atol=1e-10, rtol=0
            )
        assert r["final"]["iters"] == single["final"]["iters"]
        assert r["trace"]["iter"] == single["trace"]["iter"]


def test_batched_equals_single_for_the_binary_net_and_per_row_stopping():
    base = PAPER | {"d": 9, "network": "binary", "algorithm": "rvscgd", "tol": 1e-12}
    batched = run_spec(base | {"sweep": {"eta": [0.05, 0.1, 0.3], "k": [2, 5]}})["runs"]
    iters = {r["final"]["iters"] for r in batched}
    assert len(iters) > 1  # rows stop at their own iteration
    for r in batched:
        single = run_spec(base | r["config"])
        torch.testing.assert_close(
            torch.tensor(r["final"]["w"]), torch.tensor(single["final"]["w"]), atol=1e-10, rtol=0
        )
        assert r["final"]["iters"] == single["final"]["iters"]


def test_divergence_is_detected_with_its_iteration():
    r = run_spec(PAPER | {"d": 5, "normalize": False, "algorithm": "gd", "eta": 1e200, "max_iters": 50, "log_every": 1})
    f = r["final"]
    assert f["diverged"] and f["stopped_by"] == "diverged" and f["diverged_at"] is not None
    assert f["iters"] < 50 and all(math.isfinite(x) for x in f["w"])


def test_adaptive_hard_thresholding_recovers_a_sparse_teacher():
    spec = {
        "k": 2,
        "d": 20,
        "lam": 0.0,
        "beta": 1.0,
        "eta": 0.5,
        "max_iters": 3000,
        "algorithm": "aht",
        "teacher": {"seed": 4, "sparsity": 3, "values": "gaussian"},
        "init": {"seed": 9},
    }
    r = run_spec(spec)
    assert r["final"]["nnz_u"] == 3
    torch.testing.assert_close(torch.tensor(r["final"]["u"]), torch.tensor(r["final"]["w_star"]), atol=1e-6, rtol=0)


def test_gd_and_admm_baselines():
    gd = run_spec({"k": 2, "d": 8, "lam": 0.0, "beta": 1.0, "eta": 0.5, "algorithm": "gd", "max_iters": 3000})
    assert gd["final"]["theta_w"] < 1e-6
    admm = run_spec(
        {
            "k": 2,
            "d": 12,
            "lam": 0.0,
            "beta": 0.05,
            "eta": 0.5,
            "algorithm": "admm",
            "max_iters": 5000,
            "teacher": {"seed": 1, "sparsity": 4, "values": "equal"},
        }
    )
    assert admm["final"]["nnz_u"] == 4 and admm["final"]["theta_u"] < 1e-3


def test_empirical_mode_fixed_and_fresh_samples():
    base = {
        "k": 2,
        "d": 6,
        "lam": 1e-4,
        "beta": 4e-3,
        "eta": 0.1,
        "max_iters": 400,
        "penalty": "l1",
        "gradient": "empirical",
        "log_every": 50,
    }
    fixed = run_spec(base | {"samples": 2000})
    assert fixed["final"]["theta_w"] < 0.1
    again = run_spec(base | {"samples": 2000})
    assert fixed["final"]["w"] == again["final"]["w"]  # the data seed makes it repeatable
    fresh = run_spec(base | {"batch_size": 256, "network": "binary", "algorithm": "rvscgd"})
    assert fresh["final"]["theta_w"] < 0.3
    other = run_spec(base | {"batch_size": 256, "network": "binary", "algorithm": "rvscgd", "data_seed": 5})
    assert other["final"]["w"] != fresh["final"]["w"]
    mini = run_spec(base | {"samples": 1000, "batch_size": 100})
    assert mini["final"]["theta_w"] < 0.2


def test_trace_logging_grid_and_final_point():
    r = run_spec(PAPER | {"d": 5, "max_iters": 95, "tol": 0.0, "log_every": 10})
    it = r["trace"]["iter"]
    assert it[:3] == [0, 10, 20] and it[-2:] == [90, 95]
    assert set(r["trace"]) == {"iter", "lagrangian", "theta_w", "theta_u", "f_w", "f_u", "nnz_u", "step"}
    assert all(len(v) == len(it) for v in r["trace"].values())
    assert r["trace"]["step"][0] is None and r["final"]["iters"] == 95


def test_zero_u_reports_null_angles_and_loss_at_zero():
    r = run_spec(PAPER | {"d": 50, "lam": 0.1, "beta": 0.1, "max_iters": 50, "tol": 0.0})  # sqrt(2) kills all
    f = r["final"]
    assert f["nnz_u"] == 0 and f["theta_u"] is None and f["gamma"] is None
    assert f["f_u"] == pytest.approx(problems.loss_at_zero("relu", 2))
    b = run_spec(PAPER | {"d": 50, "lam": 0.1, "beta": 0.1, "max_iters": 50, "network": "binary"})
    assert b["final"]["f_u"] == pytest.approx(2 * 3 / 8)


def test_callback_reports_progress_and_can_stop_the_run():
    seen = []

    class Stop(Exception):
        pass

    def cb(p):
        seen.append(p)
        if p["iteration"] >= 30:
            raise Stop

    with pytest.raises(Stop):
        run_spec(PAPER | {"d": 5, "max_iters": 1000, "tol": 0.0, "log_every": 10}, callback=cb)
    assert [p["iteration"] for p in seen] == [10, 20, 30]
    assert seen[0]["max_iters"] == 1000 and "lagrangian" in seen[0]["metrics"] and seen[0]["eta_s"] >= 0


def test_time_budget_stops_the_run():
    r = run_spec(PAPER | {"d": 5, "max_iters": 10_000_000, "tol": 0.0, "log_every": 100, "time_budget_s": 0.3})
    assert r["final"]["stopped_by"] == "time_budget" and r["final"]["iters"] < 10_000_000


def test_top_s_mask_per_row():
    x = torch.tensor([[0.1, -3.0, 2.0, 0.0], [5.0, 1.0, -1.5, 0.2]])
    m = prox.top_s_mask(x, torch.tensor([1, 3]))
    assert m.tolist() == [[False, True, False, False], [True, True, True, False]]


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"k": 0}, "k"),
        ({"d": 0}, "d"),
        ({"beta": 0}, "beta"),
        ({"lam": -1}, "lam"),
        ({"eta": -0.1}, "eta"),
        ({"penalty": "l2"}, "penalty"),
        ({"algorithm": "sgd"}, "algorithm"),
        ({"bogus": 1}, "bogus"),
        ({"teacher": {"w_star": [1.0, 2.0]}}, "teacher.w_star"),
        ({"teacher": {"w_star": [0.0, 0.0, 0.0]}}, "teacher.w_star"),
        ({"teacher": {"w_star": [1.0, float("nan"), 0.0]}}, "teacher.w_star"),
        ({"init": {"w0": [1.0, "x", 0.0]}}, "init.w0"),
        ({"algorithm": "rvscgd"}, "algorithm"),
        ({"k": 2.5}, "k"),
        ({"teacher": {"seed": 1, "sparsity": 9}}, "teacher.sparsity"),
        ({"gradient": "empirical"}, "gradient"),
    ],
)
def test_bad_specs_name_the_field(patch, field):
    spec = {"k": 2, "d": 3, "lam": 0.1, "beta": 1.0, "eta": 0.1} | patch
    with pytest.raises(SpecError) as e:
        config_from_spec(spec)
    assert e.value.field == field and field in str(e.value)


def test_bad_sweep_field():
    with pytest.raises(SpecError, match="sweep.teacher.colour"):
        run_spec({"k": 2, "d": 3, "lam": 0.1, "beta": 1.0, "eta": 0.1, "sweep": {"teacher.colour": [1]}})
    with pytest.raises(SpecError, match="in the sweep configuration"):
        run_spec({"k": 2, "d": 3, "lam": 0.1, "beta": 1.0, "eta": 0.1, "sweep": {"beta": [1.0, -1.0]}})


def test_run_one_is_a_batch_of_one():
    cfg = config_from_spec({"k": 2, "d": 6, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 50})
    one = algorithms.run_one(cfg, device="cpu")
    assert one.iters == 50 and one.w.shape == (6,) and one.stopped_by == "max_iters"
    torch.testing.assert_close(one.w, algorithms.run_toy([cfg], device="cpu")[0].w)
