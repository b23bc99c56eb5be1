"""The job lifecycle (jobs.states) on a real SQLite store: every write is conditional, so of two
actors racing for the same transition exactly one wins."""

from __future__ import annotations

import datetime as dt

import pytest

from jobs import states
from jobs.db import Job, get_sessionmaker, utcnow
from jobs.states import JobState


@pytest.fixture
def sessions(tmp_path):
    return get_sessionmaker(f"sqlite:///{tmp_path / 'jobs.db'}")


def _new(s, dispatch_s: float = 60) -> str:
    return states.new_job(s, kind="toy", spec={}, owner=None, queue="q", max_iters=10, dispatch_s=dispatch_s).id


def _expire(s, job_id: str) -> Job:
    job = s.get(Job, job_id)
    job.lease_until = utcnow() - dt.timedelta(seconds=1)
    s.commit()
    return s.get(Job, job_id, populate_existing=True)


def test_the_table_names_every_state_and_rejects_unknown_events():
    reached = {s for _, tos, _ in states.TRANSITIONS.values() for s in tos}
    assert reached == set(JobState)
    assert states.allowed("claim", "queued", "running") and not states.allowed("claim", "running", "running")
    assert states.allowed("give_up", "running", "failed") and not states.allowed("finish", "queued", "succeeded")
    with pytest.raises(ValueError, match="unknown event"):
        states.allowed("teleport", "queued", "running")


def test_only_one_of_two_claims_wins_and_only_the_holder_writes(sessions):
    with sessions() as s:
        job_id = _new(s)
        claimed = states.claim(s, job_id, "a", 60)
        assert claimed.job.attempts == 1 and claimed.first
        assert states.claim(s, job_id, "b", 60) is None  # a live lease: the second claim misses
        assert states.renew(s, job_id, "a", 60) and not states.renew(s, job_id, "b", 60)
        kw = dict(lease_s=60, progress=0.5, iteration=5, max_iters=10, eta_s=1.0)
        assert not states.report_progress(s, job_id, "b", points=[{"i": 1}], **kw)
        assert states.report_progress(s, job_id, "a", points=[{"i": 1}, {"i": 2}], **kw)
        assert states.report_progress(s, job_id, "a", points=[{"i": 3}], **kw)
        assert s.get(Job, job_id, populate_existing=True).metrics_seq == 3
        assert not states.finish(s, job_id, "b", state="succeeded")
        assert states.finish(s, job_id, "a", state="succeeded")
        assert not states.finish(s, job_id, "a", state="failed")  # once
        assert s.get(Job, job_id, populate_existing=True).state == JobState.SUCCEEDED
        with pytest.raises(ValueError, match="state must be one of"):
            states.finish(s, job_id, "a", state="running")


def test_an_expired_lease_is_requeued_then_given_up_after_max_attempts(sessions):
    with sessions() as s:
        job_id = _new(s)
        for attempt in (1, 2, 3):
            claimed = states.claim(s, job_id, f"w{attempt}", 60)
            assert claimed.job.attempts == attempt and claimed.first == (attempt == 1)
            job = _expire(s, job_id)
            assert [j.id for j in states.expired(s)] == [job_id]
            event = states.recover(s, job, max_attempts=3, dispatch_s=5)
            assert event == ("requeue" if attempt < 3 else "give_up")
            assert states.recover(s, job, max_attempts=3, dispatch_s=5) is None  # a second reconciler: no-op
        job = s.get(Job, job_id, populate_existing=True)
        assert job.state == JobState.FAILED and "RVSM_MAX_ATTEMPTS=3" in job.error
        # the worker that lost its lease can no longer write
        assert not states.report_progress(
            s, job_id, "w3", lease_s=60, progress=1, iteration=1, max_iters=1, eta_s=None, points=[]
        )


def test_a_renewed_lease_is_not_recovered(sessions):
    with sessions() as s:
        job_id = _new(s)
        states.claim(s, job_id, "a", 60)
        stale = _expire(s, job_id)
        assert states.report_progress(
            s, job_id, "a", lease_s=60, progress=0, iteration=0, max_iters=1, eta_s=None, points=[]
        )
        assert states.recover(s, stale, max_attempts=3, dispatch_s=5) is None
        assert s.get(Job, job_id, populate_existing=True).state == JobState.RUNNING


def test_cancel_queued_at_once_running_by_its_worker_or_by_the_reconciler(sessions):
    with sessions() as s:
        queued = _new(s)
        assert states.request_cancel(s, s.get(Job, queued)).state == JobState.CANCELLED
        assert states.claim(s, queued, "a", 60) is None
        running = _new(s)
        states.claim(s, running, "a", 60)
        job = states.request_cancel(s, s.get(Job, running))
        assert job.state == JobState.RUNNING and job.cancel_requested
        assert states.finish(s, running, "a", state="succeeded")  # finished anyway: ends cancelled
        assert s.get(Job, running, populate_existing=True).state == JobState.CANCELLED
        orphan = _new(s)
        states.claim(s, orphan, "dead", 60)
        states.request_cancel(s, s.get(Job, orphan))
        assert states.recover(s, _expire(s, orphan), max_attempts=3, dispatch_s=5) == "reap"
        assert s.get(Job, orphan, populate_existing=True).state == JobState.CANCELLED


def test_release_and_redispatch(sessions):
    with sessions() as s:
        job_id = _new(s, dispatch_s=60)
        assert states.unclaimed(s) == []  # within its deadline
        states.claim(s, job_id, "a", 60)
        assert not states.release(s, job_id, "b")
        assert states.release(s, job_id, "a")
        job = s.get(Job, job_id, populate_existing=True)
        assert job.state == JobState.QUEUED and job.worker is None and job.attempts == 0  # a hand-back is no loss
        late = states.unclaimed(s)
        assert [j.id for j in late] == [job_id] and states.queued_count(s, "q") == 1
        assert states.redispatch(s, late[0], 60)
        assert not states.redispatch(s, late[0], 60)  # a second reconciler with the same view: no-op
        assert states.unclaimed(s) == []


def test_tables_created_by_two_starting_processes_at_once(tmp_path):
    """API and embedded worker start together on a new database: both check, both create; the loser looks
    again instead of dying (seen as 'table rvsm_metric_points already exists' at `rvsm serve` start)."""
    import multiprocessing as mp

    url = f"sqlite:///{tmp_path / 'race.db'}"
    ctx = mp.get_context("spawn")
    for _ in range(3):
        procs = [ctx.Process(target=_open_store, args=(url,)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        (tmp_path / "race.db").unlink()


def _open_store(url: str) -> None:
    from jobs.db import get_engine

    get_engine(url)


def test_a_job_lost_in_a_batch_is_requeued_without_the_attempt_and_never_batched_again(sessions):
    with sessions() as s:
        first, mate, alone = _new(s), _new(s), _new(s)
        assert states.claim(s, first, "w", 60).first and states.claim(s, alone, "v", 60).first
        batch = states.join_batch(s, first, "w", 60)
        assert batch == "w" + states.BATCH and states.claim_all(s, [mate], batch, 60) == [mate]
        for job_id in (first, mate, alone):  # the two workers die
            assert states.recover(s, _expire(s, job_id), max_attempts=3, dispatch_s=5) == "requeue"
        jobs = {j: s.get(Job, j, populate_existing=True) for j in (first, mate, alone)}
        assert [jobs[j].attempts for j in (first, mate, alone)] == [0, 0, 1]  # only the lone job's loss counts
        assert all(j.state == JobState.QUEUED and j.started_at is not None for j in jobs.values())
        fresh = _new(s)
        assert states.batch_candidates(s, queue="q", max_iters=10, limit=10) == [(fresh, {})]  # started: alone
        assert not states.claim(s, first, "u", 60).first


def test_hand_backs_never_cost_an_attempt_so_the_cap_counts_real_losses(sessions):
    """Issue 21 D: two rolling restarts (SIGTERM hand-backs) then one loss, with RVSM_MAX_ATTEMPTS=2: requeued,
    not 'lost 3 times ... gave up'; a second loss gives up saying 2."""
    with sessions() as s:
        job_id = _new(s)
        for worker in ("a", "b"):
            states.claim(s, job_id, worker, 60)
            assert states.release(s, job_id, worker)
        states.claim(s, job_id, "c", 60)
        assert states.recover(s, _expire(s, job_id), max_attempts=2, dispatch_s=5) == "requeue"
        states.claim(s, job_id, "d", 60)
        assert states.recover(s, _expire(s, job_id), max_attempts=2, dispatch_s=5) == "give_up"
        assert "lost 2 times" in s.get(Job, job_id, populate_existing=True).error


def test_a_lost_batch_is_refunded_even_at_the_attempts_cap(sessions):
    """Issue 21 A: with RVSM_MAX_ATTEMPTS=1 a worker lost in a batch failed every batch mate ('lost 1 times');
    the batch refund now comes before the cap, so each mate runs again, alone."""
    with sessions() as s:
        first, mate = _new(s), _new(s)
        states.claim(s, first, "w", 60)
        batch = states.join_batch(s, first, "w", 60)
        assert states.claim_all(s, [mate], batch, 60) == [mate]
        for job_id in (first, mate):
            assert states.recover(s, _expire(s, job_id), max_attempts=1, dispatch_s=5) == "requeue"
            job = s.get(Job, job_id, populate_existing=True)
            assert job.state == JobState.QUEUED and job.attempts == 0


def test_the_dashboard_knows_exactly_the_job_states():
    """Issue 20: the dashboard's filter and its 'finished' set are written in its JavaScript; they must be the
    state machine's states and terminal states (a new state would otherwise never be shown or stop polling)."""
    import json
    import re

    from tests.service_helpers import ROOT

    ui = ROOT / "service" / "static" / "ui"
    listed = json.loads(re.search(r"const STATES = (\[.*?\]);", (ui / "jobs.js").read_text()).group(1))
    terminal = json.loads(re.search(r"const TERMINAL = new Set\((\[.*?\])\);", (ui / "job.js").read_text()).group(1))
    assert listed[0] == "" and listed[1:] == [str(s) for s in JobState]  # "" is the filter's "any state"
    assert set(terminal) == {str(s) for s in states.TERMINAL}
