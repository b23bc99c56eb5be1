"""Checks that need a CUDA device (marker ``cuda``; skipped without one). ``benchmarks/gpu.sh`` runs them.

The device under test is ``RVSM_CUDA_TEST_DEVICE`` (default ``cuda``); ``benchmarks/gpu.sh --dry-run``
sets it to ``cpu`` so that the same code runs (CPU against CPU) on a machine without a GPU.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from rvsm.algorithms import ToyConfig, run_toy
from rvsm.optim import rvsm_pull_
from rvsm.problems import make_init, make_teacher

DEVICE = torch.device(os.environ.get("RVSM_CUDA_TEST_DEVICE", "cuda"))

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu.sh)"
    ),
]

SHAPES = [(64, 3, 3, 3), (10, 64), (128,), (7, 5, 2)]


def tensors(dtype: torch.dtype, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    params = [0.1 * torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    grads = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    return params, grads


def pulled(
    params: list[torch.Tensor], grads: list[torch.Tensor], device: torch.device, *, foreach: bool, **kw: object
) -> list[torch.Tensor]:
    ps = [p.to(device) for p in params]
    gs = [g.to(device).clone() for g in grads]
    rvsm_pull_(ps, gs, foreach=foreach, **kw)  # type: ignore[arg-type]
    return [g.cpu() for g in gs]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("penalty", ["l0", "l1"])
def test_foreach_pull_on_device_equals_cpu_per_tensor_pull(penalty: str, dtype: torch.dtype) -> None:
    lam, beta = 5e-5, 0.01  # l0 threshold sqrt(2 lam/beta) = 0.1, l1 threshold 5e-3: both cut through 0.1 randn
    params, grads = tensors(dtype, seed=0)
    kw = dict(lam=lam, beta=beta, penalty=penalty)
    # from zero gradients the pull is beta (w - T(w)) itself, one rounding on either side: bit-equal
    zeros = [torch.zeros_like(g) for g in grads]
    got = pulled(params, zeros, DEVICE, foreach=True, **kw)
    want = pulled(params, zeros, torch.device("cpu"), foreach=False, **kw)
    for p, a, b in zip(params, got, want, strict=True):
        assert torch.equal(a, b)
        if penalty == "l0":  # pulled exactly where |w| <= sqrt(2 lam/beta), by beta w
            small = p.abs() <= math.sqrt(2 * lam / beta)
            assert small.any() and (~small).any()
            assert torch.equal(b != 0, small) and torch.equal(b[small], beta * p[small])
    # added to real gradients: equal up to the rounding of one add (a fused multiply-add on the GPU)
    got = pulled(params, grads, DEVICE, foreach=True, **kw)
    want = pulled(params, grads, torch.device("cpu"), foreach=False, **kw)
    tol = 1e-15 if dtype == torch.float64 else 1e-7
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_foreach_l0_pull_at_the_threshold_itself() -> None:
    lam, beta = 5e-5, 0.01
    thr = math.sqrt(2 * lam / beta)
    params = [torch.tensor([thr, -thr, 0.5, 0.01], dtype=torch.float64)]
    grads = [torch.zeros(4, dtype=torch.float64)]
    kw = dict(lam=lam, beta=beta, penalty="l0")
    got = pulled(params, grads, DEVICE, foreach=True, **kw)
    want = pulled(params, grads, torch.device("cpu"), foreach=False, **kw)
    assert torch.equal(want[0], beta * torch.tensor([thr, -thr, 0.0, 0.01], dtype=torch.float64))
    assert torch.equal(got[0], want[0])


def toy_configs() -> list[ToyConfig]:
    out = []
    for i, (penalty, lam) in enumerate([(p, lam) for p in ("l0", "l1", "tl1") for lam in (1e-5, 1e-4, 1e-3)]):
        out.append(
            ToyConfig(
                k=2,
                d=20,
                w_star=make_teacher(20, seed=i),
                w0=make_init(20, seed=100 + i),
                penalty=penalty,
                lam=lam,
                beta=4e-3,
                eta=0.1,
                max_iters=3000,
                tol=1e-14,
                log_every=100,
                dtype="float64",
            )
        )
    return out


def test_batched_toy_run_on_device_equals_cpu_run_float64() -> None:
    cfgs = toy_configs()
    dev_runs = run_toy(cfgs, device=DEVICE)
    cpu_runs = run_toy(cfgs, device="cpu")
    assert any(r.converged for r in cpu_runs)  # runs that stop early by tol: the stopping rule is compared too
    for a, b in zip(dev_runs, cpu_runs, strict=True):
        # the step norm crosses tol at the same iteration, give or take the rounding of a reduction
        assert (a.converged, a.stopped_by) == (b.converged, b.stopped_by) and abs(a.iters - b.iters) <= 2
        assert (a.w - b.w).abs().max().item() <= 1e-10
        assert (a.u - b.u).abs().max().item() <= 1e-10
        assert torch.equal(a.u != 0, b.u != 0)
        for key in ("lagrangian", "theta_w", "f_w", "f_u"):
            assert math.isclose(a.final[key], b.final[key], rel_tol=1e-10, abs_tol=1e-10), key


def test_exported_model_trained_on_device_runs_on_cpu(tmp_path) -> None:
    """Issue 19: an exported CNN trained on the device through the worker's own path (``prepare``, ``train``,
    ``_outputs``) returns a ``model.pt2`` whose every tensor is on the CPU, and which runs there."""
    import io

    import numpy as np

    from benchmarks.user_models import ResidualCNN, digits_npz, export
    from rvsm.prepare import prepare
    from rvsm.train import TrainConfig, train
    from worker.checkpoint_jobs import _outputs

    torch.manual_seed(0)
    data, x_val, _ = digits_npz(flat=False)
    (tmp_path / "d.npz").write_bytes(data)
    spec = {
        "kind": "checkpoint",
        "dataset": {"name": "upload"},
        "algorithm": "rvsm",
        "target_sparsity": 0.5,
        "epochs": 1,
    }
    prep = prepare(spec, checkpoint=export(ResidualCNN(), x_val[:4]), dataset_file=tmp_path / "d.npz")
    cfg = TrainConfig.from_spec(spec | {"params": prep.sparse_names})
    result = train(prep.model, prep.data, cfg, device=DEVICE)
    files, _ = _outputs(spec, prep, cfg, result, DEVICE)
    ep = torch.export.load(io.BytesIO(files["model.pt2"]))
    devices = {t.device.type for t in [*ep.state_dict.values(), *ep.constants.values()] if isinstance(t, torch.Tensor)}
    assert devices == {"cpu"}, devices
    with torch.no_grad():
        out = ep.module()(x_val[:8].cpu())
    assert out.device.type == "cpu" and bool(np.isfinite(out.numpy()).all())
