"""The OpenAPI document is exact: valid OpenAPI 3.1, every ``$ref`` resolves, every route lists the codes
it answers with the error model, the /v1 routes need the bearer scheme, the examples are accepted, the
timestamps carry their zone, and real result documents match the result schema."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from openapi_spec_validator import validate

from rvsm.prepare import prepare
from rvsm.toy import run_spec
from rvsm.train import TrainConfig, train
from service.main import create_app

DOC = create_app().openapi()
ERRORS = {  # (method, path): the error codes each route answers with (503: the job database is unreachable)
    ("post", "/v1/jobs"): {400, 401, 413, 422, 503, 507},
    ("post", "/v1/jobs:batch"): {401, 413, 422, 503},
    ("get", "/v1/jobs"): {401, 422, 503},
    ("get", "/v1/jobs/{job_id}"): {401, 404, 422, 503},
    ("delete", "/v1/jobs/{job_id}"): {401, 404, 422, 503},
    ("get", "/v1/jobs/{job_id}/metrics"): {401, 404, 422, 503},
    ("get", "/v1/jobs/{job_id}/result"): {401, 404, 409, 422, 503},
    ("get", "/v1/jobs/{job_id}/artifacts"): {401, 404, 422, 503},
    ("get", "/v1/jobs/{job_id}/artifacts/{name}"): {401, 404, 422, 503},
    ("post", "/v1/jobs/{job_id}/cancel"): {401, 404, 422, 503},
}


def resolve(pointer: str) -> object:
    assert pointer.startswith("#/"), pointer
    node: object = DOC
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]  # type: ignore[index]
    return node


def refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def validator(schema: dict) -> jsonschema.Draft202012Validator:
    """A JSON Schema validator for ``schema`` whose ``#/components/...`` refs resolve in the document."""
    return jsonschema.Draft202012Validator(schema | {"components": DOC["components"]})


def test_the_document_is_valid_openapi() -> None:
    assert DOC["openapi"].startswith("3.1")
    validate(DOC)


def test_every_ref_resolves() -> None:
    found = refs(DOC)
    assert len(found) > 40
    for pointer in found:
        assert isinstance(resolve(pointer), dict), pointer
    assert not [k for k in DOC["components"]["schemas"] if k in ("HTTPValidationError", "ValidationError")]


def test_every_route_documents_its_codes_with_the_error_model() -> None:
    operations = {(m, p) for p, ops in DOC["paths"].items() for m in ops if p.startswith("/v1")}
    assert operations == set(ERRORS)
    for (method, path), codes in ERRORS.items():
        responses = DOC["paths"][path][method]["responses"]
        assert {int(c) for c in responses if not c.startswith("2")} == codes, (method, path)
        for code in codes:
            schema = responses[str(code)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorPublic"}, (method, path, code)
    error = DOC["components"]["schemas"]["ErrorPublic"]
    assert set(error["required"]) == {"detail", "message"} and error["properties"]["message"]["type"] == "string"
    assert set(DOC["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}


def test_bearer_scheme_on_every_keyed_route_only() -> None:
    """The /v1 routes and /metrics take the API key (when keys are set); health, docs and UI do not."""
    assert DOC["components"]["securitySchemes"]["HTTPBearer"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "description": "",
    }
    for path, ops in DOC["paths"].items():
        for op in ops.values():
            assert (op.get("security") == [{"HTTPBearer": []}]) == (path.startswith("/v1") or path == "/metrics"), path
    assert set(DOC["paths"]["/metrics"]["get"]["responses"]) == {"200", "401", "503"}


def test_request_body_schema_and_examples() -> None:
    content = DOC["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    schema = content["application/json"]["schema"]
    assert schema == {
        "oneOf": [{"$ref": "#/components/schemas/ToySpecCreate"}, {"$ref": "#/components/schemas/CheckpointSpecCreate"}]
    }
    examples = content["application/json"]["examples"]
    assert set(examples) == {"toy", "checkpoint"}
    for example in examples.values():
        validator(schema).validate(example["value"])
    validator({"$ref": "#/components/schemas/ToySpecCreate"}).validate(examples["toy"]["value"])
    spec_text = content["multipart/form-data"]["example"]["spec"]
    validator(schema).validate(json.loads(spec_text))


def test_the_examples_are_accepted_and_timestamps_carry_utc(client) -> None:
    content = DOC["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    for example in content["application/json"]["examples"].values():
        r = client.post("/v1/jobs", json=example["value"])
        assert r.status_code == 202, r.text
        job = client.get(r.json()["url"]).json()
        assert job["created_at"].endswith("Z"), job["created_at"]  # SQLite keeps it naive: it is UTC
        validator({"$ref": "#/components/schemas/JobPublic"}).validate(job)
    r = client.post("/v1/jobs", files={"spec": (None, content["multipart/form-data"]["example"]["spec"])})
    assert r.status_code == 202, r.text


def test_unknown_query_parameters_are_422(client) -> None:
    r = client.get("/v1/jobs?ofset=3")
    assert r.status_code == 422
    assert r.json()["message"] == "ofset: unknown query parameter (allowed: limit, offset, state)"


def test_405_lists_every_method_of_the_path(client) -> None:
    r = client.put("/v1/jobs")
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) >= {"GET", "POST"}
    assert r.json()["message"] == "Method Not Allowed"


RESULT = {"$ref": "#/components/schemas/ToyRunResult"}


def result_schema() -> dict:
    return DOC["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]


def test_real_toy_results_match_the_result_schema() -> None:
    spec = {"k": 2, "d": 3, "lam": 0.01, "beta": 0.1, "eta": 0.1, "max_iters": 30}
    one = run_spec(spec)
    validator(RESULT).validate(one)
    validator(result_schema()).validate(one)
    sweep = run_spec(spec | {"sweep": {"lam": [0.0, 0.05]}})
    validator({"$ref": "#/components/schemas/ToySweepResult"}).validate(sweep)
    with pytest.raises(jsonschema.ValidationError):
        validator(RESULT).validate(sweep)  # the schemas tell the two apart


def test_a_real_checkpoint_report_matches_the_result_schema() -> None:
    from worker.checkpoint_jobs import _outputs

    spec = {
        "kind": "checkpoint",
        "architecture": "mlp",
        "hidden": [8],
        "dataset": {"name": "digits"},
        "algorithm": "rvsm",
        "target_sparsity": 0.5,
        "epochs": 1,
    }
    prep = prepare(spec)
    cfg = TrainConfig.from_spec(spec | {"params": prep.sparse_names})
    result = train(prep.model, prep.data, cfg, device=torch.device("cpu"))
    files, _ = _outputs(spec, prep, cfg, result, torch.device("cpu"))
    report = json.loads(files["report.json"])
    validator({"$ref": "#/components/schemas/CheckpointReport"}).validate(report)
    validator(result_schema()).validate(report)
    documented = DOC["components"]["schemas"]["CheckpointReport"]["properties"]
    scores = {k for k in report if k.startswith(("accuracy_", "loss_"))}
    assert set(report) - scores <= set(documented), set(report) - set(documented)  # every top-level field named


def test_the_api_schema_and_the_library_agree_on_every_toy_default():
    """Issue 20: the toy defaults are written in the API's schema and in rvsm.toy; giving each schema default
    explicitly must resolve to exactly what leaving it out does, and both must know the same fields."""
    from rvsm import toy
    from service.schemas import ToySpecCreate

    fields = ToySpecCreate.model_fields
    assert set(fields) == toy.TOP_FIELDS
    assert {n for n, f in fields.items() if f.is_required()} == set(toy.REQUIRED)
    base = {"k": 3, "d": 7, "lam": 1e-3, "beta": 0.1, "eta": 0.05}
    plain = toy._resolve(base)
    for name, f in fields.items():
        if f.is_required() or f.default is None or name == "kind":
            continue
        assert toy._resolve(base | {name: f.default}) == plain, name
