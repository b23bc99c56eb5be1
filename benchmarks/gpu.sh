#!/usr/bin/env bash
# Everything that needs a CUDA device, in one command; the results go into docs/benchmarks.md.
#
#   benchmarks/gpu.sh              # on a CUDA machine, from the repository root or anywhere
#   benchmarks/gpu.sh --dry-run    # no GPU needed: every step on the CPU with tiny sizes, into a copy of the doc
#   benchmarks/gpu.sh --doc FILE   # write the blocks into FILE instead
#
# Steps (each writes its block; a failed step is reported and the others still run; exit 1 if any failed):
#   toy-float64, toy-float32  the toy sweep at 100,000 configurations against one at a time, eager and
#                             torch.compile, with the fraction of the memory-bandwidth limit (bench_toy.py)
#   overhead                  RVSM's step overhead over SGD on resnet18, batch 128, 32x32 (bench_gpu.py)
#   worker                    a lenet5/digits checkpoint job through a real `rvsm worker --queues gpu`
#   tests                     the tests marked `cuda` (tests/lib/test_cuda.py)
#
# The Python is $PYTHON, else .venv/bin/python, else python3; it needs a CUDA build of torch (scripts/setup
# installs RVSM_TORCH_VERSION; on a GPU machine point pip at a CUDA index first).
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
doc=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --doc) doc="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi

if [ "$dry" = 1 ]; then
    device=cpu
    if [ -z "$doc" ]; then
        doc="$(mktemp -d)/benchmarks.md"
        cp docs/benchmarks.md "$doc"
    fi
    toy=(--configs 40 --iters 200 --single 2 --repeats 2 --threads 1 --bandwidth --bandwidth-bytes 8000000)
    overhead=(--batch 2 --repeats 2 --steps 1 --warmup 1)
    worker=(--epochs 1 --timeout 180)
else
    device=cuda
    doc="${doc:-docs/benchmarks.md}"
    if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu.sh: torch sees no CUDA device here (torch.cuda.is_available() is False); use --dry-run on a CPU" >&2
        exit 2
    fi
    toy=(--configs 100000 --iters 5000 --single 2 --repeats 3 --compile --bandwidth)
    overhead=(--batch 128 --size 32 --repeats 11 --steps 50 --warmup 20)
    worker=(--epochs 20 --timeout 600)
fi
echo "gpu.sh: device $device, python $py, doc $doc"

failed=()
step() {  # step NAME COMMAND...: run it, report, remember a failure
    local name="$1"; shift
    echo "== $name"
    local t0=$SECONDS
    if "$@"; then
        echo "== $name: ok ($((SECONDS - t0)) s)"
    else
        echo "== $name: FAILED ($((SECONDS - t0)) s)"
        failed+=("$name")
    fi
}

for dtype in float64 float32; do
    step "toy-$dtype" "$py" benchmarks/bench_toy.py --device "$device" --dtype "$dtype" "${toy[@]}" \
        --doc "$doc" --block "gpu toy $dtype"
done
step overhead "$py" benchmarks/bench_gpu.py overhead --device "$device" "${overhead[@]}" --doc "$doc"
step worker "$py" benchmarks/bench_gpu.py worker --device "$device" "${worker[@]}" --doc "$doc"
step tests "$py" benchmarks/bench_gpu.py tests --device "$device" --doc "$doc"

echo "gpu.sh: blocks written to $doc"
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu.sh: failed: ${failed[*]}"
    exit 1
fi
echo "gpu.sh: all steps ok"
