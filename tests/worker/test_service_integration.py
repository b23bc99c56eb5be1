"""The service end to end: the ASGI app, a real Celery worker process, the real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time

import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from jobs.settings import Settings, get_settings
from rvsm.toy import merge_columns
from service.main import create_app
from tests import service_helpers as helpers
from tests.service_helpers import (
    LONG_TOY,
    POSTGRES_URL,
    ROOT,
    Worker,
    service_env,
    unique_queue,
    wait_for,
)

LONG = LONG_TOY | {"max_iters": 15000}
SHORT = LONG | {"d": 10, "max_iters": 300, "log_every": 10}


API_SETTINGS = {"max_iters_cap": 1_000_000, "sweep_cap": 1000}  # the stack fixture's (conftest), and make_client's


def make_client(tmp, queue: str, database_url: str | None = None) -> TestClient:
    extra = {"database_url": database_url} if database_url else {}
    return helpers.make_client(tmp, queue, **API_SETTINGS, **extra)


def wait_state(client: TestClient, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    def check():
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in states else None

    return wait_for(check, timeout=timeout, what=f"job {job_id} in {states}")


def rvsm_toy(spec: dict, tmp) -> dict:
    path = tmp / f"spec-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "toy", str(path), "--quiet"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_same(a: object, b: object, path: str = "") -> None:
    """Equal documents; floats to 1e-12 relative (the same code on the same CPU)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k != "wall_time_s":
                assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_toy_job_runs_with_live_progress_and_metrics(stack):
    client, worker, tmp = stack
    r = client.post("/v1/jobs", json=LONG)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["state"] == "queued" and created["url"].endswith(f"/v1/jobs/{created['id']}")
    job_id = created["id"]

    running = wait_state(client, job_id, ("running",), timeout=60)
    assert running["attempts"] == 1 and running["started_at"] is not None
    # progress and the trace so far, while it runs
    job = wait_for(
        lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["progress"]["iteration"] > 0 and j,
        timeout=30,
        what="progress",
    )
    assert job["state"] == "running" and job["progress"]["max_iters"] == 15000
    assert 0 < job["progress"]["fraction"] < 1 and job["progress"]["eta_s"] is not None
    m1 = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert m1["state"] == "running" and m1["points"], m1
    assert {"seq", "iter", "lagrangian", "theta_w", "nnz_u"} <= set(m1["points"][0])
    later = wait_for(
        lambda: client.get(f"/v1/jobs/{job_id}/metrics", params={"since": m1["next_since"]}).json()["points"],
        timeout=30,
        what="newer metric points",
    )
    assert all(p["seq"] > m1["next_since"] for p in later)
    assert later[0]["iter"] > m1["points"][-1]["iter"]

    done = wait_state(client, job_id, ("succeeded", "failed"), timeout=120)
    assert done["state"] == "succeeded", (done, worker.output()[-3000:])
    assert done["progress"]["fraction"] == 1.0 and done["finished_at"] is not None
    assert done["summary"]["runs"] == 1 and done["summary"]["all_converged"] is False

    result = client.get(f"/v1/jobs/{job_id}/result").json()
    assert result["final"]["iters"] == 15000
    # the live trace is the result's trace (up to the final flush)
    all_points = client.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 100000}).json()["points"]
    live = {p["iter"]: p["lagrangian"] for p in all_points}
    for it, lag in zip(result["trace"]["iter"], result["trace"]["lagrangian"], strict=True):
        if it in live:
            assert live[it] == pytest.approx(lag, rel=1e-12)

    arts = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert set(arts) == {"result.json", "convergence.png"}
    for name, a in arts.items():
        body = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        assert body.status_code == 200
        assert hashlib.sha256(body.content).hexdigest() == a["sha256"] == body.headers["x-content-sha256"]
        assert len(body.content) == a["size"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts/convergence.png").content[:8] == b"\x89PNG\r\n\x1a\n"


def test_api_result_equals_rvsm_toy(stack):
    client, worker, tmp = stack
    spec = SHORT | {
        "teacher": {"w_star": [1, 0, 2, 0, 0, 0, 1, 0, 0, 3]},
        "init": {"w0": [0.1] * 10},
        "penalty": "tl1",
        "a": 0.5,
    }
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    assert wait_state(client, job_id, ("succeeded", "failed"))["state"] == "succeeded"
    assert_same(client.get(f"/v1/jobs/{job_id}/result").json(), rvsm_toy(spec, tmp))


def test_a_batch_of_jobs_each_runs_as_it_would_alone(stack):
    """``POST /v1/jobs:batch``: every job of the batch succeeds with the result ``rvsm toy`` gives its spec."""
    client, worker, tmp = stack
    specs = [SHORT | {"teacher": {"seed": s}, "penalty": p} for s, p in ((0, "l1"), (1, "l0"), (2, "tl1"))]
    r = client.post("/v1/jobs:batch", json={"jobs": specs})
    assert r.status_code == 202, r.text
    for item, spec in zip(r.json()["items"], specs, strict=True):
        assert helpers.wait_done(client, item["id"])["state"] == "succeeded", worker.output()[-2000:]
        assert_same(client.get(f"/v1/jobs/{item['id']}/result").json(), rvsm_toy(spec, tmp))


def test_sweep_job_returns_every_run(stack):
    client, worker, tmp = stack
    spec = SHORT | {"sweep": {"penalty": ["l0", "l1"], "d": [5, 8]}}
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    assert wait_state(client, job_id, ("succeeded", "failed"))["state"] == "succeeded"
    result = client.get(f"/v1/jobs/{job_id}/result").json()
    pts = client.get(f"/v1/jobs/{job_id}/metrics").json()["points"]
    assert pts and set(pts[0]["theta_w"]) == {"min", "mean", "max"}  # a sweep's live metrics are aggregates
    assert {p["group"] for p in pts} == {0, 1}  # l0 and l1 run as two batches
    assert [r["config"] for r in result["runs"]] == [{"penalty": p, "d": d} for p in ("l0", "l1") for d in (5, 8)]
    # traces and vectors are also columns in runs.safetensors, row i = runs[i]; a sweep this small keeps its
    # runs whole in the JSON too (a large one keeps summaries: tests/worker/test_sweep_artifacts.py)
    assert result["columns"]["inline"] is True and "trace" in result["runs"][0]
    assert result["columns"]["artifact"] == "runs.safetensors" and result["columns"]["rows"] == 4
    assert result["columns"]["tensors"]["w"] == {"dtype": "float64", "shape": [4, 8]}
    body = client.get(f"/v1/jobs/{job_id}/artifacts/runs.safetensors")
    assert hashlib.sha256(body.content).hexdigest() == body.headers["x-content-sha256"]
    columns = safetensors.numpy.load(body.content)
    assert_same(merge_columns(result, columns), rvsm_toy(spec, tmp))  # nothing lost: the CLI's full result
    plot = client.get(f"/v1/jobs/{job_id}/artifacts/convergence.png")  # drawn on this first ask
    assert plot.status_code == 200 and plot.content[:8] == b"\x89PNG\r\n\x1a\n"
    arts = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert set(arts) == {"result.json", "runs.safetensors", "convergence.png"}
    assert arts["convergence.png"]["sha256"] == hashlib.sha256(plot.content).hexdigest()


def test_cancel_a_running_job(stack):
    client, worker, tmp = stack
    job_id = client.post("/v1/jobs", json=LONG | {"max_iters": 1_000_000}).json()["id"]
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["iteration"] > 0, timeout=60, what="start")
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    done = wait_state(client, job_id, ("cancelled", "succeeded", "failed"), timeout=30)
    assert done["state"] == "cancelled" and done["progress"]["iteration"] < 1_000_000
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409


def test_list_filter_pagination_and_delete(stack):
    client, worker, tmp = stack
    ids = [client.post("/v1/jobs", json=SHORT | {"max_iters": 20}).json()["id"] for _ in range(3)]
    for i in ids:
        wait_state(client, i, ("succeeded",))
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["total"] >= 3
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]  # newest first
    ok = client.get("/v1/jobs", params={"state": "succeeded", "limit": 500}).json()["items"]
    assert {j["state"] for j in ok} == {"succeeded"} and set(ids) <= {j["id"] for j in ok}
    assert client.delete(f"/v1/jobs/{ids[0]}").status_code == 204
    assert client.get(f"/v1/jobs/{ids[0]}").status_code == 404
    assert not (tmp / "artifacts" / ids[0]).exists()
    assert client.get(f"/v1/jobs/{ids[1]}/result").status_code == 200  # the others are untouched


def test_health_and_readiness(stack):
    client, worker, tmp = stack
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}
    assert client.get("/docs").status_code == 200 and "/v1/jobs" in client.get("/openapi.json").json()["paths"]


def test_readiness_reports_a_broker_that_is_down(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["database"] == "ok"
        assert r.json()["checks"]["broker"].startswith("error")
        # submitting while the queue is down: a clear 503, and nothing half-stored
        r = client.post("/v1/jobs", json=SHORT)
        assert r.status_code == 503 and "queue" in r.json()["message"]
        assert client.get("/v1/jobs").json()["total"] == 0


def test_worker_sigkilled_mid_job_the_job_still_finishes_once(tmp_path):
    queue = unique_queue("kill")
    # the default visibility timeout (12 h): the reconciler, not a Redis redelivery, hands the job on
    env = service_env(tmp_path, queue=queue, RVSM_LEASE_S="2", RVSM_REAPER_INTERVAL_S="1")
    spec = LONG | {"max_iters": 12000}
    with make_client(tmp_path, queue) as client:
        first = Worker(env, queue, tmp_path / "w1.log")
        try:
            job_id = client.post("/v1/jobs", json=spec).json()["id"]
            wait_for(
                lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["iteration"] >= 1000,
                timeout=60,
                what="the first worker to be well into the job",
            )
        finally:
            first.kill()
        killed_at = client.get(f"/v1/jobs/{job_id}").json()
        assert killed_at["state"] == "running" and killed_at["attempts"] == 1
        second = Worker(env, queue, tmp_path / "w2.log")
        try:
            done = wait_state(client, job_id, ("succeeded", "failed"), timeout=120)
            assert done["state"] == "succeeded", second.output()[-3000:]
            assert done["attempts"] == 2
            result = client.get(f"/v1/jobs/{job_id}/result").json()
            assert_same(result, rvsm_toy(spec, tmp_path))
            finished_at = done["finished_at"]
            time.sleep(4)  # several sweeps later: nothing runs it again
            again = client.get(f"/v1/jobs/{job_id}").json()
            assert again["finished_at"] == finished_at and again["attempts"] == 2
        finally:
            second.stop()
        arts = client.get(f"/v1/jobs/{job_id}/artifacts").json()
        body = client.get(f"/v1/jobs/{job_id}/artifacts/result.json").content
        assert hashlib.sha256(body).hexdigest() == next(a["sha256"] for a in arts if a["name"] == "result.json")
        assert not list((tmp_path / "artifacts" / job_id).glob(".*"))  # no temp files left behind


def test_postgresql_job_store(tmp_path):
    pytest.importorskip("psycopg")
    from sqlalchemy import create_engine, text

    with create_engine(POSTGRES_URL).connect() as conn:  # the database must be there: fail, don't skip
        assert conn.execute(text("select 1")).scalar() == 1
    queue = unique_queue("pg")
    worker = Worker(service_env(tmp_path, queue=queue, database_url=POSTGRES_URL), queue, tmp_path / "w.log")
    try:
        with make_client(tmp_path, queue, database_url=POSTGRES_URL) as client:
            job_id = client.post("/v1/jobs", json=SHORT).json()["id"]
            done = wait_state(client, job_id, ("succeeded", "failed"))
            assert done["state"] == "succeeded", worker.output()[-3000:]
            assert client.get(f"/v1/jobs/{job_id}/metrics").json()["points"]
            assert client.get(f"/v1/jobs/{job_id}/result").json()["final"]["iters"] == 300
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    finally:
        worker.stop()
    with create_engine(POSTGRES_URL).connect() as conn:
        assert conn.execute(text("select count(*) from rvsm_jobs where id = :i"), {"i": job_id}).scalar() == 0


def test_delete_a_running_job_stops_it_and_leaves_nothing(stack):
    client, worker, tmp = stack
    job_id = client.post("/v1/jobs", json=LONG | {"max_iters": 1_000_000}).json()["id"]
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["iteration"] > 0, timeout=60, what="start")
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    wait_for(lambda: f"job {job_id}: no longer held" in worker.output(), timeout=30, what="the worker to drop it")
    assert not (tmp / "artifacts" / job_id).exists()
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    nxt = client.post("/v1/jobs", json=SHORT).json()["id"]  # the worker is free again
    assert wait_state(client, nxt, ("succeeded", "failed"))["state"] == "succeeded"
