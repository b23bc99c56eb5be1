"""Denormal flushing in ``rvsm.train.train``: the same lenet5 / digits RVSM run with flushing on and off.

    nice -n 10 python benchmarks/bench_denormal.py --threads 1 --doc docs/benchmarks.md

``train()`` calls ``torch.set_flush_denormal(True)`` at its start. "On" is ``train()`` as it is; "off" is the
same call with a ``step_callback`` that calls ``torch.set_flush_denormal(False)`` after the first optimizer
step (so every later step runs with denormals kept; the first step, and only it, runs flushed in both).
The two alternate (on, off, on, off, ...), ``--repeats`` each, in one process; reported: median and range
of each side's wall time and of the per-repeat ratio off / on, whether the final accuracies and weights are
identical, and the largest number of denormal (subnormal) values seen in the weights and their gradients,
counted every ``--count-every`` steps in both runs alike.

Workload: bench_checkpoint.py's acceptance run of RVSM ℓ0 (lenet5, digits, batch 64, lr 0.05 cosine,
momentum 0.9, weight decay 1e-4, threshold √(2λ/β) = 0.1, β grown from 0.01 to 1), ``--epochs`` epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_block  # noqa: E402

from rvsm import data as rdata  # noqa: E402
from rvsm import models  # noqa: E402
from rvsm.train import TrainConfig, train  # noqa: E402

BETA, THRESHOLD = 0.01, 0.1


def subnormals(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())


def one_run(data: rdata.TensorData, epochs: int, *, flush: bool, count_every: int) -> dict:
    torch.manual_seed(0)
    model = models.build("lenet5", in_channels=1, input_size=8, num_classes=10)
    lam = BETA * THRESHOLD**2 / 2
    cfg = TrainConfig(
        seed=0,
        epochs=epochs,
        algorithm="rvsm",
        penalty="l0",
        lam=lam,
        beta=BETA,
        beta_final=1.0,
        lr=0.05,
        weight_decay=1e-4,
        batch_size=64,
        layer_scale=False,
    )
    seen = {"max": 0}

    def on_step(step: int, _per_epoch: int) -> None:
        if step == 1 and not flush:  # steps count from 1: this is the first step
            torch.set_flush_denormal(False)  # train() turned it on; keep denormals from here on
        if step % count_every == 0:
            n = sum(subnormals(p) + (subnormals(p.grad) if p.grad is not None else 0) for p in model.parameters())
            seen["max"] = max(seen["max"], n)

    t = time.perf_counter()
    r = train(model, data, cfg, step_callback=on_step)
    wall = time.perf_counter() - t
    torch.set_flush_denormal(True)
    return {
        "flush": flush,
        "wall_s": wall,
        "accuracy": r.score_after,
        "sparsity": r.sparsity["prunable"],
        "max_subnormals": seen["max"],
        "state": {k: v.detach().clone() for k, v in r.model.state_dict().items()},
    }


def rng(xs: list[float], fmt: str) -> str:
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}–{max(xs):{fmt}})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--count-every", type=int, default=100, help="count denormals every this many steps")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--doc", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = rdata.digits(seed=0)
    one_run(data, 1, flush=False, count_every=args.count_every)  # warm-up (first-call costs), not timed
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for rep in range(args.repeats):  # on, off, on, off, ...
        for flush in (True, False):
            r = one_run(data, args.epochs, flush=flush, count_every=args.count_every)
            runs[flush].append(r)
            print(
                f"repeat {rep} flush {'on' if flush else 'off'}: {r['wall_s']:.2f} s, accuracy {r['accuracy']:.4f}, "
                f"max denormals {r['max_subnormals']}",
                flush=True,
            )
    on, off = runs[True], runs[False]
    ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(on, off, strict=True)]
    ref = on[0]
    same_acc = all(r["accuracy"] == ref["accuracy"] for r in on + off)
    same_w = all(all(torch.equal(r["state"][k], v) for k, v in ref["state"].items()) for r in on + off)
    lines = [
        f"Workload: lenet5 / digits, RVSM ℓ0 (threshold √(2λ/β) = {THRESHOLD}, β {BETA} → 1), {args.epochs} epochs, "
        f"batch 64, seed 0 (bench_checkpoint.py's acceptance run). {args.repeats} alternating repeats (on, off, ...); "
        "“off”: a step_callback calls `torch.set_flush_denormal(False)` after the first step of `train()`, which "
        "turns flushing on at its start. Median (min–max).",
        "",
        "| flushing | wall s | val. accuracy | sparsity | most denormals seen (weights + grads) |",
        "|---|---|---|---|---|",
    ]
    for name, rs in (("on (train() as it is)", on), ("off", off)):
        wall, acc, sp = (
            rng([r[k] for r in rs], f) for k, f in (("wall_s", ".2f"), ("accuracy", ".4f"), ("sparsity", ".3f"))
        )
        lines.append(f"| {name} | {wall} | {acc} | {sp} | {max(r['max_subnormals'] for r in rs)} |")
    lines += [
        "",
        f"Off / on, per repeat: **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}x–{max(ratios):.2f}x). "
        f"Final accuracies identical across all runs: **{'yes' if same_acc else 'no'}**; final weights bit-identical: "
        f"**{'yes' if same_w else 'no'}**.",
    ]
    cmd = "python benchmarks/bench_denormal.py " + " ".join(sys.argv[1:])
    body = "\n".join([f"Command: `{cmd}`  ", f"Machine: {machine()}", "", *lines])
    print(body)
    if args.doc:
        write_block(args.doc, "bench_denormal cpu", body)
    if args.json:
        for r in on + off:
            r.pop("state")
        args.json.write_text(json.dumps({"on": on, "off": off, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
