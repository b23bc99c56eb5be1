"""The dashboard at ``/ui/`` and the API docs at ``/docs`` and ``/redoc``, all served from files shipped in
this package (``service/static``): no page loads anything from another host.

The browser libraries under ``static/vendor`` come from the npm registry by ``scripts/vendor-ui``, which
records their versions and hashes in ``static/vendor/VENDOR.json``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"
# The dashboard's own pages load scripts and styles only from this service; uPlot sets inline styles.
UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

# The docs pages: the same, plus hashes of the inline scripts FastAPI writes into them, and blob: workers
# (ReDoc's search). A second guard behind scripts/vendor-ui's patch of ReDoc's cdn.redoc.ly logo.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Mount the shipped files at ``/static`` and add the dashboard and docs routes to ``app``."""
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=True), name="static")
    app.include_router(router)


def _offline(page: HTMLResponse) -> HTMLResponse:
    """``page`` with a Content-Security-Policy that allows this service's files and its own inline scripts."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()}'"
        for m in INLINE_SCRIPT.finditer(page.body)
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP.format(hashes=hashes)
    return page


def _static(request: Request, path: str) -> str:
    return str(request.url_for("static", path=path).path)


def _openapi_url(request: Request) -> str:
    """``/openapi.json`` under the app's root path, as FastAPI's own docs routes give it."""
    return request.scope.get("root_path", "").rstrip("/") + request.app.openapi_url


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for ``/openapi.json``, from the vendored ``swagger-ui-dist``."""
    return _offline(
        get_swagger_ui_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=_static(request, "vendor/swagger-ui/swagger-ui-bundle.js"),
            swagger_css_url=_static(request, "vendor/swagger-ui/swagger-ui.css"),
            swagger_favicon_url=_static(request, "vendor/swagger-ui/favicon-32x32.png"),
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )
    )


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    """ReDoc for ``/openapi.json``, from the vendored ``redoc`` standalone bundle, without Google Fonts."""
    return _offline(
        get_redoc_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=_static(request, "vendor/redoc/redoc.standalone.js"),
            redoc_favicon_url=_static(request, "vendor/swagger-ui/favicon-32x32.png"),
            with_google_fonts=False,
        )
    )


@router.get("/ui")
def ui_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(request.url_for("ui_index").path, status_code=308)


@router.get("/ui/")
def ui_index() -> FileResponse:
    """The dashboard's single page; it routes by the URL fragment (``#/jobs``, ``#/job/<id>``, ``#/submit``)."""
    return FileResponse(
        STATIC / "ui" / "index.html", media_type="text/html", headers={"Content-Security-Policy": UI_CSP}
    )
