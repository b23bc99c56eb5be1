"""Request-body limits, enforced while the body streams in (any transfer encoding, chunked included).

:class:`BodyLimit` is a pure ASGI middleware: it wraps ``receive`` and counts the bytes of every
``http.request`` message. The first message that takes the total over the request's cap raises
:class:`BodyTooLarge` (a 413) inside whatever is reading the body, so a multipart parser that spools
file parts to disk never gets more than the cap. JSON bodies have their own, much smaller cap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse

from jobs.settings import Settings, get_settings
from rvsm.boundedjson import json_shape as json_shape  # one source; the API checks bodies with it

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
MULTIPART_OVERHEAD = 64 * 2**10  # part headers and boundaries around the files and the spec


class BodyTooLarge(HTTPException):
    """A request body over its cap: 413 naming the body and the cap."""

    def __init__(self, cap: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE, detail=f"body: larger than this service accepts ({cap} bytes)"
        )


def is_multipart(content_type: str) -> bool:
    return content_type.lower().lstrip().startswith("multipart/form-data")


def body_cap(settings: Settings, content_type: str) -> int:
    """The largest body of a request: a multipart upload (files and the spec) or a JSON document."""
    if is_multipart(content_type):
        return settings.max_upload_bytes + settings.max_spec_bytes + MULTIPART_OVERHEAD
    return settings.max_spec_bytes


def _settings_of(scope: Scope) -> Settings:
    """The app's settings, honouring a test's ``dependency_overrides`` (as the routes do)."""
    overrides = getattr(scope.get("app"), "dependency_overrides", {})
    return overrides.get(get_settings, get_settings)()


def _content_type(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-type":
            return value.decode("latin-1")
    return ""


class BodyLimit:
    """Cut every HTTP request body at :func:`body_cap` while it streams (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = body_cap(_settings_of(scope), _content_type(scope))
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge as e:  # read outside the app's exception handlers: answer here
            if started:
                raise
            response = JSONResponse({"detail": e.detail, "message": e.detail}, status_code=e.status_code)
            await response(scope, receive, send)
