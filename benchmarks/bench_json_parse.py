"""How long parsing one JSON body at the spec cap takes (``service.routers.jobs._load_json``: the caps on the
text, then ``json.loads``). ``json.loads`` runs in C holding the GIL, so off the event loop or not this is
how long it can delay other requests: the size and container caps bound it.

    .venv/bin/python benchmarks/bench_json_parse.py

Each body is parsed 7 times; prints the median and range.
"""

from __future__ import annotations

import statistics
import time

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError

from jobs.settings import Settings
from service.routers.jobs import _load_json


def bodies(cap: int, containers: int) -> dict[str, bytes]:
    unit = "[" * 32 + "]" * 32
    return {
        "zeros [0,0,...]": ("[" + ",".join(["0"] * (cap // 2 - 1)) + "]").encode(),
        "floats [0.123456789012345,...]": ("[" + ",".join(["0.123456789012345"] * (cap // 18 - 1)) + "]").encode(),
        "one long string": b'"' + b"a" * (cap - 2) + b'"',
        f"{containers} empty lists (at the container cap)": ("[" + ",".join(["[]"] * (containers - 1)) + "]").encode(),
        "32-deep lists repeated to the cap (refused)": ("[" + ",".join([unit] * (cap // 65)) + "]").encode(),
        "unterminated string of escaped quotes (refused)": b'"' + b'\\"' * (cap // 2 - 1) + b"\\",
    }


def main() -> None:
    s = Settings()
    for name, text in bodies(s.max_spec_bytes, s.max_json_containers).items():
        times, outcome = [], "parsed"
        for _ in range(7):
            start = time.perf_counter()
            try:
                _load_json(text, ("body",), s)
            except (HTTPException, RequestValidationError) as e:
                outcome = f"refused ({type(e).__name__})"
            times.append(time.perf_counter() - start)
        ms = [t * 1e3 for t in times]
        print(
            f"{name:48s} {len(text):>8d} bytes  {outcome:36s} median {statistics.median(ms):6.1f} ms  "
            f"range {min(ms):.1f}-{max(ms):.1f} ms"
        )


if __name__ == "__main__":
    main()
