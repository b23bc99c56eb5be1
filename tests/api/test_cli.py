import json
import subprocess
import sys

FINAL = {
    "w",
    "u",
    "w_star",
    "w0",
    "theta_w",
    "theta_u",
    "f_w",
    "f_u",
    "f_u_normalized",
    "nnz_u",
    "gamma",
    "lagrangian",
    "iters",
    "converged",
    "diverged",
}
TRACE = {"iter", "lagrangian", "theta_w", "theta_u", "f_w", "f_u", "nnz_u", "step"}
HYP = {"delta", "eta_le_1_over_beta_plus_L", "beta_le_delta_sin_delta_over_k_pi", "lam_over_beta_lt_1_over_sqrt_d"}
BOUNDS = {
    "w_error_eq13",
    "u_error_eq14",
    "limit_equation_eq12",
    "theta_below_delta",
    "fixed_point_identity",
    "lagrangian_monotone",
    "angle_monotone",
}


def rvsm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True)


def test_rvsm_toy_with_explicit_vectors_returns_the_spec_fields(tmp_path):
    spec = {
        "kind": "toy",
        "network": "relu",
        "k": 2,
        "d": 4,
        "teacher": {"w_star": [3, 0, 4, 0]},
        "init": {"w0": [0.5, 0.5, -0.5, 0.5]},
        "algorithm": "rvsm",
        "penalty": "l1",
        "lam": 1e-4,
        "beta": 4e-3,
        "eta": 0.1,
        "max_iters": 300,
        "log_every": 10,
    }
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


def test_an_unset_broker_means_one_thing_everywhere(tmp_path):
    """``RVSM_BROKER_URL`` unset: ``rvsm worker`` refuses and the API (outside ``rvsm serve``) says the broker is
    not configured, on ``/readyz`` and on a submit, with the same rule (``jobs.queue.broker_url``), instead of
    queueing on a guessed localhost Redis."""
    import os

    from service.cli import EXIT_INPUT
    from tests.service_helpers import make_client

    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {"RVSM_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "service.cli", "worker"], capture_output=True, text=True, env=env)
    assert out.returncode == EXIT_INPUT and "RVSM_BROKER_URL is not set" in out.stderr, (out.returncode, out.stderr)
    with make_client(tmp_path, "cpu", broker_url=None) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "error: BrokerNotConfigured"
        spec = {"kind": "toy", "k": 2, "d": 4, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 10}
        r = client.post("/v1/jobs", json=spec)
        assert r.status_code == 503 and "BrokerNotConfigured" in r.json()["message"], r.text
        assert client.get("/v1/jobs").json()["total"] == 0  # nothing half-queued is kept
