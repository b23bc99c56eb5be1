"""The OpenAPI document, completed: the models the routes name by ``$ref`` but FastAPI does not see (the
job specs of the hand-parsed ``POST /v1/jobs`` body, the result documents) are registered in
``components/schemas``, so every ``$ref`` resolves."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .errors import MEANINGS
from .schemas import RESULT_MODELS, CheckpointSpecCreate, ErrorPublic, JobBatchCreate, ToySpecCreate

REF = "#/components/schemas/{model}"


def ref(model: type) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def extra_schemas() -> dict[str, dict]:
    """The spec models (as validated) and the result documents (as served), with refs into components."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in (ToySpecCreate, CheckpointSpecCreate, JobBatchCreate)),
        *((m, "serialization") for m in RESULT_MODELS),
    ]
    _, top = models_json_schema(models, ref_template=REF)
    return top["$defs"]


def _our_422(doc: dict) -> None:
    """FastAPI documents a 422 on every route with parameters as its ``HTTPValidationError``; this service
    answers every 422 with :class:`ErrorPublic` (``service.errors``), so say that."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                content = {"application/json": {"schema": ref(ErrorPublic)}}
                operation["responses"]["422"] = {"description": MEANINGS[422], "content": content}
    for name in ("HTTPValidationError", "ValidationError"):
        doc.get("components", {}).get("schemas", {}).pop(name, None)


def _calls(dependant: object) -> set[object]:
    calls = {getattr(dependant, "call", None)}
    for sub in getattr(dependant, "dependencies", ()):
        calls |= _calls(sub)
    return calls


def _database_503(app: FastAPI, doc: dict) -> None:
    """Every route that opens a job-store session (``SessionDep``) answers 503 when the database cannot be
    reached (``service.errors``): document it there, with :class:`ErrorPublic`, unless the route documents
    its own 503."""
    from .deps import get_session

    content = {"application/json": {"schema": ref(ErrorPublic)}}
    for route in iter_route_contexts(app.routes):  # the routes of included routers too, at their full paths
        original = route.original_route
        if not isinstance(original, APIRoute) or not route.include_in_schema:
            continue
        if get_session not in _calls(original.dependant):
            continue
        for method in route.methods or ():
            operation = doc.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation["responses"].setdefault("503", {"description": MEANINGS[503], "content": content})


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (``/openapi.json``) return FastAPI's document plus :func:`extra_schemas`."""
    base = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = base()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in extra_schemas().items():
                schemas.setdefault(name, schema)
            _our_422(doc)
            _database_503(app, doc)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
