"""``POST /v1/jobs:batch`` (issue 21, item 4): many toy jobs in one request, one id each, all or none.

No worker consumes this module's queue: the jobs stay queued, and the broker's count of waiting messages says
what was published.
"""

from __future__ import annotations

import pytest

from jobs.queue import waiting
from rvsm.toy import validate_spec
from tests.service_helpers import make_client, settings_of

TOY = {"k": 2, "d": 3, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 100}
API_SETTINGS = {"max_batch_submit": 5, "sweep_cap": 8}


def total(client) -> int:  # noqa: ANN001
    return client.get("/v1/jobs").json()["total"]


def test_a_batch_makes_one_queued_job_per_spec_in_order(client):
    specs = [TOY, TOY | {"lam": 0.05, "max_iters": 30}, TOY | {"sweep": {"teacher.seed": [0, 1, 2]}}]
    before, queue = total(client), settings_of(client).toy_queue
    waiting_before = waiting(settings_of(client), queue)
    r = client.post("/v1/jobs:batch", json={"jobs": specs})
    assert r.status_code == 202, r.text
    items = r.json()["items"]
    assert len({i["id"] for i in items}) == 3 and all(i["state"] == "queued" for i in items)
    for item, spec in zip(items, specs, strict=True):
        job = client.get(item["url"]).json()
        single = client.post("/v1/jobs", json=spec).json()  # the same spec alone: the same stored job
        alone = client.get(single["url"]).json()
        assert job["spec"] == alone["spec"] and job["kind"] == "toy"
        assert job["progress"]["max_iters"] == alone["progress"]["max_iters"] == validate_spec(spec).max_iters
    assert total(client) == before + 6
    assert waiting(settings_of(client), queue) == waiting_before + 6  # one wake-up per job, batch or not


@pytest.mark.parametrize(
    "body,field,words",
    [
        ({"jobs": [TOY, TOY | {"lam": -1}]}, "jobs.1.lam", ""),
        ({"jobs": [TOY, TOY | {"d": 0}]}, "jobs.1.d", ""),
        ({"jobs": [TOY] * 6}, "jobs", "over the cap of 5"),
        ({"jobs": [TOY | {"sweep": {"lam": [0.1, 0.2, 0.3, 0.4, 0.5]}}] * 2}, "jobs", "10 configurations in all"),
        ({"jobs": [TOY, {"kind": "checkpoint", "architecture": "lenet5"}]}, "jobs.1.kind", "checkpoint job alone"),
        ({"jobs": []}, "jobs", ""),
        ({"jobs": [TOY], "priority": 1}, "priority", ""),
        ({"jobs": TOY}, "jobs", ""),
        ([TOY], "body", ""),
    ],
)
def test_one_bad_spec_refuses_the_batch_naming_it(client, body, field, words):
    before = total(client)
    r = client.post("/v1/jobs:batch", json=body)
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert message.startswith(f"{field}:") or message.startswith(f"body.{field}:"), message
    assert words in message
    assert total(client) == before  # nothing stored


def test_a_batch_is_json_and_capped_as_a_spec_is(client):
    files = {"spec": (None, "{}")}
    r = client.post("/v1/jobs:batch", files=files)
    assert r.status_code == 422 and "not a multipart form" in r.json()["message"]
    cap = settings_of(client).max_spec_bytes
    r = client.post("/v1/jobs:batch", content=b" " * (cap + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    deep = b"[" * 40 + b"]" * 40
    r = client.post("/v1/jobs:batch", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "nested deeper" in r.json()["message"]


def test_a_broker_that_is_down_keeps_none_of_the_batch(tmp_path):
    with make_client(tmp_path, "q", broker_url="redis://127.0.0.1:1/0", broker_timeout_s=0.5) as client:
        r = client.post("/v1/jobs:batch", json={"jobs": [TOY, TOY]})
        assert r.status_code == 503 and "queue" in r.json()["message"]
        assert total(client) == 0
