"""A sweep's columnar result (runs.safetensors + summaries), the lazily drawn plot, and the database pool."""

from __future__ import annotations

import hashlib
import json
import threading

import anyio.to_thread
import numpy as np
import pytest
import safetensors.numpy

from jobs.db import get_engine, pool_options
from jobs.layout import COLUMNS, PLOT
from rvsm.toy import merge_columns, run_spec, run_spec_columnar
from service.plots import LINES_MAX, convergence_png
from service.schemas import ToySweepResult
from tests import service_helpers as helpers
from tests.service_helpers import REDIS_URL, make_client, unique_queue
from worker.jobs import execute

BASE = {"k": 2, "d": 6, "lam": 1e-3, "beta": 4e-3, "eta": 0.05, "max_iters": 300, "log_every": 7, "tol": 1e-9}


def strip_wall(x: object) -> object:
    if isinstance(x, dict):
        return {k: strip_wall(v) for k, v in x.items() if k != "wall_time_s"}
    if isinstance(x, list):
        return [strip_wall(v) for v in x]
    return x


def test_columns_and_summaries_rebuild_the_full_result():
    """Different d (padded columns), max_iters and penalties (groups), early stops (shorter traces)."""
    spec = BASE | {"sweep": {"d": [4, 6], "penalty": ["l0", "l1"], "max_iters": [50, 300]}}
    result, columns = run_spec_columnar(spec, inline_points=0)  # summaries only, as a large sweep's
    assert len(result["runs"]) == 8 and all("trace" not in r and "w" not in r["final"] for r in result["runs"])
    ToySweepResult.model_validate(result)  # the documented /result model admits a columnar sweep
    assert [r["final"]["d"] for r in result["runs"]] == [c.item() for c in columns["d"]]
    assert columns["w"].shape == (8, 6) and columns["w"][0, 4:].isnan().all()  # d=4 rows padded with NaN
    lengths = columns["trace.length"].tolist()
    assert len(set(lengths)) > 1 and (columns["trace.iter"][0, lengths[0] :] == -1).all()
    # through JSON and the safetensors file, as a client gets them: nothing lost
    on_disk = safetensors.numpy.load(safetensors.numpy.save({k: v.numpy() for k, v in columns.items()}))
    rebuilt = merge_columns(json.loads(json.dumps(result, allow_nan=False)), on_disk)
    assert strip_wall(rebuilt) == strip_wall(run_spec(spec))


def test_a_small_sweep_keeps_its_runs_whole_in_the_json_too():
    spec = BASE | {"sweep": {"teacher.seed": [0, 1, 2]}}
    result, columns = run_spec_columnar(spec)  # 3 runs x 43 points: under INLINE_TRACE_POINTS
    assert strip_wall(result) == strip_wall(run_spec(spec)) and columns["w"].shape == (3, 6)
    assert strip_wall(merge_columns(result, columns)) == strip_wall(result)
    just_over = int(columns["trace.length"].sum()) - 1
    assert "trace" not in run_spec_columnar(spec, inline_points=just_over)[0]["runs"][0]


def test_a_single_run_keeps_its_full_result():
    result, columns = run_spec_columnar(BASE)
    assert columns == {} and len(result["final"]["w"]) == 6 and result["trace"]["iter"][0] == 0


def test_large_sweep_plot_is_a_band_not_a_legend_per_run():
    many = BASE | {"max_iters": 100, "sweep": {"teacher.seed": list(range(3 * LINES_MAX))}}
    result, columns = run_spec_columnar(many)
    png = convergence_png(result, {k: v.numpy() for k, v in columns.items()})
    assert png.startswith(b"\x89PNG")
    # the same picture from the traces of run_spec's full result (a sweep stored before columns existed)
    assert convergence_png(run_spec(many)) == png


def test_band_survives_undefined_points():
    cols = {
        "trace.length": np.array([3] * 12),
        "trace.iter": np.tile(np.array([0, 10, 20]), (12, 1)),
        "trace.lagrangian": np.full((12, 3), np.nan),
        "trace.theta_w": np.zeros((12, 3)),
    }
    assert convergence_png({"runs": [{"config": {}}] * 12}, cols).startswith(b"\x89PNG")


@pytest.fixture()
def client_and_settings(tmp_path):
    queue = unique_queue("sweep-art")
    client = make_client(tmp_path, queue)
    settings = helpers.settings_of(client)
    yield client, settings
    import redis

    redis.Redis.from_url(REDIS_URL).delete(queue)  # our queue's key only


def test_plot_is_drawn_on_first_ask_and_recorded_with_its_sha(client_and_settings):
    client, settings = client_and_settings
    spec = BASE | {"kind": "toy", "sweep": {"teacher.seed": [0, 1, 2]}}
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    assert execute(job_id, settings=settings) == "succeeded"  # the worker's code, in this process
    folder = settings.resolved_artifact_dir / job_id
    assert sorted(p.name for p in folder.iterdir()) == sorted(["result.json", COLUMNS])  # no plot drawn yet
    result = client.get(f"/v1/jobs/{job_id}/result").json()
    assert result["columns"]["artifact"] == COLUMNS and result["columns"]["rows"] == 3
    assert client.get(f"/v1/jobs/{job_id}").json()["summary"]["runs"] == 3

    # two first asks at once: one row, one file, the listed sha is the file's
    bodies = []
    threads = [
        threading.Thread(target=lambda: bodies.append(client.get(f"/v1/jobs/{job_id}/artifacts/{PLOT}")))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(b.status_code == 200 for b in bodies)
    listed = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert set(listed) == {"result.json", COLUMNS, PLOT}
    on_disk = (folder / PLOT).read_bytes()
    assert listed[PLOT]["sha256"] == hashlib.sha256(on_disk).hexdigest() and listed[PLOT]["size"] == len(on_disk)
    assert bodies[0].headers["x-content-sha256"] == listed[PLOT]["sha256"]


def test_failed_job_gets_no_plot(client_and_settings):
    client, settings = client_and_settings
    job_id = client.post("/v1/jobs", json=BASE | {"kind": "toy"}).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == []
    assert client.get(f"/v1/jobs/{job_id}/artifacts/{PLOT}").status_code == 404


def test_pool_holds_a_connection_for_every_api_thread(tmp_path):
    threads = 40
    opts = pool_options(threads)
    assert opts["pool_size"] + opts["max_overflow"] >= threads
    engine = get_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    conns = [engine.connect() for _ in range(threads)]  # the old default (5 + 10) blocked the 16th for 30 s
    try:
        assert engine.pool.checkedout() == threads
    finally:
        for c in conns:
            c.close()


def test_app_threadpool_is_the_setting(tmp_path):
    client = make_client(tmp_path, unique_queue("pool"), api_threads=7)
    with client:  # runs the lifespan
        tokens = client.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens)
    assert tokens == 7


def test_a_plot_whose_result_is_gone_is_not_listed(client_and_settings):
    client, settings = client_and_settings
    job_id = client.post("/v1/jobs", json=BASE | {"kind": "toy"}).json()["id"]
    assert execute(job_id, settings=settings) == "succeeded"
    (settings.resolved_artifact_dir / job_id / "result.json").unlink()  # e.g. a delete racing this request
    assert [a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()] == ["result.json"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts/{PLOT}").status_code == 404


def test_bounds_over_the_batch_equal_bounds_run_by_run():
    """batch_numbers (the tensor work for all rows, grouped by d) against each run checked alone."""
    from rvsm.bounds import bound_checks, hypotheses
    from rvsm.toy import _run, json_safe, run_results

    spec = BASE | {
        "network": "binary",
        "algorithm": "rvscgd",
        "penalty": "l1",
        "sweep": {"d": [3, 6], "k": [2, 5], "lam": [0.0, 1e-3, 0.5]},
    }
    expanded, runs = _run(spec, device=None, callback=None, limits=None)
    batched = run_results(expanded, runs, vectors=False)
    for r, b in zip(runs, batched, strict=True):
        alone = json_safe({"hypotheses": hypotheses(r), "bounds": bound_checks(r)})
        assert strip_wall(alone) == {"hypotheses": b["hypotheses"], "bounds": b["bounds"]}


def test_a_run_with_nan_vectors_rebuilt_from_columns_is_strict_json_like_run_spec():
    spec = BASE | {"penalty": "tl1", "sweep": {"a": [1.0, 1e300]}}  # the second row's u is NaN (a overflows)
    result, columns = run_spec_columnar(spec, inline_points=0)
    rebuilt = merge_columns(result, {k: v.numpy() for k, v in columns.items()})
    assert any(None in rebuilt["runs"][1]["final"][v] for v in ("w", "u"))
    assert strip_wall(json.loads(json.dumps(rebuilt, allow_nan=False))) == strip_wall(run_spec(spec))
