"""schemathesis against the real app (ASGI, in-process), API keys on, with every check that applies to
single requests: no 5xx, status codes, content types, response headers and schemas as documented,
auth enforced, schema-invalid data rejected (plus the probes schemathesis sends for unsupported methods
and missing headers). Derandomized, bounded: the same cases every run.

Accepted toy jobs go to this module's own queue on the shared Redis, which no worker consumes (so no job
ever runs); the queue's key is deleted at the end. ``positive_data_acceptance`` is left out: a spec valid
by the JSON Schema can still break a cross-field rule (``s <= d``, a ``w_star`` of length ``d``) or a cap,
which JSON Schema cannot say; those get a 422 naming the rule (checked by ``not_a_server_error`` and the
status-code and schema checks).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as openapi_checks

from jobs.settings import Settings, get_settings
from service.main import create_app
from tests.service_helpers import REDIS_URL, unique_queue

KEY = "schemathesis-key"
QUEUE = unique_queue("schemathesis")
TMP = Path(tempfile.mkdtemp(prefix="rvsm-schemathesis-"))  # the schema is loaded at import, for parametrize
atexit.register(shutil.rmtree, TMP, True)  # also when this module is collected but not run
SETTINGS = Settings(
    data_dir=TMP,
    database_url=f"sqlite:///{TMP / 'jobs.db'}",
    artifact_dir=TMP / "artifacts",
    broker_url=REDIS_URL,
    toy_queue=QUEUE,
    checkpoint_queue=QUEUE,
    api_keys=[KEY],
    max_iters_cap=1000,
    sweep_cap=4,
    toy_d_cap=64,
    toy_k_cap=8,
    toy_samples_cap=1000,
    max_epochs_cap=2,
    max_upload_bytes=2**20,
    max_spec_bytes=64 * 2**10,
)
APP = create_app()
APP.dependency_overrides[get_settings] = lambda: SETTINGS
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
EXCLUDED = [openapi_checks.positive_data_acceptance]  # see the module docstring
CALLS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    print(f"\nschemathesis: {sum(CALLS.values())} generated requests over {len(CALLS)} operations: {CALLS}")
    redis.Redis.from_url(REDIS_URL).delete(QUEUE, *(f"_kombu.{k}.{QUEUE}" for k in ("binding", "binding_permanent")))


@schema.parametrize()
@settings(max_examples=25, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case) -> None:
    CALLS[case.operation.label] = CALLS.get(case.operation.label, 0) + 1
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=EXCLUDED)
