"""Numerical edge cases of toy runs, and the caps: defined results, strict JSON, 4xx-able errors naming the field."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rvsm import algorithms, problems, toy
from rvsm.toy import SpecError, ToyLimits, run_spec, validate_spec

BASE = {"k": 2, "d": 3, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 40}
README = {
    "k": 2,
    "d": 10,
    "teacher": {"seed": 0},
    "init": {"seed": 1},
    "lam": 1e-4,
    "beta": 4e-3,
    "eta": 0.1,
    "max_iters": 20000,
    "tol": 1e-14,
}


def strict(result: dict) -> dict:
    """``result`` after a strict JSON round trip (raises on NaN / Inf)."""
    return json.loads(json.dumps(result, allow_nan=False))


def by_name(result: dict) -> dict:
    return {b["name"]: b for b in result["bounds"]}


def rejected(spec: dict, field: str, *words: str, limits: ToyLimits | None = None) -> SpecError:
    with pytest.raises(SpecError) as e:
        validate_spec(spec, limits=limits)
    assert e.value.field == field, str(e.value)
    for w in words:
        assert w in e.value.rule, (w, str(e.value))
    # the runner applies the same rules
    with pytest.raises(SpecError):
        run_spec(spec, limits=limits)
    return e.value


# --------------------------------------------------------------------------- theta = pi
@pytest.mark.parametrize("network", ["relu", "binary"])
def test_theta_pi_gives_a_defined_result(network):
    """d = 1, w0 = -w*: the normalised iterate stays at theta = pi; the ReLU eq. 12 constant k pi/(pi - theta)
    is infinite there (it raised ZeroDivisionError); the coarse gradient was NaN (eq. 15 is 0/0)."""
    spec = BASE | {"d": 1, "network": network, "teacher": {"w_star": [1.0]}, "init": {"w0": [-1.0]}}
    if network == "binary":
        spec["algorithm"] = "rvscgd"
    r = strict(run_spec(spec))
    assert r["final"]["diverged"] is False
    assert r["final"]["theta_w"] == pytest.approx(math.pi)
    eq12 = by_name(r)["limit_equation_eq12"]
    if network == "relu":
        assert eq12["lhs"] is None and eq12["holds"] is None and "infinite" in eq12["note"]
    assert by_name(r)["theta_below_delta"]["holds"] is False  # delta = 0


def test_binary_run_at_minus_w_star_is_defined():
    """At w = -w* the expected coarse gradient is (k/pi) w_hat (not NaN): with d = 2 and w0 = -w* the run
    stays put (the step is parallel to w, normalisation undoes it) but every number is defined."""
    spec = BASE | {
        "d": 2,
        "network": "binary",
        "algorithm": "rvscgd",
        "penalty": "l1",
        "lam": 0.0,
        "teacher": {"w_star": [1.0, 0.0]},
        "init": {"w0": [-1.0, 0.0]},
    }
    r = strict(run_spec(spec))
    assert not r["final"]["diverged"]
    assert r["final"]["w"] == pytest.approx([-1.0, 0.0])
    assert r["final"]["f_w"] == pytest.approx(spec["k"] / 2)  # k theta / (2 pi) at theta = pi


# --------------------------------------------------------------------------- RVSCGD eq. 12, both seeds
def test_rvscgd_limit_equation_reports_both_seed_ranges():
    spec = README | {"d": 20, "network": "binary", "algorithm": "rvscgd", "penalty": "l1", "lam": 2e-3}
    r = strict(run_spec(spec))
    eq12 = by_name(r)["limit_equation_eq12"]
    k, lam, d, beta = spec["k"], spec["lam"], spec["d"], spec["beta"]
    w = torch.tensor(r["final"]["w"], dtype=torch.float64)
    u = torch.tensor(r["final"]["u"], dtype=torch.float64)
    ws = torch.tensor(r["final"]["w_star"], dtype=torch.float64)

    def projection(const: float) -> tuple[float, float]:  # from the result's vectors, here
        v = ws - const * beta * (w - u)
        c = float(v @ w / (w @ w))
        return c, float(torch.linalg.vector_norm(v - c * w))

    c1, res1 = projection(2 * math.sqrt(2 * math.pi) / k)
    c3, res3 = projection(2 * math.pi / k)
    c_min = (k - 2 * lam * math.sqrt(2 * math.pi) * d) / k  # seed 001 Theorem 1
    c_max = k / (k - 2 * math.pi * lam * math.sqrt(d))  # seed 003 eq. 10
    assert eq12["lhs"] == pytest.approx(c1) and eq12["rhs"] == pytest.approx(c_min)
    assert eq12["C_min_seed001"] == pytest.approx(c_min)
    assert eq12["holds"] == (c1 >= c_min and res1 <= 1e-6)
    s3 = eq12["seed003"]
    assert s3["C"] == pytest.approx(c3) and s3["C_max"] == pytest.approx(c_max)
    assert s3["parallel_residual"] == pytest.approx(res3, abs=1e-12)
    assert s3["holds"] == (0 < c3 <= c_max and res3 <= 1e-6)
    assert s3["parallel_residual"] < 1e-9  # 2 pi / k is the exact constant at convergence
    assert "1/(1 - 2 k lam" not in eq12["formula"]  # not the ReLU range of seed 000


def test_relu_limit_equation_without_an_upper_bound_is_null_not_inf():
    """1 - 2 k lam sqrt(d) <= 0: no upper bound on C; JSON gets null, and holds still reports C > 0."""
    r = strict(run_spec(BASE | {"lam": 0.5, "beta": 1.0}))
    eq12 = by_name(r)["limit_equation_eq12"]
    assert eq12["rhs"] is None and eq12["holds"] in (True, False)


# --------------------------------------------------------------------------- float32 runs, float64 metrics
def test_float32_run_reports_float64_metrics_of_its_iterates():
    r = strict(run_spec(README | {"dtype": "float32"}))
    f = r["final"]
    w = torch.tensor(f["w"], dtype=torch.float64)
    u = torch.tensor(f["u"], dtype=torch.float64)
    ws = torch.tensor(f["w_star"], dtype=torch.float64)
    exact = problems.relu_loss(w, ws, 2).item()
    assert f["f_w"] == pytest.approx(exact, rel=1e-12)
    assert f["theta_w"] == pytest.approx(problems.angle(w, ws).item(), rel=1e-12)
    lag = exact + 1e-4 * int((u != 0).sum()) + 0.5 * 4e-3 * float(torch.linalg.vector_norm(w - u)) ** 2
    assert f["lagrangian"] == pytest.approx(lag, rel=1e-12)
    # the float32 closed form is visibly off at this limit: the check above could fail
    assert abs(problems.relu_loss(w.float(), ws.float(), 2).item() - exact) > 1e-3 * exact
    assert by_name(r)["lagrangian_monotone"]["holds"] is True


# --------------------------------------------------------------------------- subnormal and huge numbers
def test_subnormal_a_in_float32_is_rejected_naming_a():
    rejected(BASE | {"dtype": "float32", "penalty": "tl1", "a": 1e-40}, "a", "float32", "1e-40")


def test_subnormal_w_star_is_normalised():
    r = strict(run_spec(BASE | {"teacher": {"w_star": [5e-324, 0.0, 0.0]}}))
    assert r["final"]["w_star"] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("w0", [[0, 0, 0], [5e-324, 0.0, 0.0], [1e200, 0.0, 1.0]])
def test_w0_whose_norm_is_not_a_normal_number_is_rejected(w0):
    rejected(BASE | {"init": {"w0": w0}}, "init.w0")


def test_float32_w0_range():
    rejected(BASE | {"dtype": "float32", "init": {"w0": [1e-20, 0.0, 0.0]}}, "init.w0", "float32")
    strict(run_spec(BASE | {"dtype": "float32", "init": {"w0": [1e-10, 0.0, 0.0]}}))


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"lam": 1e308}, "lam"),  # mu = lam/beta overflows
        ({"lam": 1e300, "beta": 1e-10}, "lam"),
        ({"eta": 1e200, "beta": 1e200}, "eta"),  # eta beta overflows
        ({"dtype": "float32", "eta": 1e39}, "eta"),
        ({"dtype": "float32", "beta": 1e-39, "lam": 0.0}, "beta"),
        ({"lam": 5e-324}, "lam"),
        ({"lam": 10**400}, "lam"),
        ({"k": 10**400}, "k"),
        ({"teacher": {"w_star": [10**400, 1, 1]}}, "teacher.w_star"),
        ({"teacher": {"seed": 2**64}}, "teacher.seed"),
        ({"init": {"seed": 2**64}}, "init.seed"),
        ({"data_seed": 2**64}, "data_seed"),
        ({"teacher": {"seed": -1}}, "teacher.seed"),
        ({"sweep": {"lam": [0.1, None]}}, "sweep.lam"),
        ({"sweep": {"teacher.seed": [1, 2**70]}}, "teacher.seed"),
        ({"sweep": {"time_budget_s": [1.0]}}, "sweep.time_budget_s"),
        ({"lam": None}, "lam"),
        ({"time_budget_s": 0}, "time_budget_s"),
    ],
)
def test_meaningless_numbers_are_rejected_naming_the_field(patch, field):
    rejected(BASE | patch, field)


def test_seeds_up_to_two_to_the_64_minus_one_run():
    top = 2**64 - 1
    strict(
        run_spec(
            BASE
            | {
                "teacher": {"seed": top},
                "init": {"seed": top},
                "data_seed": top,
                "gradient": "empirical",
                "samples": 20,
            }
        )
    )


@pytest.mark.parametrize(
    "patch",
    [
        {"eta": 1e308},  # diverges at once
        {"normalize": False, "algorithm": "gd", "eta": 1e300},
        {"lam": 1e10},  # u = 0: angles of u undefined
        {"lam": 1e300, "penalty": "l1", "beta": 1.0, "normalize": False},
        {"penalty": "tl1", "a": 1e-300},
        {"penalty": "tl1", "a": 1e300},
        {"dtype": "float32", "eta": 3e38, "beta": 1.0},
        {"network": "binary", "algorithm": "rvscgd", "lam": 1e300, "beta": 1e-5},
    ],
)
def test_extreme_but_valid_runs_give_strict_json(patch):
    r = strict(run_spec(BASE | patch))
    assert len(r["final"]["w"]) == 3


def test_progress_metrics_are_finite_or_nan():
    seen = []
    run_spec(
        BASE | {"lam": 1e300, "penalty": "l1", "beta": 1.0, "normalize": False, "max_iters": 20, "log_every": 5},
        callback=seen.append,
    )
    assert seen
    for p in seen:
        for vals in p["metrics"].values():
            assert all(math.isfinite(v) or math.isnan(v) for v in vals)


# --------------------------------------------------------------------------- trace length
def test_trace_interval():
    assert algorithms.trace_interval(10, 20000, 10_000) == 10
    assert algorithms.trace_interval(1, 20000, 10_000) == 3
    assert algorithms.trace_interval(1, 10**6, 102) == 10**4
    with pytest.raises(ValueError, match="max_points"):
        algorithms.trace_interval(1, 10, 2)


@pytest.mark.parametrize("max_iters", [999, 1000, 1001])
def test_trace_is_decimated_to_the_cap_and_says_so(max_iters):
    cfg = toy.config_from_spec(BASE | {"max_iters": max_iters, "log_every": 1})
    run = algorithms.run_toy([cfg], device="cpu", max_trace_points=50)[0]
    result = strict(toy.run_result(run))
    it = result["trace"]["iter"]
    assert 45 <= len(it) <= 50 and it[0] == 0 and it[-1] == max_iters
    assert all(len(v) == len(it) for v in result["trace"].values())
    info = result["trace_info"]
    assert info["log_every"] == math.ceil(max_iters / 48) and info["requested_log_every"] == 1
    assert info["log_every_raised"] is True and "raised" in info["note"]
    assert all(b % info["log_every"] == 0 for b in it[:-1])


def test_a_large_batch_shares_the_trace_budget(monkeypatch):
    monkeypatch.setattr(algorithms, "TRACE_POINTS_TOTAL", 200)
    r = strict(run_spec(BASE | {"max_iters": 500, "log_every": 1, "sweep": {"teacher.seed": list(range(8))}}))
    for run in r["runs"]:
        assert len(run["trace"]["iter"]) <= 25 and run["trace_info"]["max_points"] == 25


def test_an_untouched_trace_says_it_was_not_raised():
    info = strict(run_spec(BASE))["trace_info"]
    assert info == {
        "log_every": 10,
        "requested_log_every": 10,
        "max_points": 10_000,
        "log_every_raised": False,
        "note": None,
    }


# --------------------------------------------------------------------------- caps, before anything is built
LIMITS = ToyLimits(max_iters=1000, sweep=50, d=100, k=20, samples=500, elements=1000, sample_elements=100_000)


@pytest.mark.parametrize(
    "patch,field,words",
    [
        ({"d": 101}, "d", ("<= 100", "101")),
        ({"sweep": {"d": [5, 101]}}, "sweep.d", ("<= 100", "101")),
        ({"k": 21}, "k", ("<= 20", "21")),
        ({"max_iters": 1001}, "max_iters", ("<= 1000", "1001")),
        ({"sweep": {"max_iters": [10, 2000]}}, "sweep.max_iters", ("<= 1000", "2000")),
        ({"gradient": "empirical", "samples": 501}, "samples", ("<= 500", "501")),
        ({"gradient": "empirical", "batch_size": 501}, "batch_size", ("<= 500", "501")),
        ({"sweep": {"teacher.seed": list(range(51))}}, "sweep", ("51 configurations", "at most 50")),
        ({"d": 100, "sweep": {"teacher.seed": list(range(11))}}, "sweep", ("1100", "at most 1000")),
        ({"teacher": {"w_star": [1.0] * 101}}, "teacher.w_star", ("101 entries", "100")),
        ({"sweep": {"init.w0": [[1.0] * 200]}}, "sweep.init.w0", ("200 entries",)),
        ({"gradient": "empirical", "samples": 500, "k": 20, "d": 11}, "samples", ("110000", "100000")),
        (
            {"gradient": "empirical", "samples": 400, "k": 20, "d": 10, "sweep": {"data_seed": [1, 2]}},
            "sweep",
            ("160000",),
        ),
    ],
)
def test_caps_name_the_field_the_value_and_the_cap(patch, field, words):
    rejected(BASE | patch, field, *words, limits=LIMITS)


def test_sample_cap_counts_only_empirical_configurations():
    spec = BASE | {"samples": 400, "k": 20, "d": 10, "sweep": {"gradient": ["population", "empirical"]}}
    assert validate_spec(spec, limits=LIMITS).configs == 2  # 80000 sample numbers: under the cap
    rejected(spec | {"sweep": {"gradient": ["empirical", "empirical"]}}, "sweep", "160000", limits=LIMITS)


def test_caps_come_before_any_vector_is_built(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("validation built a vector")

    monkeypatch.setattr(problems, "make_teacher", boom)
    monkeypatch.setattr(problems, "make_init", boom)
    monkeypatch.setattr(torch, "randn", boom)
    for spec in (BASE | {"d": 10**8}, BASE | {"d": 10**8, "sweep": {"lam": [0.1, 0.2]}}):
        with pytest.raises(SpecError, match="d"):
            validate_spec(spec, limits=LIMITS)
    # and a valid spec is checked without building anything either
    checked = validate_spec(
        BASE | {"d": 50, "teacher": {"w_star": [1.0] * 50}, "sweep": {"lam": [0.1, 0.2]}}, limits=LIMITS
    )
    assert checked.configs == 2 and checked.max_iters == 40


def test_junk_values_are_left_to_the_type_rules():
    rejected(BASE | {"d": "many"}, "d", "integer", limits=LIMITS)
    rejected(BASE | {"sweep": {"d": [3, [4]]}}, "d", "integer", limits=LIMITS)
    rejected(BASE | {"teacher": [1, 2]}, "teacher", limits=LIMITS)


@pytest.mark.parametrize("name", ["max_iters", "log_every", "tol", "a", "data_seed"])
def test_null_for_a_field_with_a_default_is_rejected(name):
    rejected(BASE | {name: None}, name, "null")


def test_null_optional_fields_are_absent_as_the_api_reads_them():
    spec = BASE | {"teacher": None, "init": {"seed": None}, "samples": None, "time_budget_s": None}
    assert validate_spec(spec).configs == 1
    r = strict(run_spec(spec))
    assert r["final"]["w_star"] == strict(run_spec(BASE))["final"]["w_star"]


def test_an_unnamed_unknown_field_is_reported_as_the_spec():
    e = rejected(BASE | {"": 1}, "spec", "unknown field ''")
    assert str(e).startswith("spec: ")


def test_a_raised_trace_interval_does_not_delay_stopping():
    """The trace interval is raised to max_iters here; the time budget and the callback (how a worker
    cancels) are still checked every requested log_every."""
    import time

    cfg = toy.config_from_spec(BASE | {"max_iters": 10_000_000, "log_every": 100})
    t0 = time.perf_counter()
    run = algorithms.run_toy([cfg], device="cpu", time_budget_s=0.3, max_trace_points=3)[0]
    assert run.stopped_by == "time_budget" and time.perf_counter() - t0 < 5
    assert run.trace_log_every == 10_000_000 and run.trace["iter"] == [0, run.iters]

    class Stop(Exception):
        pass

    seen = []

    def cb(p):
        seen.append(p["iteration"])
        raise Stop

    with pytest.raises(Stop):
        algorithms.run_toy([cfg], device="cpu", callback=cb, max_trace_points=3)
    assert len(seen) == 1 and seen[0] % 100 == 0 and seen[0] < 10_000_000
