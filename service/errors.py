"""Error responses: every 4xx names the field and the rule, in FastAPI's ``detail`` shape plus a ``message``."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def field_error(field: str, rule: str, status_code: int = status.HTTP_422_UNPROCESSABLE_CONTENT) -> HTTPException:
    """An ``HTTPException`` naming ``field`` (dotted) and the ``rule`` it broke."""
    loc = ["body", *field.split(".")]
    return HTTPException(status_code, detail=[{"loc": loc, "msg": rule, "type": "value_error"}])


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

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail
        if isinstance(detail, list):
            message = "; ".join(_describe(e) for e in detail)
        else:
            message = str(detail)
        return JSONResponse({"detail": detail, "message": message}, status_code=exc.status_code, headers=exc.headers)
