"""``rvsm serve`` with no configuration (embedded broker and worker), driven by the ``rvsm`` client as CI would."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.service_helpers import ROOT, free_port, start_serve, wait_for

SPEC = {
    "kind": "toy",
    "k": 2,
    "d": 10,
    "lam": 1e-4,
    "beta": 4e-3,
    "eta": 0.1,
    "penalty": "l0",
    "max_iters": 3000,
    "tol": 1e-14,
    "log_every": 10,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embedded")
    port = free_port()
    proc = start_serve(tmp, port)  # no configuration at all: the default data directory is ./data
    yield f"http://127.0.0.1:{port}", tmp, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def rvsm(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {"PYTHONPATH": str(ROOT)},
    )


def test_embedded_mode_runs_a_job_and_the_client_waits_for_it(server):
    url, tmp, _ = server
    spec = tmp / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = rvsm(
        "submit",
        str(spec),
        "--url",
        url,
        "--wait",
        "--poll",
        "0.2",
        "--max-theta-w",
        "0.01",
        "--download",
        str(tmp / "arts"),
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # stdout is exactly one JSON document (`| python -m json.tool` works)
    job_id = report["id"]
    assert out.stderr.splitlines()[0] == job_id
    assert report["state"] == "succeeded" and report["final"]["converged"] is True and report["gates_failed"] == []
    assert set(report["downloaded"]) == {"result.json", "convergence.png"}
    for name, digest in report["downloaded"].items():
        assert hashlib.sha256((tmp / "arts" / name).read_bytes()).hexdigest() == digest
    assert json.loads((tmp / "arts" / "result.json").read_text())["final"]["converged"] is True
    assert (tmp / "data" / "rvsm.db").exists()  # SQLite in the default data directory
    assert (tmp / "data" / "artifacts" / job_id / "result.json").exists()

    status = json.loads(rvsm("status", job_id, "--url", url, cwd=tmp).stdout)
    assert status["state"] == "succeeded" and status["attempts"] == 1
    assert rvsm("result", job_id, "--url", url, "--out", str(tmp / "r.json"), cwd=tmp).returncode == 0
    assert json.loads((tmp / "r.json").read_text())["final"]["iters"] == report["final"]["iters"]
    dl = rvsm("download", job_id, "convergence.png", "--url", url, "--out", str(tmp / "c.png"), cwd=tmp)
    assert dl.returncode == 0, dl.stderr
    digest = hashlib.sha256((tmp / "c.png").read_bytes()).hexdigest()
    assert dl.stdout.split()[-1] == digest


def test_client_exit_codes(server):
    url, tmp, _ = server
    spec = tmp / "gate.json"
    spec.write_text(json.dumps(SPEC))
    gate = rvsm("submit", str(spec), "--url", url, "--wait", "--poll", "0.2", "--min-zeros", "10", cwd=tmp)
    assert gate.returncode == 3 and "--min-zeros" in gate.stderr
    bad = tmp / "bad.json"
    bad.write_text(json.dumps(SPEC | {"beta": 0}))
    out = rvsm("submit", str(bad), "--url", url, cwd=tmp)
    assert out.returncode == 2 and "beta" in out.stderr and "greater than 0" in out.stderr
    down = rvsm("status", "x", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp)
    assert down.returncode == 4 and "cannot reach" in down.stderr


def test_checkpoint_job_from_the_cli_with_gates_and_download(server):
    import torch
    from safetensors.torch import load_file, save_file

    from rvsm import data as rdata
    from rvsm import models
    from rvsm.train import TrainConfig, train

    url, tmp, _ = server
    torch.manual_seed(0)
    model = models.build("lenet5", in_channels=1, input_size=8, num_classes=10)
    train(model, rdata.digits(), TrainConfig(algorithm="sgd", epochs=10))
    save_file(model.state_dict(), str(tmp / "lenet5.safetensors"))
    spec = tmp / "ckpt.json"
    spec.write_text(
        json.dumps(
            {
                "kind": "checkpoint",
                "architecture": "lenet5",
                "algorithm": "magnitude",
                "sparsity": 0.6,
                "epochs": 1,
                "finetune_epochs": 1,
                "lr": 0.01,
            }
        )
    )
    args = [
        "submit",
        str(spec),
        "--url",
        url,
        "--checkpoint",
        str(tmp / "lenet5.safetensors"),
        "--wait",
        "--poll",
        "0.2",
    ]
    ok = rvsm(*args, "--min-sparsity", "0.55", "--max-accuracy-drop", "0.05", "--download", str(tmp / "ck"), cwd=tmp)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["summary"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert set(report["downloaded"]) == {"model.safetensors", "model.sparse", "report.json"}
    back = load_file(str(tmp / "ck" / "model.safetensors"))
    fresh = models.build("lenet5", in_channels=1, input_size=8, num_classes=10)
    fresh.load_state_dict(back)  # plain torch loads it
    gate = rvsm(*args, "--min-sparsity", "0.9", cwd=tmp)
    assert gate.returncode == 3 and "--min-sparsity" in gate.stderr


def test_a_second_serve_on_the_same_data_directory_is_refused_and_the_first_keeps_serving(server):
    url, tmp, proc = server
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {"PYTHONPATH": str(ROOT)}
    second = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert second.returncode == 2, second.stderr
    assert "already using the data directory" in second.stderr and f"pid {proc.pid}" in second.stderr
    r = httpx.get(f"{url}/readyz", timeout=5)
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok", "worker": "ok"}
    out = rvsm("submit", str(tmp / "spec.json"), "--url", url, "--wait", "--poll", "0.2", cwd=tmp)
    assert out.returncode == 0, out.stderr


def test_cli_without_a_terminal_timeout_list_and_cancel(server):
    """As a CI step sees it: no terminal, so progress is plain lines on stderr; --timeout gives up waiting with
    exit code 5 and leaves the job running; list shows it; cancel ends it."""
    url, tmp, _ = server
    spec = tmp / "long.json"
    spec.write_text(json.dumps(SPEC | {"max_iters": 2_000_000, "tol": 0.0, "d": 400}))
    out = rvsm("submit", str(spec), "--url", url, "--wait", "--poll", "0.3", "--timeout", "8", cwd=tmp)
    assert out.returncode == 5, (out.returncode, out.stderr)
    job_id = out.stderr.splitlines()[0]
    lines = [ln for ln in out.stderr.splitlines()[1:] if ln.startswith(job_id[:8])]
    assert lines and all("%" in ln and "\r" not in ln for ln in lines), out.stderr  # plain lines, no bar
    assert out.stdout == ""  # no report: the job is not done
    listed = json.loads(rvsm("list", "--url", url, "--state", "running", cwd=tmp).stdout)
    assert job_id in [j["id"] for j in listed["items"]]
    cancelled = rvsm("cancel", job_id, "--url", url, cwd=tmp)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["cancel_requested"] is True
    wait_for(
        lambda: httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()["state"] == "cancelled",
        timeout=60,
        what="the job to stop",
    )


def test_serve_stops_its_worker_and_broker(server):
    url, tmp, proc = server
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    names = {pid: open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode() for pid in children}
    assert any("-m worker" in c for c in names.values()), names
    sock = (tmp / "serve.log").read_text().split("redis+socket://", 1)[1].split(",", 1)[0]
    assert sock == str((tmp / "data" / "broker.sock").resolve())  # under the data directory, not /tmp
    assert _answers(sock)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    wait_for(lambda: not _answers(sock), timeout=30, what="the embedded broker to stop")
    assert not os.path.exists(sock) and (tmp / "data" / "broker.rdb").exists()
    for pid in children:
        wait_for(
            lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), timeout=30, what=f"pid {pid} to exit"
        )


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _zombie(pid: str) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _serve(tmp, port: int, log_name: str) -> subprocess.Popen:
    return start_serve(tmp, port, log_name=log_name, RVSM_LEASE_S="3", RVSM_REAPER_INTERVAL_S="1")


def _job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()


def _running(url: str, job_id: str) -> dict:
    return wait_for(
        lambda: (j := _job(url, job_id))["progress"]["iteration"] > 0 and j["state"] == "running" and j,
        timeout=60,
        what=f"job {job_id} running",
    )


def _done(url: str, job_id: str, timeout: float = 120) -> dict:
    return wait_for(
        lambda: (j := _job(url, job_id))["state"] in ("succeeded", "failed", "cancelled") and j,
        timeout=timeout,
        what=f"job {job_id} done",
    )


LONG_SPEC = SPEC | {"d": 50, "eta": 0.05, "penalty": "l1", "max_iters": 30000, "log_every": 50, "tol": 0}  # ~5 s


def test_serve_replaces_a_killed_worker_and_ctrl_c_then_a_restart_finishes_the_running_job(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path, port, "serve1.log")
    try:
        job_id = httpx.post(f"{url}/v1/jobs", json=LONG_SPEC, timeout=10).json()["id"]
        _running(url, job_id)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        (worker_pid,) = [p for p in children if b"-m\0worker" in open(f"/proc/{p}/cmdline", "rb").read()]
        os.kill(int(worker_pid), signal.SIGKILL)
        wait_for(
            lambda: "embedded worker exited with -9; restarting" in (tmp_path / "serve1.log").read_text(),
            timeout=10,
            what="the supervisor to notice",
        )
        done = _done(url, job_id)
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        assert httpx.get(f"{url}/readyz", timeout=5).json()["checks"]["worker"] == "ok"

        # Ctrl-C while a job runs: stops within seconds, hands the job back; the next start finishes it
        job_id = httpx.post(f"{url}/v1/jobs", json=LONG_SPEC, timeout=10).json()["id"]
        _running(url, job_id)
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        stopped_in = time.monotonic() - t
        assert stopped_in < 10, stopped_in
    finally:
        if proc.poll() is None:
            proc.kill()
    from jobs.db import Job, get_sessionmaker

    with get_sessionmaker(f"sqlite:///{(tmp_path / 'data' / 'rvsm.db').resolve()}")() as s:
        assert s.get(Job, job_id).state == "queued"  # handed back, not left running
    proc = _serve(tmp_path, port, "serve2.log")
    try:
        done = _done(url, job_id)
        assert done["state"] == "succeeded" and done["attempts"] == 1, done  # the hand-back cost no attempt
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
