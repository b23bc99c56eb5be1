"""``/metrics``: Prometheus text exposition of the job store (:mod:`service.telemetry`) and of this
API process's request durations.

Who sees what (:func:`viewer`):

- no ``RVSM_API_KEYS`` and no ``RVSM_ADMIN_KEYS`` (an open service): everything, no key needed;
- a key from ``RVSM_ADMIN_KEYS`` (the operator's scraper): everything, every key's jobs together;
- a key from ``RVSM_API_KEYS`` (a tenant): only what is its own, ``rvsm_jobs`` and ``rvsm_queue_depth``
  counted over its own jobs, under the same names and labels, plus ``rvsm_workers_alive`` (which says
  nothing of anyone's jobs). The service-wide counters (transitions, reconciler actions, run durations)
  and the request durations would show other keys' activity, so a tenant gets none of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.counters import live_workers
from jobs.db import Job, get_sessionmaker

from ..deps import CredentialsDep, SettingsDep, bearer_key, key_in, owner_of, unauthorized
from ..errors import responses
from ..telemetry import StoreCollector

router = APIRouter(tags=["health"])


class RequestTimer:
    """ASGI middleware: ``rvsm_http_request_duration_seconds`` by method, route template and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.hist = Histogram(
            "rvsm_http_request_duration_seconds",
            "API request durations (this process)",
            ["method", "route", "status"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the template: bounded label values
            self.hist.labels(scope["method"], route, str(status[0])).observe(time.perf_counter() - start)


class OwnerCollector(Collector):
    """The job store's view for one API key: its own jobs by kind and state, its own queued jobs per queue,
    and the workers alive (see the module docstring)."""

    def __init__(self, database_url: str, owner: str) -> None:
        self.database_url, self.owner = database_url, owner

    def collect(self) -> Iterator[Metric]:
        mine = Job.owner == self.owner
        with get_sessionmaker(self.database_url)() as s:
            jobs = GaugeMetricFamily("rvsm_jobs", "this API key's jobs by kind and state", labels=["kind", "state"])
            for kind, state, n in s.execute(
                select(Job.kind, Job.state, func.count()).where(mine).group_by(Job.kind, Job.state)
            ):
                jobs.add_metric([kind, state], n)
            yield jobs
            depth = GaugeMetricFamily("rvsm_queue_depth", "this API key's queued jobs per queue", labels=["queue"])
            for queue, n in s.execute(
                select(Job.queue, func.count()).where(mine, Job.state == "queued").group_by(Job.queue)
            ):
                depth.add_metric([queue], n)
            yield depth
            yield self._workers(live_workers(s))

    @staticmethod
    def _workers(workers: list) -> Metric:
        alive = GaugeMetricFamily("rvsm_workers_alive", "worker processes with a recent heartbeat", labels=["queue"])
        per_queue: dict[str, int] = {}
        for w in workers:
            for name in w.queues.split(","):
                per_queue[name] = per_queue.get(name, 0) + 1
        for name, n in sorted(per_queue.items()):
            alive.add_metric([name], n)
        return alive


EVERYTHING = "*"  # viewer(): the whole service, not one key's jobs (an owner id is 32 hex digits, never this)


def viewer(settings: SettingsDep, credentials: CredentialsDep) -> str:
    """:data:`EVERYTHING` for an admin key or an open service, else the owner id of a valid API key (401
    otherwise). Every admin key and every API key is compared, in constant time, whatever matched before."""
    if not settings.api_keys and not settings.admin_keys:
        return EVERYTHING
    presented = bearer_key(credentials)
    admin = key_in(settings.admin_keys, presented)
    tenant = key_in(settings.api_keys, presented)
    if admin:
        return EVERYTHING
    if tenant:
        return owner_of(presented)
    raise unauthorized("Authorization: the key is not valid (neither an API key nor an admin key)")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}, **responses(401, 503)},
)
def metrics(request: Request, settings: SettingsDep, who: Annotated[str, Depends(viewer)]) -> Response:
    """Jobs by kind and state, queue depth per queue, workers alive, lifecycle transitions, reconciler
    actions, run durations (all from the job store, so every worker's part is counted), and this API
    process's request durations (submit: ``route="/v1/jobs", method="POST"``). With API keys set, a key
    from ``RVSM_ADMIN_KEYS`` sees all of it; an API key sees its own jobs and queue depth, and the workers
    alive."""
    store = CollectorRegistry(auto_describe=False)
    if who == EVERYTHING:
        store.register(StoreCollector(settings.resolved_database_url))
        body = generate_latest(request.app.state.metrics_registry) + generate_latest(store)
    else:
        store.register(OwnerCollector(settings.resolved_database_url, who))
        body = generate_latest(store)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
