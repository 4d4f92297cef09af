#!/usr/bin/env bash
# The whole GPU check in one call: build, all tests, all benchmarks, a short table last.
#
#   benchmarks/gpu_suite.sh OUTDIR        (on the GPU machine; PYTHON=... to pick the interpreter)
#
# Writes into OUTDIR: gpu_suite.log (everything printed), junit.xml (tests), benchmarks.json
# (pytest-benchmark), bench.json (`haic bench` results, see benchmarks/results/README.md) and
# bench.png. New suites and bench_<op>.py files are picked up with no edit here. A failing step
# does not stop the later ones; the exit status is non-zero if any step failed.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
# The suite is what verifies fast paths: let backend="auto" choose them while it runs.
export HAIC_TRUST_UNVERIFIED=1
LOG="$OUT/gpu_suite.log"
: >"$LOG"

declare -a SUMMARY=()
FAILED=0

# step NAME CMD...: run CMD, its output to the screen and the log; record ok / FAILED.
step() {
    local name=$1
    shift
    local rc=0
    echo -e "\n=== $name: $*" | tee -a "$LOG"
    "$@" 2>&1 | tee -a "$LOG" || rc=$?
    if [[ $rc -eq 0 ]]; then
        SUMMARY+=("ok      $name")
    else
        SUMMARY+=("FAILED  $name (exit $rc)")
        FAILED=1
    fi
}

versions() {
    nvidia-smi || echo "nvidia-smi: not available"
    "$PY" - <<'PY'
import platform, torch
try:
    import triton
    tv = triton.__version__
except Exception as e:  # noqa: BLE001 - report, don't stop
    tv = f"not importable ({e})"
print(f"python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}"
      f"  triton {tv}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}  sm {p.major}.{p.minor}  {p.multi_processor_count} SMs  "
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB  {p.total_memory / 2**30:.0f} GiB")
else:
    print("WARNING: torch sees no CUDA device; GPU tests will be skipped")
PY
    if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "nvcc: not on PATH"; fi
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
}

step "versions" versions
step "build (pip install -e)" "$PY" -m pip install --no-deps --no-build-isolation -e .
step "tests" "$PY" -m pytest tests -m "gpu or not gpu" -q -ra --junitxml "$OUT/junit.xml"
step "pytest benchmarks" "$PY" -m pytest benchmarks --size full -q -ra \
    --benchmark-json "$OUT/benchmarks.json"
step "haic bench all" "$PY" -m haic_kernels.bench.cli all --size full --no-progress \
    --json "$OUT/bench.json" --plot "$OUT/bench.png"

{
    echo -e "\n=== summary"
    printf '%s\n' "${SUMMARY[@]}"
    if [[ -f "$OUT/bench.json" ]]; then
        echo
        "$PY" -m haic_kernels.bench.cli --show "$OUT/bench.json" || true
    fi
} 2>&1 | tee -a "$LOG"
exit "$FAILED"
