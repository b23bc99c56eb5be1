"""The toy-job contract of SPEC §8: a JSON spec in, the result JSON out (the CLI and the API share it).

Spec fields (defaults in brackets)::

    kind: "toy"; network: "relu" | "binary" ["relu"]; k >= 1; d >= 1
    teacher: {seed} | {w_star: [d floats]} | {seed, sparsity, values: "equal" | "gaussian"}
    init: {seed} | {w0: [d floats]}
    algorithm: "rvsm" | "rvscgd" | "aht" | "gd" | "admm" ["rvsm"]; normalize [true]
    penalty: "l0" | "l1" | "tl1" | "group_l1" ["l0"]; a [1.0]; lam >= 0; beta > 0; eta > 0
    max_iters [20000]; tol [0]; gradient: "population" | "empirical" ["population"]
    samples, batch_size (empirical); data_seed [0] (the samples' seed); log_every [10]
    dtype: "float64" | "float32" ["float64"]; s (target sparsity of aht/admm, default: the teacher's)
    time_budget_s (wall-clock stop); sweep: {field: [values], ...} (dotted names reach into teacher/init)

Unknown fields are rejected. Errors are :class:`SpecError` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from . import problems
from .algorithms import ALGORITHMS, DTYPES, GRADIENTS, ToyConfig, ToyRun, run_toy
from .bounds import bound_checks, hypotheses
from .prox import PENALTIES

TOP_FIELDS = {
    "kind", "network", "k", "d", "teacher", "init", "algorithm", "normalize", "penalty", "a", "lam",
    "beta", "eta", "max_iters", "tol", "gradient", "samples", "batch_size", "data_seed", "s",
    "log_every", "dtype", "time_budget_s", "sweep",
}  # fmt: skip
TEACHER_FIELDS = {"seed", "w_star", "sparsity", "values"}
INIT_FIELDS = {"seed", "w0"}
REQUIRED = ("k", "d", "lam", "beta", "eta")


class SpecError(ValueError):
    """A bad spec: ``field`` is the dotted name of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = message


def _int(spec: dict, name: str, *, minimum: int | None = None, default: Any = None, path: str = "") -> Any:
    v = spec.get(name, default)
    where = path + name
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(where, f"must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise SpecError(where, f"must be >= {minimum}, got {v}")
    return v


def _float(spec: dict, name: str, *, rule: str, default: Any = None) -> Any:
    v = spec.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(name, f"must be a number, got {v!r}")
    v = float(v)
    ok = {">= 0": v >= 0, "> 0": v > 0}[rule]
    if not (ok and math.isfinite(v)):
        raise SpecError(name, f"must be finite and {rule}, got {v}")
    return v


def _choice(spec: dict, name: str, allowed: tuple, default: str) -> str:
    v = spec.get(name, default)
    if v not in allowed:
        raise SpecError(name, f"must be one of {list(allowed)}, got {v!r}")
    return v


def _vector(obj: dict, name: str, d: int, path: str) -> list[float]:
    v = obj[name]
    where = f"{path}.{name}"
    if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
        raise SpecError(where, "must be a list of numbers")
    if len(v) != d:
        raise SpecError(where, f"must have d={d} entries, got {len(v)}")
    if not all(math.isfinite(x) for x in v):
        raise SpecError(where, "must contain only finite numbers (no NaN or Inf)")
    return [float(x) for x in v]


def config_from_spec(spec: dict) -> ToyConfig:
    """Validate one (sweep-free) spec and resolve it into a :class:`ToyConfig`."""
    if not isinstance(spec, dict):
        raise SpecError("spec", f"must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - TOP_FIELDS)
    if unknown:
        raise SpecError(unknown[0], f"unknown field (allowed: {sorted(TOP_FIELDS)})")
    if spec.get("kind", "toy") != "toy":
        raise SpecError("kind", f"must be 'toy', got {spec.get('kind')!r}")
    for name in REQUIRED:
        if name not in spec:
            raise SpecError(name, "is required")
    k = _int(spec, "k", minimum=1)
    d = _int(spec, "d", minimum=1)
    network = _choice(spec, "network", problems.NETWORKS, "relu")
    algorithm = _choice(spec, "algorithm", ALGORITHMS, "rvsm")
    penalty = _choice(spec, "penalty", PENALTIES, "l0")
    gradient = _choice(spec, "gradient", GRADIENTS, "population")
    dtype = _choice(spec, "dtype", tuple(DTYPES), "float64")
    normalize = spec.get("normalize", True)
    if not isinstance(normalize, bool):
        raise SpecError("normalize", f"must be true or false, got {normalize!r}")

    teacher = spec.get("teacher", {"seed": 0})
    if not isinstance(teacher, dict):
        raise SpecError("teacher", "must be an object: {seed} | {w_star} | {seed, sparsity, values}")
    bad = sorted(set(teacher) - TEACHER_FIELDS)
    if bad:
        raise SpecError(f"teacher.{bad[0]}", f"unknown field (allowed: {sorted(TEACHER_FIELDS)})")
    sparsity = _int(teacher, "sparsity", minimum=1, path="teacher.")
    if sparsity is not None and sparsity > d:
        raise SpecError("teacher.sparsity", f"must be <= d={d}, got {sparsity}")
    values = teacher.get("values", "equal")
    if values not in ("equal", "gaussian"):
        raise SpecError("teacher.values", f"must be 'equal' or 'gaussian', got {values!r}")
    if "w_star" in teacher:
        if set(teacher) - {"w_star"}:
            raise SpecError("teacher", "give either w_star or seed/sparsity/values, not both")
        ws = _vector(teacher, "w_star", d, "teacher")
        if all(x == 0 for x in ws):
            raise SpecError("teacher.w_star", "must not be all zeros (it is normalised to unit length)")
        w_star = problems.make_teacher(d, w_star=ws)
    else:
        seed = _int(teacher, "seed", default=0, path="teacher.")
        w_star = problems.make_teacher(d, seed=seed, sparsity=sparsity, values=values)

    init = spec.get("init", {"seed": 1})
    if not isinstance(init, dict):
        raise SpecError("init", "must be an object: {seed} | {w0}")
    bad = sorted(set(init) - INIT_FIELDS)
    if bad:
        raise SpecError(f"init.{bad[0]}", f"unknown field (allowed: {sorted(INIT_FIELDS)})")
    if "w0" in init:
        if "seed" in init:
            raise SpecError("init", "give either w0 or seed, not both")
        w0 = problems.make_init(d, w0=_vector(init, "w0", d, "init"))
    else:
        w0 = problems.make_init(d, seed=_int(init, "seed", default=1, path="init."))

    s = _int(spec, "s", minimum=1)
    if s is None and algorithm in ("aht", "admm"):
        s = int((w_star != 0).sum())
    if s is not None and s > d:
        raise SpecError("s", f"must be <= d={d}, got {s}")
    samples = _int(spec, "samples", minimum=1)
    batch_size = _int(spec, "batch_size", minimum=1)
    if gradient == "empirical" and samples is None and batch_size is None:
        raise SpecError("gradient", "'empirical' needs samples (a fixed set) or batch_size (fresh batches)")
    if samples is not None and batch_size is not None and batch_size > samples:
        raise SpecError("batch_size", f"must be <= samples={samples}, got {batch_size}")
    if algorithm == "rvscgd" and network != "binary":
        raise SpecError("algorithm", "'rvscgd' needs network 'binary' (use 'rvsm' for the ReLU network)")
    return ToyConfig(
        network=network,
        k=k,
        d=d,
        w_star=w_star,
        w0=w0,
        algorithm=algorithm,
        normalize=normalize,
        penalty=penalty,
        a=_float(spec, "a", rule="> 0", default=1.0),
        lam=_float(spec, "lam", rule=">= 0"),
        beta=_float(spec, "beta", rule="> 0"),
        eta=_float(spec, "eta", rule="> 0"),
        max_iters=_int(spec, "max_iters", minimum=1, default=20000),
        tol=_float(spec, "tol", rule=">= 0", default=0.0),
        gradient=gradient,
        samples=samples,
        batch_size=batch_size,
        data_seed=_int(spec, "data_seed", minimum=0, default=0),
        s=s,
        log_every=_int(spec, "log_every", minimum=1, default=10),
        dtype=dtype,
    )


def expand_sweep(spec: dict) -> list[tuple[dict, dict]]:
    """``[(overrides, spec)]``: the grid product of ``spec["sweep"]`` (one entry when there is none).

    A sweep field is a top-level name (``"d"``, ``"penalty"``) or a dotted one (``"teacher.seed"``).
    """
    if not isinstance(spec, dict):
        raise SpecError("spec", f"must be a JSON object, got {type(spec).__name__}")
    sweep = spec.get("sweep")
    base = {k: v for k, v in spec.items() if k != "sweep"}
    if sweep is None:
        return [({}, base)]
    if not isinstance(sweep, dict) or not sweep:
        raise SpecError("sweep", "must be a non-empty object {field: [values]}")
    for name, vals in sweep.items():
        head, _, tail = name.partition(".")
        allowed = {"teacher": TEACHER_FIELDS, "init": INIT_FIELDS}.get(head)
        if head not in TOP_FIELDS - {"sweep", "kind"} or (tail and (allowed is None or tail not in allowed)):
            raise SpecError(f"sweep.{name}", "is not a spec field that can be swept")
        if not isinstance(vals, list) or not vals:
            raise SpecError(f"sweep.{name}", "must be a non-empty list of values")
    names = list(sweep)
    out = []
    for combo in itertools.product(*(sweep[n] for n in names)):
        s = copy.deepcopy(base)
        overrides = dict(zip(names, combo, strict=True))
        for name, value in overrides.items():
            head, _, tail = name.partition(".")
            if tail:
                sub = s.get(head)
                if not isinstance(sub, dict):
                    sub = {}
                if head == "teacher" and tail in ("seed", "sparsity", "values"):
                    sub.pop("w_star", None)
                if head == "init" and tail == "seed":
                    sub.pop("w0", None)
                sub[tail] = value
                s[head] = sub
            else:
                s[name] = value
        out.append((overrides, s))
    return out


def sweep_size(spec: dict) -> int:
    """How many configurations ``spec`` expands to (without building them)."""
    sweep = spec.get("sweep") if isinstance(spec, dict) else None
    if not isinstance(sweep, dict):
        return 1
    return math.prod(len(v) if isinstance(v, list) else 1 for v in sweep.values())


def configs_from_spec(spec: dict) -> list[tuple[dict, ToyConfig]]:
    """Every configuration of ``spec`` (its sweep's grid, or the one), validated: ``[(overrides, config)]``."""
    out = []
    for overrides, s in expand_sweep(spec):
        try:
            out.append((overrides, config_from_spec(s)))
        except SpecError as e:
            if overrides:
                raise SpecError(e.field, f"{e.rule} (in the sweep configuration {overrides})") from None
            raise
    return out


def _vec(t: torch.Tensor) -> list[float]:
    return t.double().tolist()


def _none(x: float) -> float | None:
    return None if math.isnan(x) else x


def run_result(run: ToyRun) -> dict:
    """One run as the SPEC §8 result object."""
    c = run.config
    f = run.final
    gamma = problems.angle(run.w, run.u).item()
    hyp = hypotheses(run)
    return {
        "final": {
            "w": _vec(run.w),
            "u": _vec(run.u),
            "w_star": _vec(c.w_star),
            "w0": _vec(c.w0),
            "theta_w": _none(f["theta_w"]),
            "theta_u": _none(f["theta_u"]),
            "f_w": f["f_w"],
            "f_u": f["f_u"],
            "f_u_normalized": f["f_u_normalized"],
            "nnz_u": int(f["nnz_u"]),
            "gamma": _none(gamma),
            "lagrangian": f["lagrangian"],
            "iters": run.iters,
            "converged": run.converged,
            "diverged": run.diverged,
            "diverged_at": run.diverged_at,
            "stopped_by": run.stopped_by,
            "step": _none(f["step"]),
            "wall_time_s": run.wall_time_s,
        },
        "trace": run.trace,
        "hypotheses": hyp,
        "bounds": bound_checks(run, hyp),
    }


def run_spec(
    spec: dict,
    *,
    device: str | torch.device | None = None,
    callback: Callable[[dict], None] | None = None,
) -> dict:
    """Validate ``spec``, run it (a sweep as one batched computation) and return the result JSON."""
    expanded = configs_from_spec(spec)
    configs = [c for _, c in expanded]
    budget = spec.get("time_budget_s")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0):
        raise SpecError("time_budget_s", f"must be a number > 0, got {budget!r}")
    runs = run_toy(configs, device=device, callback=callback, time_budget_s=budget)
    if "sweep" not in spec:
        return run_result(runs[0])
    return {"runs": [{"config": o} | run_result(r) for (o, _), r in zip(expanded, runs, strict=True)]}
