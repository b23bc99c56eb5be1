"""API latency under open-loop load: submit and status at fixed offered rates, SQLite and PostgreSQL.

    python benchmarks/bench_api.py --doc docs/benchmarks.md    # about 2 minutes

A real ``uvicorn service.main:app`` process per store (SQLite in a temporary directory; the PostgreSQL
at ``--postgres``, shared: only this run's jobs are touched and they are deleted at the end), publishing
to a unique queue of the Redis at ``--redis`` (its key is deleted at the end). Each store runs once per
``--workers`` count: with 0, submitted jobs stay queued and the API's own cost is what is measured; with N,
N ``rvsm worker`` processes on the same box consume the queue and run the submitted jobs while the load goes
on (busy workers: what a box that also runs its workers sees). Requests are scheduled by the clock, request
``i`` at ``i / rate`` seconds, each sent without waiting for the ones before (asyncio + httpx), for
``--duration`` seconds per rate; latency runs from the scheduled time to the response, so time a request
waits behind a backlog (in the client or the server) counts. ``achieved`` is the completed requests per
second over the time from the first scheduled send to the last response: below the offered rate, a
backlog formed. Submit: POST a trivial toy job; status: GET ``/v1/jobs/{id}`` of jobs submitted before.
Target: p99 < 50 ms at 100 req/s on both stores. The 1-minute load average is printed with each row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
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
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TRIVIAL = {"kind": "toy", "k": 2, "d": 10, "lam": 1e-3, "beta": 4e-3, "eta": 0.05, "max_iters": 100}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``uvicorn service.main:app`` on a free port, for ``database_url``, publishing to ``queue``; ``workers``
    ``rvsm worker`` processes consuming that queue."""

    def __init__(self, tmp: Path, database_url: str, redis_url: str, queue: str, workers: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {
            "RVSM_DATA_DIR": str(tmp),
            "RVSM_DATABASE_URL": database_url,
            "RVSM_ARTIFACT_DIR": str(tmp / "artifacts"),
            "RVSM_BROKER_URL": redis_url,
            "RVSM_TOY_QUEUE": queue,
            "PYTHONPATH": str(ROOT),
        }
        self.workers = [
            subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker", "--queues", queue, "--loglevel", "warning"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "service.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        self.log = open(tmp / f"uvicorn-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start; see {self.log.name}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for_workers(self, job_id: str, timeout: float = 120) -> None:
        """Until ``job_id`` (submitted before) has ended: the workers are up and consuming."""
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/v1/jobs/{job_id}", timeout=5).json()["state"] not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker ran job {job_id} in {timeout} s")
            time.sleep(0.2)

    def stop(self) -> None:
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def open_loop(url: str, rate: float, duration: float, request) -> dict:  # noqa: ANN001
    """``rate`` requests a second for ``duration`` seconds, each at its scheduled time; their latencies."""
    import httpx

    n = max(int(rate * duration), 1)
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(i: int, at: float) -> None:
            try:
                r = await request(client, i)
                if r.status_code >= 400:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(type(e).__name__)
            latencies.append(time.perf_counter() - at)

        t0 = time.perf_counter() + 0.05
        tasks = []
        for i in range(n):
            at = t0 + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, at)))
        await asyncio.gather(*tasks)
        span = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "offered": rate,
        "requests": n,
        "achieved": n / span,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * q[98],
        "max_ms": 1000 * max(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "load1": os.getloadavg()[0],
    }


def submit_request(client, i: int):  # noqa: ANN001, ANN201
    return client.post("/v1/jobs", json=TRIVIAL | {"teacher": {"seed": i}})


def status_request(ids: list[str]):  # noqa: ANN201
    rng = random.Random(0)

    def request(client, i: int):  # noqa: ANN001, ANN202
        return client.get(f"/v1/jobs/{rng.choice(ids)}")

    return request


def bench_store(name: str, database_url: str, args: argparse.Namespace, tmp: Path, workers: int) -> list[dict]:
    import httpx

    queue = f"bench-api-{uuid.uuid4().hex[:10]}"
    server = Server(tmp, database_url, args.redis, queue, workers)
    rows, ids = [], []
    try:
        with httpx.Client(base_url=server.url) as c:  # warm-up, and the jobs the status requests read
            ids = [c.post("/v1/jobs", json=TRIVIAL | {"teacher": {"seed": i}}).json()["id"] for i in range(50)]
        if workers:
            server.wait_for_workers(ids[-1])
        for endpoint in ("submit", "status"):
            for rate in args.rates:
                request = submit_request if endpoint == "submit" else status_request(ids)
                row = asyncio.run(open_loop(server.url, rate, args.duration, request))
                rows.append({"store": name, "workers": workers, "endpoint": endpoint} | row)
                print(line(rows[-1]), flush=True)
                time.sleep(args.pause)
    finally:
        server.stop()
        cleanup(database_url, args.redis, queue)
    return rows


def cleanup(database_url: str, redis_url: str, queue: str) -> None:
    """Delete this run's jobs (by their queue, which no one else uses) and its queue's key: nothing else."""
    import redis
    from sqlalchemy import delete, select

    from jobs.db import Job, MetricPoint, get_sessionmaker

    with get_sessionmaker(database_url)() as s:
        ids = select(Job.id).where(Job.queue == queue)
        s.execute(delete(MetricPoint).where(MetricPoint.job_id.in_(ids)))
        s.execute(delete(Job).where(Job.queue == queue))
        s.commit()
    redis.Redis.from_url(redis_url).delete(queue)


def line(r: dict) -> str:
    backlog = "yes" if r["achieved"] < 0.95 * r["offered"] else "no"
    cells = [
        r["store"],
        str(r["workers"]),
        r["endpoint"],
        f"{r['offered']:.0f}",
        f"{r['achieved']:.1f}",
        backlog,
        f"{r['p50_ms']:.1f}",
        f"{r['p99_ms']:.1f}",
        f"{r['max_ms']:.1f}",
        str(r["errors"]),
        f"{r['load1']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def report(args: argparse.Namespace, rows: list[dict], wall: float) -> str:
    head = [
        f"Command: `python benchmarks/bench_api.py {' '.join(args.argv)}`  ",
        f"Machine: {machine()}, {os.cpu_count()} CPUs; {wall:.0f} s in all; one uvicorn process, "
        f"{args.duration:g} s per rate. Workers: 0, jobs stay queued (the API's own cost); N, that many "
        "`rvsm worker` processes on the same box run the submitted jobs during the load (busy workers).",
        "",
        "| store | workers | endpoint | offered req/s | achieved req/s | backlog | p50 ms | p99 ms | max ms | errors "
        "| load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdict = []
    for store, n in sorted({(r["store"], r["workers"]) for r in rows}):
        at = [r for r in rows if r["store"] == store and r["workers"] == n and r["offered"] == 100]
        if at:
            ok = all(r["p99_ms"] < 50 and r["errors"] == 0 for r in at)
            worst = max(r["p99_ms"] for r in at)
            verdict.append(f"{store}, {n} workers: **{'met' if ok else 'not met'}** (worst p99 {worst:.1f} ms)")
    tail = (
        [
            "",
            "Target p99 < 50 ms at 100 req/s, submit and status (set with no worker on the box): "
            + "; ".join(verdict)
            + ".",
        ]
        if verdict
        else []
    )
    return "\n".join(head + [line(r) for r in rows] + tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=float, nargs="+", default=[20, 50, 100, 200])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between rates")
    p.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    p.add_argument("--redis", default=os.environ.get("RVSM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--postgres", default=os.environ.get("RVSM_TEST_POSTGRES_URL", POSTGRES))
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker processes per run (0: idle)")
    p.add_argument("--doc", type=Path, help="write the block into this markdown file")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        for workers in args.workers:
            for store in args.stores:
                url = f"sqlite:///{Path(tmp) / f'jobs-{workers}.db'}" if store == "sqlite" else args.postgres
                rows += bench_store(store, url, args, Path(tmp), workers)
    text = report(args, rows, time.perf_counter() - t0)
    print(text)
    if args.doc:
        write_block(args.doc, "bench_api", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
