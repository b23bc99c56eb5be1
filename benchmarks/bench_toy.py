"""Batched toy sweeps against the same configurations run one at a time, through the same library.

    python benchmarks/bench_toy.py                      # CPU: 1,000 configs, a subset one at a time
    python benchmarks/bench_toy.py --device cuda --configs 100000 --compile   # on a GPU

Every configuration: ReLU network, k=2, d=50, population gradient, normalised RVSM, 20,000
iterations (tol=0, so every row runs them all), a trace point every 1,000 iterations. Reported:
configuration-iterations per second for the batched sweep and for one-at-a-time runs (timed on a
subset; the rate is per configuration-iteration either way), their ratio, and the largest difference
between the batched and the one-at-a-time finals. On CUDA also the fraction of the memory-bandwidth
limit: a step must at least read w and w* and write w (3 d values per configuration), against the
card's measured device-to-device copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_block  # noqa: E402

from rvsm.algorithms import ToyConfig, run_toy  # noqa: E402
from rvsm.problems import make_init, make_teacher  # noqa: E402

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


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def copy_bandwidth(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * reps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=1000)
    p.add_argument("--single", type=int, default=5, help="how many configurations to time one at a time")
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--penalty", default="l1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile-fused iteration")
    p.add_argument("--doc", type=Path, default=None, help="write the table into this markdown file")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    dev = torch.device(args.device)
    cfgs = configs(args.configs, d=args.d, iters=args.iters, dtype=args.dtype, penalty=args.penalty)
    rows = []
    modes = [False, True] if args.compile else [False]
    for comp in modes:
        label = "compiled" if comp else "eager"
        if comp:  # pay the compilation outside the timed runs (each batch shape compiles once)
            warm = configs(args.configs, d=args.d, iters=10, dtype=args.dtype, penalty=args.penalty)
            tw, _ = timed(lambda w=warm: run_toy(w, device=dev, compile=True), dev)
            tw1, _ = timed(lambda w=warm: run_toy(w[:1], device=dev, compile=True), dev)
        t_b, batched = timed(lambda c=comp: run_toy(cfgs, device=dev, compile=c), dev)
        singles = []
        t_s = 0.0
        for c in cfgs[: args.single]:
            dt, r = timed(lambda c=c, comp=comp: run_toy([c], device=dev, compile=comp)[0], dev)
            t_s += dt
            singles.append(r)
        diff = max((a.w - b.w).abs().max().item() for a, b in zip(batched, singles, strict=False))
        rate_b = args.configs * args.iters / t_b
        rate_s = args.single * args.iters / t_s
        row = {
            "mode": label,
            "configs": args.configs,
            "batched_s": t_b,
            "batched_cfg_it_per_s": rate_b,
            "single_configs_timed": args.single,
            "single_s": t_s,
            "single_cfg_it_per_s": rate_s,
            "ratio": rate_b / rate_s,
            "max_abs_diff_w": diff,
        }
        if comp:
            row["compile_warmup_s"] = tw + tw1
        if dev.type == "cuda":
            bw = copy_bandwidth(dev)
            bytes_per_cfg_it = 3 * args.d * torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()
            row["copy_bandwidth_GBps"] = bw / 1e9
            row["bandwidth_fraction"] = rate_b * bytes_per_cfg_it / bw
        rows.append(row)
        print(json.dumps(row), flush=True)

    head = (
        "| mode | configs | batched: s | batched: cfg-it/s | one at a time: cfg-it/s (n timed) | ratio "
        "| max abs diff of w |"
    )
    sep = "|---|---|---|---|---|---|---|"
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['configs']} | {r['batched_s']:.1f} | {r['batched_cfg_it_per_s']:.3g} | "
            f"{r['single_cfg_it_per_s']:.3g} ({r['single_configs_timed']}) | {r['ratio']:.0f}x | "
            f"{r['max_abs_diff_w']:.1e} |"
        )
    extra = []
    for r in rows:
        if "compile_warmup_s" in r:
            extra.append(f"- compiled: compilation before the timed runs took {r['compile_warmup_s']:.1f} s.")
        if "bandwidth_fraction" in r:
            extra.append(
                f"- {r['mode']}: copy bandwidth {r['copy_bandwidth_GBps']:.0f} GB/s; the batched sweep reaches "
                f"{100 * r['bandwidth_fraction']:.1f}% of the limit (3 d {args.dtype} values per config-iteration)."
            )
    cmd = "python benchmarks/bench_toy.py " + " ".join(sys.argv[1:])
    body = "\n".join(
        [
            f"Command: `{cmd}`  ",
            f"Machine: {machine()}, device `{dev}`  ",
            f"Workload: k=2, d={args.d}, {args.iters} iterations, {args.dtype}, penalty {args.penalty}, "
            "population gradient, normalised RVSM.",
            "",
            *lines,
            "",
            *extra,
        ]
    )
    if args.doc:
        write_block(args.doc, f"bench_toy {dev.type} {args.dtype}", body)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(body)


if __name__ == "__main__":
    main()
