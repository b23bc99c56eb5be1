"""The FastAPI application: ``uvicorn service.main:app``."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs import reconciler
from jobs.db import get_engine
from jobs.floors import check_torch
from jobs.settings import get_settings
from rvsm import __version__, sandbox

from . import errors
from .limits import BodyLimit
from .openapi import install_openapi
from .routers import health, jobs, prometheus, ui

log = logging.getLogger("service")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    check_torch()
    settings = app.dependency_overrides.get(get_settings, get_settings)()
    # one number sizes both: the threads that run blocking endpoints, and the database pool (jobs.db)
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
    try:
        get_engine(settings.resolved_database_url)  # creates the tables
    except SQLAlchemyError as e:  # not cached: the first request that reaches the database creates them
        if not errors.database_unreachable(e):
            raise
        log.warning(
            "the job database is unreachable at startup (%s); /readyz says so and requests that need it "
            "get 503 until it answers",
            type(e).__name__,
        )
    # the submit-time check's fork server imports torch once, in the background, before the first upload
    threading.Thread(target=sandbox.warm, name="rvsm-sandbox-warm", daemon=True).start()
    stop = threading.Event()
    if settings.api_reconciler:  # recovery that needs no live worker (every sweep is conditional: any number may run)
        reconciler.start(settings, stop, name="rvsm-api-reconciler")
    try:
        yield
    finally:
        stop.set()


class NoSniff:
    """Pure ASGI middleware: ``X-Content-Type-Options: nosniff`` on every HTTP response, so no browser reads a
    JSON body, an artifact or an error as HTML or script. Wrapped around the whole stack (:class:`App`),
    starlette's error middleware included, so its 500s carry it too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-content-type-options"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, send_nosniff)


class App(FastAPI):
    """FastAPI with :class:`NoSniff` outside everything (``add_middleware`` puts a middleware inside
    starlette's ``ServerErrorMiddleware``, whose 500s would then go without the header)."""

    def build_middleware_stack(self) -> ASGIApp:
        return NoSniff(super().build_middleware_stack())


def create_app() -> FastAPI:
    app = App(
        lifespan=lifespan,
        title="rvsm-service",
        version=__version__,
        description="Sparse neural networks by the Relaxed Variable Splitting Method (RVSM / RVSCGD).",
        docs_url=None,  # /docs and /redoc: served offline by routers.ui
        redoc_url=None,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(prometheus.router)
    ui.install(app)  # /ui/, /docs, /redoc, /static
    app.add_middleware(BodyLimit)
    install_openapi(app)
    app.state.metrics_registry = CollectorRegistry()
    app.add_middleware(prometheus.RequestTimer, registry=app.state.metrics_registry)  # outermost: times 413s too

    return app


app = create_app()
