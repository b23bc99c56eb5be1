"""``/metrics``: Prometheus text exposition of the job store (:mod:`service.telemetry`) and of this
API process's request durations. With API keys set, a scraper sends one as a bearer token."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..deps import OwnerDep, SettingsDep
from ..errors import responses
from ..telemetry import StoreCollector

router = APIRouter(tags=["health"])


class RequestTimer:
    """ASGI middleware: ``rvsm_http_request_duration_seconds`` by method, route template and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.hist = Histogram(
            "rvsm_http_request_duration_seconds", "API request durations (this process)",
            ["method", "route", "status"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip

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


@router.get(
    "/metrics", response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}, **responses(401)},
)  # fmt: skip
def metrics(request: Request, settings: SettingsDep, _owner: OwnerDep) -> Response:
    """Jobs by kind and state, queue depth per queue, workers alive, lifecycle transitions, reconciler
    actions, run durations (all from the job store, so every worker's part is counted), and this API
    process's request durations (submit: ``route="/v1/jobs", method="POST"``)."""
    store = CollectorRegistry(auto_describe=False)
    store.register(StoreCollector(settings.resolved_database_url))
    body = generate_latest(request.app.state.metrics_registry) + generate_latest(store)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
