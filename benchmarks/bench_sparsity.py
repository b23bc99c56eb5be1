"""Target sparsity on digits: RVSM (l0, adaptive threshold) against the peer a user would write instead, gradual
magnitude pruning with ``torch.nn.utils.prune`` (benchmarks/_gmp.py), and against the service's own baselines, at
the same sparsity and the same epoch budget, for lenet5 and for two models a user would bring (a CNN with batch
norm, a residual add and dropout, and an MLP on flat features), exported with ``torch.export`` and loaded the way
the service loads them (:func:`rvsm.prepare.prepare`). Written into docs/benchmarks.md.

    python benchmarks/bench_sparsity.py --workers 2      # 5 seeds, targets 0.8 / 0.9 / 0.95 / 0.98 (~8 min, 2 cores)
    python benchmarks/bench_sparsity.py --seeds 0 --targets 0.9 --epochs 10 --no-doc   # a quick look

Every run trains from scratch for ``--epochs`` epochs in all, SGD at the service's defaults (lr 0.05, momentum 0.9,
weight decay 5e-4, cosine, the default batch size): RVSM and magnitude pruning at the service's defaults (RVSM:
warm-up, cubic ramp, masked tail; magnitude: gradual, the same warm-up and ramp); the GMP peer on the same warm-up
and ramp; ADMM trains half and fine-tunes the pruned network for the other half; dense SGD is the reference. Each
seed runs every method of every model (a worker per seed with ``--workers``); the table gives the mean, the range
over seeds and the count of collapsed runs (accuracy no better than the majority class), which are kept in the mean.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gmp import gmp_train  # noqa: E402
from _report import machine, write_block  # noqa: E402
from user_models import ResidualCNN, TabularMLP, digits_npz, export  # noqa: E402  - what the tests upload too

from rvsm.data import digits, is_collapsed  # noqa: E402
from rvsm.prepare import prepare  # noqa: E402
from rvsm.train import MIN_STEPS, TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


def one_run(
    model_name: str, seed: int, method: str, target: float | None, epochs: int, tmp: Path, extra: dict | None = None
) -> dict:
    torch.manual_seed(seed)
    spec: dict = {"kind": "checkpoint", "seed": seed, "epochs": epochs}
    blob = None
    if model_name == "lenet5":
        spec |= {"architecture": "lenet5", "dataset": {"name": "digits"}}
    else:
        flat = model_name == "custom MLP"
        path = tmp / f"{'flat' if flat else 'img'}.npz"
        if not path.exists():
            path.write_bytes(digits_npz(flat=flat)[0])
        module = TabularMLP() if flat else ResidualCNN()
        blob = export(module, torch.randn(2, 64) if flat else torch.randn(2, 1, 8, 8))
        spec |= {"dataset": {"name": "upload"}}
    half = epochs // 2
    spec |= {
        "sgd": {"algorithm": "sgd"},
        "rvsm": {"algorithm": "rvsm", "target_sparsity": target},
        "lambda": {"algorithm": "rvsm", "lam": target},  # lambda mode at its defaults (target carries lam here)
        "magnitude": {"algorithm": "magnitude", "target_sparsity": target},
        "admm": {"algorithm": "admm", "target_sparsity": target, "epochs": half, "finetune_epochs": half},
        "gmp": {"algorithm": "sgd"},  # only prepared by the service; trained by gmp_train below
    }[method] | (extra or {})
    prep = prepare(spec, checkpoint=blob, dataset_file=tmp / f"{'flat' if model_name == 'custom MLP' else 'img'}.npz")
    t0 = time.perf_counter()
    if method == "gmp":
        acc, sp = gmp_train(prep, TrainConfig.from_spec(spec | {"algorithm": "rvsm", "target_sparsity": target}))
        return {
            "accuracy": acc,
            "sparsity": sp,
            "collapsed": is_collapsed(acc, prep.data),
            "seconds": time.perf_counter() - t0,
        }
    r = train(prep.model, prep.data, TrainConfig.from_spec(spec | {"params": prep.sparse_names}))
    return {
        "accuracy": r.score_after,
        "sparsity": r.sparsity["prunable"],
        "collapsed": r.collapsed,
        "seconds": time.perf_counter() - t0,
    }


METHODS = ("rvsm", "gmp", "magnitude", "admm")
SHORT_TARGET = 0.9


def cell(runs: list[dict]) -> str:
    accs = [r["accuracy"] for r in runs]
    col = sum(r["collapsed"] for r in runs)
    text = f"{statistics.mean(accs):.4f} ({min(accs):.4f}–{max(accs):.4f})"
    return text + (f", **{col} collapsed**" if col else "")


def gap(rvsm: list[dict], peer: list[dict]) -> str:
    """RVSM's mean minus the peer's, in accuracy points."""
    d = 100 * (statistics.mean(r["accuracy"] for r in rvsm) - statistics.mean(r["accuracy"] for r in peer))
    return f"{d:+.2f}"


def variant_runs(seed: int, args: argparse.Namespace, tmp: Path) -> dict:
    """``--variants``: GMP and RVSM's target mode with each variant's fields over the defaults."""
    out: dict = {}
    for model_name in args.models:
        for target in args.targets:
            out[(model_name, "gmp", target)] = one_run(model_name, seed, "gmp", target, args.epochs, tmp)
            for v in args.variants:
                r = one_run(model_name, seed, "rvsm", target, args.epochs, tmp, json.loads(v))
                out[(model_name, v, target)] = r
                print(model_name, seed, v, target, f"{r['accuracy']:.4f}", flush=True)
    return out


def variant_table(args: argparse.Namespace, results: dict, seconds: float) -> str:
    lines = [
        f"`python benchmarks/bench_sparsity.py --seeds {' '.join(map(str, args.seeds))} --targets "
        f"{' '.join(map(str, args.targets))} --epochs {args.epochs} --workers {args.workers} --variants "
        + " ".join(f"'{v}'" for v in args.variants)
        + f"` on {machine()} (one per worker); {seconds:.0f} s in all.",
        "",
        f"RVSM's target mode with each variant's fields over the service's defaults, against GMP: validation accuracy, "
        f"mean over seeds {args.seeds}, and in brackets the difference from GMP in accuracy points.",
        "",
        "| model | target | GMP | " + " | ".join(f"`{v}`" for v in args.variants) + " |",
        "|---|---|---|" + "---|" * len(args.variants),
    ]
    for m in args.models:
        for t in args.targets:
            gmp = results[(m, "gmp", t)]
            cells = [
                f"{statistics.mean(r['accuracy'] for r in results[(m, v, t)]):.4f} ({gap(results[(m, v, t)], gmp)})"
                for v in args.variants
            ]
            mean = statistics.mean(r["accuracy"] for r in gmp)
            lines.append(f"| {m} | {t} | {mean:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_runs(job: tuple[int, argparse.Namespace]) -> dict:
    """Every method of every model for one seed (one worker's share)."""
    seed, args = job
    torch.set_num_threads(1)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.variants:
            return variant_runs(seed, args, Path(tmp))
        for model_name in args.models:
            plan = [("sgd", None)] + [(m, t) for t in args.targets for m in METHODS]
            for method, target in plan:
                r = one_run(model_name, seed, method, target, args.epochs, Path(tmp))
                out[(model_name, method, target)] = r
                print(
                    model_name,
                    seed,
                    method,
                    target,
                    f"{r['accuracy']:.4f} sp {r['sparsity']:.4f} {r['seconds']:.1f}s",
                    flush=True,
                )
            for lam in args.lambdas:
                r = one_run(model_name, seed, "lambda", lam, args.epochs, Path(tmp))
                out[(model_name, "lambda", lam)] = r
                print(model_name, seed, "lambda", lam, f"{r['accuracy']:.4f} sp {r['sparsity']:.4f}", flush=True)
        for method in ("sgd", "rvsm", "gmp"):  # a short job at the defaults: the batch size follows the steps
            target = None if method == "sgd" else SHORT_TARGET
            r = one_run("lenet5", seed, method, target, args.short_epochs, Path(tmp))
            out[("short", method, target)] = r
            print("short lenet5", seed, method, f"{r['accuracy']:.4f} {r['seconds']:.1f}s", flush=True)
    return out


def table(args: argparse.Namespace, results: dict, seconds: float) -> str:
    lines = [
        f"`python benchmarks/bench_sparsity.py --seeds {' '.join(map(str, args.seeds))} --targets "
        f"{' '.join(map(str, args.targets))} --epochs {args.epochs} --lambdas {' '.join(map(str, args.lambdas))} "
        f"--workers {args.workers}` on {machine()} (one per worker); {seconds:.0f} s in all.",
        "",
        f"Validation accuracy on digits: mean over seeds {args.seeds} (range); {args.epochs} epochs in all for every "
        "method (ADMM: half training, half fine-tuning). RVSM − GMP: the difference of the means in accuracy points "
        "(positive: RVSM better). Sparsity is of the sparsified tensors (conv / linear weights), the target to "
        "within one entry per tensor for every method.",
        "",
        "| model | dense SGD | target | RVSM ℓ0 target | GMP, torch.nn.utils.prune | RVSM − GMP | magnitude (gradual) "
        "| ADMM + fine-tune |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_name in args.models:
        dense = cell(results[(model_name, "sgd", None)])
        for target in args.targets:
            runs = {m: results[(model_name, m, target)] for m in METHODS}
            row = [
                cell(runs["rvsm"]),
                cell(runs["gmp"]),
                gap(runs["rvsm"], runs["gmp"]),
                cell(runs["magnitude"]),
                cell(runs["admm"]),
            ]
            lines.append(f"| {model_name} | {dense} | {target} | " + " | ".join(row) + " |")
    batch = TrainConfig(algorithm="sgd", epochs=args.short_epochs).resolved(len(digits(seed=0).y_train)).batch
    short = {m: results[("short", m, None if m == "sgd" else SHORT_TARGET)] for m in ("sgd", "rvsm", "gmp")}
    lines += [
        "",
        f"A short job: lenet5 on digits for {args.short_epochs} epochs at the defaults (batch size {batch}, the "
        f"largest giving at least {MIN_STEPS} steps), target {SHORT_TARGET}; the same seeds. Dense SGD has the same "
        "steps.",
        "",
        "| dense SGD | RVSM ℓ0 target | GMP, torch.nn.utils.prune | RVSM − dense |",
        "|---|---|---|---|",
        f"| {cell(short['sgd'])} | {cell(short['rvsm'])} | {cell(short['gmp'])} | {gap(short['rvsm'], short['sgd'])} |",
    ]
    if args.lambdas:
        lines += lambda_table(args, results)
    return "\n".join(lines)


def lambda_table(args: argparse.Namespace, results: dict) -> list[str]:
    """Lambda mode at its defaults (l0, beta 0.1, thresholds in units of each layer's RMS, the min_keep floor):
    accuracy and the sparsity it reaches, per lam."""
    head = " | ".join(args.models)
    lines = [
        "",
        f"Lambda mode (`lam`, no target) at its defaults, {args.epochs} epochs: validation accuracy, mean "
        "(range), and the sparsity reached (mean).",
        "",
        f"| lam | {head} |",
        "|---|" + "---|" * len(args.models),
    ]
    for lam in args.lambdas:
        cells = []
        for m in args.models:
            runs = results[(m, "lambda", lam)]
            cells.append(f"{cell(runs)}; sparsity {statistics.mean(r['sparsity'] for r in runs):.3f}")
        lines.append(f"| {lam} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.9, 0.95, 0.98])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--models", nargs="+", default=["lenet5", "custom CNN", "custom MLP"])
    ap.add_argument(
        "--lambdas",
        type=float,
        nargs="*",
        default=[0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2],
        help="lambda mode's lam values (none: skip the table)",
    )
    ap.add_argument("--short-epochs", type=int, default=5, help="the short lenet5 job's epochs")
    ap.add_argument("--workers", type=int, default=1, help="processes, one seed each at a time (one torch thread)")
    ap.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="JSON objects of RVSM fields: compare each with GMP "
        "only (how the defaults were chosen; written into the 'sparsity-variants' block)",
    )
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    t0 = time.perf_counter()
    jobs = [(seed, args) for seed in args.seeds]
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            parts = pool.map(seed_runs, jobs)
    else:
        parts = [seed_runs(job) for job in jobs]
    results: dict = {}
    for part in parts:  # in seed order, whatever the workers' order
        for key, r in part.items():
            results.setdefault(key, []).append(r)
    torch.set_num_threads(1)  # what machine() reports: each run's threads
    if args.variants:
        body = variant_table(args, results, time.perf_counter() - t0)
    else:
        body = table(args, results, time.perf_counter() - t0)
    print(body)
    if not args.no_doc:
        write_block(DOC, "sparsity-variants" if args.variants else "sparsity-targets", body)


if __name__ == "__main__":
    main()
