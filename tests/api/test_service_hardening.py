"""Issue 16, item 4: the service itself cannot be exhausted or made to answer outside its contract.

- A job database that cannot be reached is a JSON 503 naming the database on every route (the shared
  PostgreSQL is reached through a TCP proxy of this test's own, which it cuts and restores: the server itself
  is never touched), and the same app serves again once it is back, also when it was down at startup. Any
  other unexpected exception is a JSON 500 naming only its type.
- ``X-Content-Type-Options: nosniff`` on every kind of response: JSON, the dashboard, static files, an
  artifact, errors (404, 405, 413 from the body-limit middleware, 422, 500, 503).
- ``/healthz`` answers in well under a second while every API thread is held by submits (a real uvicorn).
- ``/metrics`` shows an API key only its own jobs; a key from ``RVSM_ADMIN_KEYS`` sees everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs import states
from jobs.db import Job, get_sessionmaker
from jobs.layout import record
from jobs.settings import Settings, get_settings
from service.deps import SettingsDep, get_session
from service.main import create_app
from tests import service_helpers as helpers
from tests.service_helpers import POSTGRES_URL, REDIS_URL, free_port, unique_queue, wait_for

TOY = {"k": 2, "d": 3, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 100}
NOSNIFF = "nosniff"


def app_for(tmp: Path, queue: str, **overrides: object) -> FastAPI:
    return helpers.app_for(tmp, queue, **overrides)


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue of this test's own on the shared Redis (nothing consumes it), deleted afterwards."""
    name = unique_queue("hardening")
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name, *(f"_kombu.{k}.{name}" for k in ("binding", "binding_permanent")))


def error_shape(r: httpx.Response, status: int, *words: str) -> dict:
    """``r`` is ``status`` with the service's JSON error shape, its message naming ``words``, and nosniff."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json", r.headers
    assert r.headers["x-content-type-options"] == NOSNIFF
    body = r.json()
    assert set(body) == {"detail", "message"} and isinstance(body["message"], str), body
    for w in words:
        assert w in body["message"], (w, body)
    return body


# --------------------------------------------------------------------------- the database out of reach
class Proxy:
    """A TCP proxy from a free local port to the shared PostgreSQL. ``cut()`` closes the listener and every
    connection through it (new connections are refused, pooled ones are dead: an outage as the service sees
    it); ``restore()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            conns, self.conns = self.conns, set()
        assert listener is not None
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept, resets what waits in the backlog
        listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while self.listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by cut()
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            with self.lock:
                if self.listener is not listener:  # cut meanwhile: this one goes too
                    client.close()
                    upstream.close()
                    return
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    url = httpx.URL(POSTGRES_URL.replace("postgresql+psycopg://", "http://"))
    p = Proxy((url.host, url.port or 5432))
    yield p
    if p.listener is not None:
        p.cut()


def proxied(proxy: Proxy) -> str:
    """The shared PostgreSQL's URL through ``proxy`` (a URL of its own: a fresh engine and pool)."""
    url = httpx.URL(POSTGRES_URL.replace("postgresql+psycopg://", "http://"))
    return POSTGRES_URL.replace(f"@{url.host}:{url.port or 5432}/", f"@127.0.0.1:{proxy.port}/")


def test_database_outage_is_a_json_503_on_every_route_and_the_service_recovers(tmp_path, queue, proxy) -> None:
    key = uuid.uuid4().hex  # a key of this test's own: its jobs only, on the shared database
    auth = {"Authorization": f"Bearer {key}"}
    app = app_for(tmp_path, queue, database_url=proxied(proxy), api_keys=[key])
    with TestClient(app, headers=auth) as c:
        r = c.post("/v1/jobs", json=TOY)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"

        proxy.cut()
        t0 = time.perf_counter()
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("GET", f"/v1/jobs/{job_id}/metrics"),
            ("GET", f"/v1/jobs/{job_id}/result"),
            ("GET", f"/v1/jobs/{job_id}/artifacts"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
            ("DELETE", f"/v1/jobs/{job_id}"),
            ("GET", "/metrics"),
        ]:
            r = c.request(method, path, json=TOY if method == "POST" else None)
            body = error_shape(r, 503, "database", "unreachable")
            assert str(proxy.port) not in r.text and "127.0.0.1" not in r.text, body  # no connection details
        assert time.perf_counter() - t0 < 10  # refused at once: no request waits out a timeout
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error: OperationalError")

        proxy.restore()
        job = c.get(f"/v1/jobs/{job_id}")
        assert job.status_code == 200 and job.json()["state"] == "queued", job.text  # the pool reconnects
        assert c.get("/v1/jobs").json()["total"] == 1  # the submit during the outage kept nothing
        r = c.post("/v1/jobs", json=TOY)
        assert r.status_code == 202, r.text
        assert c.get("/v1/jobs").json()["total"] == 2
        assert c.get("/readyz").status_code == 200
        for j in (job_id, r.json()["id"]):
            assert c.delete(f"/v1/jobs/{j}").status_code == 204


def test_a_database_down_at_startup_is_a_503_until_it_answers(tmp_path, queue, proxy) -> None:
    proxy.cut()
    key = uuid.uuid4().hex
    app = app_for(tmp_path, queue, database_url=proxied(proxy), api_keys=[key])
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:  # the app starts all the same
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        error_shape(c.get("/v1/jobs"), 503, "database")
        error_shape(c.post("/v1/jobs", json=TOY), 503, "database")
        proxy.restore()
        assert c.get("/readyz").status_code == 200
        listed = c.get("/v1/jobs")
        assert listed.status_code == 200 and listed.json()["total"] == 0, listed.text


def test_an_unexpected_error_is_a_json_500_naming_only_its_type(tmp_path, queue, monkeypatch) -> None:
    app = app_for(tmp_path, queue)
    with TestClient(app, raise_server_exceptions=False) as c:
        job_id = c.post("/v1/jobs", json=TOY).json()["id"]

        def broken(*_a: object, **_k: object) -> None:
            raise RuntimeError("secret: /etc/rvsm/password")

        monkeypatch.setattr(states, "get_job", broken)
        r = c.get(f"/v1/jobs/{job_id}")
        body = error_shape(r, 500, "RuntimeError")
        assert "secret" not in r.text, body

        def constraint(*_a: object, **_k: object) -> None:  # a database error that is no outage: a bug, a 500
            raise IntegrityError("INSERT ...", {}, Exception("duplicate key"))

        monkeypatch.setattr(states, "get_job", constraint)
        error_shape(c.get(f"/v1/jobs/{job_id}"), 500, "IntegrityError")


def test_a_full_disk_on_upload_is_a_json_507_and_leaves_no_job(tmp_path, queue, monkeypatch) -> None:
    """Issue 21 B: the artifact disk full while a checkpoint upload is stored (the job row was committed first)
    gave a plain-text 500 and a queued job without its inputs. Now a 507 in the error shape, the row and any
    partial files gone; another OS failure to write is a 503; the next submit, with room again, works."""
    import errno

    import torch

    from benchmarks.user_models import TabularMLP, digits_npz, export
    from service.routers import jobs as jobs_router

    app = app_for(tmp_path, queue)
    spec = {"kind": "checkpoint", "dataset": {"name": "upload"}, "epochs": 1}
    files = {
        "checkpoint": ("m.pt2", export(TabularMLP(), torch.randn(2, 64))),
        "dataset": ("d.npz", digits_npz(flat=True)[0]),
    }
    real = jobs_router.write_atomic

    def full_after_first(path: Path, data: bytes) -> None:
        real(path, data[:10])  # part of one input reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    with TestClient(app, raise_server_exceptions=False) as c:
        monkeypatch.setattr(jobs_router, "write_atomic", full_after_first)
        r = c.post("/v1/jobs", data={"spec": json.dumps(spec)}, files=files)
        assert "No space left on device" in error_shape(r, 507, "could not be stored")["message"]
        assert c.get("/v1/jobs").json()["total"] == 0
        assert not any((tmp_path / "artifacts").glob("*/inputs/*"))

        def failing(path: Path, data: bytes) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(jobs_router, "write_atomic", failing)
        error_shape(c.post("/v1/jobs", data={"spec": json.dumps(spec)}, files=files), 503, "Input/output error")
        monkeypatch.setattr(jobs_router, "write_atomic", real)
        r = c.post("/v1/jobs", data={"spec": json.dumps(spec)}, files=files)
        assert r.status_code == 202, r.text
        assert c.get("/v1/jobs").json()["total"] == 1


# --------------------------------------------------------------------------- nosniff everywhere
def test_nosniff_on_every_kind_of_response(tmp_path, queue) -> None:
    app = app_for(tmp_path, queue, max_spec_bytes=4096)
    with TestClient(app) as c:
        job_id = c.post("/v1/jobs", json=TOY).json()["id"]
        settings = app.dependency_overrides[get_settings]()
        with get_sessionmaker(settings.resolved_database_url)() as s:  # an artifact whose bytes look like HTML
            s.add(record(settings.resolved_artifact_dir, job_id, "trace.sparse", b"<html><script>alert(1)</script>"))
            job = s.get(Job, job_id)
            assert job is not None
            result = record(settings.resolved_artifact_dir, job_id, "result.json", b"{}")
            job.state, job.result_path = "succeeded", result.path
            s.commit()

        def chunks() -> Iterator[bytes]:  # no Content-Length: BodyLimit cuts the stream
            yield b'{"k": 2, "pad": "'
            for _ in range(10):
                yield b"x" * 1000

        responses = {
            "json": c.get("/healthz"),
            "readyz": c.get("/readyz"),
            "list": c.get("/v1/jobs"),
            "openapi": c.get("/openapi.json"),
            "submit": c.post("/v1/jobs", json=TOY),
            "dashboard": c.get("/ui/"),
            "redirect": c.get("/ui", follow_redirects=False),
            "docs": c.get("/docs"),
            "static": c.get("/static/ui/app.js"),
            "metrics": c.get("/metrics"),
            "artifact": c.get(f"/v1/jobs/{job_id}/artifacts/trace.sparse"),
            "result": c.get(f"/v1/jobs/{job_id}/result"),
            "404 job": c.get("/v1/jobs/nope"),
            "404 path": c.get("/no/such/page"),
            "404 static": c.get("/static/ui/nope.js"),
            "405": c.put("/v1/jobs"),
            "413 length": c.post(
                "/v1/jobs", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"}
            ),
            "413 stream": c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"}),
            "422": c.post("/v1/jobs", json=TOY | {"beta": -1}),
        }
    expected = {
        "dashboard": 200,
        "redirect": 308,
        "docs": 200,
        "static": 200,
        "artifact": 200,
        "submit": 202,
        "404 job": 404,
        "404 path": 404,
        "404 static": 404,
        "405": 405,
        "413 length": 413,
        "413 stream": 413,
        "422": 422,
    }
    for name, r in responses.items():
        assert r.status_code == expected.get(name, 200), (name, r.status_code, r.text[:200])
        assert r.headers.get("x-content-type-options") == NOSNIFF, (name, dict(r.headers))
        assert len(r.headers.get_list("x-content-type-options")) == 1, name
    assert responses["dashboard"].headers["content-type"].startswith("text/html")
    assert responses["artifact"].content.startswith(b"<html>")
    assert responses["413 stream"].json()["message"] == "body: larger than this service accepts (4096 bytes)"


def test_nosniff_on_the_body_limit_middlewares_own_413() -> None:
    """BodyLimit's own 413 (the body read by an app with no error handler of its own, so the middleware
    answers, not FastAPI's handler), inside NoSniff as :class:`service.main.App` wraps the stack."""
    from service.limits import BodyLimit
    from service.main import NoSniff

    async def reads_body(scope, receive, send) -> None:  # noqa: ANN001
        while (await receive()).get("more_body"):
            pass
        raise AssertionError("the cap should have stopped the body")

    stack = NoSniff(BodyLimit(reads_body))
    settings = Settings(max_spec_bytes=1024)
    app = FastAPI()
    app.dependency_overrides[get_settings] = lambda: settings
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3

    async def receive() -> dict:
        return chunks.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", b"application/json")],
        "app": app,
    }
    asyncio.run(stack(scope, receive, send))
    assert sent[0]["status"] == 413
    assert (b"x-content-type-options", b"nosniff") in sent[0]["headers"]


# --------------------------------------------------------------------------- /healthz under load
@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` under a real uvicorn in a thread of this process; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", backlog=1024))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20, what="uvicorn")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


SUBMITS = 200
THREADS = 4


def test_healthz_answers_on_the_event_loop_while_every_thread_is_busy(tmp_path, queue) -> None:
    """200 concurrent submits, each holding an API thread in its database dependency until released: every
    thread of the pool is taken and the rest wait for one. /healthz must not wait with them (a sync
    ``def healthz`` would: it runs in that pool)."""
    app = app_for(tmp_path, queue, api_threads=THREADS)
    release = threading.Event()
    held = [0]
    lock = threading.Lock()

    def busy_session(settings: SettingsDep) -> Iterator[Session]:  # a slow database, in the thread pool
        with lock:
            held[0] += 1
        release.wait(timeout=60)
        yield from get_session(settings)

    app.dependency_overrides[get_session] = busy_session
    statuses: list[int] = []

    async def submit_all(url: str) -> None:
        limits = httpx.Limits(max_connections=SUBMITS + 10, max_keepalive_connections=SUBMITS + 10)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
            rs = await asyncio.gather(*(client.post("/v1/jobs", json=TOY | {"beta": -1}) for _ in range(SUBMITS)))
        statuses.extend(r.status_code for r in rs)

    latencies: list[float] = []
    with serve(app) as url:
        submits = threading.Thread(target=asyncio.run, args=(submit_all(url),))
        submits.start()
        try:
            wait_for(lambda: held[0] >= THREADS, timeout=30, what="every API thread to be held")
            time.sleep(0.5)  # the other submits arrive and queue for a thread
            with httpx.Client(base_url=url, timeout=3) as health:
                for _ in range(5):
                    start = time.perf_counter()
                    try:
                        r = health.get("/healthz")
                        assert r.json() == {"status": "ok"} and r.headers["x-content-type-options"] == NOSNIFF
                        latencies.append(time.perf_counter() - start)
                    except httpx.TimeoutException:
                        latencies.append(float("inf"))
                    time.sleep(0.05)
            threads_held = held[0]
        finally:
            release.set()
            submits.join(timeout=120)
    print(
        f"/healthz with {THREADS} of {THREADS} threads held and {SUBMITS - THREADS} submits waiting: "
        f"{', '.join(f'{s * 1000:.1f} ms' for s in latencies)}"
    )
    assert threads_held == THREADS  # the pool really was full while /healthz was asked (and no thread to spare)
    assert max(latencies) < 0.5, latencies
    assert statuses == [422] * SUBMITS  # every submit was a real request, answered once released


# --------------------------------------------------------------------------- /metrics per key
def scrape(client: TestClient, key: str | None) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


def test_metrics_show_a_tenant_only_its_own_jobs_and_an_admin_everything(tmp_path, queue) -> None:
    app = app_for(tmp_path, queue, api_keys=["key-a", "key-b"], admin_keys=["scraper"])
    with TestClient(app) as c:
        for key, n in (("key-a", 1), ("key-b", 2)):
            for _ in range(n):
                assert c.post("/v1/jobs", json=TOY, headers={"Authorization": f"Bearer {key}"}).status_code == 202
        queued = (("kind", "toy"), ("state", "queued"))
        a, b, admin = scrape(c, "key-a"), scrape(c, "key-b"), scrape(c, "scraper")
        assert a[("rvsm_jobs", queued)] == 1 and a[("rvsm_queue_depth", (("queue", queue),))] == 1
        assert b[("rvsm_jobs", queued)] == 2 and b[("rvsm_queue_depth", (("queue", queue),))] == 2
        assert admin[("rvsm_jobs", queued)] == 3 and admin[("rvsm_queue_depth", (("queue", queue),))] == 3
        # the service-wide counters and this process's request durations: the admin's only
        assert admin[("rvsm_job_transitions_total", (("event", "submit"),))] == 3
        assert any(n.startswith("rvsm_http_request_duration_seconds") for n in names(admin))
        for tenant in (a, b):
            assert names(tenant) <= {"rvsm_jobs", "rvsm_queue_depth", "rvsm_workers_alive"}, names(tenant)
        # no key, a wrong key: 401 in the error shape; an admin key is no API key
        error_shape(c.get("/metrics"), 401, "Authorization")
        error_shape(c.get("/metrics", headers={"Authorization": "Bearer nope"}), 401, "not valid")
        error_shape(c.get("/v1/jobs", headers={"Authorization": "Bearer scraper"}), 401, "not valid")


def test_admin_keys_guard_the_metrics_of_an_open_service(tmp_path, queue) -> None:
    with TestClient(app_for(tmp_path, queue, admin_keys=["scraper"])) as c:
        assert c.post("/v1/jobs", json=TOY).status_code == 202  # /v1 stays open
        error_shape(c.get("/metrics"), 401, "Authorization")
        assert scrape(c, "scraper")[("rvsm_job_transitions_total", (("event", "submit"),))] == 1
    with TestClient(app_for(tmp_path, queue)) as c:  # no keys at all: everything, as before
        assert scrape(c, None)[("rvsm_jobs", (("kind", "toy"), ("state", "queued")))] == 1


def test_admin_keys_that_parse_empty_are_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RVSM_ADMIN_KEYS", " , ")
    with pytest.raises(ValidationError, match="RVSM_ADMIN_KEYS is set .* but holds no key"):
        Settings()
    monkeypatch.setenv("RVSM_ADMIN_KEYS", "a, b")
    assert Settings().admin_keys == ["a", "b"]


def test_the_503_is_documented_on_every_route_that_needs_the_database() -> None:
    doc = create_app().openapi()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            needs_db = path.startswith("/v1") or path == "/metrics"
            assert ("503" in op["responses"]) == (needs_db or path == "/readyz"), (method, path)
            if needs_db:
                schema = op["responses"]["503"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorPublic"}, (method, path)
    assert json.dumps(doc)  # still one JSON document
