"""Compile every Triton kernel of the package for real GPU targets, without a GPU.

    python -m haic_kernels._aot_check [--full] [--arch 90 80] [--jobs 2] [--only attention]

The CPU tests run the kernels under the interpreter, which checks no tl.dot layout/shape rule,
generates no bf16 code and has no shared-memory limit. This runs Triton's real compiler ahead of
time (``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``, down to a cubin via
ptxas) for each case of `haic_kernels._aot_cases` and prints one line per (kernel, config, dtype,
arch): shared memory, registers/stack bytes (from cuobjdump when available) and compile time. A case
needing more shared memory than the arch lets one block opt into is a failure (the launch would be
rejected), except an autotune config when another config of its set fits: the autotuner skips it
(OutOfResources), so it is listed as PRUNE. ``--full`` compiles every autotune config in every
dtype; the default (quick) set is every config in bf16 plus one config of each other dtype (see
``quick`` in the table) for sm_90, and the bf16 cases with one config per autotune set for sm_80
(see `_select`).

TRITON_INTERPRET must be unset (the kernels' decorators read it at import): this refuses to run
otherwise. Exit status: 0 all compiled (or failed as expected, see KNOWN_FAILURES), 1 a failure,
77 the installed Triton lacks the ahead-of-time API (the test skips).
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Largest dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin),
# which Triton's launcher checks before a launch: H100/H200 227 KiB, A100 163 KiB.
SMEM_LIMIT = {90: 232448, 80: 166912}
EXIT_NO_API = 77

# "sm_<arch> <case id>" (regex, re.search) -> why it is expected to fail. Empty: everything
# compiles (autotune configs over the shared-memory limit are handled by `_classify`).
KNOWN_FAILURES: dict[str, str] = {}


@dataclass
class Result:
    case_id: str
    arch: int
    ok: bool
    seconds: float
    shared: int | None = None
    regs: int | None = None
    spills: int | None = None
    error: str = ""


def api_problem() -> str | None:
    """Why the installed Triton cannot compile ahead of time here, or None."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource
    except Exception as e:  # any import failure means no AOT path
        return f"triton AOT API unavailable: {type(e).__name__}: {e}"
    params = inspect.signature(ASTSource).parameters
    if "constexprs" not in params:
        return f"triton {triton.__version__}: ASTSource has no 'constexprs' (needs Triton >= 3.3)"
    if "options" not in inspect.signature(triton.compile).parameters:
        return f"triton {triton.__version__}: triton.compile takes no 'options'"
    return None


def _resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, stack bytes) per thread from cuobjdump, or (None, None) if unavailable."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            text = subprocess.run(
                [tool, "-res-usage", f.name], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None, None
    regs = re.search(r"REG:(\d+)", text)
    # Spills land in the per-thread stack frame (STACK), not LOCAL, with the ptxas 13 that
    # Triton 3.9 bundles. Informational only: that ptxas's register counts (often 32 with a
    # large stack) need not match the ptxas of the Triton on the GPU machine.
    spills = re.search(r"STACK:(\d+)", text)
    return (int(regs.group(1)) if regs else None, int(spills.group(1)) if spills else None)


def compile_case(case, arch: int) -> Result:
    """Compile one case for sm_<arch>; never raises."""
    import triton
    from triton.backends.compiler import GPUTarget

    from haic_kernels._aot_cases import _jit

    t0 = time.perf_counter()
    try:
        fn = _jit(case.op, case.kernel)
        # Pointers from torch allocations are 16-byte aligned: the runtime specializes on that,
        # and it changes the vectorization (so the code) of every load and store.
        attrs = {
            (i,): [["tt.divisibility", 16]]
            for i, n in enumerate(fn.arg_names)
            if case.signature[n].startswith("*")
        }
        src = triton.compiler.ASTSource(
            fn=fn, signature=case.signature, constexprs=case.constexprs, attrs=attrs
        )
        opts = {"num_warps": case.num_warps, "num_stages": case.num_stages}
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    except Exception as e:  # the report names the error
        msg = f"{type(e).__name__}: {e}".strip()
        return Result(case.id, arch, False, time.perf_counter() - t0, error=msg)
    shared = int(kernel.metadata.shared)
    regs, spills = _resources(kernel.asm.get("cubin", b""))
    res = Result(case.id, arch, True, time.perf_counter() - t0, shared, regs, spills)
    if shared > SMEM_LIMIT[arch]:
        res.ok = False
        limit = SMEM_LIMIT[arch]
        res.error = f"shared memory {shared} B > {limit} B allowed per block on sm_{arch}"
    return res


def _work(item):
    case, arch = item
    return case, compile_case(case, arch)


def expected_failure(key: str) -> str | None:
    """Why ``"sm_<arch> <case id>"`` is expected to fail, or None."""
    for pattern, why in KNOWN_FAILURES.items():
        if re.search(pattern, key):
            return why
    return None


def _classify(case, res: Result, fits: set[tuple[str, int]]) -> str:
    """OK / FAIL / XFAIL / XPASS, or PRUNE: an autotune config over the arch's shared memory
    while another config of its group fits (the autotuner skips it: OutOfResources)."""
    why = expected_failure(f"sm_{res.arch} {case.id}")
    if res.ok:
        return "XPASS" if why else "OK"
    if why:
        res.error += f"\n(expected: {why})"
        return "XFAIL"
    if res.shared is not None and case.group and (case.group, res.arch) in fits:
        res.error += "\n(autotune config: skipped at launch, another config of its group fits)"
        return "PRUNE"
    return "FAIL"


def _line(res: Result, status: str) -> str:
    info = f"smem={res.shared}" if res.shared is not None else ""
    if res.regs is not None:
        info += f" regs={res.regs} stack={res.spills}B"
    text = f"{status:<5} sm_{res.arch} {res.case_id} {info} t={res.seconds:.1f}s"
    if res.error:
        text += "\n      " + res.error.replace("\n", "\n      ")
    return text


def _select(cases: list, arch: int, full: bool) -> list:
    """The cases compiled for ``arch``: all of them for sm_90 (the H100/H200 target) or with
    --full; otherwise, for the other archs, the bf16 cases with one autotune config per group
    (the first), which keeps the default run near a minute on 2 cores."""
    if full or arch == 90:
        return cases
    picked, groups = [], set()
    for c in cases:
        if c.variant.split(",")[0] != "bf16" or (c.group and c.group in groups):
            continue
        groups.add(c.group)
        picked.append(c)
    return picked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="every config in every dtype")
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SMEM_LIMIT))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--only", nargs="+", help="ops to compile (default all)")
    args = p.parse_args(argv)

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET (the kernels read it when imported)", file=sys.stderr)
        return 2
    problem = api_problem()
    if problem:
        print(f"SKIP: {problem}")
        return EXIT_NO_API
    # A fresh cache, so every case really runs the compiler (and no stale entry hides a failure).
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="haic_aot_"))
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's warning, same default

    from haic_kernels._aot_cases import BUILDERS

    ops = args.only or list(BUILDERS)
    cases = [c for op in ops for c in BUILDERS[op]() if args.full or c.quick]
    items = [(c, a) for a in args.arch for c in _select(cases, a, args.full)]
    t0 = time.perf_counter()
    failed = xfailed = 0  # xfailed: expected failures and pruned autotune configs
    if args.jobs > 1:
        pool = mp.get_context("fork").Pool(args.jobs)
        results = pool.imap_unordered(_work, items)
    else:
        pool = None
        results = map(_work, items)
    done = sorted(results, key=lambda cr: (cr[1].arch, cr[0].id), reverse=False)
    if pool is not None:
        pool.close()
        pool.join()
    fits = {(c.group, r.arch) for c, r in done if c.group and r.ok}
    for case, res in done:
        status = _classify(case, res, fits)
        failed += status == "FAIL"
        xfailed += status in ("XFAIL", "PRUNE")
        print(_line(res, status), flush=True)
    n = len(items)
    print(
        f"summary: {n - failed - xfailed} compiled, {xfailed} pruned/expected, {failed} failed "
        f"of {n} ({len(cases)} cases, on sm_{'/sm_'.join(map(str, args.arch))}) "
        f"in {time.perf_counter() - t0:.1f}s with {args.jobs} jobs"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
