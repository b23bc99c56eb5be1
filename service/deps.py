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

from jobs.db import get_sessionmaker
from jobs.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def owner_of(key: str) -> str:
    """The stored owner id of an API key (its hash: keys themselves are never stored)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


BEARER = HTTPBearer(
    auto_error=False,
    description="an API key from RVSM_API_KEYS (when the service has any); on /metrics also one from RVSM_ADMIN_KEYS",
)


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def bearer_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The presented bearer key (401 when there is none)."""
    presented = credentials.credentials if credentials is not None else ""
    if not presented:
        raise unauthorized("Authorization: a 'Bearer <API key>' header is required")
    return presented


def key_in(keys: list[str], presented: str) -> bool:
    """Whether ``presented`` is one of ``keys``: every key is compared, in constant time, whatever matched before."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(key.encode(), presented.encode())
    return matched


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def current_owner(settings: SettingsDep, credentials: CredentialsDep) -> str | None:
    """``None`` when the service runs without API keys; else the owner id of a valid bearer key."""
    if not settings.api_keys:
        return None
    presented = bearer_key(credentials)
    if not key_in(settings.api_keys, presented):
        raise unauthorized("Authorization: the API key is not valid")
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
            [
                {
                    "loc": ("query", name),
                    "msg": f"unknown query parameter (allowed: {allowed})",
                    "type": "extra_forbidden",
                }
                for name in unknown
            ]
        )
