"""Bad input gets a 4xx whose message names the field and the rule; nothing stored is lost; no 5xx.

No worker consumes this module's queue: jobs stay queued, which is what the 409 case needs.
"""

from __future__ import annotations

import pytest

from jobs.settings import Settings
from tests.service_helpers import api_client

GOOD = {"k": 2, "d": 3, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 100}


API_SETTINGS = {"max_iters_cap": 50_000, "sweep_cap": 8}


def expect(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    for w in words:
        assert w in body["message"], (w, body["message"])


def test_malformed_json(client):
    r = client.post("/v1/jobs", content=b'{"k": 2, "d": ', headers={"content-type": "application/json"})
    expect(r, 422, "JSON")


@pytest.mark.parametrize(
    "patch,words",
    [
        ({"colour": "red"}, ("colour", "Extra inputs are not permitted")),
        ({"k": "two"}, ("k", "integer")),
        ({"normalize": "maybe"}, ("normalize", "boolean")),
        ({"k": 0}, ("k", "greater than or equal to 1")),
        ({"d": 0}, ("d", "greater than or equal to 1")),
        ({"beta": 0}, ("beta", "greater than 0")),
        ({"beta": -1}, ("beta", "greater than 0")),
        ({"lam": -0.1}, ("lam", "greater than or equal to 0")),
        ({"eta": 0}, ("eta", "greater than 0")),
        ({"penalty": "l2"}, ("penalty", "'l0', 'l1', 'tl1' or 'group_l1'")),
        ({"algorithm": "sgd"}, ("algorithm", "'rvsm'")),
        ({"teacher": {"w_star": [1.0, 2.0]}}, ("teacher.w_star", "d=3")),
        ({"teacher": {"w_star": [0, 0, 0]}}, ("teacher.w_star", "all zeros")),
        ({"teacher": {"seed": 1, "shape": "x"}}, ("teacher.shape", "Extra inputs")),
        ({"init": {"w0": [1, 2]}}, ("init.w0", "d=3")),
        ({"max_iters": 50_001}, ("max_iters", "<= 50000")),
        ({"sweep": {"d": [1, 2, 3], "lam": [0, 1, 2]}}, ("sweep", "9 configurations", "at most 8")),
        ({"sweep": {"beta": [1.0, -2.0]}}, ("beta", "> 0", "sweep configuration")),
        ({"sweep": {"max_iters": [10, 60_000]}}, ("sweep.max_iters", "<= 50000")),
        ({"sweep": {"nonsense": [1]}}, ("sweep.nonsense", "can be swept")),
        ({"algorithm": "rvscgd"}, ("algorithm", "binary")),
    ],
)
def test_bad_specs(client, patch, words):
    expect(client.post("/v1/jobs", json=GOOD | patch), 422, *words)


def test_nan_in_w_star_is_rejected(client):
    body = b'{"k": 2, "d": 3, "lam": 0.0001, "beta": 0.004, "eta": 0.1, "teacher": {"w_star": [1, NaN, 0]}}'
    expect(client.post("/v1/jobs", content=body, headers={"content-type": "application/json"}), 422, "teacher.w_star")


def test_unknown_job_id(client):
    for path in ("", "/metrics", "/result", "/artifacts", "/artifacts/result.json"):
        expect(client.get(f"/v1/jobs/nope{path}"), 404, "nope")
    expect(client.post("/v1/jobs/nope/cancel"), 404, "nope")
    expect(client.delete("/v1/jobs/nope"), 404, "nope")


def test_result_before_the_job_finished_is_409_and_cancel_of_a_queued_job(client):
    job = client.post("/v1/jobs", json=GOOD).json()
    expect(client.get(f"/v1/jobs/{job['id']}/result"), 409, "state", "queued")
    expect(client.get(f"/v1/jobs/{job['id']}/artifacts/result.json"), 404, "result.json")
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    expect(client.get(f"/v1/jobs/{job['id']}/result"), 409, "cancelled")


def test_bad_query_parameters(client):
    expect(client.get("/v1/jobs", params={"state": "sleeping"}), 422, "state")
    expect(client.get("/v1/jobs", params={"limit": 0}), 422, "limit")
    job = client.post("/v1/jobs", json=GOOD).json()
    expect(client.get(f"/v1/jobs/{job['id']}/metrics", params={"since": -1}), 422, "since")


def test_failed_submissions_store_nothing(client):
    before = client.get("/v1/jobs").json()["total"]
    client.post("/v1/jobs", json=GOOD | {"beta": -1})
    client.post("/v1/jobs", json=GOOD | {"max_iters": 10**9})
    assert client.get("/v1/jobs").json()["total"] == before


@pytest.fixture
def keyed(tmp_path):
    with api_client(tmp_path, "keys", api_keys=["k-a", "k-b"]) as c:
        yield c


def test_api_keys(keyed):
    expect(keyed.get("/v1/jobs"), 401, "Authorization")
    expect(keyed.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}), 401, "not valid")
    expect(keyed.get("/v1/jobs", headers={"Authorization": "Basic k-a"}), 401, "Bearer")
    assert keyed.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).headers["www-authenticate"] == "Bearer"
    a = {"Authorization": "Bearer k-a"}
    b = {"Authorization": "Bearer k-b"}
    job = keyed.post("/v1/jobs", json=GOOD, headers=a).json()
    assert keyed.get(f"/v1/jobs/{job['id']}", headers=a).status_code == 200
    # another key sees nothing of it
    assert keyed.get(f"/v1/jobs/{job['id']}", headers=b).status_code == 404
    assert keyed.post(f"/v1/jobs/{job['id']}/cancel", headers=b).status_code == 404
    assert keyed.delete(f"/v1/jobs/{job['id']}", headers=b).status_code == 404
    assert keyed.get("/v1/jobs", headers=b).json()["total"] == 0
    assert keyed.get("/v1/jobs", headers=a).json()["total"] == 1
    assert keyed.get("/healthz").status_code == 200  # health needs no key


# --------------------------------------------------------------------------- toy specs that used to give a 5xx
@pytest.mark.parametrize(
    "patch,words",
    [
        ({"teacher": {"seed": 2**64}}, ("teacher.seed", "<= 18446744073709551615")),
        ({"init": {"seed": 2**70}}, ("init.seed", "<=")),
        ({"data_seed": 2**64}, ("data_seed", "<=")),
        ({"sweep": {"lam": [0.1, None]}}, ("sweep.lam", "null")),
        ({"sweep": {"teacher.seed": [1, 2**64]}}, ("teacher.seed", "sweep configuration")),
        ({"init": {"w0": [0, 0, 0]}}, ("init.w0", "all zeros")),
        ({"init": {"w0": [5e-324, 0, 0]}}, ("init.w0", "norm")),
        ({"lam": 1e308}, ("lam", "mu")),
        ({"eta": 1e200, "beta": 1e200}, ("eta", "eta*beta")),
        ({"dtype": "float32", "a": 1e-40, "penalty": "tl1"}, ("a", "float32")),
        ({"k": 10**30}, ("k", "<= 10000")),
        ({"sweep": {"k": [2, "x"]}}, ("k", "integer")),
        ({"sweep": {"d": [[1, 2]]}}, ("d", "integer")),
    ],
)
def test_bad_toy_numbers_are_422_naming_the_field(client, patch, words):
    expect(client.post("/v1/jobs", json=GOOD | patch), 422, *words)


def test_subnormal_w_star_is_accepted(client):
    r = client.post("/v1/jobs", json=GOOD | {"teacher": {"w_star": [5e-324, 0, 0]}})
    assert r.status_code == 202, r.text


def _peak_rss_kib(reset: bool = False) -> int:
    """This process's peak resident memory (VmHWM), reset to the current one first when asked (Linux)."""
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def test_huge_d_is_rejected_at_once_without_allocating(client):
    """d = 10^8 (800 MB per vector): a 422 naming d and the cap within a second, the API's memory flat."""
    import time
    import tracemalloc

    spec = GOOD | {"d": 100_000_000, "teacher": {"seed": 3}, "sweep": {"lam": [0.0, 0.1]}}
    client.post("/v1/jobs", json=GOOD | {"d": 0})  # warm the route
    rss0 = _peak_rss_kib(reset=True)
    tracemalloc.start()
    t0 = time.perf_counter()
    r = client.post("/v1/jobs", json=spec)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    grown = _peak_rss_kib() - rss0
    expect(r, 422, "d", "100000000", "<= 100000")
    assert elapsed < 1.0, elapsed
    assert peak < 50 * 2**20, peak  # Python allocations
    assert grown < 50 * 1024, grown  # everything, torch's included: the peak since the reset


def test_checked_toy_takes_every_cap_from_the_settings():
    from fastapi import HTTPException

    from service.routers.jobs import checked_toy

    caps = Settings(
        toy_d_cap=5,
        toy_k_cap=3,
        toy_samples_cap=7,
        toy_elements_cap=12,
        toy_sample_elements_cap=60,
        max_iters_cap=1000,
        sweep_cap=10,
    )
    for patch, field in (
        ({"d": 6}, "d"),
        ({"k": 4}, "k"),
        ({"gradient": "empirical", "samples": 8}, "samples"),
        ({"sweep": {"lam": [0.0, 0.1, 0.2, 0.3, 0.4]}}, "sweep"),  # 5 configurations x d=3 > 12
        ({"gradient": "empirical", "samples": 7, "d": 5}, "samples"),  # 7 x k=2 x 5 = 70 > 60
        ({"max_iters": 1001}, "max_iters"),
    ):
        with pytest.raises(HTTPException) as e:
            checked_toy(GOOD | patch, caps)
        assert e.value.status_code == 422 and e.value.detail[0]["loc"][1] == field, e.value.detail
    ok = GOOD | {"gradient": "empirical", "samples": 6, "d": 5}  # 60 sample numbers: at the cap
    assert checked_toy(ok, caps).max_iters == 100
