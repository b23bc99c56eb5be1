"""Fault drills as tests: real Redis, real worker processes, the default visibility timeout (12 h).

Recovery comes from the job store's reconciler, so these shorten only the lease and the sweep
interval (RVSM_LEASE_S=3, RVSM_REAPER_INTERVAL_S=1): a job whose worker died must move again within
lease + interval + 15 s, which it never could if it waited on Redis.
"""

from __future__ import annotations

import os
import signal
import time

from jobs.queue import enqueue
from jobs.settings import Settings
from service.supervisor import Supervisor
from tests.service_helpers import (
    LONG_TOY,
    RedisServer,
    Worker,
    holder_pid,
    make_client,
    service_env,
    unique_queue,
    wait_for,
    worker_argv,
)

LEASE_S, REAPER_S = 3.0, 1.0
RECOVERY_S = LEASE_S + REAPER_S + 15  # the acceptance bound for a job to move again after its worker died
FAST = {"RVSM_LEASE_S": str(LEASE_S), "RVSM_REAPER_INTERVAL_S": str(REAPER_S), "RVSM_DISPATCH_TIMEOUT_S": "2"}
LONG = LONG_TOY | {"max_iters": 6000}
SHORT = LONG | {"d": 10, "max_iters": 200, "log_every": 10}


def _env(tmp, queue: str, **extra: str) -> dict[str, str]:
    env = service_env(tmp, queue=queue, **FAST, **extra)
    assert "RVSM_VISIBILITY_TIMEOUT_S" not in env  # the default, 12 h: recovery must not depend on it
    return env


def _job(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def _wait_state(client, job_id: str, states: tuple[str, ...], timeout: float) -> dict:
    return wait_for(
        lambda: (j := _job(client, job_id))["state"] in states and j, timeout=timeout, what=f"job {job_id} in {states}"
    )


def _running_under(client, db: str, job_id: str, pids: set[int], timeout: float = 60) -> int:
    """Wait until the job runs (with progress) under one of ``pids``; return that pid."""

    def check():
        j = _job(client, job_id)
        pid = holder_pid(db, job_id)
        return j["state"] == "running" and j["progress"]["iteration"] > 0 and pid in pids and pid

    return wait_for(check, timeout=timeout, what=f"job {job_id} running under one of {pids}")


def _db(tmp) -> str:
    return f"sqlite:///{tmp / 'jobs.db'}"


def test_worker_sigkilled_mid_job_moves_within_lease_plus_interval(tmp_path):
    queue = unique_queue("rel-kill")
    env = _env(tmp_path, queue)
    workers = [Worker(env, queue, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        with make_client(tmp_path, queue) as client:
            job_id = client.post("/v1/jobs", json=LONG).json()["id"]
            pids = {w.proc.pid for w in workers}
            victim = _running_under(client, _db(tmp_path), job_id, pids)
            next(w for w in workers if w.proc.pid == victim).kill()
            killed = time.monotonic()
            survivor = (pids - {victim}).pop()
            _running_under(client, _db(tmp_path), job_id, {survivor}, timeout=RECOVERY_S)
            moved = time.monotonic() - killed
            done = _wait_state(client, job_id, ("succeeded", "failed"), timeout=120)
            assert done["state"] == "succeeded" and done["attempts"] == 2, done
            assert moved <= RECOVERY_S, moved
            print(f"recovered on the other worker {moved:.1f}s after SIGKILL")
    finally:
        for w in workers:
            w.stop()


def test_redelivery_during_a_live_lease_then_the_holder_dies(tmp_path):
    """The duplicate is acknowledged without running (the lease is live); the job is not stranded
    when its holder then dies, because the reconciler, not that message, watches the lease."""
    queue = unique_queue("rel-redeliver")
    env = _env(tmp_path, queue)
    workers = [Worker(env, queue, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        with make_client(tmp_path, queue) as client:
            job_id = client.post("/v1/jobs", json=LONG).json()["id"]
            pids = {w.proc.pid for w in workers}
            holder = _running_under(client, _db(tmp_path), job_id, pids)
            other = next(w for w in workers if w.proc.pid != holder)
            enqueue(Settings(broker_url=env["RVSM_BROKER_URL"]), job_id, queue)  # the redelivery
            wait_for(lambda: f"job {job_id}: not claimable" in other.output(), timeout=30, what="the duplicate skipped")
            next(w for w in workers if w.proc.pid == holder).kill()
            killed = time.monotonic()
            _running_under(client, _db(tmp_path), job_id, {other.proc.pid}, timeout=RECOVERY_S)
            assert time.monotonic() - killed <= RECOVERY_S
            done = _wait_state(client, job_id, ("succeeded", "failed"), timeout=120)
            assert done["state"] == "succeeded" and done["attempts"] == 2, done
    finally:
        for w in workers:
            w.stop()


def test_a_poison_job_fails_after_max_attempts_and_the_jobs_behind_it_run(tmp_path):
    queue = unique_queue("rel-poison")
    poison_file = tmp_path / "poison.txt"
    poison_file.write_text("")
    env = _env(tmp_path, queue, RVSM_TEST_POISON_FILE=str(poison_file))
    with make_client(tmp_path, queue) as client:
        poison = client.post("/v1/jobs", json=SHORT).json()["id"]
        poison_file.write_text(poison + "\n")
        behind = [client.post("/v1/jobs", json=SHORT | {"init": {"seed": i}}).json()["id"] for i in range(3)]
        # workers that die are started again, as a process manager (or `rvsm serve`) would
        sups = [Supervisor(worker_argv(queue), env, restart_delay_s=0.2).start() for _ in range(2)]
        try:
            done = _wait_state(client, poison, ("failed", "succeeded"), timeout=180)
            others = [_wait_state(client, j, ("succeeded", "failed"), timeout=120) for j in behind]
        finally:
            for s in sups:
                s.stop()
        assert done["state"] == "failed" and done["attempts"] == 3, done
        assert "RVSM_MAX_ATTEMPTS=3" in done["error"] and "lost 3 times" in done["error"]
        assert [o["state"] for o in others] == ["succeeded"] * 3
        assert sum(s.restarts for s in sups) >= 3  # each attempt killed its worker
        time.sleep(LEASE_S + 2 * REAPER_S)
        assert _job(client, poison)["attempts"] == 3  # and it is not tried again


def test_broker_restarted_empty_and_a_crash_before_publish_lose_no_job(tmp_path):
    redis = RedisServer()
    queue = unique_queue("rel-flush")
    env = _env(tmp_path, queue) | {"RVSM_BROKER_URL": redis.url}
    worker = None
    try:
        # the API stamps each queued row with its own dispatch deadline: the same short one as the worker's
        with make_client(tmp_path, queue, broker_url=redis.url, dispatch_timeout_s=2) as client:
            ids = [client.post("/v1/jobs", json=SHORT | {"init": {"seed": i}}).json()["id"] for i in range(4)]
            assert redis.command("LLEN", queue).startswith(b":4")
            redis.restart_empty()  # every message gone while the jobs are queued
            assert redis.command("LLEN", queue).startswith(b":0")
            # and one job whose API died between the commit and the publish: a row with no message
            from jobs import states
            from jobs.db import get_sessionmaker

            with get_sessionmaker(_db(tmp_path))() as s:
                orphan = states.new_job(
                    s, kind="toy", spec=SHORT, owner=None, queue=queue, max_iters=200, dispatch_s=2
                ).id
            worker = Worker(env, queue, tmp_path / "w.log")
            for job_id in [*ids, orphan]:
                done = _wait_state(client, job_id, ("succeeded", "failed"), timeout=120)
                assert done["state"] == "succeeded" and done["attempts"] == 1, (done, worker.output()[-2000:])
            assert "published again" in worker.output()
    finally:
        if worker is not None:
            worker.stop()
        redis.kill()


def test_a_hung_broker_gives_a_quick_503(tmp_path):
    redis = RedisServer()
    queue = unique_queue("rel-hung")
    try:
        with make_client(tmp_path, queue, broker_url=redis.url) as client:
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/jobs", json=SHORT).status_code == 202
            redis.pause()  # SIGSTOP: connections are accepted, nothing is answered
            t = time.monotonic()
            r = client.post("/v1/jobs", json=SHORT)
            took_post = time.monotonic() - t
            t = time.monotonic()
            ready = client.get("/readyz")
            took_ready = time.monotonic() - t
            redis.resume()
            assert r.status_code == 503 and "queue" in r.json()["message"]
            assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")
            assert took_post < 3 and took_ready < 3, (took_post, took_ready)
            assert client.get("/v1/jobs").json()["total"] == 1  # the refused job was not kept
            assert client.post("/v1/jobs", json=SHORT).status_code == 202  # and it works again
    finally:
        redis.kill()


def test_cancel_of_a_job_whose_worker_died_ends_it(tmp_path):
    queue = unique_queue("rel-cancel")
    env = _env(tmp_path, queue)
    workers = [Worker(env, queue, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        with make_client(tmp_path, queue) as client:
            job_id = client.post("/v1/jobs", json=LONG | {"max_iters": 200_000}).json()["id"]
            holder = _running_under(client, _db(tmp_path), job_id, {w.proc.pid for w in workers})
            next(w for w in workers if w.proc.pid == holder).kill()
            assert client.post(f"/v1/jobs/{job_id}/cancel").json()["cancel_requested"] is True
            done = _wait_state(client, job_id, ("cancelled", "succeeded", "failed"), timeout=RECOVERY_S)
            assert done["state"] == "cancelled" and done["attempts"] == 1
    finally:
        for w in workers:
            w.stop()


def test_sigterm_hands_the_running_job_back_at_once(tmp_path):
    """A worker asked to stop (SIGTERM, Ctrl-C) stops within seconds and its job runs next time."""
    queue = unique_queue("rel-term")
    env = _env(tmp_path, queue) | {"RVSM_LEASE_S": "600"}  # recovery here must not wait on a lease
    first = Worker(env, queue, tmp_path / "w1.log")
    with make_client(tmp_path, queue) as client:
        job_id = client.post("/v1/jobs", json=LONG | {"max_iters": 200_000}).json()["id"]
        _running_under(client, _db(tmp_path), job_id, {first.proc.pid})
        t = time.monotonic()
        os.killpg(first.proc.pid, signal.SIGTERM)
        first.proc.wait(timeout=15)
        assert time.monotonic() - t < 10
        first.stop()
        back = _job(client, job_id)
        assert back["state"] == "queued" and back["attempts"] == 0, back  # a hand-back costs no attempt
        second = Worker(env, queue, tmp_path / "w2.log")
        try:
            _running_under(client, _db(tmp_path), job_id, {second.proc.pid}, timeout=30)
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
            assert _wait_state(client, job_id, ("cancelled",), timeout=30)["attempts"] == 1
        finally:
            second.stop()


def test_the_api_alone_requeues_a_job_whose_worker_died(tmp_path):
    """Issue 21 E: the reconciler ran only inside workers, so while none was alive a lost job stayed `running`.
    Here no worker exists at all: a job claimed by a worker that then vanished is requeued and published again by
    the API's own sweep within a few intervals; the first worker to start then runs it."""
    import redis as redis_client

    from jobs import states
    from jobs.db import get_sessionmaker
    from tests.service_helpers import REDIS_URL

    queue = unique_queue("rel-api")
    broker = redis_client.Redis.from_url(REDIS_URL)
    try:
        with make_client(tmp_path, queue, reaper_interval_s=REAPER_S) as client:
            job_id = client.post("/v1/jobs", json=SHORT).json()["id"]
            assert broker.llen(queue) == 1
            with get_sessionmaker(_db(tmp_path))() as s:  # a worker claims it (its message taken) and dies
                broker.delete(queue)
                assert states.claim(s, job_id, "gone:1", lease_s=0.5) is not None
            back = _wait_state(client, job_id, ("queued",), timeout=LEASE_S + 5 * REAPER_S)
            assert back["attempts"] == 1 and back["progress"]["iteration"] == 0
            wait_for(lambda: broker.llen(queue) == 1, timeout=5 * REAPER_S, what="the job published again")
            worker = Worker(_env(tmp_path, queue), queue, tmp_path / "w.log")
            try:
                assert _wait_state(client, job_id, ("succeeded",), timeout=120)["attempts"] == 2
            finally:
                worker.stop()
    finally:
        broker.delete(queue)
