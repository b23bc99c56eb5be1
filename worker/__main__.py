"""``python -m worker --queues cpu,gpu [--loglevel info]``: a Celery worker (solo pool) on the configured broker."""

from __future__ import annotations

import argparse

from jobs.floors import check_torch
from jobs.settings import get_settings

from .celery_app import make_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker")
    parser.add_argument("--queues", default="cpu")
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)
    try:
        check_torch()
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    app = make_app(get_settings())
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "-Q",
            args.queues,
            "-l",
            args.loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
