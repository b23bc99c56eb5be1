"""Error responses: every 4xx names the field and the rule, in FastAPI's ``detail`` shape plus a ``message``."""

from __future__ import annotations

import re

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

MEANINGS = {
    400: "the multipart body could not be parsed",
    401: "no API key, or not a valid one (only when the service runs with RVSM_API_KEYS)",
    404: "no such job, or not the caller's",
    409: "the job has not succeeded (yet)",
    413: "the body, an upload or the spec is larger than this service accepts",
    422: "a field breaks a rule: the message names the field, the rule and the value",
    503: "the job queue (broker) is unreachable; nothing was kept, try again",
}


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
