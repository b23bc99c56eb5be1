"""The dashboard (``/ui/``) and the API docs (``/docs``, ``/redoc``) in a real browser.

Debian's ``chromium``, driven by Playwright, against a real ``rvsm serve`` (embedded broker and worker) that
requires an API key. Every request the browser makes is checked: nothing may go to another host (the
pages ship their libraries), no script may throw and no Content-Security-Policy may block our own code.
``scripts/test`` installs chromium when it is missing; without it these tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service_helpers import ROOT, free_port, make_client, start_serve, unique_queue, wait_for

CHROMIUM = os.environ.get("RVSM_CHROMIUM", "/usr/bin/chromium")
KEY = "browser-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LOCAL = {"127.0.0.1", "localhost"}
STATIC = ROOT / "service" / "static"


def test_vendored_files_are_the_ones_recorded():
    """Every file under static/vendor is listed in VENDOR.json (written by scripts/vendor-ui) with its sha256."""
    recorded = json.loads((STATIC / "vendor" / "VENDOR.json").read_text())
    listed = {name: digest for pkg in recorded.values() for name, digest in pkg["files"].items()}
    on_disk = {str(p.relative_to(STATIC / "vendor")) for p in (STATIC / "vendor").rglob("*") if p.is_file()}
    assert on_disk - {"VENDOR.json"} == set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == digest, name
    assert {pkg: v["version"] for pkg, v in recorded.items()} == {
        "uplot": "1.6.32",
        "swagger-ui-dist": "5.35.0",
        "redoc": "2.5.2",
    }


def test_pages_load_only_this_service_and_carry_a_policy(tmp_path):
    """/ui/, /docs and /redoc name no other host, their assets are served, and each page's CSP allows its
    own inline scripts (by hash) and nothing off this host."""
    with make_client(tmp_path, unique_queue("ui")) as client:
        assert client.get("/ui", follow_redirects=False).headers["location"].endswith("/ui/")
        for path in ("/ui/", "/docs", "/redoc"):
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            csp = r.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "http" not in csp
            for script in re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL):
                digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
                assert f"'sha256-{digest}'" in csp
            urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
            assert urls and not [u for u in urls if "//" in u], urls
            for u in urls:
                if "static/" in u:
                    asset = client.get(u if u.startswith("/") else f"/ui/{u}")
                    assert asset.status_code == 200 and asset.content, u
        assert "url: '/openapi.json'" in client.get("/docs").text
        assert '"$defs"' not in client.get("/openapi.json").text  # ReDoc refuses refs into missing $defs


def test_a_wheel_ships_the_dashboard(tmp_path):
    """A non-editable install has the pages: the wheel carries every file under service/static."""
    src = tmp_path / "src"
    for name in ("rvsm", "jobs", "service", "worker"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("service/static/")}
    expected = {f"service/static/{p.relative_to(STATIC)}" for p in STATIC.rglob("*") if p.is_file()}
    assert shipped == expected
    assert {"jobs/states.py", "worker/tasks.py", "rvsm/prox.py"} <= set(zipfile.ZipFile(wheel).namelist())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    proc = start_serve(tmp, port, RVSM_API_KEYS=KEY, RVSM_PROGRESS_INTERVAL_S="0.2")
    url = f"http://127.0.0.1:{port}"
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Watch:
    """What a page did wrong: requests to other hosts, uncaught errors, CSP violations."""

    def __init__(self, page) -> None:
        self.foreign: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self._request(r.url))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("console", lambda m: self._console(m.type, m.text))

    def _request(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL:
            self.foreign.append(url)

    def _console(self, kind: str, text: str) -> None:
        if kind == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.errors.append(text)

    def check(self) -> None:
        assert self.foreign == [], f"requests off this host: {self.foreign}"
        assert self.errors == [], self.errors


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    watch = Watch(page)
    yield page
    context.close()
    watch.check()


def with_key(page) -> None:
    page.add_init_script(f"localStorage.setItem('rvsm.apiKey', {KEY!r})")


def submit(url: str, spec: dict) -> str:
    r = httpx.post(f"{url}/v1/jobs", json=spec, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def finished(url: str, job_id: str, timeout: float = 90) -> dict:
    def done():
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = wait_for(done, timeout=timeout, interval=0.3, what=f"job {job_id} to finish")
    assert job["state"] == "succeeded", job
    return job


def plotted(page, nth: int = 0) -> int:
    return int(page.locator(".chart").nth(nth).get_attribute("data-points"))


def test_key_prompt_then_toy_job_from_the_form_with_a_live_chart(server, page):
    page.goto(f"{server}/ui/")
    page.locator("#auth").wait_for(state="visible")  # the list answered 401: the key prompt shows
    assert "API key" in page.locator("#auth").inner_text()
    page.fill("#auth-key", KEY)
    page.click("#auth button")
    page.locator("#jobs").wait_for()
    assert page.locator("#auth").is_hidden()

    page.goto(f"{server}/ui/#/submit")
    assert page.input_value("#f-max_iters") == "20000"  # the schema's default, from /openapi.json
    page.fill("#f-max_iters", "2000000")
    page.fill("#f-tol", "0")
    page.click("#submit")
    page.wait_for_url("**/ui/#/job/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function("() => +document.querySelector('.chart')?.dataset.points >= 2")
    first = plotted(page)
    page.wait_for_function(f"() => +document.querySelector('.chart').dataset.points > {first}", timeout=15_000)
    assert plotted(page) > first
    assert "running" in page.inner_text("#job-state")
    assert page.locator(".chart").count() == 3  # L_beta, the two angles, ||u||_0

    page.click("#cancel")
    page.wait_for_function("() => document.querySelector('#job-state').innerText.includes('cancelled')")
    job = httpx.get(f"{server}/v1/jobs/{job_id}", headers=AUTH).json()
    assert job["state"] == "cancelled"
    assert job["spec"]["max_iters"] == 2_000_000 and job["spec"]["tol"] == 0

    page.goto(f"{server}/ui/#/jobs")
    page.select_option("#filter-state", "cancelled")
    page.locator(f'#jobs tr[data-job="{job_id}"]').wait_for()
    page.select_option("#filter-kind", "checkpoint")
    page.locator(f'#jobs tr[data-job="{job_id}"]').wait_for(state="detached")


def test_finished_jobs_bounds_sweep_layers_and_a_verified_download(server, page):
    toy = submit(server, {"kind": "toy", "k": 2, "d": 10, "lam": 1e-4, "beta": 4e-3, "eta": 0.1, "max_iters": 500})
    sweep = submit(
        server,
        {
            "kind": "toy",
            "k": 2,
            "d": 8,
            "lam": 1e-4,
            "beta": 4e-3,
            "eta": 0.1,
            "max_iters": 300,
            "sweep": {"teacher.seed": [0, 1, 2]},
        },
    )
    ckpt = submit(
        server,
        {
            "kind": "checkpoint",
            "architecture": "mlp",
            "hidden": [16],
            "algorithm": "rvsm",
            "target_sparsity": 0.5,
            "epochs": 2,
            "batch_size": 64,
        },
    )
    with_key(page)

    finished(server, toy)
    result = httpx.get(f"{server}/v1/jobs/{toy}/result", headers=AUTH).json()
    page.goto(f"{server}/ui/#/job/{toy}")
    rows = page.locator("#bounds tbody tr")
    rows.first.wait_for()
    assert rows.count() == len(result["bounds"])
    for b, row in zip(result["bounds"], rows.all(), strict=True):
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == b["name"] and len(cells[1]) > 40  # a plain-language line, not just the formula
        assert cells[4] == {True: "yes", False: "no", None: "undefined"}[b["holds"]]
    assert page.locator("#hypotheses tbody tr").count() == sum(
        isinstance(v, bool) for v in result["hypotheses"].values()
    )

    finished(server, sweep)
    page.goto(f"{server}/ui/#/job/{sweep}")
    page.locator("#artifacts").wait_for()
    titles = page.locator(".chart h3").all_inner_texts()
    assert len(titles) == 4 and all("over 3 runs" in t for t in titles), titles
    assert plotted(page) > 10

    finished(server, ckpt)
    report = httpx.get(f"{server}/v1/jobs/{ckpt}/result", headers=AUTH).json()
    page.goto(f"{server}/ui/#/job/{ckpt}")
    page.locator("#artifacts").wait_for()
    assert plotted(page) == 2  # one point per epoch
    assert int(page.locator("#layers .chart").get_attribute("data-points")) == len(report["sparsity"]["layers"])
    listed = {a["name"]: a["sha256"] for a in httpx.get(f"{server}/v1/jobs/{ckpt}/artifacts", headers=AUTH).json()}
    row = page.locator('#artifacts tr[data-artifact="model.safetensors"]')
    assert row.locator(".sha").inner_text() == listed["model.safetensors"]
    with page.expect_download() as download:
        row.locator("button").click()
    data = open(download.value.path(), "rb").read()
    assert download.value.suggested_filename == "model.safetensors"
    assert hashlib.sha256(data).hexdigest() == listed["model.safetensors"]
    page.wait_for_function(
        "() => document.querySelector('[data-artifact=\"model.safetensors\"]').innerText.includes('sha256 verified')"
    )


def test_offline_swagger_ui_and_redoc_render(server, page):
    ops = sum(len(item) for item in httpx.get(f"{server}/openapi.json").json()["paths"].values())
    started = time.monotonic()
    page.goto(f"{server}/docs")
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() == ops
    assert page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}/metrics").count() == 1
    page.goto(f"{server}/redoc")
    page.get_by_role("heading", name="rvsm-service").first.wait_for()
    page.get_by_role("heading", name="Submit Job").first.wait_for()  # an operation, rendered
    assert "Something went wrong" not in page.inner_text("body")
    assert time.monotonic() - started < 30


def test_checkpoint_job_with_a_file_from_the_form_then_delete(server, page, tmp_path):
    """The form's multipart path (spec JSON + a dataset file), then the Delete button (after its confirm)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    with_key(page)
    page.goto(f"{server}/ui/#/submit?kind=checkpoint")
    page.select_option("#f-architecture", "mlp")
    page.fill("#f-hidden", "[8]")
    page.fill("#f-dataset", '{"name": "upload"}')
    page.fill("#f-epochs", "1")
    page.set_input_files("#file-dataset", str(tmp_path / "data.npz"))
    page.click("#submit")
    page.wait_for_url("**/ui/#/job/*")
    job_id = page.url.rsplit("/", 1)[1]
    job = finished(server, job_id)
    assert job["spec"]["has_dataset_file"] is True and job["spec"]["dataset"]["name"] == "upload"
    page.locator("#artifacts").wait_for()

    page.once("dialog", lambda d: d.accept())
    page.click("#delete")
    page.wait_for_url("**/ui/#/jobs")
    assert httpx.get(f"{server}/v1/jobs/{job_id}", headers=AUTH).status_code == 404
