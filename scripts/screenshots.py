"""Screenshots of the dashboard and the API docs, written to docs/screenshots/ (small palette PNGs).

    .venv/bin/python scripts/screenshots.py        # about a minute; needs chromium (scripts/test installs it)

Starts its own ``rvsm serve`` in a temporary directory, submits a toy job, a 1,000-run sweep and a small
checkpoint job through the API, and photographs the job list, each job page, the submit form and /docs
in Debian's chromium through Playwright.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("RVSM_CHROMIUM", "/usr/bin/chromium")
MAX_HEIGHT = 1500  # px: a long page is cut here
JOBS = {
    "toy": {
        "kind": "toy",
        "k": 2,
        "d": 10,
        "teacher": {"seed": 0},
        "init": {"seed": 1},
        "lam": 1e-4,
        "beta": 4e-3,
        "eta": 0.1,
        "max_iters": 20000,
        "tol": 0,
    },
    "sweep": {
        "kind": "toy",
        "k": 2,
        "d": 8,
        "lam": 1e-4,
        "beta": 4e-3,
        "eta": 0.1,
        "max_iters": 1000,
        "tol": 0,
        "sweep": {"teacher.seed": list(range(1000))},
    },
    "checkpoint": {
        "kind": "checkpoint",
        "architecture": "mlp",
        "hidden": [64, 32],
        "algorithm": "rvsm",
        "target_sparsity": 0.8,
        "epochs": 8,
        "batch_size": 64,
    },
}


def serve(tmp: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {"PYTHONPATH": str(ROOT)}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit((tmp / "serve.log").read_text())
        time.sleep(0.3)
    sys.exit("the service did not become ready")


def wait_done(url: str, job_id: str) -> None:
    while httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] in ("queued", "running"):
        time.sleep(0.5)


def shoot(page: Page, name: str) -> None:
    """Save the page as a palette PNG, cut at MAX_HEIGHT."""
    img = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    img = img.crop((0, 0, img.width, min(img.height, MAX_HEIGHT)))
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(OUT / f"{name}.png", optimize=True)
    print(f"{name}.png: {(OUT / f'{name}.png').stat().st_size // 1024} KiB")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        proc, url = serve(Path(tmp))
        try:
            ids = {k: httpx.post(f"{url}/v1/jobs", json=spec).json()["id"] for k, spec in JOBS.items()}
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"{url}/ui/#/job/{ids['toy']}")
            page.wait_for_function("() => +document.querySelector('.chart')?.dataset.points > 100", timeout=60_000)
            shoot(page, "toy-running")
            for kind, job_id in ids.items():
                wait_done(url, job_id)
                page.goto(f"{url}/ui/#/job/{job_id}")
                page.locator("#artifacts").wait_for(timeout=60_000)
                page.wait_for_timeout(300)
                shoot(page, kind)
            page.goto(f"{url}/ui/#/jobs")
            page.locator("#jobs tbody tr").first.wait_for()
            shoot(page, "jobs")
            page.goto(f"{url}/ui/#/submit")
            page.locator("#spec-form").wait_for()
            shoot(page, "submit")
            page.goto(f"{url}/docs")
            page.locator(".opblock").first.wait_for()
            shoot(page, "docs")
            browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(json.dumps({"written": sorted(f.name for f in OUT.glob("*.png"))}))


if __name__ == "__main__":
    main()
