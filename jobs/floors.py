"""Dependency floors the service refuses to start below (see README "Security")."""

from __future__ import annotations

import re

# torch.load(weights_only=True) on an untrusted checkpoint: code execution before 2.6 (CVE-2025-32434), memory
# corruption in the weights-only unpickler before 2.10 (CVE-2026-24747)
MIN_TORCH = (2, 10)


def check_torch(version: str | None = None) -> None:
    """Raise ``RuntimeError`` with a clear message when torch (``version``, default the installed one) is
    older than :data:`MIN_TORCH` or its version cannot be read."""
    if version is None:
        import torch

        version = torch.__version__
    need = ".".join(map(str, MIN_TORCH))
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if m is None or (int(m[1]), int(m[2])) < MIN_TORCH:
        raise RuntimeError(
            f"torch {version} is installed; rvsm-service needs torch >= {need} (older releases load untrusted "
            f"checkpoints unsafely: CVE-2025-32434, CVE-2026-24747). Upgrade with: pip install 'torch>={need}'"
        )
