"""Artifacts load anywhere: ``rvsm.exported.save`` writes CPU tensors whatever device the module was moved to
(issue 19: a ``model.pt2`` trained on a GPU worker pinned its weights to CUDA)."""

from __future__ import annotations

import io

import torch

from benchmarks.user_models import ResidualCNN, export
from rvsm import exported


def test_saved_archive_holds_cpu_tensors_after_a_device_move():
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    x = torch.randn(3, 1, 8, 8)
    exp = exported.load(export(model, x[:2]))
    state = {k: v.detach().clone() for k, v in exp.module.state_dict().items()}
    for name, t in exp.program.state_dict.items():  # what model.to("cuda") did to the program's own tensors (it
        meta = t.detach().to("meta")  # swaps each shared Parameter's data), on a device with no data
        exp.program.state_dict[name] = torch.nn.Parameter(meta, t.requires_grad) if t.requires_grad else meta
    blob = exported.save(exp, state)
    ep = torch.export.load(io.BytesIO(blob))
    devices = {t.device.type for t in ep.state_dict.values()} | {
        t.device.type for t in ep.constants.values() if isinstance(t, torch.Tensor)
    }
    assert devices == {"cpu"}, devices
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), model(x), atol=1e-5)
