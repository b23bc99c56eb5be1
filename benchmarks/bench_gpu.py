"""The GPU checks other than the toy sweep (which is ``bench_toy.py``); ``benchmarks/gpu.sh`` runs them all.

    python benchmarks/bench_gpu.py overhead --device cuda --doc docs/benchmarks.md
    python benchmarks/bench_gpu.py worker --device cuda --doc docs/benchmarks.md
    python benchmarks/bench_gpu.py tests --device cuda --doc docs/benchmarks.md

- ``overhead``: time per training step of RVSM (ℓ0 on every conv/linear weight) against plain SGD on
  resnet18, batch 128, 3×32×32, alternating SGD and RVSM repeats; median and range of each side and of
  the per-repeat overhead, and the pull alone. Target: overhead ≤ 5%.
- ``worker``: a checkpoint job through a real worker on the ``gpu`` queue: a Redis server on a free port,
  the API (uvicorn), ``rvsm worker --queues gpu`` with ``RVSM_DEVICE``; a lenet5 / digits job is submitted
  over HTTP, waited for, checked to have succeeded on that device, and its started-to-finished time set beside
  the same ``train()`` call in this process; then the README's exported CNN, whose ``model.pt2`` is downloaded
  and run on the CPU.
- ``tests``: the tests marked ``cuda`` (tests/lib/test_cuda.py) on the device.

Each writes its block (``--block``) into ``--doc`` with ``_report.write_block``.
"""

from __future__ import annotations

import argparse
import json
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
    if "RVSM_SANDBOX_SECCOMP" in os.environ:  # a GPU host without libseccomp: gpu.sh's caller says so
        env["RVSM_SANDBOX_SECCOMP"] = os.environ["RVSM_SANDBOX_SECCOMP"]
    rvsm = [sys.executable, "-m", "service.cli"]
    cmds = {
        "redis": [
            redis_server(),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        "api": [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(api_port),
        ],
        "worker": [*rvsm, "worker", "--queues", "gpu"],
    }
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: open(tmp / f"{name}.log", "wb") for name in cmds}  # noqa: SIM115
    url = f"http://127.0.0.1:{api_port}"
    t0 = time.perf_counter()
    try:
        for name, argv in cmds.items():
            procs[name] = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True
            )
            if name == "redis":
                wait_until(
                    lambda: socket.create_connection(("127.0.0.1", redis_port), timeout=1).close() or True,
                    30,
                    "redis",
                    list(procs.values()),
                )
        client = httpx.Client(base_url=url, timeout=30)
        wait_until(
            lambda: client.get("/readyz").status_code == 200,
            120,
            "the API",
            list(procs.values()),
            (OSError, httpx.TransportError),
        )
        spec = {
            "kind": "checkpoint",
            "architecture": "lenet5",
            "dataset": {"name": "digits"},
            "algorithm": "rvsm",
            "epochs": args.epochs,
            "seed": 0,
        }
        status, report = run_job(client, args, data={"spec": json.dumps(spec)}, files=None)
        t_job = job_seconds(status)
        npz, x_val, y_val = digits_npz()
        pt2 = export_readme_cnn(x_val[:4])
        exp_spec = {
            "kind": "checkpoint",
            "dataset": {"name": "upload"},
            "algorithm": "rvsm",
            "target_sparsity": 0.5,
            "epochs": 2,
            "seed": 0,
        }
        exp_status, exp_report = run_job(
            client,
            args,
            data={"spec": json.dumps(exp_spec)},
            files={"checkpoint": ("m.pt2", pt2), "dataset": ("d.npz", npz)},
        )
        cpu_check = pt2_on_cpu(client, exp_status, exp_report, x_val, y_val)
    finally:
        for name in ("worker", "api", "redis"):
            if name in procs:
                stop(procs[name])
        for f in logs.values():
            f.close()
    device = report.get("device", "")
    nan = float("nan")
    in_process = train_in_process(spec, args.device)
    ok = status["state"] == "succeeded" and device.split(":")[0] == torch.device(args.device).type
    ok = ok and cpu_check.startswith("ok")
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
        "| job state | device in report | epochs | val. accuracy after | sparsity | job start to finish | this step |",
        "|---|---|---|---|---|---|---|",
        f"| {status['state']} | `{device or '—'}` | {report.get('epochs', '—')} | "
        f"{report.get('accuracy_after', nan):.4f} | {report.get('sparsity', {}).get('prunable', nan):.3f} "
        f"| {t_job:.1f} s | {time.perf_counter() - t0:.1f} s |",
        "",
        f"The same `train()` call in this process on `{args.device}` (after a warm-up): {in_process:.1f} s; the job's "
        f"started-to-finished time is **{t_job / in_process:.2f}x** that (target ≤ 1.5x for 20 epochs).",
        "",
        f"Exported model (the README's CNN, digits uploaded as `.npz`, target 0.5, 2 epochs) on the same queue: "
        f"{exp_status['state']}; its `model.pt2` loaded with plain torch and run on the CPU: {cpu_check}.",
        "",
        f"Check (both succeeded on device `{torch.device(args.device).type}`, the `.pt2` runs on CPU): "
        f"**{'passed' if ok else 'FAILED'}**.",
    ]
    if not ok:
        args.failed = True
        lines.append(f"\nError: {status.get('error')}")
    return lines


def run_job(client, args: argparse.Namespace, *, data: dict, files: dict | None) -> tuple[dict, dict]:  # noqa: ANN001
    """Submit a job (multipart), wait for it; its status and, if it succeeded, its report."""
    spec = json.loads(data["spec"])
    r = client.post("/v1/jobs", data=data, files=files) if files else client.post("/v1/jobs", json=spec)
    if r.status_code != 202:
        raise RuntimeError(f"submit: {r.status_code} {r.text[:500]}")
    job = r.json()["id"]

    def done() -> dict | None:
        st = client.get(f"/v1/jobs/{job}").json()
        return st if st["state"] in ("succeeded", "failed", "cancelled") else None

    status = wait_until(done, args.timeout, f"job {job}", [])
    report = client.get(f"/v1/jobs/{job}/result").json() if status["state"] == "succeeded" else {}
    return status, report


def job_seconds(status: dict) -> float:
    from datetime import datetime

    start, end = (datetime.fromisoformat(status[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def digits_npz() -> tuple[bytes, torch.Tensor, torch.Tensor]:
    import io

    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, x=x[:1400], y=y[:1400], x_val=x[1400:], y_val=y[1400:])
    return buf.getvalue(), torch.from_numpy(x[1400:]), torch.from_numpy(y[1400:])


def export_readme_cnn(example: torch.Tensor) -> bytes:
    """The README's "Prune your own model" CNN, exported with a dynamic batch."""
    import io

    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.drop, self.fc = nn.Dropout(0.25), nn.Linear(32 * 2 * 2, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc(self.drop(x.flatten(1)))

    torch.manual_seed(0)
    ep = torch.export.export(Net(), (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def pt2_on_cpu(client, status: dict, report: dict, x_val: torch.Tensor, y_val: torch.Tensor) -> str:  # noqa: ANN001
    """Download the job's ``model.pt2``; load it with plain torch on the CPU, run it on the validation set."""
    import io

    if status["state"] != "succeeded":
        return f"not run (the job {status['state']}: {status.get('error')})"
    blob = client.get(f"/v1/jobs/{status['id']}/artifacts/model.pt2").content
    ep = torch.export.load(io.BytesIO(blob))
    devices = {t.device.type for t in [*ep.state_dict.values(), *ep.constants.values()] if isinstance(t, torch.Tensor)}
    with torch.no_grad():
        acc = float((ep.module()(x_val).argmax(1) == y_val).float().mean())
    same = abs(acc - report["accuracy_after"]) < 0.01
    word = "ok" if devices == {"cpu"} and same else "FAILED"
    theirs = report["accuracy_after"]
    return f"{word} (tensors on {sorted(devices)}, accuracy {acc:.4f} against the report's {theirs:.4f})"


def train_in_process(spec: dict, device: str) -> float:
    """The job's own ``prepare`` + ``train`` in this process (a first call warms the device up); seconds."""
    from rvsm.prepare import prepare
    from rvsm.train import TrainConfig, train

    times = []
    for epochs in (1, spec["epochs"]):
        torch.manual_seed(0)
        s = spec | {"epochs": epochs}
        t = time.perf_counter()
        prep = prepare(s)
        train(
            prep.model, prep.data, TrainConfig.from_spec(s | {"params": prep.sparse_names}), device=torch.device(device)
        )
        sync(torch.device(device))
        times.append(time.perf_counter() - t)
    return times[-1]


# ----------------------------------------------------------------------------- tests
def cmd_tests(args: argparse.Namespace) -> list[str]:
    env = os.environ | {"RVSM_CUDA_TEST_DEVICE": args.device}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/lib/test_cuda.py"]
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    print(p.stdout + p.stderr, flush=True)
    last = [ln for ln in p.stdout.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    if p.returncode != 0:
        args.failed = True
    return [
        f"`RVSM_CUDA_TEST_DEVICE={args.device} python -m pytest -q -m cuda tests/lib/test_cuda.py` "
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
