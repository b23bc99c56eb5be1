"""The GPU checks other than the toy sweep (which is ``bench_toy.py``); ``benchmarks/gpu.sh`` runs them all.

    python benchmarks/bench_gpu.py overhead --device cuda --doc docs/benchmarks.md
    python benchmarks/bench_gpu.py worker --device cuda --doc docs/benchmarks.md
    python benchmarks/bench_gpu.py tests --device cuda --doc docs/benchmarks.md

- ``overhead``: time per training step of RVSM (ℓ0 on every conv/linear weight) against plain SGD on
  resnet18, batch 128, 3×32×32, alternating SGD and RVSM repeats; median and range of each side and of
  the per-repeat overhead, and the pull alone. Target: overhead ≤ 5%.
- ``worker``: a checkpoint job through a real worker on the ``gpu`` queue: a Redis server on a free port,
  the API (uvicorn), ``rvsm worker --queues gpu`` with ``RVSM_DEVICE``; a small lenet5 / digits job is
  submitted over HTTP, waited for, and checked to have succeeded on that device.
- ``tests``: the tests marked ``cuda`` (tests/test_cuda.py) on the device.

Each writes its block (``--block``) into ``--doc`` with ``_report.write_block``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def rng(xs: list[float], scale: float = 1.0, fmt: str = ".3f") -> str:
    m, lo, hi = statistics.median(xs) * scale, min(xs) * scale, max(xs) * scale
    return f"{m:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


# ----------------------------------------------------------------------------- overhead
def cmd_overhead(args: argparse.Namespace) -> list[str]:
    from rvsm import models
    from rvsm.optim import rvsm_sgd

    dev = torch.device(args.device)
    c, s, bs = 3, args.size, args.batch
    torch.manual_seed(0)
    x = torch.randn(bs, c, s, s, device=dev)
    y = torch.randint(0, 10, (bs,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    setups = {}
    for kind in ("sgd", "rvsm"):  # the same initial model for both; each keeps its own copy and optimizer
        torch.manual_seed(0)
        m = models.build(args.arch, in_channels=c, input_size=s, num_classes=10).to(dev)
        opt = rvsm_sgd(m, models.default_sparse_parameters(m), lr=0.01, lam=5e-5, beta=0.01, weight_decay=1e-4)
        setups[kind] = (m, opt.base if kind == "sgd" else opt, opt)

    def steps(kind: str, n: int) -> float:
        m, opt, _ = setups[kind]
        sync(dev)
        t = time.perf_counter()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss_fn(m(x), y).backward()
            opt.step()
        sync(dev)
        return (time.perf_counter() - t) / n

    def pulls(n: int) -> float:
        opt = setups["rvsm"][2]
        sync(dev)
        t = time.perf_counter()
        for _ in range(n):
            opt.pull_()
        sync(dev)
        return (time.perf_counter() - t) / n

    for kind in setups:  # warm-up: cuDNN autotuning, allocator, first launches
        steps(kind, args.warmup)
    t_sgd: list[float] = []
    t_rvsm: list[float] = []
    t_pull: list[float] = []
    for rep in range(args.repeats):  # A, B, A, B, ...
        t_sgd.append(steps("sgd", args.steps))
        t_rvsm.append(steps("rvsm", args.steps))
        t_pull.append(pulls(args.steps))
        print(f"repeat {rep}: sgd {1e3 * t_sgd[-1]:.3f} ms, rvsm {1e3 * t_rvsm[-1]:.3f} ms", flush=True)
    over = [b / a - 1 for a, b in zip(t_sgd, t_rvsm, strict=True)]
    pull_frac = [p / a for a, p in zip(t_sgd, t_pull, strict=True)]
    med = statistics.median(over)
    met = "met" if med <= 0.05 else "not met"
    return [
        f"Workload: {args.arch}, batch {bs}, {c}×{s}×{s} random inputs, 10 classes, SGD momentum 0.9, weight decay "
        f"1e-4; RVSM: ℓ0 (λ=5e-5, β=0.01) on every conv/linear weight. {args.repeats} alternating repeats "
        f"(SGD, RVSM, pull alone) of {args.steps} steps each after {args.warmup} warm-up steps each; "
        "median (min–max). Overhead is taken within each repeat.",
        "",
        "| model | SGD ms/step | RVSM ms/step | step overhead | pull ms | pull / SGD step |",
        "|---|---|---|---|---|---|",
        f"| {args.arch} | {rng(t_sgd, 1e3)} | {rng(t_rvsm, 1e3)} | **{100 * med:+.1f}%** "
        f"({100 * min(over):+.1f}% – {100 * max(over):+.1f}%) | {rng(t_pull, 1e3)} | {rng(pull_frac, 100, '.1f')}% |",
        "",
        f"Target (RVSM step overhead ≤ 5%, median): **{met}** on device `{dev}`.",
    ]


# ----------------------------------------------------------------------------- worker
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    check, timeout: float, what: str, procs: list[subprocess.Popen], errors: tuple[type[Exception], ...] = (OSError,)
) -> object:
    """Poll ``check`` until it returns something true; fail early when one of ``procs`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode} while waiting for {what}")
        try:
            value = check()
        except errors:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def cmd_worker(args: argparse.Namespace) -> list[str]:
    import httpx

    from service.broker import redis_server

    tmp = Path(tempfile.mkdtemp(prefix="rvsm-gpu-worker-"))
    redis_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")}
    env |= {
        "RVSM_DATA_DIR": str(tmp),
        "RVSM_DATABASE_URL": f"sqlite:///{tmp / 'jobs.db'}",
        "RVSM_ARTIFACT_DIR": str(tmp / "artifacts"),
        "RVSM_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RVSM_CHECKPOINT_QUEUE": "gpu",
        "RVSM_TOY_QUEUE": "gpu",
        "RVSM_DEVICE": args.device,
        "RVSM_PROGRESS_INTERVAL_S": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    rvsm = [sys.executable, "-m", "service.cli"]
    cmds = {
        "redis": [redis_server(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                  "no", "--dir", str(tmp)],
        "api": [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app", "--host", "127.0.0.1",
                "--port", str(api_port)],
        "worker": [*rvsm, "worker", "--queues", "gpu"],
    }  # fmt: skip
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: open(tmp / f"{name}.log", "wb") for name in cmds}  # noqa: SIM115
    url = f"http://127.0.0.1:{api_port}"
    t0 = time.perf_counter()
    try:
        for name, argv in cmds.items():
            procs[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT,
                                           start_new_session=True)  # fmt: skip
            if name == "redis":
                wait_until(lambda: socket.create_connection(("127.0.0.1", redis_port), timeout=1).close() or True,
                           30, "redis", list(procs.values()))  # fmt: skip
        client = httpx.Client(base_url=url, timeout=30)
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, "the API", list(procs.values()),
                   (OSError, httpx.TransportError))  # fmt: skip
        spec = {"kind": "checkpoint", "architecture": "lenet5", "dataset": {"name": "digits"},
                "algorithm": "rvsm", "epochs": args.epochs, "seed": 0}  # fmt: skip
        r = client.post("/v1/jobs", json=spec)
        r.raise_for_status()
        job = r.json()["id"]
        t_submit = time.perf_counter()

        def done() -> dict | None:
            st = client.get(f"/v1/jobs/{job}").json()
            return st if st["state"] in ("succeeded", "failed", "cancelled") else None

        status = wait_until(done, args.timeout, f"job {job}", list(procs.values()))
        t_job = time.perf_counter() - t_submit
        report = client.get(f"/v1/jobs/{job}/result").json() if status["state"] == "succeeded" else {}
    finally:
        for name in ("worker", "api", "redis"):
            if name in procs:
                stop(procs[name])
        for f in logs.values():
            f.close()
    device = report.get("device", "")
    nan = float("nan")
    ok = status["state"] == "succeeded" and device.split(":")[0] == torch.device(args.device).type
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        sys.stderr.write((tmp / "worker.log").read_text(errors="replace")[-4000:])
        sys.stderr.write(f"\nlogs kept in {tmp}\n")
    lines = [
        f"A Redis server on a free port (`{Path(cmds['redis'][0]).name} --save '' --appendonly no`), the API "
        "(`uvicorn --factory service.main:create_app`) and `rvsm worker --queues gpu` with "
        f"`RVSM_DEVICE={args.device}` and `RVSM_CHECKPOINT_QUEUE=gpu`; a lenet5 / digits RVSM job of {args.epochs} "
        "epochs submitted over HTTP and waited for.",
        "",
        "| job state | device in report | epochs | val. accuracy after | sparsity | submit to done | start to done |",
        "|---|---|---|---|---|---|---|",
        f"| {status['state']} | `{device or '—'}` | {report.get('epochs', '—')} | "
        f"{report.get('accuracy_after', nan):.4f} | {report.get('sparsity', {}).get('prunable', nan):.3f} "
        f"| {t_job:.1f} s | {time.perf_counter() - t0:.1f} s |",
        "",
        f"Check (succeeded on device `{torch.device(args.device).type}`): **{'passed' if ok else 'FAILED'}**.",
    ]
    if not ok:
        args.failed = True
        lines.append(f"\nError: {status.get('error')}")
    return lines


# ----------------------------------------------------------------------------- tests
def cmd_tests(args: argparse.Namespace) -> list[str]:
    env = os.environ | {"RVSM_CUDA_TEST_DEVICE": args.device}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"]
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    print(p.stdout + p.stderr, flush=True)
    last = [ln for ln in p.stdout.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    if p.returncode != 0:
        args.failed = True
    return [
        f"`RVSM_CUDA_TEST_DEVICE={args.device} python -m pytest -q -m cuda tests/test_cuda.py` "
        f"({time.perf_counter() - t:.0f} s): exit {p.returncode}, `{last[0].strip()}`.",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    ov = sub.add_parser("overhead")
    ov.add_argument("--arch", default="resnet18")
    ov.add_argument("--batch", type=int, default=128)
    ov.add_argument("--size", type=int, default=32)
    ov.add_argument("--repeats", type=int, default=15)
    ov.add_argument("--steps", type=int, default=50)
    ov.add_argument("--warmup", type=int, default=20)
    wk = sub.add_parser("worker")
    wk.add_argument("--epochs", type=int, default=3)
    wk.add_argument("--timeout", type=float, default=600)
    sub.add_parser("tests")
    for sp in sub.choices.values():
        sp.add_argument("--device", default="cuda")
        sp.add_argument("--doc", type=Path, default=None)
        sp.add_argument("--block", default=None, help="block name in --doc (default: gpu WHAT)")
    args = p.parse_args()
    args.failed = False
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here (use benchmarks/gpu.sh --dry-run for the CPU dry run)", file=sys.stderr)
        return 2
    t = time.perf_counter()
    lines = {"overhead": cmd_overhead, "worker": cmd_worker, "tests": cmd_tests}[args.what](args)
    cmd = "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:])
    head = [f"Command: `{cmd}`  ", f"Machine: {machine()}, device `{args.device}`; {time.perf_counter() - t:.0f} s."]
    body = "\n".join([*head, "", *lines])
    print(body)
    if args.doc:
        write_block(args.doc, args.block or f"gpu {args.what}", body)
    return 1 if args.failed else 0


if __name__ == "__main__":
    sys.exit(main())
