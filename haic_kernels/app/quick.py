"""The quick GPU run: the benchmarks that matter, each step under a wall-clock deadline.

`benchmarks/gpu_suite.sh OUT quick` calls (after the build)::

    python -m haic_kernels.app.quick tests OUT [--jobs 4]   # every GPU parity test
    python -m haic_kernels.app.quick e2e OUT/quick_e2e.json --deadline EPOCH
    python -m haic_kernels.app.quick kernels OUT/quick_kernels.json --deadline EPOCH
    python -m haic_kernels.app.quick table OUT        # one table: steps, kernels, end to end

``tests``: every test marked ``gpu``, the files split over ``--jobs`` pytest processes (their
cost is Triton's JIT, one core per process; the GPU work is milliseconds), each writing
OUT/junit_quick_<j>.xml and OUT/tests_<j>.log; on a SIGINT (the step's timeout) each shard
still reports what ran. ``kernels``: the cases of `QUICK` (attention at the vision and LM
shapes, decode attention, expert_linear with 2 experts, the fused norms and activations, fp8
linears, patch_embed, conv_compress) at full size, 20 timed runs each, against their
baselines. ``e2e``: the
full-size video-chat model with random bf16 weights, fast vs the eager+SDPA reference in one
process: time to first token from 24 uint8 frames (patch embed, vision tower, adapter,
prefill), decode tokens/s over `NEW_TOKENS` steps and the bandwidth fraction, then the kernels
and host syncs of one fast decode step on the GPU (`launches.decode_step`). No video
decoding: the frames are random, so neither PyAV nor DALI is needed.

Both set HAIC_TRUST_UNVERIFIED=1 (``auto`` picks the fast paths this run verifies), name the
backend of every row (kernels: the op's explicit backend; e2e: the Triton kernels and _C
calls the fast model ran), rewrite their JSON after every row so that a kill leaves what was
measured, and start no new work past ``deadline - MARGIN_S`` (the rest is listed "out of
time"). ``--size tiny`` runs the same code on the CPU in seconds (the suite's smoke test).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..bench import launches, model_calls, runner, suites
from ..bench.env import collect_env, trust_fast_paths
from ..bench.results import SPEEDUP_PREFIX, add_speedups, to_document, write_json
from ..bench.roofline import measure_peaks
from .e2e import _row, kv_bytes, lm_weight_bytes
from .pipeline import answer

# suite -> the full-size case names timed (None: all of the suite's cases).
QUICK: dict[str, list[str] | None] = {
    "attention_vision": ["f24-l257"],
    "attention": ["s2k"],
    "attention_decode": ["b1-s2k", "b8-s2k"],
    "expert_linear": None,
    "norm": None,
    "activation": None,
    "fp8_linear": None,
    "patch_embed": ["b1-f24-224"],
    "conv_compress": ["b1-f24-g16"],
}
# Left out of the quick run: torch.compile baselines (10-30 s of compiling each), the ops' own
# PyTorch references and boolean-mask routing (eager paths the other baselines already bound).
SKIP_BACKENDS = frozenset({"torch.compile", "torch", "boolean-mask indexing"})
MARGIN_S = 15.0  # no new case or pass starts with less than this left
NEW_TOKENS = 32  # decode steps timed per pass (the first token is the prefill's)
E2E = {  # size -> (config preset, dtype, frames, timed passes after one warm-up)
    "full": ("full", torch.bfloat16, 24, 2),
    "tiny": ("tiny", torch.float32, 2, 1),
}


def _left(deadline: float) -> float:
    return deadline - time.time()


def _write(path: Path, rows, device, peaks, skipped, failed, extra=None) -> None:
    add_speedups(rows)
    doc = to_document(rows, collect_env(device), peaks=peaks, skipped=skipped, failed=failed)
    doc.update(extra or {})
    write_json(path, doc)


def run_kernels(path: Path, size: str, device: torch.device, deadline: float, reps: int = 20,
                warmup: int = 3) -> None:  # fmt: skip
    """Time the `QUICK` cases; the JSON at ``path`` is rewritten after each."""
    with trust_fast_paths():
        _kernels(path, size, device, deadline, reps, warmup)


def _kernels(path, size, device, deadline, reps, warmup) -> None:
    p = measure_peaks(device)
    peaks = p.to_dict() if p else None
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for suite, names in QUICK.items():
        for case in suites.cases(suite, size, device):
            if case.backend in SKIP_BACKENDS or (size == "full" and names and case.name not in
                                                 names):  # fmt: skip
                continue
            entry = {"suite": suite, "case": case.name, "backend": case.backend}
            if case.skip_reason:
                skipped.append({**entry, "reason": case.skip_reason})
            elif _left(deadline) < MARGIN_S:
                skipped.append({**entry, "reason": "out of time (the quick run's deadline)"})
            else:
                try:
                    t = runner.time_case(case, device, reps=reps, warmup=warmup)
                    rows.append(runner.make_row(case, t, p))
                except Exception as exc:  # reported, the run goes on
                    failed.append({**entry, "reason": f"{type(exc).__name__}: {exc}"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            _write(path, rows, device, peaks, skipped, failed)
    _write(path, rows, device, peaks, skipped, failed)


def run_e2e(path: Path, size: str, device: torch.device, deadline: float) -> None:
    """TTFT and decode tokens/s, reference then fast; the JSON is rewritten after each pass."""
    with trust_fast_paths():
        _e2e(path, size, device, deadline)


def _e2e(path, size, device, deadline) -> None:
    preset, dtype, n_frames, reps = E2E[size]
    p = measure_peaks(device)
    peaks = p.to_dict() if p else None
    m = model_calls.build(preset, "video-chat", dtype, n_frames, device)
    frames = model_calls.random_frames(m.config, n_frames, device)
    ((ids, types),) = model_calls.prompts(m.config, n_frames, device, ("Describe this video.",))
    spec = {"batch": 1, "frames": n_frames}
    elem = torch.empty((), dtype=dtype).element_size()
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"e2e": {"size": size, "new_tokens": NEW_TOKENS,
                                     "prompt_len": ids.shape[1], "backends": {}}}  # fmt: skip
    for kind, model, label in (("reference", m.reference, "reference (eager, SDPA)"),
                               ("fast", m.fast, "fast")):  # fmt: skip
        runs = []
        for i in range(1 + reps):  # the first pass warms up (Triton compiles, cuBLAS handles)
            if _left(deadline) < MARGIN_S:
                skipped.append({"suite": "e2e", "case": f"{kind} pass {i}", "backend": label,
                                "reason": "out of time (the quick run's deadline)"})  # fmt: skip
                break
            ms, steps = one_pass(model, frames, ids, types, NEW_TOKENS)
            if i > 0 or reps == 0:
                runs.append((ms, steps))
        if runs:
            rows += _e2e_rows(runs, label, kind == "reference", spec, dtype, m, ids, elem, p)
            _write(path, rows, device, peaks, skipped, [], extra)
    if _left(deadline) >= MARGIN_S:
        report = launches.decode_step(m, [(ids, types)], model_calls.encode(m.fast, frames))
        k, s = report.per_layer()
        extra["e2e"]["decode_step_launches"] = {
            "kernels": report.kernels, "syncs": report.syncs, "per_layer_max": k,
            "per_layer_syncs_max": s, "layer0": dict(report.layers[0].by_kernel),
        }  # fmt: skip
        names = report.total.by_kernel
        extra["e2e"]["backends"] = {
            "triton kernels": sorted(n for n in names if n.startswith("triton ")),
            "_C calls": sorted(n for n in names if n.startswith("_C.")),
        }  # fmt: skip
    _write(path, rows, device, peaks, skipped, [], extra)


def one_pass(model, frames, ids, types, new_tokens: int) -> tuple[dict[str, float], int]:
    """Stage times (ms) of one frames -> tokens pass of either model through `pipeline.answer`
    (what `haic run` does), and the decode steps taken after the first token."""
    got = answer(model, frames, ids, types, max_new_tokens=new_tokens, eos_token_id=None)
    return dict(got.clock.ms), got.decode_steps


def _e2e_rows(runs, label, base, spec, dtype, m, ids, elem, p) -> list[dict[str, Any]]:
    """TTFT, decode step and per-stage rows from the timed passes of one model."""
    med = {k: statistics.median(r[0][k] for r in runs) for k in runs[0][0]}
    steps = runs[0][1]
    ttft = sum(med[k] for k in ("patch embed", "vision tower", "compress + adapter", "prefill"))
    out = [_row("time to first token", label, base, spec, dtype, ttft, len(runs), suite="e2e")]
    step_ms = med["decode tokens"] / max(steps, 1)
    nbytes = lm_weight_bytes(m.reference) + kv_bytes(m.config, 1, ids.shape[1] + steps / 2, elem)
    gbps = nbytes / (step_ms * 1e-3) / 1e9 if steps else None
    out.append(
        _row(
            "decode step",
            label,
            base,
            spec,
            dtype,
            step_ms,
            len(runs),
            suite="e2e",
            bytes=int(nbytes),
            gbps=gbps,
            frac=gbps / p.gbps if (p and gbps) else None,
            tokens_per_s=1e3 / step_ms if steps else None,
            decode_steps=steps,
        )
    )
    out += [_row(f"stage: {name}", label, base, spec, dtype, value, len(runs), suite="e2e")
            for name, value in med.items()]  # fmt: skip
    return out


# ---- the GPU parity tests ----------------------------------------------------------------------


def gpu_test_files(root: Path) -> list[Path]:
    """The test files with a ``gpu`` mark, largest first (a proxy for their count)."""
    found = [p for p in root.rglob("test_*.py") if "mark.gpu" in p.read_text()]
    return sorted(found, key=lambda p: (-p.stat().st_size, str(p)))


def run_tests(out: Path, jobs: int, root: Path = Path("tests")) -> int:
    """Every ``gpu`` test in ``jobs`` pytest processes (files dealt round-robin); 0 if all
    passed or skipped. SIGINT reaches the children, which then report what they ran."""
    files = gpu_test_files(root)
    shards = [files[j::jobs] for j in range(jobs) if files[j::jobs]]
    procs = []
    for j, shard in enumerate(shards):
        junit = str(out / f"junit_quick_{j}.xml")
        cmd = [sys.executable, "-m", "pytest", *map(str, shard), "-m", "gpu", "-q", "-ra",
               "-p", "no:cacheprovider", "--junitxml", junit]  # fmt: skip
        log = open(out / f"tests_{j}.log", "w")  # noqa: SIM115 - closed after the wait
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait() for p, _ in procs]
    except KeyboardInterrupt:  # the step's timeout: let every shard write its report
        # `timeout` signals the whole process group, so the shards have it already; a second
        # SIGINT would cut their reports short. Only a shard still running after 3 s gets one.
        time.sleep(3)
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        codes = [p.wait() for p, _ in procs]
    for j, (_, log) in enumerate(procs):
        log.close()
        lines = (out / f"tests_{j}.log").read_text().splitlines()
        tail = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))] + lines[-1:]
        print(f"shard {j} (exit {codes[j]}): " + "\n  ".join(tail), flush=True)
    return 0 if all(c in (0, 5) for c in codes) else 1  # 5: nothing collected


# ---- the one table -----------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def table(out: Path) -> str:
    """Steps (from OUT/steps.tsv), kernel rows and e2e rows, as one plain-text table."""
    lines = []
    steps = out / "steps.tsv"
    if steps.exists():
        lines.append(f"{'step':<28}{'status':<14}{'seconds':>8}{'budget':>8}")
        for ln in steps.read_text().splitlines():
            name, status, secs, budget = [*ln.split("\t"), "", "", ""][:4]
            lines.append(f"{name:<28}{status:<14}{secs:>8}{budget:>8}")
    docs = {n: _load(out / f"quick_{n}.json") for n in ("kernels", "e2e")}
    kern = docs["kernels"]
    if kern:
        lines.append(f"\n{'kernels (median ms)':<42}{'backend':<24}{'ms':>9}{'TFLOP/s':>9}"
                     f"{'GB/s':>8}{'%BW':>6}  vs baseline")  # fmt: skip
        for r in kern["results"]:
            sp = [
                f"{v:.2f}x {k.removeprefix(SPEEDUP_PREFIX)}"
                for k, v in r.items()
                if k.startswith(SPEEDUP_PREFIX) and v is not None and not r["baseline"]
            ]
            bw = r.get("frac_peak_gbps")
            lines.append(f"{r['suite'] + '/' + r['case']:<42}{r['backend']:<24}"
                         f"{r['median_ms']:9.3f}{r['tflops'] or 0:9.1f}{r['gbps'] or 0:8.0f}"
                         f"{(f'{100 * bw:.0f}' if bw else '-'):>6}  {', '.join(sp)}")  # fmt: skip
        for r in kern.get("skipped", []) + kern.get("failed", []):
            lines.append(f"  not timed: {r['suite']}/{r['case']} {r['backend']}: {r['reason']}")
    e2e = docs["e2e"]
    if e2e:
        lines.append(f"\n{'end to end':<32}{'backend':<26}{'ms':>10}  extra")
        for r in e2e["results"]:
            if r["case"].startswith("stage:") and r["baseline"]:
                continue
            extra = []
            sp = r.get(SPEEDUP_PREFIX + "reference_eager_sdpa")
            if sp and not r["baseline"]:
                extra.append(f"{sp:.2f}x the reference")
            if r.get("tokens_per_s"):
                extra.append(f"{r['tokens_per_s']:.1f} tok/s")
            if r.get("frac_peak_gbps"):
                extra.append(f"{100 * r['frac_peak_gbps']:.0f}% of bandwidth")
            lines.append(f"{r['case']:<32}{r['backend']:<26}{r['median_ms']:10.2f}  "
                         f"{', '.join(extra)}")  # fmt: skip
        info = e2e.get("e2e", {})
        if "decode_step_launches" in info:
            d = info["decode_step_launches"]
            lines.append(f"fast decode step: {d['kernels']} kernels, {d['syncs']} host syncs, "
                         f"<= {d['per_layer_max']} kernels per layer")  # fmt: skip
        for k, v in info.get("backends", {}).items():
            lines.append(f"fast model ran {k}: {', '.join(v) or 'none'}")
        for r in e2e.get("skipped", []):
            lines.append(f"  not run: {r['case']}: {r['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m haic_kernels.app.quick", description=__doc__)
    ap.add_argument("what", choices=("tests", "kernels", "e2e", "table"))
    ap.add_argument("path", type=Path, help="the JSON to write (kernels, e2e) or OUT")
    ap.add_argument("--jobs", type=int, default=4, help="tests: pytest processes")
    ap.add_argument("--size", choices=("full", "tiny"), default=None,
                    help="default: full on CUDA, tiny on the CPU")  # fmt: skip
    ap.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="epoch seconds by which the step must be done (default: in 10 min)",
    )
    args = ap.parse_args(argv)  # fmt: skip
    if args.what == "table":
        print(table(args.path))
        return 0
    if args.what == "tests":
        args.path.mkdir(parents=True, exist_ok=True)
        return run_tests(args.path, max(1, args.jobs))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or ("full" if device.type == "cuda" else "tiny")
    deadline = args.deadline if args.deadline is not None else time.time() + 600
    run = run_kernels if args.what == "kernels" else run_e2e
    run(args.path, size, device, deadline)
    print(f"wrote {args.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
