"""rvsm imports no web, queue or validation package (the other packages' direction:
tests/api/test_package_layering.py)."""

import subprocess
import sys


def test_import_rvsm_leaves_web_queue_and_validation_packages_out():
    code = (
        "import sys, rvsm, rvsm.toy, rvsm.bounds, rvsm.algorithms;"
        "bad = sorted(m for m in ('fastapi', 'celery', 'pydantic', 'sqlalchemy', 'starlette') if m in sys.modules);"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
