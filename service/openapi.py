"""The OpenAPI document, completed: the models the routes name by ``$ref`` but FastAPI does not see (the
job specs of the hand-parsed ``POST /v1/jobs`` body, the result documents) are registered in
``components/schemas``, so every ``$ref`` resolves."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from .schemas import RESULT_MODELS, CheckpointSpecCreate, ToySpecCreate

REF = "#/components/schemas/{model}"


def ref(model: type) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def extra_schemas() -> dict[str, dict]:
    """The spec models (as validated) and the result documents (as served), with refs into components."""
    models = [(m, "validation") for m in (ToySpecCreate, CheckpointSpecCreate)]
    models += [(m, "serialization") for m in RESULT_MODELS]
    _, top = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    return top["$defs"]


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (``/openapi.json``) return FastAPI's document plus :func:`extra_schemas`."""
    base = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = base()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in extra_schemas().items():
                schemas.setdefault(name, schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
