"""FastAPI dependencies, as ``Annotated`` aliases: settings, a database session, the caller's identity."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from .config import Settings, get_settings
from .db import get_sessionmaker

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def owner_of(key: str) -> str:
    """The stored owner id of an API key (its hash: keys themselves are never stored)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


BEARER = HTTPBearer(auto_error=False, description="an API key from RVSM_API_KEYS (when the service has any)")


def current_owner(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
) -> str | None:
    """``None`` when the service runs without API keys; else the owner id of a valid bearer key.

    Every configured key is compared, in constant time, whatever matched before.
    """
    if not settings.api_keys:
        return None
    presented = credentials.credentials if credentials is not None else ""
    if not presented:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Authorization: a 'Bearer <API key>' header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(key.encode(), presented.encode())
    if not matched:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Authorization: the API key is not valid",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return owner_of(presented)


OwnerDep = Annotated[str | None, Depends(current_owner)]


def _query_names(dependant: object) -> set[str]:
    names = {p.alias for p in getattr(dependant, "query_params", ())}
    for sub in getattr(dependant, "dependencies", ()):
        names |= _query_names(sub)
    return names


def no_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not take (a typo such as ``?ofset=`` must not be ignored)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": f"unknown query parameter (allowed: {allowed})", "type": "extra_forbidden"}
             for name in unknown]
        )  # fmt: skip
