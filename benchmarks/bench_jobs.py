"""Per-job overhead and sweep assembly through the real service: API, Redis, a Celery worker, SQLite.

    python benchmarks/bench_jobs.py --doc docs/benchmarks.md     # about 5 minutes on 2 busy cores

Three measurements, each through one real ``python -m worker`` process (solo pool, as deployed) on a
unique queue of the Redis at ``--redis`` (only that queue's key is deleted afterwards) and a SQLite store
in a temporary directory; jobs are submitted through the real ASGI app in this process:

1. ``--jobs`` trivial toy jobs (k=2, d=10, 100 iterations, teachers 0..n-1) against the same
   configurations as one sweep job, two ways, alternated (jobs, sweep, ... ``--repeats`` times; each
   ratio within a repeat, printed as median and range):

   - *a backlog* (the target, <= 10x): everything submitted while the worker is stopped (SIGSTOP), then let
     go on (SIGCONT), timed from its first claim to its last finish (``started_at``, ``finished_at`` in the
     store): the worker's own time, which queued small jobs share by running as one batch (``worker.batches``);
   - *one by one*: submitted one request at a time while the worker runs, timed from the first submission to
     the last job seen finished; this end-to-end figure also holds the API's time per request (the sweep
     is one request), and is printed with that time.
2. The worker's resident memory (VmRSS) over ``--rss-jobs`` trivial jobs, sampled every ``--rss-every``
   finished jobs; growth is counted from the first sample (after warm-up). Target: flat.
3. A ``--big`` configuration sweep (k=2, d=20, ``--big-iters`` iterations, a grid of 100 ``lam`` by
   teacher seeds) as a job, ``--big-repeats`` times: its span in the worker (claimed to finished:
   validation, run, bounds, assembly, writes) against the solver's own time inside that span (the runs'
   ``final.wall_time_s``), so that both sides see the same load; alternated with
   :func:`rvsm.algorithms.run_toy` on the same configurations in this process, which is also printed
   (against the job from submission to finished). Target: span within 2x of the solver.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TRIVIAL = {"kind": "toy", "k": 2, "d": 10, "lam": 1e-3, "beta": 4e-3, "eta": 0.05, "max_iters": 100, "log_every": 10}
BIG = {"kind": "toy", "k": 2, "d": 20, "beta": 4e-3, "eta": 0.05, "lam": 1e-4, "log_every": 10}
FINISHED = ("succeeded", "failed", "cancelled")


class Stack:
    """A worker process, the ASGI app (in this process) and the store, on one temp dir and queue."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        from fastapi.testclient import TestClient

        from jobs.settings import Settings, get_settings
        from service.cli import worker_argv
        from service.main import create_app

        self.queue = f"bench-{uuid.uuid4().hex[:10]}"
        self.redis_url = redis_url
        db = f"sqlite:///{tmp / 'jobs.db'}"
        self.settings = Settings(
            data_dir=tmp,
            database_url=db,
            artifact_dir=tmp / "artifacts",
            broker_url=redis_url,
            toy_queue=self.queue,
            max_iters_cap=10**6,
            sweep_cap=10**6,
            toy_elements_cap=10**9,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {
            "RVSM_DATA_DIR": str(tmp),
            "RVSM_DATABASE_URL": db,
            "RVSM_ARTIFACT_DIR": str(tmp / "artifacts"),
            "RVSM_BROKER_URL": redis_url,
            "RVSM_TOY_QUEUE": self.queue,
            "PYTHONPATH": str(ROOT),
        }
        self.log = open(tmp / "worker.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            worker_argv(self.queue, "warning"),
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        app = create_app()
        app.dependency_overrides[get_settings] = lambda: self.settings
        self.client = TestClient(app)

    def submit(self, spec: dict) -> str:
        r = self.client.post("/v1/jobs", json=spec)
        if r.status_code != 202:
            raise RuntimeError(f"submit failed: {r.status_code} {r.text}")
        return r.json()["id"]

    def finished(self, ids: list[str]) -> int:
        from sqlalchemy import func, select

        from jobs.db import Job, get_sessionmaker

        with get_sessionmaker(self.settings.resolved_database_url)() as s:
            q = select(func.count()).where(Job.id.in_(ids), Job.state.in_(FINISHED))
            return int(s.scalar(q) or 0)

    def states(self, ids: list[str]) -> dict[str, int]:
        from sqlalchemy import func, select

        from jobs.db import Job, get_sessionmaker

        with get_sessionmaker(self.settings.resolved_database_url)() as s:
            rows = s.execute(select(Job.state, func.count()).where(Job.id.in_(ids)).group_by(Job.state)).all()
            return {state: int(n) for state, n in rows}

    def submit_batch(self, specs: list[dict]) -> list[str]:
        r = self.client.post("/v1/jobs:batch", json={"jobs": specs})
        if r.status_code != 202:
            raise RuntimeError(f"batch submit failed: {r.status_code} {r.text}")
        return [item["id"] for item in r.json()["items"]]

    def run(self, specs: list[dict], *, batch: bool = False, timeout: float = 3600) -> float:
        """Submit ``specs`` one by one (``batch``: in one ``POST /v1/jobs:batch``), wait until all are finished;
        seconds from the first submit to the last finish."""
        t0 = time.perf_counter()
        ids = self.last_ids = self.submit_batch(specs) if batch else [self.submit(s) for s in specs]
        self.submit_s = time.perf_counter() - t0
        self.wait(ids, timeout)
        return time.perf_counter() - t0

    def backlog(self, specs: list[dict], *, timeout: float = 3600) -> float:
        """Submit ``specs`` while the worker is stopped, then let it go on: seconds from its first claim to its
        last finish, from the store (``started_at``, ``finished_at``: the worker's clock), so that the time the
        stopped process takes to wake up counts on neither side."""
        from sqlalchemy import func, select

        from jobs.db import Job, get_sessionmaker

        os.killpg(self.proc.pid, signal.SIGSTOP)
        try:
            ids = self.last_ids = [self.submit(s) for s in specs]
        finally:
            os.killpg(self.proc.pid, signal.SIGCONT)
        self.wait(ids, timeout)
        with get_sessionmaker(self.settings.resolved_database_url)() as s:
            first, last = s.execute(
                select(func.min(Job.started_at), func.max(Job.finished_at)).where(Job.id.in_(ids))
            ).one()
            self.batches = int(s.scalar(select(func.count(func.distinct(Job.worker))).where(Job.id.in_(ids))) or 0)
        return (last - first).total_seconds()

    def wait(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.finished(ids) < len(ids):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker exited or timed out; see {self.log.name}")
            time.sleep(0.02)
        states = self.states(ids)
        if states != {"succeeded": len(ids)}:
            raise RuntimeError(f"not every job succeeded: {states}; see {self.log.name}")

    def inside(self, job_id: str) -> tuple[float, float]:
        """A finished toy job's span in the worker (claimed to finished, from the store) and the solver's time
        inside it (the sum over batch groups of ``final.wall_time_s``, which each run of a group shares)."""
        from jobs.db import Job, get_sessionmaker

        with get_sessionmaker(self.settings.resolved_database_url)() as s:
            job = s.get(Job, job_id)
            span = (job.finished_at - job.started_at).total_seconds()
            result = json.loads((self.settings.resolved_artifact_dir / job.result_path).read_bytes())
        return span, sum({r["final"]["wall_time_s"] for r in result["runs"]})

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def close(self) -> None:
        import redis

        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        redis.Redis.from_url(self.redis_url).delete(self.queue)  # our queue's key only (shared Redis)


def trivial(i: int) -> dict:
    return TRIVIAL | {"teacher": {"seed": i}}


def big_spec(n: int, iters: int) -> dict:
    lams = [1e-5 * (i + 1) for i in range(min(n, 100))]
    return BIG | {"max_iters": iters, "sweep": {"lam": lams, "teacher.seed": list(range(max(n // len(lams), 1)))}}


def med(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def fmt(xs: list[float], spec: str = ".2f", unit: str = "") -> str:
    m, lo, hi = med(xs)
    return f"{m:{spec}}{unit} ({lo:{spec}}–{hi:{spec}}{unit})"


def one_at_a_time(n: int) -> float:
    """The floor of ``n`` jobs: the solver on each configuration alone, in this process, no service."""
    from rvsm.algorithms import run_toy
    from rvsm.toy import config_from_spec

    configs = [config_from_spec({k: v for k, v in trivial(i).items() if k != "kind"}) for i in range(n)]
    t0 = time.perf_counter()
    for c in configs:
        run_toy([c])
    return time.perf_counter() - t0


def overhead(stack: Stack, n: int, repeats: int) -> dict:
    jobs, sweep, submit, queued, queued_sweep, runs, alone, batch, batch_submit = [], [], [], [], [], [], [], [], []
    specs, one = [trivial(i) for i in range(n)], TRIVIAL | {"sweep": {"teacher.seed": list(range(n))}}
    for _ in range(repeats):
        queued.append(stack.backlog(specs))
        runs.append(stack.batches)
        queued_sweep.append(stack.backlog([one]))
        jobs.append(stack.run(specs))
        submit.append(stack.submit_s)
        sweep.append(stack.run([one]))
        batch.append(stack.run(specs, batch=True))
        batch_submit.append(stack.submit_s)
        alone.append(one_at_a_time(n))
    return {
        "backlog_jobs_s": queued,
        "backlog_sweep_s": queued_sweep,
        "backlog_runs": runs,
        "backlog_ratio": [a / b for a, b in zip(queued, queued_sweep, strict=True)],
        "jobs_s": jobs,
        "sweep_s": sweep,
        "submit_s": submit,
        "solver_alone_s": alone,
        "ratio": [a / b for a, b in zip(jobs, sweep, strict=True)],
        "ratio_to_floor": [a / b for a, b in zip(jobs, alone, strict=True)],
        "batch_s": batch,
        "batch_submit_s": batch_submit,
        "batch_ratio": [a / b for a, b in zip(batch, sweep, strict=True)],
    }


def rss(stack: Stack, total: int, every: int) -> dict:
    samples = []
    for start in range(0, total, every):
        stack.run([trivial(start + i) for i in range(every)])
        samples.append((start + every, stack.rss_kib()))
    return {"samples": samples, "growth_kib": samples[-1][1] - samples[0][1]}


def solver_time(spec: dict) -> float:
    from rvsm.algorithms import run_toy
    from rvsm.toy import configs_from_spec

    configs = [c for _, c in configs_from_spec(spec)]
    t0 = time.perf_counter()
    run_toy(configs)
    return time.perf_counter() - t0


def big(stack: Stack, n: int, iters: int, repeats: int) -> dict:
    spec = big_spec(n, iters)
    solver, job, span, inner = [], [], [], []
    for _ in range(repeats):
        solver.append(solver_time(spec))
        job.append(stack.run([spec]))
        s, i = stack.inside(stack.last_ids[0])
        span.append(s)
        inner.append(i)
    size = (stack.settings.resolved_artifact_dir).glob("*/result.json")
    return {
        "configs": n,
        "iters": iters,
        "solver_s": solver,
        "job_s": job,
        "span_s": span,
        "inner_solver_s": inner,
        "ratio": [a / b for a, b in zip(job, solver, strict=True)],
        "inner_ratio": [a / b for a, b in zip(span, inner, strict=True)],
        "largest_result_json_bytes": max(p.stat().st_size for p in size),
    }


def report(args: argparse.Namespace, out: dict, wall: float) -> str:
    o, r, b = out["overhead"], out["rss"], out["big"]
    load = os.getloadavg()[0]
    series = ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in r["samples"])
    return "\n".join(
        [
            f"Command: `python benchmarks/bench_jobs.py {' '.join(args.argv)}`  ",
            f"Machine: {machine()}; 1-minute load average at the end {load:.2f}; {wall:.0f} s in all.",
            "",
            f"**Per-job overhead.** {args.jobs} trivial toy jobs (k=2, d=10, 100 iterations) through the API and one "
            f"worker, against the same {args.jobs} configurations as one sweep job. *Backlog* (the target): all "
            "submitted while the worker is stopped (SIGSTOP), then let go on, timed from its first claim to its last "
            "finish (`started_at`, `finished_at` in the store): the worker's own time. *One by one*: one request per "
            "job while the worker runs, from the first submission to the last job seen finished, which also holds "
            "the API's time per request (the sweep is one request). The floor: `run_toy` on each configuration "
            "alone in the benchmark's process, no service. "
            "*One request*: the same jobs in one `POST /v1/jobs:batch` while the worker runs, from the request to the "
            "last job seen finished. The client is the API's ASGI app in the benchmark's process, kept across "
            "requests (no sockets). "
            f"{args.repeats} alternating repeats (backlog jobs, backlog sweep, jobs, sweep, one request, floor, ...). "
            "Median (min–max).",
            "",
            "| backlog: jobs s | backlog: sweep s | **backlog: jobs / sweep** | batches the worker ran "
            "| one by one: jobs s | of it submitting s | one by one: sweep s | one by one: jobs / sweep "
            "| floor, run_toy one by one: s |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {fmt(o['backlog_jobs_s'])} | {fmt(o['backlog_sweep_s'], '.3f')} "
            f"| **{fmt(o['backlog_ratio'], '.1f', 'x')}** | {fmt(o['backlog_runs'], '.0f')} | {fmt(o['jobs_s'])} "
            f"| {fmt(o['submit_s'])} | {fmt(o['sweep_s'], '.3f')} "
            f"| {fmt(o['ratio'], '.1f', 'x')} | {fmt(o['solver_alone_s'])} |",
            "",
            f"Target jobs / sweep ≤ 10x through the worker (backlog): "
            f"**{'met' if med(o['backlog_ratio'])[0] <= 10 else 'not met'}** (median). One by one, end to end: "
            f"{med(o['ratio'])[0]:.1f}x, of which submitting took {1000 * med(o['submit_s'])[0] / args.jobs:.1f} ms "
            "a request (target ≤ 5x: "
            f"**{'met' if med(o['ratio'])[0] <= 5 else 'not met'}**).",
            "",
            "| one request: jobs s | of it the request s | **one request: jobs / sweep** |",
            "|---|---|---|",
            f"| {fmt(o['batch_s'])} | {fmt(o['batch_submit_s'], '.3f')} | **{fmt(o['batch_ratio'], '.1f', 'x')}** |",
            "",
            f"Target one request / sweep ≤ 2x: **{'met' if med(o['batch_ratio'])[0] <= 2 else 'not met'}** (median).",
            "",
            f"**Worker memory.** VmRSS of the worker process (MiB) after every {args.rss_every} of {args.rss_jobs} "
            f"more trivial jobs (the worker had already run {1 + args.repeats * (3 * args.jobs + 2)} jobs above): "
            f"{series}. "
            f"Growth from the first sample to the last: {r['growth_kib'] / 1024:+.1f} MiB.",
            "",
            f"**A {b['configs']:,}-configuration sweep.** k=2, d=20, {b['iters']} iterations, as one job, "
            f"{args.big_repeats} repeats alternating with `rvsm.algorithms.run_toy` on the same configurations in the "
            "benchmark's process. Inside each job: its span in the worker (claimed to finished, from the store: "
            "validation, run, bounds, result assembly, `result.json` + `runs.safetensors` written) against the "
            "solver's own time in that same span (`final.wall_time_s`), which a change of load on the machine hits "
            "alike. Also: the job from submission to finished, against the solver alone in another process.",
            "",
            "| job span in the worker: s | solver inside it: s | **span / solver** | submit to finished: s "
            "| solver alone: s | submit-to-finished / solver alone | largest result.json |",
            "|---|---|---|---|---|---|---|",
            f"| {fmt(b['span_s'])} | {fmt(b['inner_solver_s'])} | **{fmt(b['inner_ratio'], '.2f', 'x')}** "
            f"| {fmt(b['job_s'])} | {fmt(b['solver_s'])} | {fmt(b['ratio'], '.2f', 'x')} "
            f"| {b['largest_result_json_bytes'] / 2**20:.1f} MiB |",
            "",
            f"Target span / solver ≤ 2x: **{'met' if med(b['inner_ratio'])[0] <= 2 else 'not met'}** (median).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rss-jobs", type=int, default=1000)
    p.add_argument("--rss-every", type=int, default=100)
    p.add_argument("--big", type=int, default=10_000)
    p.add_argument("--big-iters", type=int, default=1000)
    p.add_argument("--big-repeats", type=int, default=3)
    p.add_argument("--redis", default=os.environ.get("RVSM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--doc", type=Path, help="write the block into this markdown file")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still stop the worker and delete the queue
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        stack = Stack(Path(tmp), args.redis)
        try:
            stack.run([trivial(0)], timeout=120)  # warm-up: the worker's imports and first job
            out = {"overhead": overhead(stack, args.jobs, args.repeats)}
            out["rss"] = rss(stack, args.rss_jobs, args.rss_every)
            out["big"] = big(stack, args.big, args.big_iters, args.big_repeats)
        finally:
            stack.close()
    text = report(args, out, time.perf_counter() - t0)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if args.doc:
        write_block(args.doc, "bench_jobs", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
