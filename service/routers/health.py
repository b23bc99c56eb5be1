"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from jobs import queue
from jobs.db import get_sessionmaker

from .. import supervisor
from ..deps import SettingsDep
from ..schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up. Answered on the event loop with no I/O: busy threads (blocking endpoints) or an
    unreachable database or broker never delay it."""
    return {"status": "ok"}


@router.get("/readyz", responses={200: {"model": Readiness}, 503: {"model": Readiness, "description": "part is down"}})
def readyz(settings: SettingsDep) -> JSONResponse:
    """The job database and the broker answer within ``RVSM_BROKER_TIMEOUT_S``, and in embedded mode the
    worker is alive (503 with the failing part otherwise)."""
    checks: dict[str, str] = {}
    try:  # the session is made here, not by a dependency: a database down since startup is reported too
        with get_sessionmaker(settings.resolved_database_url)() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # report, don't raise: this endpoint's job is to say what is down
        checks["database"] = f"error: {type(e).__name__}"  # no text: it names hosts and ports to anyone
    try:
        queue.ping(settings)
        checks["broker"] = "ok"
    except Exception as e:
        checks["broker"] = f"error: {type(e).__name__}"
    sup = supervisor.current()
    if sup is not None:  # embedded mode: `rvsm serve` runs the worker
        checks["worker"] = sup.health()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
