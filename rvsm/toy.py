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

Validation never builds a vector: :func:`validate_spec` checks the caps of a :class:`ToyLimits` on the
raw spec first (``d``, ``k``, ``samples``, ``max_iters``, the sweep's size and the elements its batch
would hold), then every configuration's rules, so a service can reject ``d = 10**8`` at once.
Results are strict JSON: undefined or non-finite numbers are ``null``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import problems
from .algorithms import (
    ALGORITHMS,
    DTYPES,
    GRADIENTS,
    TRACE_POINTS_PER_RUN,
    ToyConfig,
    ToyRun,
    gc_paused,
    number_rule,
    run_toy,
)
from .bounds import batch_numbers, bound_checks, hypotheses, trace_matrix
from .errors import InputError
from .prox import PENALTIES

TOP_FIELDS = {
    "kind",
    "network",
    "k",
    "d",
    "teacher",
    "init",
    "algorithm",
    "normalize",
    "penalty",
    "a",
    "lam",
    "beta",
    "eta",
    "max_iters",
    "tol",
    "gradient",
    "samples",
    "batch_size",
    "data_seed",
    "s",
    "log_every",
    "dtype",
    "time_budget_s",
    "sweep",
}
TEACHER_FIELDS = {"seed", "w_star", "sparsity", "values"}
INIT_FIELDS = {"seed", "w0"}
REQUIRED = ("k", "d", "lam", "beta", "eta")
NOT_SWEPT = {"sweep", "kind", "time_budget_s"}  # job-level options: one value for the whole job
SEED_MAX = 2**64 - 1  # torch generators take 64-bit seeds


class SpecError(InputError):
    """A bad toy spec: ``field`` is the dotted name of the offending field (``sweep.lam``, ...)."""


@dataclass(frozen=True, kw_only=True)
class ToyLimits:
    """Caps on everything that scales a toy job's cost; ``None`` is no cap. Checked on the raw spec,
    before anything is allocated (the service passes its settings; the CLI runs uncapped).

    - ``max_iters``, ``d``, ``k``, ``samples`` (also caps ``batch_size``): each value, swept or not;
    - ``sweep``: how many configurations the sweep's grid has;
    - ``elements``: configurations x largest ``d`` (the ``(B, d)`` tensors of the batch; given
      ``w_star`` / ``w0`` lists count with their length);
    - ``sample_elements``: the sum over empirical configurations of ``(samples or batch_size) k d``
      (the Gaussian inputs they hold).
    """

    max_iters: int | None = None
    sweep: int | None = None
    d: int | None = None
    k: int | None = None
    samples: int | None = None
    elements: int | None = None
    sample_elements: int | None = None


@dataclass(frozen=True)
class CheckedSpec:
    """What :func:`validate_spec` found: how many configurations, the largest ``max_iters``."""

    configs: int
    max_iters: int


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(
    spec: dict,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    default: Any = None,
    path: str = "",
) -> Any:
    v = _given(spec, name, default, path)
    where = path + name
    if v is None:
        return None
    if not _is_int(v):
        raise SpecError(where, f"must be an integer, got {_show(v)}")
    if minimum is not None and v < minimum:
        raise SpecError(where, f"must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise SpecError(where, f"must be <= {maximum}, got {v}")
    return v


def _given(spec: dict, name: str, default: Any, path: str = "") -> Any:
    """``spec[name]``, or ``default`` when absent; ``null`` is absent only for an optional field (no default)."""
    v = spec.get(name)
    if v is None:
        if name in spec and default is not None:
            raise SpecError(path + name, f"must not be null (leave it out for the default, {default!r})")
        return default
    return v


def _show(v: object) -> str:
    """A short ``repr`` for messages (a hostile spec may send a megabyte of nesting)."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _as_float(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(where, f"must be a number, got {_show(v)}")
    try:
        return float(v)
    except OverflowError:  # an integer beyond float range
        raise SpecError(where, f"must be a finite number, got an integer of {len(str(v))} digits") from None


def _float(spec: dict, name: str, *, rule: str, default: Any = None) -> Any:
    v = _given(spec, name, default)
    if v is None:
        return None
    v = _as_float(v, name)
    ok = {">= 0": v >= 0, "> 0": v > 0}[rule]
    if not (ok and math.isfinite(v)):
        raise SpecError(name, f"must be finite and {rule}, got {v}")
    return v


def _choice(spec: dict, name: str, allowed: tuple, default: str) -> str:
    v = spec.get(name, default)
    if not isinstance(v, str) or v not in allowed:
        raise SpecError(name, f"must be one of {list(allowed)}, got {_show(v)}")
    return v


def _vector(obj: dict, name: str, d: int, path: str) -> list[float]:
    v = obj[name]
    where = f"{path}.{name}"
    if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
        raise SpecError(where, "must be a list of numbers")
    if len(v) != d:
        raise SpecError(where, f"must have d={d} entries, got {len(v)}")
    try:
        out = [float(x) for x in v]
    except OverflowError:
        raise SpecError(where, "must contain only finite numbers (an integer is beyond float range)") from None
    if not all(math.isfinite(x) for x in out):
        raise SpecError(where, "must contain only finite numbers (no NaN or Inf)")
    return out


# --------------------------------------------------------------------------- caps (no allocation)
def _sweep_lists(spec: dict) -> dict[str, list]:
    sweep = spec.get("sweep")
    return sweep if isinstance(sweep, dict) else {}


def _values(spec: dict, name: str) -> list:
    """Every value ``name`` takes: the swept list, else the base value (``[]`` when unset)."""
    sweep = _sweep_lists(spec)
    if name in sweep and isinstance(sweep[name], list):
        return sweep[name]
    return [spec[name]] if name in spec else []


def _where(spec: dict, name: str) -> str:
    return f"sweep.{name}" if name in _sweep_lists(spec) else name


def _vector_lengths(spec: dict) -> Iterator[tuple[str, int]]:
    """``(field, length)`` of every ``w_star`` / ``w0`` list in the spec or its sweep, without copying."""
    sweep = _sweep_lists(spec)
    for head, tail in (("teacher", "w_star"), ("init", "w0")):
        swept = sweep.get(head)
        objs = swept if isinstance(swept, list) else [spec.get(head)]
        where = f"sweep.{head}" if head in sweep else head
        for obj in objs:
            if isinstance(obj, dict) and isinstance(obj.get(tail), list):
                yield f"{where}.{tail}", len(obj[tail])
        vals = sweep.get(f"{head}.{tail}")
        if isinstance(vals, list):
            for v in vals:
                if isinstance(v, list):
                    yield f"sweep.{head}.{tail}", len(v)


def check_sweep(spec: dict, *, max_configs: int | None = None) -> int:
    """The sweep's shape (sweepable names, non-empty lists, no ``null`` entries) and size; returns how
    many configurations it expands to, without expanding it."""
    if not isinstance(spec, dict):
        raise SpecError("spec", f"must be a JSON object, got {type(spec).__name__}")
    sweep = spec.get("sweep")
    if sweep is None:
        return 1
    if not isinstance(sweep, dict) or not sweep:
        raise SpecError("sweep", "must be a non-empty object {field: [values]}")
    for name, vals in sweep.items():
        head, _, tail = name.partition(".")
        allowed = {"teacher": TEACHER_FIELDS, "init": INIT_FIELDS}.get(head)
        if head not in TOP_FIELDS - NOT_SWEPT or (tail and (allowed is None or tail not in allowed)):
            raise SpecError(f"sweep.{name}", "is not a spec field that can be swept")
        if not isinstance(vals, list) or not vals:
            raise SpecError(f"sweep.{name}", "must be a non-empty list of values")
        for i, v in enumerate(vals):
            if v is None:
                raise SpecError(f"sweep.{name}", f"entry {i} is null; every swept value must be given")
    n = math.prod(len(v) for v in sweep.values())
    if max_configs is not None and n > max_configs:
        raise SpecError("sweep", f"expands to {n} configurations; at most {max_configs} are allowed")
    return n


def check_limits(spec: dict, limits: ToyLimits) -> None:
    """Every cap of ``limits`` on the raw ``spec`` (and its sweep), before anything is built.

    Values of the wrong type are left to the per-configuration rules; only what they would cost is
    checked here. Each error names the field, the value and the cap.
    """
    n = check_sweep(spec, max_configs=limits.sweep)
    for name, cap in (
        ("max_iters", limits.max_iters),
        ("d", limits.d),
        ("k", limits.k),
        ("samples", limits.samples),
        ("batch_size", limits.samples),
    ):
        if cap is None:
            continue
        for v in _values(spec, name):
            if _is_int(v) and v > cap:
                raise SpecError(_where(spec, name), f"must be <= {cap} (the cap on {name}), got {v}")
    ds = [v for v in _values(spec, "d") if _is_int(v)]
    lengths = list(_vector_lengths(spec))
    if limits.d is not None:
        for where, length in lengths:
            if length > limits.d:
                raise SpecError(where, f"has {length} entries; at most {limits.d} (the cap on d) are allowed")
    widest = max(ds + [length for _, length in lengths], default=0)
    if limits.elements is not None and n * widest > limits.elements:
        raise SpecError(
            "sweep" if n > 1 else _where(spec, "d"),
            f"{n} configuration(s) x d={widest} is {n * widest} vector elements; at most {limits.elements} "
            "(the cap on configurations x d) are allowed",
        )
    if limits.sample_elements is not None:
        total = _sample_elements(spec, n)
        if total > limits.sample_elements:
            raise SpecError(
                "samples" if n == 1 else "sweep",
                f"the empirical gradient's inputs, (samples or batch_size) x k x d summed over configurations, "
                f"are {total} numbers; at most {limits.sample_elements} are allowed",
            )


def _sample_elements(spec: dict, n: int) -> int:
    """Sum over empirical configurations of ``(samples or batch_size) k d`` (the sweep's grid over only
    the fields involved, each combination weighted by how often it occurs)."""
    names = ("gradient", "samples", "batch_size", "k", "d")
    sweep = _sweep_lists(spec)
    swept = [x for x in names if x in sweep]
    grid = [sweep[x] for x in swept]
    weight = n // max(math.prod(len(g) for g in grid), 1)
    total = 0
    for combo in itertools.product(*grid):
        vals = {x: spec.get(x) for x in names} | dict(zip(swept, combo, strict=True))
        if vals["gradient"] != "empirical":
            continue
        m: Any = vals["samples"] if _is_int(vals["samples"]) else vals["batch_size"]
        k, d = vals["k"], vals["d"]
        if _is_int(m) and _is_int(k) and _is_int(d) and min(m, k, d) > 0:
            total += m * k * d * weight
    return total


# --------------------------------------------------------------------------- one configuration
def _resolve(spec: dict) -> dict:
    """Validate one (sweep-free) spec into :class:`ToyConfig` keywords, with the teacher and the start
    as descriptions (``("w_star", list)`` / ``("seed", seed, sparsity, values)``; ``("w0", list)`` /
    ``("seed", seed)``), not vectors: checking builds nothing of size ``d``."""
    if not isinstance(spec, dict):
        raise SpecError("spec", f"must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - TOP_FIELDS)
    if unknown:
        raise SpecError(unknown[0] or "spec", f"unknown field {_show(unknown[0])} (allowed: {sorted(TOP_FIELDS)})")
    if spec.get("kind", "toy") != "toy":
        raise SpecError("kind", f"must be 'toy', got {_show(spec.get('kind'))}")
    for name in REQUIRED:
        if spec.get(name) is None:
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
        raise SpecError("normalize", f"must be true or false, got {_show(normalize)}")

    teacher = _given(spec, "teacher", None)
    teacher = {"seed": 0} if teacher is None else teacher
    if not isinstance(teacher, dict):
        raise SpecError("teacher", "must be an object: {seed} | {w_star} | {seed, sparsity, values}")
    teacher = {k: v for k, v in teacher.items() if v is not None}  # null: not given (as the API reads it)
    bad = sorted(set(teacher) - TEACHER_FIELDS)
    if bad:
        raise SpecError(f"teacher.{bad[0]}", f"unknown field {_show(bad[0])} (allowed: {sorted(TEACHER_FIELDS)})")
    sparsity = _int(teacher, "sparsity", minimum=1, path="teacher.")
    if sparsity is not None and sparsity > d:
        raise SpecError("teacher.sparsity", f"must be <= d={d}, got {sparsity}")
    values = teacher.get("values", "equal")
    if values not in ("equal", "gaussian"):
        raise SpecError("teacher.values", f"must be 'equal' or 'gaussian', got {_show(values)}")
    if "w_star" in teacher:
        if set(teacher) - {"w_star"}:
            raise SpecError("teacher", "give either w_star or seed/sparsity/values, not both")
        ws = _vector(teacher, "w_star", d, "teacher")
        if all(x == 0 for x in ws):
            raise SpecError("teacher.w_star", "must not be all zeros (it is normalised to unit length)")
        teacher_desc: tuple = ("w_star", ws)
        nonzero = sum(x != 0 for x in ws)
    else:
        seed = _int(teacher, "seed", default=0, minimum=0, maximum=SEED_MAX, path="teacher.")
        teacher_desc = ("seed", seed, sparsity, values)
        nonzero = sparsity if sparsity is not None else d  # a Gaussian draw has no exact zeros

    init = _given(spec, "init", None)
    init = {"seed": 1} if init is None else init
    if not isinstance(init, dict):
        raise SpecError("init", "must be an object: {seed} | {w0}")
    init = {k: v for k, v in init.items() if v is not None}
    bad = sorted(set(init) - INIT_FIELDS)
    if bad:
        raise SpecError(f"init.{bad[0]}", f"unknown field {_show(bad[0])} (allowed: {sorted(INIT_FIELDS)})")
    if "w0" in init:
        if "seed" in init:
            raise SpecError("init", "give either w0 or seed, not both")
        w0 = _vector(init, "w0", d, "init")
        init_desc: tuple = ("w0", w0)
        w0_norm = math.hypot(*w0)
    else:
        init_desc = ("seed", _int(init, "seed", default=1, minimum=0, maximum=SEED_MAX, path="init."))
        w0_norm = 1.0

    s = _int(spec, "s", minimum=1)
    if s is None and algorithm in ("aht", "admm"):
        s = nonzero
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
    out = dict(
        network=network,
        k=k,
        d=d,
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
        data_seed=_int(spec, "data_seed", minimum=0, maximum=SEED_MAX, default=0),
        s=s,
        log_every=_int(spec, "log_every", minimum=1, default=10),
        dtype=dtype,
    )
    bad_number = number_rule(
        dtype=dtype, k=k, lam=out["lam"], beta=out["beta"], eta=out["eta"], a=out["a"], w0_norm=w0_norm
    )
    if bad_number is not None:
        field, rule = bad_number
        raise SpecError("init.w0" if field == "w0" else field, rule)
    _time_budget(spec)
    return out | {"teacher": teacher_desc, "init": init_desc}


def _time_budget(spec: dict) -> float | None:
    budget = spec.get("time_budget_s")
    if budget is None:
        return None
    v = _as_float(budget, "time_budget_s")
    if not (v > 0 and math.isfinite(v)):
        raise SpecError("time_budget_s", f"must be a finite number > 0, got {_show(budget)}")
    return v


def _build(resolved: dict, seeded: dict | None = None) -> ToyConfig:
    """The vectors of a resolved configuration, and the :class:`ToyConfig`. ``seeded``: vectors drawn from a
    seed so far, by description, to share rather than draw again (a sweep's rows often share a teacher)."""
    kw = dict(resolved)
    teacher, init, d = kw.pop("teacher"), kw.pop("init"), kw["d"]
    seeded = {} if seeded is None else seeded
    if teacher[0] == "w_star":
        w_star = problems.make_teacher(d, w_star=teacher[1])
    else:
        key = (d, *teacher)
        if key not in seeded:
            seeded[key] = problems.make_teacher(d, seed=teacher[1], sparsity=teacher[2], values=teacher[3])
        w_star = seeded[key]
    if init[0] == "w0":
        w0 = problems.make_init(d, w0=init[1])
    else:
        key = (d, *init)
        if key not in seeded:
            seeded[key] = problems.make_init(d, seed=init[1])
        w0 = seeded[key]
    return ToyConfig(w_star=w_star, w0=w0, **kw)


def config_from_spec(spec: dict) -> ToyConfig:
    """Validate one (sweep-free) spec and resolve it into a :class:`ToyConfig`."""
    return _build(_resolve(spec))


def expand_sweep(spec: dict) -> list[tuple[dict, dict]]:
    """``[(overrides, spec)]``: the grid product of ``spec["sweep"]`` (one entry when there is none).

    A sweep field is a top-level name (``"d"``, ``"penalty"``) or a dotted one (``"teacher.seed"``).
    The configurations share the base spec's values (lists are not copied).
    """
    check_sweep(spec)
    sweep = spec.get("sweep")
    base = {k: v for k, v in spec.items() if k != "sweep"}
    if sweep is None:
        return [({}, base)]
    names = list(sweep)
    out = []
    for combo in itertools.product(*(sweep[n] for n in names)):
        s = dict(base)
        overrides = dict(zip(names, combo, strict=True))
        for name, value in overrides.items():
            head, _, tail = name.partition(".")
            if tail:
                sub = dict(s[head]) if isinstance(s.get(head), dict) else {}
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


def _resolved(spec: dict, limits: ToyLimits | None) -> list[tuple[dict, dict]]:
    if limits is not None:
        check_limits(spec, limits)
    out = []
    for overrides, s in expand_sweep(spec):
        try:
            out.append((overrides, _resolve(s)))
        except SpecError as e:
            if overrides:
                raise SpecError(e.field, f"{e.rule} (in the sweep configuration {_show(overrides)})") from None
            raise
    return out


def validate_spec(spec: dict, *, limits: ToyLimits | None = None) -> CheckedSpec:
    """Every rule and cap of ``spec`` (each sweep configuration's too), building no vectors: the caps
    first, on the raw spec, then each configuration. Raises :class:`SpecError` naming the field."""
    resolved = _resolved(spec, limits)
    return CheckedSpec(configs=len(resolved), max_iters=max(r["max_iters"] for _, r in resolved))


def configs_from_spec(spec: dict, *, limits: ToyLimits | None = None) -> list[tuple[dict, ToyConfig]]:
    """Every configuration of ``spec`` (its sweep's grid, or the one), validated: ``[(overrides, config)]``."""
    seeded: dict = {}
    with gc_paused():  # a large sweep's 10,000 configurations: no cycles among them (gc_paused)
        return [(overrides, _build(r, seeded)) for overrides, r in _resolved(spec, limits)]


def _vec(t: torch.Tensor) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in t.double().tolist()]  # a diverged run's vectors hold NaN


def _none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


VECTORS = ("w", "u", "w_star", "w0")
TRACE_FIELDS = ("lagrangian", "theta_w", "theta_u", "f_w", "f_u", "nnz_u", "step")


def run_result(run: ToyRun, *, vectors: bool = True, nums: dict | None = None) -> dict:
    """One run as the SPEC §8 result object (strict JSON: undefined or non-finite numbers are ``None``).

    ``trace_info`` says how the trace was logged: ``log_every`` is the interval used, raised above the
    requested one when ``max_iters / log_every`` would exceed ``max_points``. ``vectors=False`` leaves out
    the trace and ``final``'s four vectors (a sweep keeps them in columns, :func:`sweep_columns`) and
    puts ``d`` in ``final`` instead. ``nums``: the run's :func:`rvsm.bounds.batch_numbers` (computed for this
    run alone when not given; :func:`run_results` computes them for a whole batch at once).
    """
    c = run.config
    f = run.final
    nums = nums if nums is not None else batch_numbers([run])[0]
    gamma = nums["gamma"]
    hyp = hypotheses(run, nums)
    raised = run.trace_log_every > c.log_every
    vecs = {"w": _vec(run.w), "u": _vec(run.u), "w_star": _vec(c.w_star), "w0": _vec(c.w0)} if vectors else {"d": c.d}
    final = vecs | {
        "theta_w": _none(f["theta_w"]),
        "theta_u": _none(f["theta_u"]),
        "f_w": _none(f["f_w"]),
        "f_u": _none(f["f_u"]),
        "f_u_normalized": _none(f["f_u_normalized"]),
        "nnz_u": int(f["nnz_u"]),
        "gamma": _none(gamma),
        "lagrangian": _none(f["lagrangian"]),
        "iters": run.iters,
        "converged": run.converged,
        "diverged": run.diverged,
        "diverged_at": run.diverged_at,
        "stopped_by": run.stopped_by,
        "step": _none(f["step"]),
        "wall_time_s": run.wall_time_s,
    }
    result = {
        "final": final,
        **({"trace": run.trace} if vectors else {}),
        "trace_info": {
            "log_every": run.trace_log_every,
            "requested_log_every": c.log_every,
            "max_points": run.max_trace_points,
            "log_every_raised": raised,
            "note": (
                f"log_every was raised from {c.log_every} to {run.trace_log_every} so that the trace keeps at most "
                f"{run.max_trace_points} points"
                if raised
                else None
            ),
        },
        "hypotheses": json_safe(hyp),  # the raw numbers (NaN, inf) stay for bound_checks
        "bounds": bound_checks(run, hyp, nums),  # strict already, as are final and the trace
    }
    return result


def run_results(
    expanded: list[tuple[dict, ToyConfig]], runs: list[ToyRun], *, vectors: bool, traces: dict | None = None
) -> list[dict]:
    """Each run's result (with its sweep ``config``), the checks' tensor work done once for the batch."""
    nums = batch_numbers(runs, traces)
    pairs = zip(expanded, runs, nums, strict=True)
    with gc_paused():  # config o: validated values, finite
        return [{"config": o} | run_result(r, vectors=vectors, nums=n) for (o, _), r, n in pairs]


def sweep_columns(runs: list[ToyRun]) -> dict[str, torch.Tensor]:
    """A sweep's per-run vectors and traces as columns, row ``i`` for ``runs[i]`` (contiguous CPU tensors, so
    they save as safetensors): ``d`` (int64); ``w``, ``u``, ``w_star``, ``w0`` (float64, ``(runs, largest d)``,
    NaN past a run's ``d``); ``trace.length`` (int64, points each run logged), ``trace.iter`` (int64,
    ``(runs, most points)``, -1 past the end) and ``trace.<name>`` for :data:`TRACE_FIELDS` (float64, NaN
    past the end and where the JSON trace has ``null``)."""
    n, width = len(runs), max(r.config.d for r in runs)
    cols: dict[str, torch.Tensor] = {"d": torch.tensor([r.config.d for r in runs], dtype=torch.long)}
    for name in VECTORS:
        out = torch.full((n, width), math.nan, dtype=torch.float64)
        for d in cols["d"].unique().tolist():  # one stack per width, not a copy per run
            idx = (cols["d"] == d).nonzero().flatten().tolist()
            out[idx, :d] = torch.stack([_vector_of(runs[i], name) for i in idx]).double()
        cols[name] = out
    cols["trace.length"] = torch.tensor([len(r.trace["iter"]) for r in runs], dtype=torch.long)
    for name in ("iter", *TRACE_FIELDS):
        cols[f"trace.{name}"] = trace_matrix(runs, name)
    return {k: v.contiguous() for k, v in cols.items()}


def _vector_of(run: ToyRun, name: str) -> torch.Tensor:
    return {"w": run.w, "u": run.u}[name] if name in ("w", "u") else getattr(run.config, name)


def merge_columns(result: dict, columns: dict[str, Any]) -> dict:
    """The full SPEC §8 sweep result (every run's trace and vectors) from a columnar result and its columns
    (tensors or numpy arrays, as :func:`sweep_columns` made them): what :func:`run_spec` returns. Runs that
    are whole already (a small sweep's) are taken as they are."""
    runs = []
    for i, r in enumerate(result["runs"]):
        if "trace" in r:  # a small sweep's runs are whole already
            runs.append(r)
            continue
        final = dict(r["final"])
        d = final.pop("d")
        vecs = {name: [_none(float(x)) for x in columns[name][i][:d].tolist()] for name in VECTORS}
        length = int(columns["trace.length"][i])
        trace: dict[str, list] = {"iter": [int(x) for x in columns["trace.iter"][i][:length].tolist()]}
        for name in TRACE_FIELDS:
            vals = columns[f"trace.{name}"][i][:length].tolist()
            trace[name] = [int(x) for x in vals] if name == "nnz_u" else [_none(float(x)) for x in vals]
        runs.append(
            {"config": r["config"], "final": vecs | final, "trace": trace}
            | {k: v for k, v in r.items() if k not in ("config", "final")}
        )
    return {"runs": runs}


def run_spec(
    spec: dict,
    *,
    device: str | torch.device | None = None,
    callback: Callable[[dict], None] | None = None,
    limits: ToyLimits | None = None,
) -> dict:
    """Validate ``spec`` (with the caps of ``limits``, if any), run it (a sweep as one batched
    computation) and return the result JSON: it serialises with ``json.dumps(allow_nan=False)``."""
    expanded, runs = _run(spec, device=device, callback=callback, limits=limits)
    if "sweep" not in spec:
        return run_result(runs[0])
    return {"runs": run_results(expanded, runs, vectors=True)}


def run_batch(
    configs: list[ToyConfig],
    *,
    device: str | torch.device | None = None,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Several one-configuration specs (of separate jobs) run as one batch: result ``i`` is what
    :func:`run_spec` returns for ``configs[i]`` alone, up to rounding in the last bits (rows of a batch
    reduce in another order, as a sweep's rows do), with ``final.wall_time_s`` the batch's time.

    Unlike a sweep's runs, each run keeps the trace it would keep alone (up to
    :data:`~rvsm.algorithms.TRACE_POINTS_PER_RUN` points, not a share of a batch total), which needs the
    configurations to share ``max_iters`` (a batch's trace grid follows its longest run). A service
    worker runs small queued jobs so; each costs about what one alone does.
    """
    iters = {c.max_iters for c in configs}
    if len(iters) > 1:
        raise ValueError(f"configs must share max_iters, got {sorted(iters)}")
    runs = run_toy(configs, device=device, callback=callback, max_trace_points=TRACE_POINTS_PER_RUN)
    return [run_result(r, nums=n) for r, n in zip(runs, batch_numbers(runs), strict=True)]


INLINE_TRACE_POINTS = 50_000  # a sweep whose traces total at most this many points keeps them in its JSON too


def run_spec_columnar(
    spec: dict,
    *,
    device: str | torch.device | None = None,
    callback: Callable[[dict], None] | None = None,
    limits: ToyLimits | None = None,
    inline_points: int = INLINE_TRACE_POINTS,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """:func:`run_spec` for a service: the result, and for a sweep its traces and vectors as columns
    (:func:`sweep_columns`, row ``i`` is ``runs[i]``; a single run has none). A sweep whose traces total at
    most ``inline_points`` points keeps every run's full result in the JSON as well (what :func:`run_spec`
    returns); a larger one keeps a summary per run (``config``, ``final`` without the vectors but with
    ``d``, ``trace_info``, ``hypotheses``, ``bounds``), and :func:`merge_columns` rebuilds the full result."""
    expanded, runs = _run(spec, device=device, callback=callback, limits=limits)
    if "sweep" not in spec:
        return run_result(runs[0]), {}
    columns = sweep_columns(runs)
    traces = {name: columns[f"trace.{name}"] for name in ("iter", "lagrangian", "theta_w")}
    inline = int(columns["trace.length"].sum()) <= inline_points
    return {"runs": run_results(expanded, runs, vectors=inline, traces=traces)}, columns


def _run(
    spec: dict, *, device: str | torch.device | None, callback: Callable[[dict], None] | None, limits: ToyLimits | None
) -> tuple[list[tuple[dict, ToyConfig]], list[ToyRun]]:
    expanded = configs_from_spec(spec, limits=limits)
    configs = [c for _, c in expanded]
    return expanded, run_toy(configs, device=device, callback=callback, time_budget_s=_time_budget(spec))
