"""The README's "Prune your own model" example, run exactly as written against ``rvsm serve`` (embedded, as
``./scripts/serve`` runs it): make and export the model, submit with the gates the README shows, load the
downloaded weights with plain torch. Only the commands' paths are adapted (this interpreter, the server's URL)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_embedded import server  # noqa: F401 - the fixture: rvsm serve with no configuration
from tests.service_helpers import ROOT

SECTION = "## Prune your own model"


def readme_blocks(heading: str = SECTION) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block in the README's section ``heading``, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def run(cmd: str, cwd: Path, url: str) -> subprocess.CompletedProcess:
    rvsm_cli = f"{sys.executable} -m service.cli"
    if cmd.startswith("python "):
        cmd = sys.executable + cmd[len("python") :]
    cmd = cmd.replace(".venv/bin/rvsm", rvsm_cli)
    cmd = cmd.replace("http://127.0.0.1:8000", url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")}
    env |= {"PYTHONPATH": str(ROOT), "RVSM_URL": url}
    return subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_readme_prune_your_own_model(server, tmp_path):  # noqa: F811
    url = server[0]
    blocks = readme_blocks()
    langs = [lang for lang, _ in blocks]
    assert langs == ["python", "bash", "json", "bash", "bash", "python"], langs
    (make, make_cmd, spec, curl, submit, check) = (code for _, code in blocks)
    (tmp_path / "make_model.py").write_text(make)
    (tmp_path / "spec.json").write_text(spec)
    json.loads(spec)

    out = run(make_cmd.split("#")[0].strip(), tmp_path, url)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "model.pt2").exists() and (tmp_path / "digits.npz").exists()

    out = run(submit.strip(), tmp_path, url)  # --wait, the gates, --download: exit 0 only if every gate holds
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    report = json.loads((tmp_path / "artifacts" / "report.json").read_text())
    assert not report["collapsed"] and report["sparsity"]["prunable"] >= 0.89
    assert report["accuracy_before"] - report["accuracy_after"] <= 0.03

    out = run(curl.strip(), tmp_path, url)  # the curl form is accepted too
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "queued", out.stdout + out.stderr

    (tmp_path / "check.py").write_text(check)
    out = run("python check.py", tmp_path, url)
    assert out.returncode == 0, out.stderr
    zeros = float(re.search(r"zeros: ([0-9.]+)", out.stdout).group(1))
    assert zeros >= 0.89 and "same outputs: True" in out.stdout, out.stdout


def test_readme_transformers(server, tmp_path):  # noqa: F811
    """The "Transformers and recurrent nets" example: a BERT on int64 input_ids and attention_mask, pruned to 0.8
    with AdamW, the gate met, loaded back into transformers and compared with the returned model.pt2."""
    pytest.importorskip("transformers")
    blocks = readme_blocks("## Transformers and recurrent nets")
    assert [lang for lang, _ in blocks] == ["python", "json", "bash", "python"], blocks
    (make, spec, submit, check) = (code for _, code in blocks)
    (tmp_path / "make_bert.py").write_text(make)
    (tmp_path / "bert.json").write_text(spec)
    out = run(submit.strip(), tmp_path, server[0])
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    report = json.loads((tmp_path / "bert-artifacts" / "report.json").read_text())
    assert report["dataset"]["inputs"] == {"input_ids": [16], "attention_mask": [16]}
    assert report["sparsity"]["prunable"] >= 0.8 - 1e-3 and not report["collapsed"]
    (tmp_path / "check.py").write_text(check)
    out = run("python check.py", tmp_path, server[0])
    assert out.returncode == 0, out.stderr
    assert "same outputs: True" in out.stdout and "word_embeddings" in out.stdout, out.stdout


TOP = ("rvsm", "jobs", "service", "worker", "tests", "benchmarks", "docs", "scripts")


def test_the_readme_stands_alone():
    """Issue 21 (H): every file the README links or names is in the repository (no ``SPEC.md`` or seed papers
    "beside" it), and every setting (``jobs.settings.Settings``) is in its configuration table."""
    from jobs.settings import Settings

    text = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)#\s]+)", text) if not re.match(r"[a-z]+:", t)]
    named = [t for t in re.findall(r"`([\w./-]+)`", text) if t.split("/")[0] in TOP and "/" in t]
    assert len(links) >= 5 and len(named) >= 10, (links, named)
    missing = [t for t in links + named if not (ROOT / t.split("::")[0]).exists()]
    assert not missing, missing
    assert "../" not in text and "SPEC.md" not in text
    unlisted = [f"RVSM_{f.upper()}" for f in Settings.model_fields if f"`RVSM_{f.upper()}`" not in text]
    assert not unlisted, unlisted
