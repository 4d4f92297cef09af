#!/usr/bin/env bash
# The whole GPU check in one call: build, all tests, all benchmarks, a short table last.
#
#   benchmarks/gpu_suite.sh OUTDIR [STEP ...]   (on the GPU machine; PYTHON=... for the interpreter)
#   benchmarks/gpu_suite.sh OUTDIR quick        (everything that matters in <= 8 minutes)
#
# quick: build the extension for this GPU's arch only, run every GPU parity test, the full-size
# end-to-end benchmark (TTFT and decode tokens/s, fast vs reference, random bf16 weights, no
# video decoding) and the kernel benchmarks that matter (haic_kernels/app/quick.py), then
# print one table (steps, kernels, end to end) last; JSON under OUTDIR (quick_e2e.json,
# quick_kernels.json, junit_quick_<j>.xml: the tests in QUICK_TEST_JOBS=4 pytest processes, so
# Triton compiles on 4 cores; steps.tsv). Needs only torch, triton, nvcc, pybind11.
# Each step runs under `timeout` with its budget, cut to what is left of a hard deadline
# (QUICK_BUDGET_S, default 460 s from the start); pytest gets SIGINT (it still writes its
# report) and the benchmarks rewrite their JSON after every row, so a step cut short leaves
# what it measured. Budgets (predicted for an H100/H200 after a cold start; README "Time
# budget"): versions 10, build 120, tests 140, e2e 110, kernels 80, table 5. QUICK_BUILD=0 skips
# the build (a CPU smoke run of this script on an importable checkout).
#
# Writes into OUTDIR: gpu_suite.log (everything printed), junit.xml (tests), benchmarks.json
# (pytest-benchmark), bench.json (`haic bench` results, see benchmarks/results/README.md) and
# bench.png. New suites and bench_<op>.py files are picked up with no edit here. A failing step
# does not stop the later ones; the exit status is non-zero if any step failed.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUTDIR [quick | versions|build|tests|sanitize|bench|bench-video|bench-e2e|bench-prune|pytest-bench ...]" >&2
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

sanitize() {
    if ! command -v compute-sanitizer >/dev/null; then
        echo "compute-sanitizer: not on PATH, skipped"
        return 0
    fi
    # memcheck over the GPU tests of the ops with a CUDA backend (csrc/): slow, so only those.
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -x -m gpu \
        tests/ops/test_patchify.py tests/ops/test_conv_compress.py tests/ops/test_patch_embed.py \
        tests/ops/test_attention_decode.py tests/ops/test_token_prune.py -k cuda
}

# ---- quick: one command, a hard deadline ---------------------------------------------------
# qstep NAME BUDGET CMD...: CMD under `timeout` (SIGINT, then KILL 10 s later) for the smaller of
# BUDGET and what is left before DEADLINE (a few seconds kept for the table); one line to
# steps.tsv: name, status, seconds, the limit it ran under.
qstep() {
    local name=$1 budget=$2
    shift 2
    local left=$((DEADLINE - $(date +%s) - 8)) limit rc=0 t0
    limit=$((budget < left ? budget : left))
    if ((limit < 5)); then
        printf '%s\tskipped (out of time)\t0\t%s\n' "$name" "$budget" >>"$OUT/steps.tsv"
        SUMMARY+=("SKIPPED $name (out of time)")
        return 0
    fi
    echo -e "\n=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    t0=$(date +%s)
    timeout -s INT -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
    local status="ok"
    if ((rc == 124 || rc == 137)); then
        status="TIMEOUT"
    elif ((rc != 0)); then
        status="FAILED (exit $rc)"
    fi
    [[ $status == ok ]] || FAILED=1
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$limit" >>"$OUT/steps.tsv"
    SUMMARY+=("$status $name")
}

quick() {
    DEADLINE=$(($(date +%s) + ${QUICK_BUDGET_S:-460}))
    : >"$OUT/steps.tsv"
    # The GPU's own arch only (half the nvcc work of the default 80;90a); autotune results are
    # kept on disk, so the benchmarks reuse what the tests tuned.
    local arch
    arch=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}' + ('a' if m >= 9 else ''))" 2>/dev/null || echo "80;90a")
    export TRITON_CACHE_AUTOTUNING=1
    versions 2>&1 | tee -a "$LOG"
    if [[ ${QUICK_BUILD:-1} == 1 ]]; then
        qstep build 120 env HAIC_CUDA_ARCHS="$arch" "$PY" -m pip install --no-deps \
            --no-build-isolation -e .
    else  # QUICK_BUILD=0: the package is importable already (a CPU smoke run of this script)
        printf 'build\tskipped (QUICK_BUILD=0)\t0\t120\n' >>"$OUT/steps.tsv"
    fi
    qstep "gpu parity tests" 140 "$PY" -m haic_kernels.app.quick tests "$OUT" \
        --jobs "${QUICK_TEST_JOBS:-4}"
    qstep "e2e (full, fast vs ref)" 110 "$PY" -m haic_kernels.app.quick e2e "$OUT/quick_e2e.json" \
        --deadline "$((DEADLINE - 8))"
    qstep "kernel benchmarks" 80 "$PY" -m haic_kernels.app.quick kernels "$OUT/quick_kernels.json" \
        --deadline "$((DEADLINE - 8))"
    {
        echo -e "\n=== quick suite: $(($(date +%s) - DEADLINE + ${QUICK_BUDGET_S:-460})) s of ${QUICK_BUDGET_S:-460} s"
        "$PY" -m haic_kernels.app.quick table "$OUT" | tee "$OUT/quick_table.txt"
    } 2>&1 | tee -a "$LOG"
    exit "$FAILED"
}

if [[ ${2:-} == quick ]]; then
    quick
fi

# Steps to run: all of the default ones, or those named after OUTDIR (e.g. `OUT tests bench`);
# "pytest-bench" (the same cases under pytest-benchmark) is only run when named. BENCH_SUITES
# picks suites for the bench step (default: all), BENCH_ARGS adds options (e.g. "--reps 20").
STEPS=("${@:2}")
[[ ${#STEPS[@]} -eq 0 ]] && STEPS=(versions build tests sanitize bench bench-video bench-e2e bench-prune)
for s in "${STEPS[@]}"; do
    case $s in
    versions) step "versions" versions ;;
    build) step "build (pip install -e)" "$PY" -m pip install --no-deps --no-build-isolation -e . ;;
    tests) step "tests" "$PY" -m pytest tests -m "gpu or not gpu" -q -ra --junitxml "$OUT/junit.xml" ;;
    sanitize) step "compute-sanitizer memcheck" sanitize ;;
    pytest-bench)
        step "pytest benchmarks" "$PY" -m pytest benchmarks --size full -q -ra \
            --benchmark-json "$OUT/benchmarks.json"
        ;;
    bench)
        # Every kernel suite; video decoding is host-driven and takes seconds per call, so it
        # has its own step with few repetitions.
        kernel_suites=$("$PY" -c "from haic_kernels.bench import suites
print(' '.join(n for n in suites.names() if n != 'video'))")
        # shellcheck disable=SC2086 # BENCH_SUITES and BENCH_ARGS are word lists
        step "haic bench" "$PY" -m haic_kernels.bench.cli ${BENCH_SUITES:-$kernel_suites} \
            --size full --no-progress ${BENCH_ARGS:-} --json "$OUT/bench.json" \
            --plot "$OUT/bench.png"
        ;;
    bench-video)
        step "haic bench video" "$PY" -m haic_kernels.bench.cli video --size full --no-progress \
            --reps 5 --warmup 1 --json "$OUT/bench_video.json"
        ;;
    bench-e2e)
        # Issue 6: full-size video-chat, bf16, 1-min 720p H.264 clip, batch 8, fast vs reference.
        step "e2e benchmark" "$PY" benchmarks/e2e.py --size full --json "$OUT/bench_e2e.json"
        ;;
    bench-prune)
        # Issue 7: full-size LM, 24 frames, bf16: pruned (keep 25% / 10%) vs unpruned.
        step "prune e2e benchmark" "$PY" benchmarks/prune_e2e.py --size full \
            --json "$OUT/bench_prune_e2e.json"
        ;;
    *)
        echo "unknown step '$s' (versions build tests sanitize bench bench-video bench-e2e bench-prune pytest-bench)" >&2
        exit 2
        ;;
    esac
done

{
    echo -e "\n=== summary"
    printf '%s\n' "${SUMMARY[@]}"
    if [[ -f "$OUT/bench.json" ]]; then
        echo
        "$PY" -m haic_kernels.bench.cli --show "$OUT/bench.json" || true
    fi
} 2>&1 | tee -a "$LOG"
exit "$FAILED"
