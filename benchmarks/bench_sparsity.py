"""Target sparsity on digits: RVSM (l0, adaptive threshold) against magnitude pruning and ADMM at the same
sparsity and the same epoch budget, for lenet5 and for two models a user would bring (a CNN with batch norm,
a residual add and dropout, and an MLP on flat features), exported with ``torch.export`` and loaded the way the
service loads them (:func:`rvsm.prepare.prepare`). Written into docs/benchmarks.md.

    python benchmarks/bench_sparsity.py                 # 3 seeds, targets 0.8 / 0.9 / 0.95 (about 20 min on 2 cores)
    python benchmarks/bench_sparsity.py --seeds 0 --targets 0.9 --epochs 10   # a quick look

Every run trains from scratch for ``--epochs`` epochs in all: RVSM trains them all (the target ramped after a
dense warm-up, the service's defaults); magnitude and ADMM train half and fine-tune the pruned network for the
other half; dense SGD is the reference. Runs are interleaved (each seed runs every method before the next seed),
and the table gives the mean, the range over seeds and the count of collapsed runs (accuracy no better than the
majority class), which are kept in the mean.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_block  # noqa: E402

from rvsm.prepare import prepare  # noqa: E402
from rvsm.train import TrainConfig, train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.user_models import ResidualCNN, TabularMLP, digits_npz, export  # noqa: E402  - what the tests upload

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


def one_run(model_name: str, seed: int, method: str, target: float | None, epochs: int, tmp: Path) -> dict:
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
        "magnitude": {"algorithm": "magnitude", "target_sparsity": target, "epochs": half, "finetune_epochs": half},
        "admm": {"algorithm": "admm", "target_sparsity": target, "epochs": half, "finetune_epochs": half,
                 "beta": 0.005},  # rho: 0.05 never leaves the random start on lenet5 (docs/benchmarks.md)
    }[method]  # fmt: skip
    prep = prepare(spec, checkpoint=blob, dataset_file=tmp / f"{'flat' if model_name == 'custom MLP' else 'img'}.npz")
    t0 = time.perf_counter()
    r = train(prep.model, prep.data, TrainConfig.from_spec(spec | {"params": prep.sparse_names}))
    return {"accuracy": r.score_after, "sparsity": r.sparsity["prunable"], "collapsed": r.collapsed,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def cell(runs: list[dict]) -> str:
    accs = [r["accuracy"] for r in runs]
    col = sum(r["collapsed"] for r in runs)
    text = f"{statistics.mean(accs):.4f} ({min(accs):.4f}–{max(accs):.4f})"
    return text + (f", **{col} collapsed**" if col else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--models", nargs="+", default=["lenet5", "custom CNN", "custom MLP"])
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # interleaved: every method of every model for this seed, then the next seed
            for model_name in args.models:
                results.setdefault((model_name, "sgd", None), []).append(
                    one_run(model_name, seed, "sgd", None, args.epochs, Path(tmp)))
                for target in args.targets:
                    for method in ("rvsm", "magnitude", "admm"):
                        r = one_run(model_name, seed, method, target, args.epochs, Path(tmp))
                        results.setdefault((model_name, method, target), []).append(r)
                        print(model_name, seed, method, target, f"{r['accuracy']:.4f} sp {r['sparsity']:.4f} "
                              f"{r['seconds']:.1f}s", flush=True)  # fmt: skip
    lines = [
        f"`python benchmarks/bench_sparsity.py --seeds {' '.join(map(str, args.seeds))} --targets "
        f"{' '.join(map(str, args.targets))} --epochs {args.epochs}` on {machine()}.",
        "",
        f"Validation accuracy on digits: mean over seeds {args.seeds} (range); {args.epochs} epochs in all for every "
        "method (magnitude and ADMM: half training, half fine-tuning). Sparsity is of the sparsified tensors "
        "(conv / linear weights), exactly the target to within one entry per tensor.",
        "",
        "| model | dense SGD | target | RVSM ℓ0 target | magnitude + fine-tune | ADMM + fine-tune |",
        "|---|---|---|---|---|---|",
    ]
    for model_name in args.models:
        dense = cell(results[(model_name, "sgd", None)])
        for target in args.targets:
            row = [cell(results[(model_name, m, target)]) for m in ("rvsm", "magnitude", "admm")]
            lines.append(f"| {model_name} | {dense} | {target} | " + " | ".join(row) + " |")
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        write_block(DOC, "sparsity-targets", body)


if __name__ == "__main__":
    main()
