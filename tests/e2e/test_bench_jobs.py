"""The service benchmarks at tiny sizes, so that they cannot rot: real worker, real uvicorn, real stores."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.service_helpers import POSTGRES_URL, REDIS_URL, ROOT


def run_bench(*argv: str, timeout: float = 240) -> str:
    out = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_jobs_smoke(tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n")
    sizes = [
        "--jobs",
        "4",
        "--repeats",
        "2",
        "--rss-jobs",
        "4",
        "--rss-every",
        "2",
        "--big",
        "20",
        "--big-iters",
        "50",
        "--big-repeats",
        "1",
    ]
    out = run_bench("benchmarks/bench_jobs.py", *sizes, "--redis", REDIS_URL, "--doc", str(doc))
    assert "| **backlog: jobs / sweep** |" in out
    assert "Target jobs / sweep ≤ 10x through the worker (backlog): **" in out
    assert re.search(r"One by one, end to end: [\d.]+x, of which submitting took [\d.]+ ms a request", out)
    ratio = re.search(r"\*\*([\d.]+)x \(([\d.]+)–([\d.]+)x\)\*\*", out)
    assert ratio and float(ratio[2]) <= float(ratio[1]) <= float(ratio[3])  # median within its range
    assert re.search(r"after every 2 of 4 more trivial jobs .*: 2: [\d.]+, 4: [\d.]+\.", out)
    assert "A 20-configuration sweep" in out and "<!-- begin bench_jobs -->" in doc.read_text()
    assert "Target span / solver ≤ 2x: **" in out
    assert "| **one request: jobs / sweep** |" in out and "Target one request / sweep ≤ 2x: **" in out
    assert re.search(r"a request \(target ≤ 5x: \*\*(met|not met)\*\*\)", out)


def test_bench_api_smoke():
    out = run_bench(
        "benchmarks/bench_api.py",
        "--rates",
        "20",
        "--duration",
        "0.5",
        "--pause",
        "0",
        "--redis",
        REDIS_URL,
        "--postgres",
        POSTGRES_URL,
    )
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| sqlite", "| postgresql"))]
    # printed once as it goes and once in the block: 2 stores x (no worker, 2 busy workers) x 2 endpoints, twice
    assert len(rows) == 16 and sorted({c[1] for c in rows}) == ["0", "2"]
    for cells in rows:
        assert cells[3] == "20" and float(cells[4]) > 0 and cells[9] == "0"  # offered, achieved, no errors
        assert float(cells[6]) <= float(cells[7]) <= float(cells[8])  # p50 <= p99 <= max
