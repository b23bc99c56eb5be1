"""Prometheus metrics, read from the job store when scraped.

The counters and worker heartbeats live in the store (:mod:`jobs.counters`: API and workers are separate
processes, so process-local counters would each see a part). :class:`StoreCollector` turns those, and
``GROUP BY`` counts of the job table, into metric families at scrape time. Request durations are the only
in-process metric (each API process serves its own).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.counters import RECONCILER_EVENTS, RUN_BUCKETS, live_workers, parse_key
from jobs.db import Counter, Job, get_sessionmaker


class StoreCollector(Collector):
    """The job store's view, collected on every scrape of ``/metrics``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterator[Metric]:
        with get_sessionmaker(self.database_url)() as s:
            yield from self._jobs(s)
            yield from self._workers(s)
            yield from self._counters(s)

    def _jobs(self, s: Session) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("rvsm_jobs", "jobs in the store by kind and state", labels=["kind", "state"])
        for kind, state, n in s.execute(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)):
            jobs.add_metric([kind, state], n)
        yield jobs
        depth = GaugeMetricFamily("rvsm_queue_depth", "queued jobs per queue (the job store's count)", labels=["queue"])
        q = select(Job.queue, func.count()).where(Job.state == "queued").group_by(Job.queue)
        for queue, n in s.execute(q):
            depth.add_metric([queue], n)
        yield depth

    def _workers(self, s: Session) -> Iterator[Metric]:
        alive = GaugeMetricFamily("rvsm_workers_alive", "worker processes with a recent heartbeat", labels=["queue"])
        per_queue: dict[str, int] = {}
        for w in live_workers(s):
            for q in w.queues.split(","):
                per_queue[q] = per_queue.get(q, 0) + 1
        for q, n in sorted(per_queue.items()):
            alive.add_metric([q], n)
        yield alive

    def _counters(self, s: Session) -> Iterator[Metric]:
        rows = [(*parse_key(k), v) for k, v in s.execute(select(Counter.key, Counter.value))]
        transitions = CounterMetricFamily(
            "rvsm_job_transitions", "job lifecycle transitions made (jobs.states)", labels=["event"]
        )
        actions = CounterMetricFamily(
            "rvsm_reconciler_actions", "repairs made by the workers' reconcilers", labels=["action"]
        )
        for name, labels, v in rows:
            if name == "transition":
                transitions.add_metric([labels["event"]], v)
            if name == "transition" and labels["event"] in RECONCILER_EVENTS or name == "publish_failed":
                actions.add_metric([labels.get("event", "publish_failed")], v)
        yield transitions
        yield actions
        yield from self._run_histogram(rows)

    @staticmethod
    def _run_histogram(rows: list[tuple[str, dict[str, str], float]]) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "rvsm_job_run_seconds", "run time of finished jobs (started to finished)", labels=["kind", "state"]
        )
        series: dict[tuple[str, str], dict] = {}
        for name, labels, v in rows:
            if not name.startswith("run_seconds_"):
                continue
            entry = series.setdefault((labels["kind"], labels["state"]), {"buckets": {}, "sum": 0.0, "count": 0.0})
            if name == "run_seconds_bucket":
                entry["buckets"][float(labels["le"])] = v
            elif name == "run_seconds_sum":
                entry["sum"] = v
            else:
                entry["count"] = v
        for (kind, state), e in sorted(series.items()):
            buckets = [(repr(le), e["buckets"].get(le, 0.0)) for le in map(float, RUN_BUCKETS)]
            hist.add_metric([kind, state], buckets + [("+Inf", e["count"])], e["sum"])
        yield hist
