"""``/metrics``: valid Prometheus text exposition that counts a job through its states (real API, real
Celery worker, real Redis), and counters that add up across processes on both job stores."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete

from jobs import counters
from jobs.db import Counter, get_sessionmaker
from tests.service_helpers import POSTGRES_URL, Worker, make_client, service_env, unique_queue, wait_for

TOY = {"network": "relu", "k": 2, "d": 10, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 200}


def scrape(client, **headers: str) -> dict[tuple[str, tuple], float]:
    """Every sample as ``{(name, sorted labels): value}``; parsing fails on anything not valid exposition."""
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_a_job_through_its_states(tmp_path):
    queue = unique_queue("prom")
    with make_client(tmp_path, queue) as client:
        job_id = client.post("/v1/jobs", json=TOY).json()["id"]
        before = scrape(client)
        assert value(before, "rvsm_jobs", kind="toy", state="queued") == 1
        assert value(before, "rvsm_queue_depth", queue=queue) == 1
        assert value(before, "rvsm_job_transitions_total", event="submit") == 1
        assert value(before, "rvsm_workers_alive", queue=queue) == 0
        assert (
            value(before, "rvsm_http_request_duration_seconds_count", method="POST", route="/v1/jobs", status="202")
            == 1
        )

        worker = Worker(service_env(tmp_path, queue=queue), queue, tmp_path / "worker.log")
        try:
            wait_for(
                lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded",
                timeout=120,
                what="the job to succeed",
            )
            after = scrape(client)
            assert value(after, "rvsm_workers_alive", queue=queue) == 1, worker.output()[-2000:]
        finally:
            worker.stop()
    assert value(after, "rvsm_jobs", kind="toy", state="queued") == 0
    assert value(after, "rvsm_jobs", kind="toy", state="succeeded") == 1
    assert value(after, "rvsm_queue_depth", queue=queue) == 0
    for event in ("submit", "claim", "finish"):
        assert value(after, "rvsm_job_transitions_total", event=event) == 1, event
    assert value(after, "rvsm_reconciler_actions_total", action="requeue") == 0
    # the run-duration histogram: one observation, cumulative buckets ending at the count
    labels = {"kind": "toy", "state": "succeeded"}
    assert value(after, "rvsm_job_run_seconds_count", **labels) == 1
    assert 0 < value(after, "rvsm_job_run_seconds_sum", **labels) < 120
    les = [repr(float(le)) for le in counters.RUN_BUCKETS] + ["+Inf"]
    buckets = [value(after, "rvsm_job_run_seconds_bucket", le=le, **labels) for le in les]
    assert buckets == sorted(buckets) and buckets[-1] == 1 and buckets[0] <= 1


def test_metrics_need_a_key_when_keys_are_set(tmp_path):
    with make_client(tmp_path, unique_queue("prom"), api_keys=["k1"]) as client:
        assert client.get("/metrics").status_code == 401
        samples = scrape(client, Authorization="Bearer k1")
        assert ("rvsm_jobs", ()) not in samples  # families with no jobs yet have no samples, and parse


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_counters_add_up_from_several_sessions(tmp_path, store):
    """The upsert is atomic: bumps from separate sessions (as from separate processes) add, none is lost,
    a transaction's bumps of one series are summed into one upsert, and a rolled-back bump is not counted,
    not even by a later commit of the same session."""
    url = f"sqlite:///{tmp_path / 'c.db'}" if store == "sqlite" else POSTGRES_URL
    sessions = get_sessionmaker(url)
    name = f"test_{uuid.uuid4().hex[:8]}"
    try:
        for n in (1, 2.5):
            with sessions() as s:
                counters.bump(s, name, n / 2, event="x")
                counters.bump(s, name, n / 2, event="x")
                s.commit()
        with sessions() as s:
            counters.bump(s, name, 100, event="x")
            s.rollback()
            s.commit()
        with sessions() as s:
            assert s.get(Counter, counters._key(name, {"event": "x"})).value == 3.5
    finally:
        with sessions() as s:
            s.execute(delete(Counter).where(Counter.key.startswith(name)))
            s.commit()


def test_the_grafana_dashboard_asks_only_for_metrics_the_service_exports(tmp_path):
    """docs/grafana-dashboard.json: every metric an expression names is one ``/metrics`` exposes."""
    import json
    import re

    from tests.service_helpers import ROOT

    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    asked = {m for e in exprs for m in re.findall(r"\b(rvsm_[a-z_]+)", e)}
    with make_client(tmp_path, unique_queue("prom")) as client:
        client.post("/v1/jobs", json=TOY)
        r = client.get("/metrics")
    exported = set(re.findall(r"^# TYPE (rvsm_[a-z_]+) (\w+)", r.text, flags=re.M))
    names = {n for n, _ in exported}
    names |= {f"{n}{s}" for n, kind in exported for s in ("_bucket", "_count", "_sum") if kind == "histogram"}
    names |= {f"{n}_total" for n, kind in exported if kind == "counter"}
    assert asked and asked <= names, asked - names
