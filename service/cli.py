"""The ``rvsm`` command line.

``rvsm toy SPEC.json [--out FILE] [--device DEV]`` runs a toy spec (SPEC §8) locally and prints the
result JSON, with a progress bar on stderr for long runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load_json(path: str) -> object:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text)


class _Progress:
    """A tqdm bar on stderr over the iterations of each batch of configurations."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.group = None

    def __call__(self, p: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None or self.group != p["group"]:
            self.close()
            self.group = p["group"]
            desc = f"batch {p['group'] + 1}/{p['groups']} ({p['configs']} configs)"
            self.bar = tqdm(total=p["max_iters"], desc=desc, unit="it", file=sys.stderr, leave=False)
        self.bar.n = p["iteration"]
        self.bar.set_postfix(active=p["active"], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_toy(args: argparse.Namespace) -> int:
    from rvsm.toy import SpecError, run_spec

    try:
        spec = _load_json(args.spec)
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: cannot read spec {args.spec}: {e}", file=sys.stderr)
        return 2
    progress = _Progress(enabled=not args.quiet and sys.stderr.isatty() or args.progress)
    try:
        result = run_spec(spec, device=args.device, callback=progress)
    except SpecError as e:
        print(f"error: invalid spec: {e}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    text = json.dumps(result, indent=None if args.compact else 2, allow_nan=False)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvsm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    toy = sub.add_parser("toy", help="run a toy spec (SPEC §8) here and print the result JSON")
    toy.add_argument("spec", help="the spec JSON file ('-' for standard input)")
    toy.add_argument("--out", help="write the result JSON to this file instead of standard output")
    toy.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    toy.add_argument("--compact", action="store_true", help="one-line JSON")
    toy.add_argument("--quiet", action="store_true", help="no progress bar")
    toy.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a terminal")
    toy.set_defaults(func=cmd_toy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
