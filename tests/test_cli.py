import json
import subprocess
import sys

FINAL = {"w", "u", "w_star", "w0", "theta_w", "theta_u", "f_w", "f_u", "f_u_normalized", "nnz_u", "gamma",
         "lagrangian", "iters", "converged", "diverged"}  # fmt: skip
TRACE = {"iter", "lagrangian", "theta_w", "theta_u", "f_w", "f_u", "nnz_u", "step"}
HYP = {"delta", "eta_le_1_over_beta_plus_L", "beta_le_delta_sin_delta_over_k_pi", "lam_over_beta_lt_1_over_sqrt_d"}
BOUNDS = {"w_error_eq13", "u_error_eq14", "limit_equation_eq12", "theta_below_delta", "fixed_point_identity",
          "lagrangian_monotone", "angle_monotone"}  # fmt: skip


def rvsm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True)


def test_rvsm_toy_with_explicit_vectors_returns_the_spec_fields(tmp_path):
    spec = {"kind": "toy", "network": "relu", "k": 2, "d": 4, "teacher": {"w_star": [3, 0, 4, 0]},
            "init": {"w0": [0.5, 0.5, -0.5, 0.5]}, "algorithm": "rvsm", "penalty": "l1",
            "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 300, "log_every": 10}  # fmt: skip
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = rvsm("toy", str(path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert FINAL <= set(result["final"])
    assert set(result["trace"]) == TRACE
    assert HYP <= set(result["hypotheses"])
    assert {b["name"] for b in result["bounds"]} == BOUNDS
    for b in result["bounds"]:
        assert {"name", "formula", "lhs", "rhs", "holds", "hypotheses_met"} <= set(b)
    assert result["final"]["w_star"] == [0.6, 0.0, 0.8, 0.0]
    assert result["final"]["w0"] == [0.5, 0.5, -0.5, 0.5]
    assert result["final"]["iters"] == 300
    # --out writes the same document
    out_file = tmp_path / "result.json"
    assert rvsm("toy", str(path), "--out", str(out_file), "--quiet").returncode == 0
    again = json.loads(out_file.read_text())
    assert again["final"]["w"] == result["final"]["w"]


def test_rvsm_toy_rejects_a_bad_spec_with_the_field(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"k": 2, "d": 3, "lam": 0.1, "beta": -1, "eta": 0.1}))
    out = rvsm("toy", str(path))
    assert out.returncode == 2 and "beta" in out.stderr and "> 0" in out.stderr
