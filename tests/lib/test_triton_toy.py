"""The toy sweep's Triton kernel (rvsm.triton_toy) against the eager path, its oracle, under the Triton
interpreter on the CPU: the whole ``run_toy`` result (trace points, final metrics, ``w``, ``u``, iterations,
stopping) equal to 1e-12 in float64. Sizes are tiny: the interpreter runs each iteration in numpy."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (rvsm.triton_toy imports it)

import pytest  # noqa: E402
import torch  # noqa: E402

from rvsm.algorithms import ToyConfig, ToyRun, run_toy, toy_backend  # noqa: E402
from rvsm.problems import make_init, make_teacher  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton: the dev extra)")
from rvsm import triton_toy  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not triton_toy.interpreted(), reason="TRITON_INTERPRET was set to 0 before this module"),
    # masked-off lanes of the last program divide 0 by 0 in numpy; their results are never stored
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

TOL = 1e-12
TRACED = ("lagrangian", "theta_w", "theta_u", "f_w", "f_u", "step")


def cfg(i: int, d: int, **kw) -> ToyConfig:
    base: dict = dict(
        k=2 + i % 3,
        d=d,
        w_star=make_teacher(d, seed=i),
        w0=make_init(d, seed=100 + i),
        lam=1e-3 * (1 + i),
        beta=4e-3,
        eta=0.1,
        max_iters=30,
        log_every=4,
    )
    return ToyConfig(**(base | kw))


def close(a: float | None, b: float | None, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def assert_same(eager: list[ToyRun], tri: list[ToyRun], tol: float = TOL) -> float:
    """Every part of the two results equal (floats to ``tol``); returns the largest difference seen."""
    worst = 0.0
    assert len(eager) == len(tri)
    for a, b in zip(eager, tri, strict=True):
        where = f"{a.config.network}/{a.config.penalty}/d={a.config.d}"
        ends = [(r.iters, r.converged, r.diverged, r.stopped_by) for r in (a, b)]
        assert ends[0] == ends[1], where
        assert a.trace["iter"] == b.trace["iter"], where
        assert a.trace["nnz_u"] == b.trace["nnz_u"], where
        assert a.trace_log_every == b.trace_log_every, where
        for name in TRACED:
            for x, y in zip(a.trace[name], b.trace[name], strict=True):
                assert close(x, y, tol), (where, name, x, y)
                if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
                    worst = max(worst, abs(x - y))
        for name, x in a.final.items():
            assert close(x, b.final[name], tol), (where, name, x, b.final[name])
        for v in ("w", "u"):
            diff = (getattr(a, v) - getattr(b, v)).abs().max().item()
            assert diff <= tol, (where, v, diff)
            worst = max(worst, diff)
        assert abs(a.max_step_norm - b.max_step_norm) <= tol, where
    return worst


def both(configs: list[ToyConfig], **kw) -> tuple[list[ToyRun], list[ToyRun]]:
    return run_toy(configs, device="cpu", backend="eager", **kw), run_toy(configs, device="cpu", backend="triton", **kw)


@pytest.mark.parametrize(
    "network,algorithm,penalty,normalize",
    [
        ("relu", "rvsm", "l0", True),
        ("relu", "rvsm", "l1", True),
        ("relu", "rvsm", "tl1", True),
        ("relu", "rvsm", "group_l1", True),
        ("relu", "rvsm", "l1", False),
        ("binary", "rvscgd", "l0", True),
        ("binary", "rvscgd", "tl1", True),
    ],
)
def test_kernel_equals_eager(network: str, algorithm: str, penalty: str, normalize: bool) -> None:
    # one group of rows with different d (zero-padded to the largest), k, lam, a, teachers and starts
    configs = [
        cfg(i, d, network=network, algorithm=algorithm, penalty=penalty, normalize=normalize, a=0.3 + 0.4 * i)
        for i, d in enumerate((3, 5, 2))
    ]
    eager, tri = both(configs)
    assert_same(eager, tri)
    assert len(eager[0].trace["iter"]) == 30 // 4 + 2  # 0, 4, ..., 28 and the last one, 30


def test_defaults() -> None:
    """Every field left at its default but the length of the run (log_every 10, l0, tol 0, relu, rvsm)."""
    d = 6
    configs = [
        ToyConfig(
            k=2,
            d=d,
            w_star=make_teacher(d, seed=s),
            w0=make_init(d, seed=s + 1),
            lam=1e-4,
            beta=4e-3,
            eta=0.1,
            max_iters=40,
        )
        for s in (0, 1)
    ]
    eager, tri = both(configs)
    assert eager[0].trace["iter"] == [0, 10, 20, 30, 40]
    assert_same(eager, tri)


def test_decimated_trace_tolerance_and_uneven_lengths() -> None:
    """A trace interval raised by max_trace_points (keep_every 7 over log_every 3), rows stopping by tol
    and by their own max_iters off the trace's grid, and a large lam that zeroes u."""
    configs = [
        cfg(0, 4, log_every=3, max_iters=26, eta=0.5, tol=5e-3),  # stops by tol at iteration 21
        cfg(1, 4, log_every=3, max_iters=17),
        cfg(2, 3, log_every=3, max_iters=26, lam=0.5),
    ]
    eager, tri = both(configs, max_trace_points=6)
    assert eager[0].trace_log_every > 3
    assert eager[0].stopped_by == "tol" and eager[1].iters == 17
    assert eager[2].final["nnz_u"] == 0
    assert_same(eager, tri)


def test_callback_sees_the_same_progress() -> None:
    """With a callback the kernel stops at every log_every; the callback gets the same metrics."""
    configs = [cfg(i, 4, max_iters=12, log_every=3) for i in range(2)]
    seen: dict[str, list] = {"eager": [], "triton": []}
    for backend, out in seen.items():
        run_toy(configs, device="cpu", backend=backend, callback=lambda p, out=out: out.append(p))
    assert [p["iteration"] for p in seen["eager"]] == [p["iteration"] for p in seen["triton"]] == [3, 6, 9, 12][:-1]
    for pe, pt in zip(seen["eager"], seen["triton"], strict=True):
        for name, xs in pe["metrics"].items():
            assert all(close(x, y, TOL) for x, y in zip(xs, pt["metrics"][name], strict=True)), name


def test_float32_close() -> None:
    configs = [cfg(i, 5, dtype="float32", penalty="l1") for i in range(2)]
    eager, tri = both(configs)
    assert_same(eager, tri, tol=1e-5)


def test_unsupported_group_stays_eager() -> None:
    """aht (and the empirical gradient, admm, gd) have no kernel: backend='triton' runs them eagerly."""
    d = 5
    c = ToyConfig(
        k=2,
        d=d,
        w_star=make_teacher(d, seed=0),
        w0=make_init(d, seed=1),
        algorithm="aht",
        s=2,
        lam=0.0,
        beta=4e-3,
        eta=0.1,
        max_iters=10,
    )
    eager, tri = both([c])
    assert_same(eager, tri, tol=0.0)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("RVSM_TOY_BACKEND", raising=False)
    assert toy_backend(None, device=cpu) == "eager"  # nothing changes on a CPU
    assert toy_backend(None, device=cuda) == "triton"
    assert toy_backend(None, device=cuda, compile=True) == "eager"  # compile asked for: the compiled eager step
    assert toy_backend("eager", device=cuda) == "eager"
    assert toy_backend("triton", device=cpu) == "triton"  # under the interpreter
    monkeypatch.setenv("RVSM_TOY_BACKEND", "eager")
    assert toy_backend(None, device=cuda) == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        toy_backend("fast", device=cpu)
