"""``benchmarks/gpu.sh --dry-run`` runs every step of the GPU script on the CPU with tiny sizes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["toy-float64", "toy-float32", "overhead", "worker", "tests"]
BLOCKS = ["gpu toy float64", "gpu toy float32", "gpu overhead", "gpu worker", "gpu tests"]


def block(text: str, name: str) -> str:
    m = re.search(rf"<!-- begin {name} -->\n(.*?)\n<!-- end {name} -->", text, re.S)
    assert m, f"no block {name!r} in the doc"
    return m.group(1)


def test_gpu_script_dry_run_runs_every_step_on_cpu(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text((ROOT / "docs" / "benchmarks.md").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {"PYTHON": sys.executable}
    p = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--dry-run", "--doc", str(doc)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    for step in STEPS:
        assert f"== {step}: ok" in p.stdout, out[-6000:]
    assert "gpu.sh: all steps ok" in p.stdout
    text = doc.read_text()
    for name in BLOCKS:
        body = block(text, name)
        assert body.startswith("Command: `python benchmarks/") and "--device cpu" in body, body
        assert "device `cpu`" in body, body
    for dtype in ("float64", "float32"):  # the ratio, its range, the bandwidth fraction against the measured copy
        toy = block(text, f"gpu toy {dtype}")
        assert re.search(r"\*\*\d+x\*\* \(\d+x–\d+x\)", toy), toy
        assert f"{dtype}); the batched sweep reaches **" in toy, toy
    assert re.search(r"\| resnet18 \| [\d.]+ \([\d.]+–[\d.]+\) \|", block(text, "gpu overhead"))
    worker = block(text, "gpu worker")
    assert "| succeeded | `cpu` |" in worker and "**passed**" in worker, worker
    tests = block(text, "gpu tests")
    assert "exit 0" in tests and re.search(r"\d+ passed", tests), tests
    # the doc it started from is kept around the blocks
    assert text.startswith("# Benchmarks") and "<!-- begin bench_toy cpu float64 -->" in text
