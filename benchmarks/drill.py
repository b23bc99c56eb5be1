"""Fault drill against the distributed setup: its own Redis, the API (`rvsm serve` with a broker URL)
and N `rvsm worker` processes, kept alive by a restart loop (as a process manager would).

It submits --jobs toy jobs and one poison job (a test-only hook makes the worker that claims it
SIGKILL itself, every time), SIGKILLs a worker that is running a job --kills times, restarts Redis
once with all its data lost, waits, and prints:

    submitted / succeeded / failed / lost / stuck / run twice at the same time / recovery seconds

- lost: a submitted job the store no longer has; stuck: not finished when the drill's deadline
  passes; run twice at the same time: two workers' runs of one job that overlap in time (from the
  worker logs: each run lasts from its "running ... as" line to the end of its task, or its kill; a batch's
  task runs several jobs);
- recovery, per killed job, from the job's row (polled every 0.2 s, so each figure is good to about that):
  ``requeue_s``, from the SIGKILL to the row leaving the dead worker (the lease runs out and a reconciler, in the
  API or in a worker, requeues it): the service's recovery, which needs no live worker; ``live_worker_s``, from
  the SIGKILL to the first moment a live worker other than the killed one existed (one that had logged Celery's
  "ready." and not died), which is the process manager's and the box's doing, not the service's;
  ``rerun_s``, from the SIGKILL to the job running again or finishing, which includes waiting its turn behind
  the queue's backlog (a requeued job goes to the back).

    python benchmarks/drill.py --jobs 100 --kills 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.db import Job, get_sessionmaker  # noqa: E402

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/\w+\] (.*)$")
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
        )
        _wait(lambda: _pong(self.port), 10, "redis")

    def restart_empty(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.start()


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(8).startswith(b"+PONG")
    except OSError:
        return False


def _wait(check, timeout: float, what: str):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := check():
            return v
        time.sleep(0.1)
    raise TimeoutError(what)


class Workers:
    """N worker processes; one that exits is started again after ``delay_s`` (a restart policy)."""

    def __init__(self, n: int, env: dict[str, str], logs: Path, delay_s: float = 1.0) -> None:
        self.env, self.logs, self.delay_s = env, logs, delay_s
        self.procs: list[subprocess.Popen] = []
        self.runs: list[tuple[Path, float, float | None]] = []  # (log, started, died)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        for _ in range(n):
            self._spawn()
        threading.Thread(target=self._watch, daemon=True).start()

    def _spawn(self) -> None:
        log = self.logs / f"worker-{len(self.runs):03d}.log"
        f = open(log, "wb")  # noqa: SIM115
        p = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--queues", "cpu"],
            env=self.env,
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        p.log_index = len(self.runs)  # type: ignore[attr-defined]
        self.runs.append((log, time.time(), None))
        self.procs.append(p)

    def _watch(self) -> None:
        while not self.stop.wait(0.2):
            with self.lock:
                for p in [p for p in self.procs if p.poll() is not None]:
                    self.procs.remove(p)
                    log, started, _ = self.runs[p.log_index]
                    self.runs[p.log_index] = (log, started, time.time())
                    threading.Timer(self.delay_s, self._respawn).start()

    def _respawn(self) -> None:
        with self.lock:
            if not self.stop.is_set():
                self._spawn()

    def kill(self, pid: int) -> bool:
        with self.lock:
            if any(p.pid == pid and p.poll() is None for p in self.procs):
                os.killpg(pid, signal.SIGKILL)
                return True
        return False

    def shutdown(self) -> None:
        self.stop.set()
        with self.lock:
            for p in self.procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _ts(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_runs(workers: Workers) -> list[tuple[str, float, float]]:
    """Each run of a job by a worker process as (job, start, end)."""
    runs = []
    for log, _, died in workers.runs:
        current: dict[str, float] = {}  # the jobs of the task running now (a batch holds several), from when
        for line in log.read_text(errors="replace").splitlines():
            m = STAMP.match(line)
            if not m:
                continue
            t, msg = _ts(m.group(1)), m.group(2)
            if (r := re.match(r"job (\w+): running \(", msg)) is not None:
                current.setdefault(r.group(1), t)  # a failed batch's job run again alone: still one run
            elif msg.startswith("Task rvsm.run_job["):
                runs.extend((job, start, t) for job, start in current.items())
                current = {}
        runs.extend((job, start, died or time.time()) for job, start in current.items())  # killed while running
    return runs


def overlaps(runs: list[tuple[str, float, float]]) -> int:
    by_job: dict[str, list[tuple[float, float]]] = {}
    for job, a, b in runs:
        by_job.setdefault(job, []).append((a, b))
    n = 0
    for spans in by_job.values():
        spans.sort()
        n += sum(1 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False) if a2 < b1)
    return n


def ready_spans(workers: Workers) -> list[tuple[int, float, float]]:
    """Each worker process's (log index, ready at, died at or now): from Celery's "ready." line on."""
    spans = []
    for i, (log, _, died) in enumerate(workers.runs):
        for line in log.read_text(errors="replace").splitlines():
            m = STAMP.match(line)
            if m and m.group(2).endswith(" ready."):
                spans.append((i, _ts(m.group(1)), died or time.time()))
                break
    return spans


def first_live(spans: list[tuple[int, float, float]], after: float, killed: int | None) -> float | None:
    """The first moment at or after ``after`` when a worker other than log index ``killed`` was ready and alive."""
    starts = [max(after, ready) for i, ready, died in spans if i != killed and died > max(after, ready)]
    return min(starts, default=None)


class Recovery:
    """The row of each killed job, watched: when it left the dead worker, when it ran again (or ended)."""

    def __init__(self) -> None:
        self.kills: list[dict] = []  # per kill: job, at, holder, index (log), requeued, rerun

    def killed(self, job_id: str, at: float, holder: str, log_index: int | None) -> None:
        self.kills.append({"job": job_id, "at": at, "holder": holder, "index": log_index})

    def poll(self, sessions) -> None:  # noqa: ANN001
        pending = [k for k in self.kills if "rerun" not in k]
        if not pending:
            return
        with sessions() as s:
            found = s.query(Job.id, Job.state, Job.worker).filter(Job.id.in_({k["job"] for k in pending}))
            rows = {r.id: (r.state, r.worker) for r in found}
        now = time.time()
        for k in pending:
            state, worker = rows.get(k["job"], (None, None))
            if "requeued" not in k and (state != "running" or worker != k["holder"]):
                k["requeued"] = now
            if (state == "running" and worker != k["holder"]) or state in TERMINAL:
                k["rerun"] = now

    def report(self, spans: list[tuple[int, float, float]]) -> dict:
        live = [t - k["at"] for k in self.kills if (t := first_live(spans, k["at"], k["index"])) is not None]
        return {
            "requeue_s": _stats([k["requeued"] - k["at"] for k in self.kills if "requeued" in k]),
            "live_worker_s": _stats(live),
            "rerun_s": _stats([k["rerun"] - k["at"] for k in self.kills if "rerun" in k]),
        }


def running_pids(sessions, pids: set[int]) -> dict[int, str]:  # noqa: ANN001
    with sessions() as s:
        rows = s.query(Job.id, Job.worker).filter(Job.state == "running").all()
    out = {}
    for job_id, worker in rows:
        pid = int(worker.split(":")[1]) if worker else None
        if pid in pids:
            out[pid] = job_id
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lease", type=float, default=3.0)
    ap.add_argument("--reaper", type=float, default=1.0)
    ap.add_argument("--iters", type=int, default=20000, help="max_iters of each toy job (its length)")
    ap.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    ap.add_argument("--deadline", type=float, default=900.0, help="seconds after which an unfinished job is stuck")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="rvsm-drill-"))
    redis = Redis()
    db = f"sqlite:///{tmp / 'jobs.db'}"
    poison_file = tmp / "poison.txt"
    poison_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {
        "RVSM_DATA_DIR": str(tmp),
        "RVSM_DATABASE_URL": db,
        "RVSM_ARTIFACT_DIR": str(tmp / "artifacts"),
        "RVSM_BROKER_URL": redis.url,
        "RVSM_LEASE_S": str(args.lease),
        "RVSM_REAPER_INTERVAL_S": str(args.reaper),
        "RVSM_DISPATCH_TIMEOUT_S": "5",
        "RVSM_TEST_POISON_FILE": str(poison_file),
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    api_log = open(tmp / "api.log", "wb")  # noqa: SIM115
    api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--loglevel", "warning"],
        env=env,
        cwd=ROOT,
        stdout=api_log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=30)
    _wait(lambda: _ready(http), 90, "the API")
    sessions = get_sessionmaker(db)
    workers = Workers(args.workers, env, tmp)
    t0 = time.time()
    spec = {
        "kind": "toy",
        "k": 2,
        "d": 20,
        "lam": 1e-4,
        "beta": 4e-3,
        "eta": 0.05,
        "penalty": "l1",
        "max_iters": args.iters,
        "log_every": 50,
    }
    poison = http.post("/v1/jobs", json=spec).json()["id"]
    poison_file.write_text(poison + "\n")
    ids = [poison] + [http.post("/v1/jobs", json=spec | {"init": {"seed": i}}).json()["id"] for i in range(args.jobs)]
    print(f"submitted {len(ids)} jobs (1 poison) in {time.time() - t0:.1f}s; data in {tmp}", flush=True)

    kills: list[tuple[float, str]] = []
    recovery = Recovery()
    redis_restarted_at = None
    deadline = time.time() + args.deadline
    next_kill = time.time() + args.kill_every
    while time.time() < deadline:
        states = _states(sessions, ids)
        if all(s in TERMINAL for s in states.values()):  # done, with as many kills as the jobs lasted for
            break
        if len(kills) < args.kills and time.time() >= next_kill:
            busy = running_pids(sessions, {p.pid for p in workers.procs})
            busy.pop(None, None)
            if busy:
                pid, job_id = rng.choice(sorted(busy.items()))
                index = next((p.log_index for p in workers.procs if p.pid == pid), None)  # type: ignore[attr-defined]
                with sessions() as s:
                    holder = s.get(Job, job_id).worker
                if workers.kill(pid):
                    kills.append((time.time(), job_id))
                    recovery.killed(job_id, kills[-1][0], holder, index)
                    print(f"kill {len(kills)}: worker {pid} running {job_id[:8]}", flush=True)
                    next_kill = time.time() + args.kill_every
            if len(kills) == args.kills // 2 and redis_restarted_at is None:
                redis.restart_empty()
                redis_restarted_at = time.time()
                print("redis restarted with its data lost", flush=True)
        recovery.poll(sessions)
        time.sleep(0.2)
    wall = time.time() - t0
    workers.shutdown()
    states = _states(sessions, ids)
    corrupt = _check_artifacts(http, [i for i, s in states.items() if s == "succeeded"])
    api.send_signal(signal.SIGTERM)
    api.wait(timeout=30)
    redis.proc.kill()

    runs = parse_runs(workers)
    with sessions() as s:
        poison_row = s.get(Job, poison)
        poison_desc = f"{poison_row.state} after {poison_row.attempts} attempts: {poison_row.error}"
    count = {k: sum(1 for v in states.values() if v == k) for k in ("succeeded", "failed", "cancelled")}
    report = {
        "submitted": len(ids),
        "succeeded": count["succeeded"],
        "failed": count["failed"],
        "lost": sum(1 for v in states.values() if v is None),
        "stuck": sum(1 for v in states.values() if v is not None and v not in TERMINAL),
        "run_twice_at_the_same_time": overlaps(runs),
        "corrupt_results": corrupt,
        "kills": len(kills),
        "redis_restarted_empty": redis_restarted_at is not None,
        "worker_processes_started": len(workers.runs),
        **recovery.report(ready_spans(workers)),
        "wall_s": round(wall, 1),
        "poison": poison_desc,
    }
    print(json.dumps(report, indent=2))


def _ready(http: httpx.Client) -> bool:
    try:
        return http.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _states(sessions, ids: list[str]) -> dict[str, str | None]:  # noqa: ANN001
    with sessions() as s:
        rows = dict(s.query(Job.id, Job.state).filter(Job.id.in_(ids)).all())
    return {i: rows.get(i) for i in ids}


def _check_artifacts(http: httpx.Client, ids: list[str]) -> int:
    """Succeeded jobs whose result.json does not match its recorded sha256 or is not valid JSON."""
    bad = 0
    for job_id in ids:
        r = http.get(f"/v1/jobs/{job_id}/artifacts/result.json")
        ok = r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == r.headers.get("x-content-sha256")
        try:
            ok = ok and json.loads(r.content)["final"]["iters"] > 0
        except (ValueError, KeyError):
            ok = False
        bad += not ok
    return bad


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": round(statistics.median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2)}


if __name__ == "__main__":
    main()
