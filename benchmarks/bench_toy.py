"""Batched toy sweeps against the same configurations run one at a time, through the same library.

    nice -n 10 python benchmarks/bench_toy.py --configs 1000 --iters 5000 --single 3 --repeats 5   # CPU
    python benchmarks/bench_toy.py --device cuda --configs 100000 --dtype float64   # on a GPU (benchmarks/gpu.sh)

Every configuration: ReLU network, k=2, d=50, population gradient, normalised RVSM, ``--iters``
iterations (tol=0, so every row runs them all), a trace point every 1,000 iterations. The batched sweep
and ``--single`` of its configurations run one at a time alternate (A, B, A, B, ... ``--repeats`` times),
so that a change of load on the machine hits both sides alike; the ratio of the two rates
(configuration-iterations per second) is taken within each repeat and reported as median and range, as
are each side's times. Also reported: the largest difference between the batched and the one-at-a-time
finals, and (on CUDA, or with ``--bandwidth``) the fraction of the memory-bandwidth limit: the bytes an
iteration must move (:func:`step_bytes`) against the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_block  # noqa: E402

from rvsm.algorithms import ToyConfig, run_toy  # noqa: E402
from rvsm.problems import make_init, make_teacher, relu_grad  # noqa: E402
from rvsm.prox import apply_threshold  # noqa: E402

T = TypeVar("T")
LAMS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]


def configs(n: int, *, d: int, iters: int, dtype: str, penalty: str) -> list[ToyConfig]:
    out = []
    for i in range(n):
        seed = i // len(LAMS)
        out.append(
            ToyConfig(
                k=2,
                d=d,
                w_star=make_teacher(d, seed=seed),
                w0=make_init(d, seed=1_000_000 + seed),
                penalty=penalty,
                lam=LAMS[i % len(LAMS)],
                beta=4e-3,
                eta=0.05,
                max_iters=iters,
                log_every=1000,
                dtype=dtype,
            )
        )
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Measured copy bandwidth of ``device`` in bytes/s, read + write counted (2 x nbytes per copy).

    On CUDA a device-to-device copy timed with CUDA events; elsewhere with the wall clock."""
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            y.copy_(x)
        stop.record()
        stop.synchronize()
        seconds = start.elapsed_time(stop) / 1e3
    else:
        t = time.perf_counter()
        for _ in range(reps):
            y.copy_(x)
        seconds = time.perf_counter() - t
    return 2 * nbytes * reps / seconds


def step_bytes(d: int, itemsize: int) -> int:
    """Bytes one batched RVSM iteration (``_Group.advance``, population gradient, l1 / l0) must move per
    configuration, from the shapes of the tensors it reads and writes, if each were touched exactly once:

    - w (d values) read and the new w (d) written, the teacher w* (d) read: 3 d x itemsize;
    - the per-row parameters read: k, eta, beta, mu = lam/beta, tol (itemsize each) and max_iters (int64);
    - the per-row bookkeeping read and written: last_step, max_delta (itemsize), iters (int64),
      active, converged, diverged (bool).

    Total: itemsize (3 d + 5 + 2 x 2) + 8 + 2 x 8 + 2 x 3 = itemsize (3 d + 9) + 30 bytes.
    """
    return itemsize * (3 * d + 9) + 30


def plain_inputs(cfgs: list[ToyConfig], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors :func:`plain_loop` reads, built outside its timing."""
    dt = getattr(torch, cfgs[0].dtype)

    def col(name: str) -> torch.Tensor:
        return torch.tensor([float(getattr(c, name)) for c in cfgs], dtype=dt, device=device).unsqueeze(-1)

    return {
        "w": torch.stack([c.w0 for c in cfgs]).to(device=device, dtype=dt),
        "ws": torch.stack([c.w_star for c in cfgs]).to(device=device, dtype=dt),
        "k": torch.tensor([float(c.k) for c in cfgs], dtype=dt, device=device),
        "mu": col("lam") / col("beta"),
        "eta": col("eta"),
        "beta": col("beta"),
    }


def plain_loop(x: dict[str, torch.Tensor], iters: int, penalty: str) -> torch.Tensor:
    """The same normalised RVSM step, batched, in plain eager torch: no bookkeeping, traces or results."""
    w, ws, k, mu, eta, beta = x["w"], x["ws"], x["k"], x["mu"], x["eta"], x["beta"]
    for _ in range(iters):
        u = apply_threshold(w, mu, penalty)
        w_hat = w - eta * (relu_grad(w, ws, k) + beta * (w - u))
        w = w_hat / torch.linalg.vector_norm(w_hat, dim=-1, keepdim=True)
    return w


def triton_rows(args: argparse.Namespace, cfgs: list[ToyConfig], dev: torch.device, itemsize: int) -> dict:
    """The Triton path (run_toy(backend="triton"), result assembly included) against :func:`plain_loop`,
    alternating A, B, A, B, ...; each side's time, its rate, the ratio within each repeat, and the Triton
    path's fraction of the copy-bandwidth limit end to end."""
    warm = configs(args.configs, d=args.d, iters=min(args.iters, 1000), dtype=args.dtype, penalty=args.penalty)
    tw, _ = timed(lambda: run_toy(warm, device=dev, backend="triton"), dev)  # compiles the kernel
    x = plain_inputs(cfgs, dev)
    plain_loop(x, 2, args.penalty)
    t_t: list[float] = []
    t_p: list[float] = []
    diff = 0.0
    for rep in range(args.repeats):
        dt, runs = timed(lambda: run_toy(cfgs, device=dev, backend="triton"), dev)
        t_t.append(dt)
        dt, w = timed(lambda: plain_loop(x, args.iters, args.penalty), dev)
        t_p.append(dt)
        w = w.double().cpu()
        diff = max(diff, max((r.w - w[i, : r.config.d]).abs().max().item() for i, r in enumerate(runs)))
        print(f"triton repeat {rep}: run_toy {t_t[-1]:.3f} s, plain batched loop {t_p[-1]:.3f} s", flush=True)
    rate_t = [args.configs * args.iters / t for t in t_t]
    rate_p = [args.configs * args.iters / t for t in t_p]
    bw = copy_bandwidth(dev, args.bandwidth_bytes)
    need = step_bytes(args.d, itemsize)
    return {
        "mode": "triton",
        "configs": args.configs,
        "repeats": args.repeats,
        "compile_warmup_s": tw,
        "triton_s": stats(t_t),
        "plain_loop_s": stats(t_p),
        "triton_cfg_it_per_s": stats(rate_t),
        "plain_loop_cfg_it_per_s": stats(rate_p),
        "ratio_vs_plain_loop": stats([a / b for a, b in zip(rate_t, rate_p, strict=True)]),
        "max_abs_diff_w_vs_plain_loop": diff,
        "copy_bandwidth_GBps": bw / 1e9,
        "bytes_per_cfg_it": need,
        "bandwidth_fraction": stats([r * need / bw for r in rate_t]),
    }


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def rng(s: dict[str, float], fmt: str) -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=1000)
    p.add_argument("--single", type=int, default=5, help="how many configurations to time one at a time, per repeat")
    p.add_argument("--repeats", type=int, default=5, help="alternating repeats: batched, one at a time, batched, ...")
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--penalty", default="l1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile-fused iteration")
    p.add_argument(
        "--triton",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the Triton path against a plain batched eager loop (default: on CUDA)",
    )
    p.add_argument(
        "--bandwidth", action="store_true", help="also measure the copy bandwidth and the sweep's fraction of it"
    )
    p.add_argument("--bandwidth-bytes", type=int, default=1 << 30, help="size of the copy that measures bandwidth")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument("--doc", type=Path, default=None, help="write the table into this markdown file")
    p.add_argument("--block", default=None, help="name of the block in --doc (default: bench_toy DEVICE DTYPE)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfgs = configs(args.configs, d=args.d, iters=args.iters, dtype=args.dtype, penalty=args.penalty)
    single = cfgs[: args.single]
    rows = []
    modes = [False, True] if args.compile else [False]
    itemsize = torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()
    for comp in modes:
        label = "compiled" if comp else "eager"
        row: dict = {"mode": label, "configs": args.configs, "single_configs_timed": args.single}
        if comp:  # pay the compilation outside the timed runs (each batch shape compiles once)
            warm = configs(args.configs, d=args.d, iters=10, dtype=args.dtype, penalty=args.penalty)
            tw, _ = timed(lambda w=warm: run_toy(w, device=dev, compile=True, backend="eager"), dev)
            tw1, _ = timed(lambda w=warm: run_toy(w[:1], device=dev, compile=True, backend="eager"), dev)
            row["compile_warmup_s"] = tw + tw1
        t_b: list[float] = []
        t_s: list[float] = []
        diff = 0.0
        for rep in range(args.repeats):  # A, B, A, B, ...: a load change hits both sides alike
            dt, batched = timed(lambda c=comp: run_toy(cfgs, device=dev, compile=c, backend="eager"), dev)
            t_b.append(dt)
            total, singles = 0.0, []
            for c in single:
                dt, r = timed(lambda c=c, comp=comp: run_toy([c], device=dev, compile=comp, backend="eager")[0], dev)
                total += dt
                singles.append(r)
            t_s.append(total)
            diff = max(diff, max((a.w - b.w).abs().max().item() for a, b in zip(batched, singles, strict=False)))
            print(f"{label} repeat {rep}: batched {t_b[-1]:.2f} s, one at a time {t_s[-1]:.2f} s", flush=True)
        # per repeat: the batched and the one-at-a-time rates of that repeat (configuration-iterations / s)
        rate_b = [args.configs * args.iters / t for t in t_b]
        rate_s = [args.single * args.iters / t for t in t_s]
        ratios = [b / s for b, s in zip(rate_b, rate_s, strict=True)]
        row |= {
            "repeats": args.repeats,
            "batched_s": stats(t_b),
            "single_s_per_config": stats([t / args.single for t in t_s]),
            "batched_cfg_it_per_s": stats(rate_b),
            "single_cfg_it_per_s": stats(rate_s),
            "ratio": stats(ratios),
            "ratios": ratios,
            "max_abs_diff_w": diff,
        }
        if args.bandwidth or dev.type == "cuda":
            bw = copy_bandwidth(dev, args.bandwidth_bytes)
            need = step_bytes(args.d, itemsize)
            row |= {
                "copy_bandwidth_GBps": bw / 1e9,
                "bytes_per_cfg_it": need,
                "bandwidth_fraction": stats([r * need / bw for r in rate_b]),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    tri_row = None
    if args.triton if args.triton is not None else dev.type == "cuda":
        tri_row = triton_rows(args, cfgs, dev, itemsize)
        print(json.dumps(tri_row), flush=True)

    lines = [
        "| mode | configs | batched: s | batched: cfg-it/s | one at a time: s per config | "
        "one at a time: cfg-it/s | ratio | max abs diff of w |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["ratio"]
        lines.append(
            f"| {r['mode']} | {r['configs']} | {rng(r['batched_s'], '.2f')} | {rng(r['batched_cfg_it_per_s'], '.3g')} "
            f"| {rng(r['single_s_per_config'], '.3f')} | {rng(r['single_cfg_it_per_s'], '.3g')} "
            f"| **{ratio['median']:.0f}x** ({ratio['min']:.0f}x–{ratio['max']:.0f}x) | {r['max_abs_diff_w']:.1e} |"
        )
    extra = [
        "",
        f"Each cell: median (min–max) over {args.repeats} alternating repeats (batched sweep, then "
        f"{args.single} configurations one at a time, then the batched sweep again, ...); the ratio is taken "
        "within each repeat. The last column is the largest difference between batched and one-at-a-time finals.",
    ]
    for r in rows:
        if "compile_warmup_s" in r:
            extra.append(f"- compiled: compilation before the timed runs took {r['compile_warmup_s']:.1f} s.")
        if "bandwidth_fraction" in r:
            f = r["bandwidth_fraction"]
            extra.append(
                f"- {r['mode']}: copy bandwidth {r['copy_bandwidth_GBps']:.1f} GB/s (read + write, measured in this "
                f"run); an iteration must move {r['bytes_per_cfg_it']} B per configuration "
                f"(itemsize·(3d + 9) + 30, d={args.d}, {args.dtype}); the batched sweep reaches "
                f"**{100 * f['median']:.1f}%** ({100 * f['min']:.1f}–{100 * f['max']:.1f}%) of that limit."
            )
    if tri_row is not None:
        r = tri_row
        f, q = r["bandwidth_fraction"], r["ratio_vs_plain_loop"]
        extra += [
            "",
            "| path | configs | s (result assembly included for run_toy) | cfg-it/s |",
            "|---|---|---|---|",
            f"| run_toy, Triton kernel | {r['configs']} | {rng(r['triton_s'], '.3f')} "
            f"| {rng(r['triton_cfg_it_per_s'], '.3g')} |",
            f"| plain batched eager loop (the step only) | {r['configs']} | {rng(r['plain_loop_s'], '.3f')} "
            f"| {rng(r['plain_loop_cfg_it_per_s'], '.3g')} |",
            "",
            f"- triton: {args.repeats} alternating repeats (run_toy on the Triton path, then the plain loop, ...); "
            f"**{q['median']:.1f}x** ({q['min']:.1f}x–{q['max']:.1f}x) the plain loop's rate; end to end "
            f"**{100 * f['median']:.1f}%** ({100 * f['min']:.1f}–{100 * f['max']:.1f}%) of the copy-bandwidth limit "
            f"({r['copy_bandwidth_GBps']:.1f} GB/s, {r['bytes_per_cfg_it']} B per configuration-iteration); "
            f"kernel compilation before the timed runs {r['compile_warmup_s']:.1f} s; largest |w| difference "
            f"from the plain loop {r['max_abs_diff_w_vs_plain_loop']:.1e}.",
        ]
        rows.append(r)
    cmd = "python benchmarks/bench_toy.py " + " ".join(sys.argv[1:])
    body = "\n".join(
        [
            f"Command: `{cmd}`  ",
            f"Machine: {machine()}, device `{dev}`  ",
            f"Workload: k=2, d={args.d}, {args.iters} iterations, {args.dtype}, penalty {args.penalty}, "
            "population gradient, normalised RVSM.",
            "",
            *lines,
            *extra,
        ]
    )
    if args.doc:
        write_block(args.doc, args.block or f"bench_toy {dev.type} {args.dtype}", body)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(body)


if __name__ == "__main__":
    main()
