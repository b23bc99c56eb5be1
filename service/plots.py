"""The convergence plot of a toy result: L_beta and theta(w^t, w*) against the iteration.

A toy job's ``convergence.png`` is not drawn by the worker (matplotlib took most of a small job's time):
the API draws it the first time anyone lists the job's artifacts or asks for the plot
(:func:`artifacts_with_plot`), writes it atomically next to the result and records it as an artifact
like any other, with the sha256 and size of the file written. From then on it is served from the file.
Two first requests at once both draw the same picture; one row is kept.

One run, or a sweep of at most :data:`LINES_MAX` runs: a line per run, each its own colour. A larger
sweep: the median over runs and the band between the 10% and 90% quantiles, on a common grid of
iterations (a run that stopped early, converged or diverged, holds its last value; undefined points are
left out of the quantiles), so that 1,000 runs read as well as 27. Drawn with matplotlib's object API
(no ``pyplot`` state) under one lock: matplotlib's mathtext parser (the log axis's tick labels) is shared
and not thread-safe, and API threads may draw at the same time.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import Artifact, Job
from jobs.layout import COLUMNS, PLOT, job_dir, record

LINES_MAX = 10  # tab10 has ten distinct colours
GRID_POINTS = 200
BAND = (0.1, 0.5, 0.9)
_DRAWING = threading.Lock()
log = logging.getLogger("rvsm.api")


def convergence_png(result: dict, columns: dict[str, np.ndarray] | None = None) -> bytes:
    """The plot of a single-run ``result`` (its trace), or of a sweep's: from its ``columns`` (``trace.iter``,
    ``trace.lagrangian``, ``trace.theta_w``, ``trace.length`` as :func:`rvsm.toy.sweep_columns` saves them),
    or, without them, from the runs' traces in ``result`` (the form :func:`rvsm.toy.run_spec` returns)."""
    with _DRAWING:
        return _draw(result, columns)


def _draw(result: dict, columns: dict[str, np.ndarray] | None) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    if "runs" in result:
        _sweep(axes, result, columns if columns is not None else _columns_from_traces(result["runs"]))
    else:
        tr = result["trace"]
        _line(axes, np.asarray(tr["iter"], dtype=float), _floats(tr["lagrangian"]), _floats(tr["theta_w"]), None)
    axes[0].set(xlabel="iteration", ylabel="L_β(u, w)", title="Lagrangian")
    axes[1].set(xlabel="iteration", ylabel="θ(w, w*)", title="angle to the teacher")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _floats(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _columns_from_traces(runs: list[dict]) -> dict[str, np.ndarray]:
    """The trace columns of a sweep result that still holds every run's ``trace`` (:func:`rvsm.toy.run_spec`)."""
    lengths = np.asarray([len(r["trace"]["iter"]) for r in runs])
    cols = {"trace.length": lengths, "trace.iter": np.full((len(runs), lengths.max()), -1)}
    for name in ("lagrangian", "theta_w"):
        cols[f"trace.{name}"] = np.full((len(runs), lengths.max()), np.nan)
    for i, r in enumerate(runs):
        cols["trace.iter"][i, : lengths[i]] = r["trace"]["iter"]
        for name in ("lagrangian", "theta_w"):
            cols[f"trace.{name}"][i, : lengths[i]] = _floats(r["trace"][name])
    return cols


def _line(axes, it: np.ndarray, lag: np.ndarray, theta: np.ndarray, label: str | None) -> None:  # noqa: ANN001
    axes[0].plot(it, lag, label=label)
    ok = np.isfinite(theta) & (theta > 0)
    if ok.any():
        axes[1].semilogy(it[ok], theta[ok], label=label)


def _sweep(axes, result: dict, columns: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    runs = result["runs"]
    lengths = np.asarray(columns["trace.length"])
    iters, lag, theta = (np.asarray(columns[f"trace.{k}"]) for k in ("iter", "lagrangian", "theta_w"))
    if len(runs) <= LINES_MAX:
        for i, r in enumerate(runs):
            n = int(lengths[i])
            label = ", ".join(f"{k}={v}" for k, v in r.get("config", {}).items()) or None
            _line(axes, iters[i, :n].astype(float), lag[i, :n], theta[i, :n], label)
        axes[1].legend(fontsize=6)
        return
    grid = np.linspace(0.0, float(iters.max()), GRID_POINTS)
    theta = np.where(theta > 0, theta, np.nan)
    for ax, values, log in ((axes[0], lag, False), (axes[1], theta, True)):
        on_grid = np.full((len(runs), GRID_POINTS), np.nan)
        for i in range(len(runs)):
            n = int(lengths[i])
            on_grid[i] = np.interp(grid, iters[i, :n].astype(float), values[i, :n])
        with warnings.catch_warnings():  # a grid point where every run is undefined: its quantile is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, mid, hi = np.nanquantile(on_grid, BAND, axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.3, label="10–90% of runs")
        ax.plot(grid, mid, label="median")
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7, title=f"{len(runs)} runs", title_fontsize=7)


def artifacts_with_plot(session: Session, root: Path, job: Job, rows: list[Artifact]) -> list[Artifact]:
    """``rows`` (the job's artifacts), with ``convergence.png`` drawn and recorded first if the job is a
    succeeded toy job without one."""
    if job.kind != "toy" or job.state != "succeeded" or not job.result_path or any(a.name == PLOT for a in rows):
        return rows
    try:
        art = record(root, job.id, PLOT, draw_plot(root, job))
    except (OSError, ValueError) as e:  # its files are gone (deleted meanwhile) or unreadable: list what is there
        log.warning("job %s: no %s: %s: %s", job.id, PLOT, type(e).__name__, e)
        return rows
    session.add(art)
    try:
        session.commit()
    except IntegrityError:  # drawn by another request at the same time, or the job was deleted meanwhile
        session.rollback()
        drawn = session.get(Artifact, (job.id, PLOT))
        if drawn is None:
            return rows
        art = drawn
    return sorted([*rows, art], key=lambda a: a.name)


def draw_plot(root: Path, job: Job) -> bytes:
    """The plot of a finished toy job, from its ``result.json`` (and a sweep's ``runs.safetensors``)."""
    if not job.result_path:
        raise ValueError(f"job {job.id} has no result")
    result = json.loads((root / job.result_path).read_bytes())
    columns = None
    if "runs" in result and (job_dir(root, job.id) / COLUMNS).exists():  # a sweep stored before columns: traces
        from safetensors import safe_open

        with safe_open(job_dir(root, job.id) / COLUMNS, framework="np") as f:
            columns = {k: f.get_tensor(k) for k in f.keys() if k.startswith("trace.")}  # noqa: SIM118
    return convergence_png(result, columns)
