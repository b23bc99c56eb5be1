"""Error responses: every 4xx names the field and the rule, in FastAPI's ``detail`` shape plus a ``message``.

Every error is that JSON shape, also the 5xx: a job database that cannot be reached (refused, dropped, out of
connections) is a 503 naming the database, on every route; any other unexpected exception is a JSON 500 that
names only its type (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service.errors")

MEANINGS = {
    400: "the multipart body could not be parsed",
    401: "no API key, or not a valid one (only when the service runs with RVSM_API_KEYS)",
    404: "no such job, or not the caller's",
    409: "the job has not succeeded (yet)",
    413: "the body, an upload or the spec is larger than this service accepts",
    422: "a field breaks a rule: the message names the field, the rule and the value",
    503: "the job database (or, on submit, the job queue) is unreachable; nothing was changed, try again",
    500: "an unexpected error (a bug): the message names its type only",
    507: "the server's disk is full: the upload could not be stored, nothing was kept; try again later",
}


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the job database cannot be used now (rather than that a query is wrong): a refused,
    dropped or timed-out connection (``OperationalError``: also a locked SQLite file, a deadlock, a statement
    timeout), a closed connection (``InterfaceError``), a connection the pool found dead, or no free connection
    in the pool."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def database_error(exc: BaseException) -> JSONResponse:
    """503 for an unreachable job database (:func:`database_unreachable`), else a JSON 500."""
    if not database_unreachable(exc):
        log.error("unexpected database error", exc_info=exc)  # handled here, so nothing else logs it
        return internal_error(exc)
    log.warning("the job database is unreachable: %s: %s", type(exc).__name__, (str(exc).splitlines() or [""])[0])
    detail = f"database: the job database is unreachable; try again ({type(exc).__name__})"
    return JSONResponse({"detail": detail, "message": detail}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


def internal_error(exc: BaseException) -> JSONResponse:
    """A JSON 500 naming only the exception's type (its text may hold paths, queries or a connection URL)."""
    detail = f"internal error ({type(exc).__name__}); the service's log has the details"
    return JSONResponse({"detail": detail, "message": detail}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


def field_error(field: str, rule: str, status_code: int = status.HTTP_422_UNPROCESSABLE_CONTENT) -> HTTPException:
    """An ``HTTPException`` naming ``field`` (dotted) and the ``rule`` it broke."""
    loc = ["body", *field.split(".")]
    return HTTPException(status_code, detail=[{"loc": loc, "msg": rule, "type": "value_error"}])


def responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for a route's error codes, each with the :class:`ErrorPublic` body."""
    from .schemas import ErrorPublic

    return {code: {"model": ErrorPublic, "description": MEANINGS[code]} for code in codes}


def _allowed(request: Request, fallback: str) -> str:
    """Every method the document lists for this path (starlette's 405 names only the first matching
    route's), HEAD with GET; ``fallback`` for a path the document does not list."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods)) or fallback


def _describe(err: dict) -> str:
    loc = [str(x) for x in err.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):  # where it came from, not the field's name
        loc = loc[1:]
    where = ".".join(loc) or "body"
    return f"{where}: {err.get('msg', 'invalid')}"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()
        ]  # ``input``/``ctx`` may hold values that are not JSON (NaN)
        return JSONResponse(
            {"detail": errors, "message": "; ".join(_describe(e) for e in errors)},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException, and the router's 404 / 405
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if isinstance(detail, list):
            message = "; ".join(_describe(e) for e in detail)
        else:
            message = str(detail)
        headers = exc.headers
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            headers = dict(headers or {}) | {"Allow": _allowed(request, (headers or {}).get("Allow", ""))}
        return JSONResponse({"detail": detail, "message": message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(sa_exc.SQLAlchemyError)  # raised in a dependency or a route, sync or async
    async def _database(_request: Request, exc: sa_exc.SQLAlchemyError) -> JSONResponse:
        if isinstance(exc, sa_exc.DBAPIError | sa_exc.TimeoutError):
            return database_error(exc)
        log.error("unexpected error", exc_info=exc)
        return internal_error(exc)

    @app.exception_handler(Exception)  # starlette's ServerErrorMiddleware: answers with this, then re-raises
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return database_error(exc) if database_unreachable(exc) else internal_error(exc)
