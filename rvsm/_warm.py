"""Imported by the sandbox's fork server (:data:`rvsm.sandbox.PRELOAD`) and nowhere else: one tiny export,
save, load and fake-mode pass, so that every child forked from the server starts with torch's lazily built
tables in place (a first ``torch.export.load`` in a fresh process spends ~0.4 s building them)."""

from __future__ import annotations

import io
import os

import torch

# the fork server must never initialise CUDA (its children could not use it): availability checks go to NVML
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")


def _round_trip() -> None:
    from .exported import fake_cost, load

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, 2),), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    exp = load(buf.getvalue())
    fake_cost(exp.module, exp.inputs, 2)


_round_trip()
