"""The FastAPI application: ``uvicorn service.main:app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from rvsm import __version__

from . import errors
from .config import get_settings
from .db import get_engine
from .floors import check_torch
from .limits import BodyLimit
from .openapi import install_openapi
from .routers import health, jobs, prometheus, ui

log = logging.getLogger("service")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    check_torch()
    settings = app.dependency_overrides.get(get_settings, get_settings)()
    # one number sizes both: the threads that run blocking endpoints, and the database pool (service.db)
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
    try:
        get_engine(settings.resolved_database_url)  # creates the tables
    except SQLAlchemyError as e:  # not cached: the first request that reaches the database creates them
        if not errors.database_unreachable(e):
            raise
        log.warning("the job database is unreachable at startup (%s); /readyz says so and requests that need it "
                    "get 503 until it answers", type(e).__name__)  # fmt: skip
    yield


def create_app() -> FastAPI:
    app = FastAPI(
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
