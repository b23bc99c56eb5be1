"""Small queued toy jobs run by one worker as one batch (worker.batches, rvsm.toy.run_batch): each job's
result, summary, trace points and finish are what it gets alone; what may not share a batch runs alone."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from sqlalchemy import update

from jobs.db import Job, get_sessionmaker, utcnow
from rvsm.toy import config_from_spec, run_batch, run_spec
from tests import service_helpers as helpers
from tests.service_helpers import POSTGRES_URL, drop_queue, make_client, unique_queue
from worker import batches
from worker.jobs import execute
from worker.outcomes import summarize_toy
from worker.progress import shutting_down

BASE = {"kind": "toy", "k": 2, "d": 6, "lam": 1e-3, "beta": 4e-3, "eta": 0.05, "max_iters": 300, "log_every": 7}
MIXED = [  # one batch: different d, teachers, penalties, networks and dtypes (three groups of rows)
    BASE | {"teacher": {"seed": 3}},
    BASE | {"d": 9, "penalty": "tl1", "a": 0.5},
    BASE | {"network": "binary", "algorithm": "rvscgd", "tol": 1e-10},
    BASE | {"dtype": "float32", "init": {"seed": 5}},
    BASE | {"d": 4, "teacher": {"w_star": [1.0, 0.0, -2.0, 0.5]}},
]


def close(a: object, b: object, path: str = "") -> None:
    """Equal JSON, floats to 1e-9 (a batch's rows reduce in another order than a run alone), wall time aside."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if k != "wall_time_s":
                close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(params=["sqlite", "postgresql"])
def api(tmp_path, request):
    """The API on each store, with no worker: the tests run the worker's batch code themselves."""
    store = {} if request.param == "sqlite" else {"database_url": POSTGRES_URL}  # jobs apart by their own queue
    queue = unique_queue("batch")
    client = make_client(tmp_path, queue, progress_interval_s=0.05, **store)  # not entered: no API reconciler
    yield client, helpers.settings_of(client)
    drop_queue(queue)


def submit(client, spec: dict) -> str:  # noqa: ANN001
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def rows(settings, ids: list[str]) -> dict[str, Job]:  # noqa: ANN001
    with get_sessionmaker(settings.resolved_database_url)() as s:
        return {i: s.get(Job, i) for i in ids}


def test_run_batch_gives_each_configuration_its_result_alone():
    configs = [config_from_spec({k: v for k, v in spec.items() if k != "kind"}) for spec in MIXED]
    for spec, got in zip(MIXED, run_batch(configs), strict=True):
        close(got, run_spec({k: v for k, v in spec.items() if k != "kind"}))
    with pytest.raises(ValueError, match=r"share max_iters.*\[100, 300\]"):
        run_batch([configs[0], config_from_spec(BASE | {"max_iters": 100})])


def test_queued_small_jobs_run_as_one_batch_each_as_if_alone(api):
    client, settings = api
    ids = [submit(client, spec) for spec in MIXED]
    apart = {  # each of these runs alone
        "max_iters": submit(client, BASE | {"max_iters": 301}),
        "sweep": submit(client, BASE | {"sweep": {"lam": [1e-3, 2e-3]}}),
        "budget": submit(client, BASE | {"time_budget_s": 60}),
        "empirical": submit(client, BASE | {"gradient": "empirical", "samples": 50}),
    }
    assert execute(ids[0], settings=settings) == "succeeded"
    jobs = rows(settings, ids + list(apart.values()))
    assert {jobs[i].state for i in ids} == {"succeeded"} and len({jobs[i].worker for i in ids}) == 1
    assert {jobs[i].state for i in apart.values()} == {"queued"}
    assert [execute(i, settings=settings) for i in ids[1:]] == ["skipped"] * 4  # their messages: already done
    for job_id, spec in zip(ids, MIXED, strict=True):
        alone = run_spec({k: v for k, v in spec.items() if k != "kind"})
        got = client.get(f"/v1/jobs/{job_id}/result").json()
        close(got, alone)
        close(jobs[job_id].summary, summarize_toy(alone))
        # its own live points, as alone: one per trace point while it ran (not the start, not the stop)
        points = client.get(f"/v1/jobs/{job_id}/metrics").json()["points"]
        trace = alone["trace"]
        kept = [i for i, t in enumerate(trace["iter"]) if 0 < t < alone["final"]["iters"]]
        assert [p["iter"] for p in points] == [trace["iter"][i] for i in kept]
        close([p["lagrangian"] for p in points], [trace["lagrangian"][i] for i in kept])
    for name, job_id in apart.items():
        assert execute(job_id, settings=settings) == "succeeded", name
        assert rows(settings, [job_id])[job_id].worker not in {jobs[i].worker for i in ids}


def test_a_retried_job_runs_alone_and_is_no_batch_mate(api):
    """A job that was started before (its worker lost) may be a poison job: it neither joins nor takes mates."""
    client, settings = api
    retried, a, b = (submit(client, BASE | {"teacher": {"seed": s}}) for s in range(3))
    with get_sessionmaker(settings.resolved_database_url)() as s:  # requeued after a lost worker: started once
        s.execute(update(Job).where(Job.id == retried).values(attempts=1, started_at=utcnow()))
        s.commit()
    assert execute(a, settings=settings) == "succeeded"
    jobs = rows(settings, [retried, a, b])
    assert jobs[b].worker == jobs[a].worker and jobs[retried].state == "queued"
    c = submit(client, BASE | {"teacher": {"seed": 9}})
    assert execute(retried, settings=settings) == "succeeded"
    assert rows(settings, [c])[c].state == "queued"  # the retried job took no mate
    assert rows(settings, [retried])[retried].attempts == 2


def test_batch_jobs_1_runs_each_job_alone(tmp_path):
    queue = unique_queue("batch1")
    client = make_client(tmp_path, queue, batch_jobs=1)
    settings = helpers.settings_of(client)
    try:
        a, b = submit(client, BASE), submit(client, BASE | {"teacher": {"seed": 1}})
        assert execute(a, settings=settings) == "succeeded"
        assert rows(settings, [b])[b].state == "queued"
    finally:
        drop_queue(queue)


def test_a_batch_that_fails_as_a_whole_runs_each_job_alone(api, monkeypatch):
    client, settings = api
    ids = [submit(client, spec) for spec in MIXED[:3]]

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("a bug in the batched path")

    monkeypatch.setattr(batches, "run_batch", broken)
    assert execute(ids[0], settings=settings) == "succeeded"
    jobs = rows(settings, ids)
    assert {j.state for j in jobs.values()} == {"succeeded"} and len({j.worker for j in jobs.values()}) == 1
    close(client.get(f"/v1/jobs/{ids[1]}/result").json(), run_spec({k: v for k, v in MIXED[1].items() if k != "kind"}))


def test_a_job_cancelled_in_a_running_batch_ends_cancelled_and_its_mates_succeed(api):
    client, settings = api
    long = BASE | {"max_iters": 20_000, "log_every": 10}
    ids = [submit(client, long | {"teacher": {"seed": s}}) for s in range(3)]

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 60
        while rows(settings, [ids[1]])[ids[1]].state != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 200

    thread = threading.Thread(target=cancel_when_running)
    thread.start()
    outcome = execute(ids[0], settings=settings)
    thread.join()
    jobs = rows(settings, ids)
    assert outcome == "succeeded" and [j.state for j in jobs.values()] == ["succeeded", "cancelled", "succeeded"]
    assert jobs[ids[1]].result_path is None and client.get(f"/v1/jobs/{ids[1]}/result").status_code == 409
    assert json.loads(client.get(f"/v1/jobs/{ids[2]}/result").content)["final"]["iters"] == 20_000


def test_a_worker_shutting_down_hands_the_whole_batch_back(api):
    client, settings = api
    ids = [submit(client, BASE | {"teacher": {"seed": s}}) for s in range(3)]
    shutting_down.set()
    try:
        assert execute(ids[0], settings=settings) == "released"
    finally:
        shutting_down.clear()
    jobs = rows(settings, ids)
    assert {j.state for j in jobs.values()} == {"queued"} and {j.worker for j in jobs.values()} == {None}
    assert execute(ids[2], settings=settings) == "succeeded"  # handed back, so started: each now runs alone
    assert [j.state for j in rows(settings, ids).values()] == ["queued", "queued", "succeeded"]
