"""Issue 9, the HTTP half: bodies cut at their cap while they stream (chunked, no Content-Length), nothing
over the cap on disk, no 5xx from deep JSON or 64-bit query values, /healthz answering while a big spec
is validated, the API-key list that parses empty, and the torch floor.

Streaming goes through a real uvicorn (h11) server on a free port, in a thread of this process, so the
test can watch the multipart parser's temporary files (``/proc/self/fd``) while a request streams in.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobs.floors import check_torch
from jobs.settings import Settings, get_settings
from service.limits import MULTIPART_OVERHEAD, json_shape
from service.main import create_app
from tests import service_helpers as helpers
from tests.service_helpers import ROOT, free_port, python, unique_queue, wait_for

SPEC_CAP = 64 * 2**10
UPLOAD_CAP = 3 * 2**20  # over starlette's 1 MiB spooling threshold: file parts go to disk
MULTIPART_CAP = UPLOAD_CAP + SPEC_CAP + MULTIPART_OVERHEAD
QUEUE = unique_queue("limits")  # nothing consumes it; nothing here is accepted, so nothing is published


def settings_for(tmp: Path, **overrides: object) -> Settings:
    return helpers.settings_for(tmp, QUEUE, **overrides)


@contextmanager
def serve(settings: Settings) -> Iterator[int]:
    """The real app under uvicorn in a thread; yields its port."""
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20, what="uvicorn")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("limits")
    with serve(settings_for(tmp, max_spec_bytes=SPEC_CAP, max_upload_bytes=UPLOAD_CAP)) as p:
        yield p


def post_chunked(
    port: int,
    content_type: str,
    head: bytes,
    filler: int,
    tail: bytes = b"",
    *,
    chunk: int = 64 * 2**10,
    pause_s: float = 0.0,
) -> tuple[int, dict]:
    """POST /v1/jobs with ``Transfer-Encoding: chunked`` (no Content-Length): ``head``, ``filler`` bytes,
    ``tail``. The server may answer (and stop reading) before the end: then the rest is not sent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/v1/jobs")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()

    def send(data: bytes) -> None:
        conn.send(b"%x\r\n%s\r\n" % (len(data), data))

    try:
        send(head)
        for start in range(0, filler, chunk):
            send(b"0" * min(chunk, filler - start))
            time.sleep(pause_s)
        if tail:
            send(tail)
        conn.send(b"0\r\n\r\n")
    except OSError:  # the server answered and closed: read its answer
        pass
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body


class TempFileWatcher:
    """The largest temporary file this process holds open under ``folder`` (the multipart parser's spool
    files are unlinked at once, so they are found through ``/proc/self/fd``), sampled every millisecond."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}").startswith(self.folder):
                        self.largest = max(self.largest, os.stat(f"/proc/self/fd/{fd}").st_size)
                except OSError:
                    continue
            for entry in os.scandir(self.folder):
                try:
                    self.largest = max(self.largest, entry.stat().st_size)
                except OSError:
                    continue
            time.sleep(0.001)

    def __enter__(self) -> TempFileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def multipart_head(boundary: str, spec: dict) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{json.dumps(spec)}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="checkpoint"; filename="model.safetensors"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


CKPT_SPEC = {"kind": "checkpoint", "architecture": "mlp", "dataset": {"name": "digits"}, "epochs": 1}


def test_chunked_json_over_the_cap_is_413_naming_body_and_cap(port: int) -> None:
    status, body = post_chunked(port, "application/json", b'{"k": 1, "d": 2, "colour": "', 2 * SPEC_CAP, b'"}')
    assert status == 413
    assert body["message"] == f"body: larger than this service accepts ({SPEC_CAP} bytes)"


def test_chunked_json_under_the_cap_is_read_and_validated(port: int) -> None:
    status, body = post_chunked(port, "application/json", b'{"k": 1, "d": 2, "colour": "', SPEC_CAP // 2, b'"}')
    assert status == 422  # read in full, then refused for its content, not its size
    assert "colour" in body["message"]


def test_chunked_multipart_over_the_cap_is_413_and_never_spools_more_than_the_cap(port: int, spool_dir: Path) -> None:
    tail = b"\r\n--b0undary--\r\n"
    head = multipart_head("b0undary", CKPT_SPEC)
    with TempFileWatcher(spool_dir) as watch:
        status, body = post_chunked(
            port, "multipart/form-data; boundary=b0undary", head, 2 * MULTIPART_CAP, tail, pause_s=0.002
        )
    print(f"multipart of {2 * MULTIPART_CAP} bytes, cap {MULTIPART_CAP}: largest spool file {watch.largest} bytes")
    assert status == 413
    assert body["message"] == f"body: larger than this service accepts ({MULTIPART_CAP} bytes)"
    assert 2**20 < watch.largest <= MULTIPART_CAP  # it did spool (the watcher sees it), and stopped at the cap


def test_chunked_multipart_under_the_cap_reaches_validation(port: int, spool_dir: Path) -> None:
    tail = b"\r\n--b0undary--\r\n"
    with TempFileWatcher(spool_dir) as watch:
        status, body = post_chunked(
            port, "multipart/form-data; boundary=b0undary", multipart_head("b0undary", CKPT_SPEC), 2 * 2**20, tail
        )
    assert status == 422 and body["detail"][0]["loc"][:2] == ["body", "checkpoint"], body
    assert watch.largest >= 2 * 2**20  # the whole upload was spooled: the watcher looks in the right place


def test_multipart_spec_field_over_the_spec_cap_is_413_naming_spec(port: int) -> None:
    head = b'--b0undary\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{"pad": "'
    status, body = post_chunked(
        port, "multipart/form-data; boundary=b0undary", head, 2 * SPEC_CAP, b'"}\r\n--b0undary--\r\n'
    )
    assert status == 413
    assert body["message"] == f"spec: larger than this service accepts ({SPEC_CAP} bytes)"


def test_declared_content_length_over_the_cap_is_413_before_reading(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/v1/jobs")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10 * 2**30))
    conn.endheaders()  # no body at all: the answer must not wait for it
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["message"].startswith("body: larger than this service accepts")


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_json_is_422_naming_body_and_the_depth_rule(client, depth: int) -> None:
    r = client.post("/v1/jobs", content=b"[" * depth + b"]" * depth, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["message"] == "body: JSON nested deeper than 32 levels of arrays and objects"


def test_deep_json_inside_a_field_and_inside_a_multipart_spec(client) -> None:
    deep = json.loads("[" * 40 + "]" * 40)
    r = client.post("/v1/jobs", json={"k": 1, "d": 2, "lam": 0, "beta": 1, "eta": 0.1, "sweep": {"lam": deep}})
    assert r.status_code == 422 and "nested deeper than 32" in r.json()["message"]
    r = client.post("/v1/jobs", files={"spec": (None, "{" * 5000 + "}" * 5000)})
    assert r.status_code == 422
    assert r.json()["message"].startswith("spec: ")  # named as the multipart field


def test_nesting_at_the_cap_is_parsed(client) -> None:
    r = client.post("/v1/jobs", content=b"[" * 32 + b"]" * 32, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["message"] == "body: the spec must be a JSON object"


def test_too_many_containers_is_422_before_parsing(client) -> None:
    body = b"[" + b",".join([b"[]"] * 20_001) + b"]"
    r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["message"] == "body: JSON with more than 20000 arrays and objects (got 20002)"


def shape(value: object, depth: int = 1) -> tuple[int, int]:
    """The reference: (deepest nesting, number of arrays and objects) of a parsed value."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return 0, 0
    inner = [shape(v, depth + 1) for v in value]
    return max([depth] + [d for d, _ in inner]), 1 + sum(n for _, n in inner)


TEXT = st.text(alphabet=st.sampled_from('[]{}"\\,: ab\n\u00e9'), max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(value=JSON, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 1]))
def test_json_shape_from_the_text_equals_the_parsed_shape(value: object, ensure_ascii: bool, indent) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    assert json_shape(text) == shape(value)


def test_json_shape_ignores_brackets_in_strings() -> None:
    assert json_shape(b'{"a": "[[[\\"]]"}') == (1, 1)
    assert json_shape(b'["\\\\", ["]"]]') == (2, 2)


BIG_QUERIES = [
    "/v1/jobs?offset=18446744073709551616",
    "/v1/jobs?offset=9223372036854775808",
    "/v1/jobs/x/metrics?since=18446744073709551616",
    "/v1/jobs?limit=99999999999999999999",
]


@pytest.mark.parametrize("query", BIG_QUERIES)
def test_query_values_beyond_64_bits_are_422(client, query: str) -> None:
    r = client.get(query)
    assert r.status_code == 422
    assert r.json()["message"].split(":")[0] in ("offset", "since", "limit")


def test_healthz_answers_while_a_big_spec_is_validated(tmp_path: Path) -> None:
    # ~0.85 MB (under the default 1 MiB cap): a sweep of 90,000 values, the last one invalid, so validation
    # walks them all (seconds), then says 422
    values = [round(0.001 * i, 6) for i in range(90_000)] + [-1.0]
    spec = {"k": 1, "d": 1, "lam": 0.01, "beta": 0.1, "eta": 0.1, "max_iters": 10, "sweep": {"lam": values}}
    with serve(settings_for(tmp_path)) as p:
        outcome: dict = {}

        def submit() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", p, timeout=120)
            start = time.perf_counter()
            conn.request("POST", "/v1/jobs", body=json.dumps(spec), headers={"Content-Type": "application/json"})
            outcome["status"] = conn.getresponse().status
            outcome["seconds"] = time.perf_counter() - start

        thread = threading.Thread(target=submit)
        thread.start()
        latencies = []
        health = http.client.HTTPConnection("127.0.0.1", p, timeout=120)
        while thread.is_alive():
            start = time.perf_counter()
            health.request("GET", "/healthz")
            assert health.getresponse().read() == b'{"status":"ok"}'
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
        thread.join()
    print(
        f"/healthz: {len(latencies)} answers, slowest {max(latencies):.3f} s, median "
        f"{sorted(latencies)[len(latencies) // 2]:.3f} s, while the submit took {outcome['seconds']:.2f} s"
    )
    assert outcome["status"] == 422
    assert outcome["seconds"] > 0.5, outcome  # long enough for a stall to show
    assert len(latencies) >= 5
    # a blocked event loop would hold a /healthz for most of the submit: each answers in a fraction of it
    assert max(latencies) < outcome["seconds"] / 2, (max(latencies), outcome)
    assert sorted(latencies)[len(latencies) // 2] < outcome["seconds"] / 10, (latencies, outcome)


@pytest.mark.parametrize("value", [" , ", ",", "   ", ", ,,"])
def test_api_keys_that_parse_empty_are_a_startup_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RVSM_API_KEYS", value)
    with pytest.raises(ValidationError, match="RVSM_API_KEYS is set .* but holds no key"):
        Settings()
    get_settings.cache_clear()
    try:
        with pytest.raises(ValidationError, match="holds no key"), make_client_without_override():
            pass
    finally:
        get_settings.cache_clear()


def make_client_without_override():
    from fastapi.testclient import TestClient

    return TestClient(create_app())  # its lifespan reads the environment's settings


def test_api_keys_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RVSM_API_KEYS", " a, b ,,")
    assert Settings().api_keys == ["a", "b"]
    monkeypatch.setenv("RVSM_API_KEYS", "")
    assert Settings().api_keys == []  # set but empty: no auth, as when unset


@pytest.mark.parametrize("version", ["2.9.1", "2.5.1+cu124", "1.13.0", "not a version"])
def test_old_torch_is_refused(version: str) -> None:
    with pytest.raises(RuntimeError, match=r"needs torch >= 2\.10"):
        check_torch(version)


@pytest.mark.parametrize("version", ["2.10.0", "2.13.0+cpu", "2.15.0", "3.0.0"])
def test_new_torch_passes(version: str) -> None:
    check_torch(version)


def test_the_app_the_worker_and_serve_refuse_an_old_torch(tmp_path: Path) -> None:
    code = (
        "import torch; torch.__version__ = '2.9.1'\n"
        "import sys\n"
        "if sys.argv[1] == 'worker':\n"
        "    from worker.__main__ import main; main([])\n"
        "elif sys.argv[1] == 'serve':\n"
        "    from service.cli import main; sys.exit(main(['serve']))\n"
        "else:\n"
        "    from fastapi.testclient import TestClient\n"
        "    from service.main import create_app\n"
        "    with TestClient(create_app()): pass\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {"RVSM_DATA_DIR": str(tmp_path)}
    for what in ("worker", "serve", "app"):
        done = subprocess.run(
            [python(), "-c", code, what], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode != 0, (what, done.stdout, done.stderr)
        assert "torch 2.9.1 is installed; rvsm-service needs torch >= 2.10" in done.stderr, (what, done.stderr)
    assert not (tmp_path / "broker.rdb").exists()  # serve stopped before starting the embedded broker
