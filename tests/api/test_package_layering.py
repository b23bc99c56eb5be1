"""The packages point one way: worker -> jobs, service -> jobs, all three -> rvsm (the library's own import
test is ``tests/lib/test_imports.py``)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


PACKAGES = ("rvsm", "jobs", "service", "worker")
MAY_IMPORT = {"rvsm": set(), "jobs": {"rvsm"}, "service": {"jobs", "rvsm"}, "worker": {"jobs", "rvsm"}}


def test_packages_point_one_way():
    """worker -> jobs, service -> jobs, all -> rvsm: jobs imports only rvsm, rvsm none of the others, and
    nothing imports service but service itself (relative imports stay inside their package)."""
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            ours = {m for m in _imports(path) if m.split(".")[0] in PACKAGES and m.split(".")[0] != package}
            bad = {m for m in ours if m.split(".")[0] not in allowed}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_worker_and_the_job_core_load_no_web_package():
    code = (
        "import sys, jobs.states, jobs.reconciler, jobs.queue, jobs.layout, jobs.counters, worker.tasks, worker.jobs;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'fastapi', 'starlette', "
        "'prometheus_client', 'matplotlib'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_importing_the_service_loads_no_worker_and_builds_no_celery_app():
    code = (
        "import sys, service.main, service.cli, service.routers.jobs, service.routers.health;"
        "import celery._state as st;"
        "bad = sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.'));"
        "apps = len(list(st._get_active_apps()));"
        "print(bad, apps); sys.exit(1 if bad or apps else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            "import celery._state as st, worker.celery_app, worker.tasks, worker.jobs;"
            "import sys; sys.exit(len(list(st._get_active_apps())))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
