"""The ``rvsm`` command line.

Local:
  rvsm toy SPEC.json [--out FILE]         run a toy spec here, print the result JSON
Service:
  rvsm serve [--host H] [--port P]        the API; with no RVSM_BROKER_URL also an embedded broker and worker
  rvsm worker [--queues cpu,gpu]          a Celery worker and its reconciler (needs RVSM_BROKER_URL)
Client (for people and CI; --url or RVSM_URL, --api-key or RVSM_API_KEY):
  rvsm submit SPEC.json [--wait [--timeout S]] [gates]  submit; with --wait follow it, print the report
  rvsm status ID | rvsm result ID | rvsm download ID NAME | rvsm list [--state S] | rvsm cancel ID

With --wait, stdout is one JSON document (the job id goes to stderr); progress goes to stderr as a bar on a
terminal, else as a plain line every few seconds.

Exit codes: 0 success; 1 the job failed or was cancelled; 2 bad input (a 4xx, a bad file);
3 a gate failed; 4 the service could not be reached; 5 --timeout passed while waiting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_FAILED, EXIT_INPUT, EXIT_GATE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 1, 2, 3, 4, 5


def _load_json(path: str) -> object:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


class _Progress:
    """Progress on stderr: a tqdm bar on a terminal (``mode="bar"``), else one plain line every few seconds
    (``"lines"``, for CI logs), or nothing (``None``); per batch of configurations (local runs) or per job."""

    def __init__(self, mode: str | None, *, every_s: float = 5.0) -> None:
        self.mode = mode
        self.every_s = every_s
        self.bar = None
        self.key: object = None
        self.last = 0.0

    def update(self, key: object, desc: str, total: int, n: int, **postfix: object) -> None:
        if self.mode == "lines":
            if key != self.key or time.monotonic() - self.last >= self.every_s:
                self.key, self.last = key, time.monotonic()
                extra = " ".join(f"{k}={v}" for k, v in postfix.items())
                print(
                    f"{desc}: {n}/{total} ({100 * n / max(total, 1):.0f}%) {extra}".rstrip(),
                    file=sys.stderr,
                    flush=True,
                )
            return
        if self.mode != "bar":
            return
        from tqdm import tqdm

        bar = self.bar
        if bar is None or self.key != key:
            self.close()
            self.key = key
            bar = self.bar = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, leave=False)
        bar.total = total
        bar.set_description(desc, refresh=False)
        bar.set_postfix(postfix, refresh=False)
        bar.update(n - bar.n)  # through update(), so the rate and ETA are right

    def __call__(self, p: dict) -> None:  # the rvsm callback
        desc = f"batch {p['group'] + 1}/{p['groups']} ({p['configs']} configs)"
        self.update(p["group"], desc, p["max_iters"], p["iteration"], active=p["active"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_mode(args: argparse.Namespace) -> str | None:
    """A bar on a terminal (or with --progress), plain lines otherwise, nothing with --quiet."""
    if args.progress:
        return "bar"
    if args.quiet:
        return None
    return "bar" if sys.stderr.isatty() else "lines"


# ----------------------------------------------------------------------------- local
def cmd_toy(args: argparse.Namespace) -> int:
    from rvsm.toy import SpecError, run_spec

    try:
        spec = _load_json(args.spec)
    except (OSError, json.JSONDecodeError) as e:
        _err(f"cannot read spec {args.spec}: {e}")
        return EXIT_INPUT
    if not isinstance(spec, dict):
        _err(f"invalid spec: {args.spec} must hold a JSON object")
        return EXIT_INPUT
    progress = _Progress(_progress_mode(args))
    try:
        result = run_spec(spec, device=args.device, callback=progress)
    except SpecError as e:
        _err(f"invalid spec: {e}")
        return EXIT_INPUT
    finally:
        progress.close()
    text = json.dumps(result, indent=None if args.compact else 2, allow_nan=False)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


# ----------------------------------------------------------------------------- service
def worker_argv(queues: str, loglevel: str = "info") -> list[str]:
    """The worker command line (``python -m worker``: a Celery worker, solo pool, one job at a time in the
    worker's own process, so CUDA is initialised where it is used and a GPU runs one job at a time)."""
    return [sys.executable, "-m", "worker", "--queues", queues, "--loglevel", loglevel]


def cmd_worker(args: argparse.Namespace) -> int:
    from jobs.queue import BrokerNotConfigured, broker_url
    from jobs.settings import get_settings

    try:
        broker_url(get_settings())
    except BrokerNotConfigured as e:
        _err(str(e))
        return EXIT_INPUT
    os.execv(sys.executable, worker_argv(args.queues, args.loglevel))
    return 0  # not reached


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from jobs.floors import check_torch
    from jobs.settings import get_settings
    from service.supervisor import DataDirBusy, Supervisor, lock_data_dir

    try:
        check_torch()
    except RuntimeError as e:
        _err(str(e))
        return EXIT_INPUT
    settings = get_settings()
    supervisor = None
    broker = None
    lock = None
    if not settings.broker_url:
        from service.broker import EmbeddedBroker

        try:  # before touching the broker: a second serve must not stop the first one's
            lock = lock_data_dir(settings.data_dir)
        except DataDirBusy as e:
            _err(str(e))
            return EXIT_INPUT
        broker = EmbeddedBroker(settings.data_dir).start()
        url = broker.url
        os.environ["RVSM_BROKER_URL"] = url
        get_settings.cache_clear()
        print(f"embedded mode: broker {url}, database {get_settings().resolved_database_url}", file=sys.stderr)
        supervisor = Supervisor(worker_argv("cpu,gpu"), env=os.environ.copy()).start()

    def _stop(signum: int, _frame: object) -> None:
        # uvicorn shuts down gracefully, restores this handler and raises the signal again: exit
        # through ``finally`` so the embedded worker and broker stop too
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    try:
        uvicorn.run("service.main:app", host=args.host, port=args.port, log_level=args.loglevel)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down; stop the rest below
        pass
    finally:
        if supervisor is not None:  # SIGTERM: the worker hands its running job back, then exits
            supervisor.stop()
        if broker is not None:
            broker.stop()
        if lock is not None:
            lock.close()
    return 0


# ----------------------------------------------------------------------------- client
class _Client:
    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        self.httpx = httpx
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.http = httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=60)

    def call(self, method: str, path: str, **kw: Any):  # noqa: ANN401 (httpx's keyword arguments)
        try:
            r = self.http.request(method, path, **kw)
        except self.httpx.HTTPError as e:
            raise _Exit(EXIT_UNREACHABLE, f"cannot reach {self.http.base_url}: {e}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                msg = body.get("message") or body.get("detail")
            except ValueError:
                msg = r.text
            raise _Exit(EXIT_INPUT if r.status_code < 500 else EXIT_UNREACHABLE, f"HTTP {r.status_code}: {msg}")
        return r


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def reaches_sparsity(report: dict, q: float) -> bool:
    """Whether a checkpoint job's pruned set holds the zeros ``q`` asks for, in whole entries, counted as the job
    counts its target (``floor(q n)`` over the set, or per tensor with ``sparsity_scope`` "layer"): exactly
    ``floor(q n)`` zeros is a hair under ``q``, and a job that met its target ``q`` must pass ``--min-sparsity q``."""
    if not 0 < q < 1:
        return False
    from rvsm.optim import target_zeros

    sp = report.get("sparsity") or {}
    layers = sp.get("layers") or {}
    pruned = [layers[n] for n in dict.fromkeys(sp.get("prunable_names") or []) if n in layers]
    if not pruned:
        return False
    need = target_zeros([v["numel"] for v in pruned], q, scope=report.get("sparsity_scope") or "global")
    return sum(v["zeros"] for v in pruned) >= need


def _gates(args: argparse.Namespace, job: dict, report: Callable[[], dict] | None = None) -> list[str]:
    """The gates that failed. ``report`` fetches a checkpoint job's report, read only when the summary's sparsity
    is under ``--min-sparsity`` (:func:`reaches_sparsity` then decides in whole entries)."""
    s = job.get("summary") or {}
    failed = []
    if args.max_theta_w is not None:
        v = s.get("max_theta_w")
        if v is None or v > args.max_theta_w:
            failed.append(f"theta_w {v} > --max-theta-w {args.max_theta_w}")
    if args.min_zeros is not None and s.get("min_zeros", -1) < args.min_zeros:
        failed.append(f"zeros in u {s.get('min_zeros')} < --min-zeros {args.min_zeros}")
    if args.min_sparsity is not None and (s.get("sparsity") is None or s["sparsity"] < args.min_sparsity):
        if not (
            s.get("sparsity") is not None
            and report is not None
            and job.get("kind") == "checkpoint"
            and reaches_sparsity(report(), args.min_sparsity)
        ):
            failed.append(f"sparsity {s.get('sparsity')} < --min-sparsity {args.min_sparsity}")
    if args.max_accuracy_drop is not None and (
        s.get("accuracy_drop") is None or s["accuracy_drop"] > args.max_accuracy_drop
    ):
        failed.append(f"accuracy drop {s.get('accuracy_drop')} > --max-accuracy-drop {args.max_accuracy_drop}")
    if args.max_loss_increase is not None and (
        s.get("loss_increase") is None or s["loss_increase"] > args.max_loss_increase
    ):
        failed.append(f"loss increase {s.get('loss_increase')} > --max-loss-increase {args.max_loss_increase}")
    if s.get("collapsed"):
        failed.append(
            "the network collapsed (near chance: under a quarter of the way from the majority label to a perfect score)"
        )
    return failed


def _wait(client: _Client, job_id: str, progress: _Progress, poll: float, timeout: float | None = None) -> dict:
    from jobs.states import TERMINAL

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = client.call("GET", f"/v1/jobs/{job_id}").json()
        p = job["progress"]
        eta = f"{p['eta_s']:.0f}s" if p.get("eta_s") is not None else "?"
        progress.update(job_id, f"{job_id[:8]} {job['state']}", 1000, int(1000 * p["fraction"]), eta=eta)
        if job["state"] in TERMINAL:
            progress.close()
            return job
        if deadline is not None and time.monotonic() >= deadline:
            progress.close()
            raise _Exit(
                EXIT_TIMEOUT,
                f"job {job_id} is still {job['state']} after --timeout {timeout}s "
                f"(it goes on; `rvsm cancel {job_id}` stops it)",
            )
        time.sleep(poll)


def cmd_submit(args: argparse.Namespace) -> int:
    client = _Client(args)
    try:
        spec = _load_json(args.spec)
    except (OSError, json.JSONDecodeError) as e:
        raise _Exit(EXIT_INPUT, f"cannot read spec {args.spec}: {e}") from None
    uploads = {name: path for name, path in (("checkpoint", args.checkpoint), ("dataset", args.dataset)) if path}
    if uploads:
        try:
            files = {name: (Path(p).name, Path(p).read_bytes()) for name, p in uploads.items()}
        except OSError as e:
            raise _Exit(EXIT_INPUT, f"cannot read {e.filename}: {e.strerror}") from None
        created = client.call("POST", "/v1/jobs", data={"spec": json.dumps(spec)}, files=files).json()
    else:
        created = client.call("POST", "/v1/jobs", json=spec).json()
    job_id = created["id"]
    if not args.wait:
        print(job_id, flush=True)
        return 0
    print(job_id, file=sys.stderr, flush=True)  # with --wait, stdout is the one JSON report (pipe it to jq)
    job = _wait(client, job_id, _Progress(_progress_mode(args)), args.poll, args.timeout)
    report = {"id": job_id, "state": job["state"], "error": job["error"], "summary": job["summary"]}
    if job["state"] == "succeeded" and job["kind"] == "toy":
        result = client.call("GET", f"/v1/jobs/{job_id}/result").json()
        if "final" in result:  # one run (a sweep's are in the result document)
            report["final"] = {k: v for k, v in result["final"].items() if k not in ("w", "u", "w_star", "w0")}
    if job["state"] == "succeeded" and args.download:
        report["downloaded"] = _download_all(client, job_id, Path(args.download))
    failed = (
        _gates(args, job, lambda: client.call("GET", f"/v1/jobs/{job_id}/result").json())
        if job["state"] == "succeeded"
        else []
    )
    report["gates_failed"] = failed
    print(json.dumps(report, indent=2))
    if job["state"] != "succeeded":
        _err(f"job {job_id} {job['state']}: {job['error']}")
        return EXIT_FAILED
    if failed:
        _err("gate failed: " + "; ".join(failed))
        return EXIT_GATE
    return 0


def _fetch(client: _Client, job_id: str, name: str, out: Path) -> str:
    """One artifact into ``out``, checked against the sha256 the service sent with it; returns the sha256."""
    r = client.call("GET", f"/v1/jobs/{job_id}/artifacts/{name}")
    digest = hashlib.sha256(r.content).hexdigest()
    if r.headers.get("X-Content-SHA256") != digest:
        raise _Exit(EXIT_FAILED, f"sha256 mismatch for {name}: got {digest}, sent {r.headers.get('X-Content-SHA256')}")
    out.write_bytes(r.content)
    return digest


def _download_all(client: _Client, job_id: str, out: Path) -> dict[str, str]:
    """Every artifact of the job into ``out``; ``{name: sha256}``."""
    out.mkdir(parents=True, exist_ok=True)
    names = [a["name"] for a in client.call("GET", f"/v1/jobs/{job_id}/artifacts").json()]
    return {name: _fetch(client, job_id, name, out / name) for name in names}


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_Client(args).call("GET", f"/v1/jobs/{args.id}").json(), indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit} | ({"state": args.state} if args.state else {})
    print(json.dumps(_Client(args).call("GET", "/v1/jobs", params=params).json(), indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    print(json.dumps(_Client(args).call("POST", f"/v1/jobs/{args.id}/cancel").json(), indent=2))
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    body = _Client(args).call("GET", f"/v1/jobs/{args.id}/result").content
    if args.out:
        Path(args.out).write_bytes(body)
    else:
        sys.stdout.write(body.decode() + "\n")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    out = Path(args.out or args.name)
    print(f"{out} {_fetch(_Client(args), args.id, args.name, out)}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvsm", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def progress_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a terminal")

    toy = sub.add_parser("toy", help="run a toy spec (docs/math.md) here and print the result JSON")
    toy.add_argument("spec", help="the spec JSON file ('-' for standard input)")
    toy.add_argument("--out", help="write the result JSON to this file instead of standard output")
    toy.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    toy.add_argument("--compact", action="store_true", help="one-line JSON")
    progress_flags(toy)
    toy.set_defaults(func=cmd_toy)

    serve = sub.add_parser("serve", help="run the API (and, with no RVSM_BROKER_URL, an embedded broker and worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--loglevel", default="info")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a Celery worker on RVSM_BROKER_URL")
    worker.add_argument("--queues", default="cpu", help="comma-separated queues (cpu, gpu)")
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(func=cmd_worker)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("RVSM_URL", "http://127.0.0.1:8000"))
        p.add_argument("--api-key", default=os.environ.get("RVSM_API_KEY"))

    submit = sub.add_parser("submit", help="submit a job to a running service")
    submit.add_argument("spec")
    client_flags(submit)
    submit.add_argument("--wait", action="store_true", help="follow the job and print its report")
    submit.add_argument("--poll", type=float, default=1.0, help="seconds between status checks")
    submit.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="with --wait: give up waiting after this many seconds (exit code 5; the job goes on)",
    )
    submit.add_argument("--max-theta-w", type=float, default=None, help="gate: fail when theta(w, w*) is larger")
    submit.add_argument("--min-zeros", type=int, default=None, help="gate: fail when u has fewer zeros")
    submit.add_argument("--checkpoint", help="a .pt2 (torch.export, any model) or a .safetensors / .pt state_dict")
    submit.add_argument("--dataset", help="data file (.safetensors or .npz) for dataset.name 'upload'")
    submit.add_argument(
        "--min-sparsity",
        type=float,
        default=None,
        help="gate: fraction of zeros in the pruned "
        "tensors, in whole entries (target_sparsity p: floor(p n) zeros, which passes p)",
    )
    submit.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        help="gate: accuracy before - after, as a fraction (0.01 = one point)",
    )
    submit.add_argument(
        "--max-loss-increase", type=float, default=None, help="gate (regression): validation MSE after - before"
    )
    submit.add_argument(
        "--download", metavar="DIR", help="after success, download every artifact here (sha256 checked)"
    )
    progress_flags(submit)
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="a job's state and progress")
    status.add_argument("id")
    client_flags(status)
    status.set_defaults(func=cmd_status)

    listing = sub.add_parser("list", help="jobs, newest first")
    listing.add_argument("--state", help="only jobs in this state (the API checks it against its job states)")
    listing.add_argument("--limit", type=int, default=50)
    client_flags(listing)
    listing.set_defaults(func=cmd_list)

    cancel = sub.add_parser("cancel", help="cancel a job (a running one stops at its next check)")
    cancel.add_argument("id")
    client_flags(cancel)
    cancel.set_defaults(func=cmd_cancel)

    result = sub.add_parser("result", help="a finished job's result JSON")
    result.add_argument("id")
    result.add_argument("--out")
    client_flags(result)
    result.set_defaults(func=cmd_result)

    download = sub.add_parser("download", help="download an artifact (sha256 checked)")
    download.add_argument("id")
    download.add_argument("name")
    download.add_argument("--out")
    client_flags(download)
    download.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _Exit as e:
        _err(str(e))
        return e.code


if __name__ == "__main__":
    sys.exit(main())
