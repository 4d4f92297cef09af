"""Every Triton kernel compiles for sm_90 and sm_80 with the real compiler, as the runtime would
specialize it, without a GPU.

The interpreter the other CPU tests use checks none of tl.dot's layout rules, generates no bf16
code and has no register or shared-memory limit; `haic_kernels._aot_check` runs Triton's
ahead-of-time path (down to a cubin) for the ``AOT_CASES`` of every ops/<op>/triton.py. The
compile runs in a subprocess because the kernels' modules must be imported with
TRITON_INTERPRET unset, which conftest.py sets here; the unit tests below check the check's own
rules (specialization, occupancy, classification) and that every case still matches its
kernel's parameters.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from haic_kernels import _aot_check

# The quick set (67 compilations: sm_90 two autotune configs per bf16 GEMM / attention set and
# every hot kernel, sm_80 the bf16 cases) takes ~130 s of CPU, ~70 s on 2 idle cores (5 min on
# one loaded 4x); ``python -m haic_kernels._aot_check --full`` compiles everything (much longer:
# fp32 GEMM/attention tiles take ptxas 10-130 s each).
TIMEOUT_S = 600


def test_triton_kernels_compile_for_gpu_targets(tmp_path):
    problem = _aot_check.api_problem()
    if problem:
        pytest.skip(problem)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")  # fresh: every case compiles
    proc = subprocess.run(
        [sys.executable, "-m", "haic_kernels._aot_check", "--arch", "90", "80", "--jobs", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode == _aot_check.EXIT_NO_API:
        pytest.skip(out.strip().splitlines()[-1])
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert proc.returncode == 0, f"{len(failures)} kernel compilations failed:\n{out[-20000:]}"
    assert "summary:" in out
    print(out)  # the per-kernel table (pytest -s shows it)


def _case(variant: str, group: str = "", min_arch: int = 0):
    return _aot_check.Case("op", "_k", variant, {}, group=group, min_arch=min_arch)


def test_classify_prunes_and_tolerates_only_autotune_configs_with_a_clean_sibling():
    big = _aot_check.Result("op._k[x]", 80, False, 0.1, shared=300_000, error="smem")
    fits = {("op._k[bf16]", 80)}
    assert _aot_check._classify(_case("bf16,a", "op._k[bf16]"), big, fits) == "PRUNE"
    big.error = "smem"
    assert _aot_check._classify(_case("bf16,a", "op._k[bf16]"), big, set()) == "FAIL"
    assert _aot_check._classify(_case("bf16"), big, fits) == "FAIL"  # not autotuned
    spill = _aot_check.Result("op._k[x]", 80, False, 0.1, shared=1000, spills=600,
                              error="spills 600 B per thread")  # fmt: skip
    assert _aot_check._classify(_case("bf16,a", "op._k[bf16]"), spill, fits) == "SPILL"
    spill.error = "spills 600 B per thread"
    assert _aot_check._classify(_case("bf16"), spill, fits) == "FAIL"  # a plain hot kernel
    broken = _aot_check.Result("op._k[x]", 90, False, 0.1, error="CompilationError: ...")
    assert _aot_check._classify(_case("bf16,a", "op._k[bf16]"), broken, fits) == "FAIL"


def test_select_keeps_sm90_whole_and_bf16_elsewhere():
    cases = [_case("bf16,a", "g"), _case("bf16,b", "g"), _case("fp16,a", "h"), _case("bf16")]
    assert _aot_check._select(cases, 90, full=False) == cases
    assert _aot_check._select(cases, 80, full=True) == cases
    assert _aot_check._select(cases, 80, full=False) == [cases[0], cases[1], cases[3]]
    fp8 = _case("bf16,fp8", min_arch=89)
    assert _aot_check._select([fp8], 80, full=True) == []
    assert _aot_check._select([fp8], 90, full=False) == [fp8]


def test_rules_match_the_runtime():
    """An int equal to 1 is the constant 1, one divisible by 16 gets divisibility 16, wide ints
    are i64, floats fp32; the installed Triton's own specializer (3.4+) agrees."""
    rule = _aot_check.rule_specialization
    assert rule(1) == ("constexpr", 1)
    assert rule(4096) == ("i32", "D") and rule(0) == ("i32", "D") and rule(1624 + 1) == ("i32", "")
    assert rule(2**31 + 16) == ("i64", "D") and rule(0.5) == ("fp32", None)
    assert rule(torch.empty(16, dtype=torch.bfloat16)) == ("*bf16", "D")
    assert rule(torch.empty(16, dtype=torch.bfloat16)[1:]) == ("*bf16", "")
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
    except ImportError:
        pytest.skip("this Triton has no native specializer to compare with")
    backend = make_backend(GPUTarget("cuda", 90, 32))
    tensors = (torch.empty(16, dtype=torch.float16), torch.empty(16, dtype=torch.uint8)[3:])
    for v in (1, 0, 16, 17, 4096, 1624, 257, 2**31, 2**31 + 16, -16, 0.5, *tensors):
        got = native_specialize_impl(backend, v, False, True, True)
        assert (got[0], got[1] or None) == (rule(v)[0], rule(v)[1] or None), v  # fmt: skip


def test_occupancy():
    # 4 warps, 64 regs, no shared memory: 8 blocks by registers (64K / (64*32*4)), 16 by warps
    assert _aot_check.occupancy(64, 0, 4, 90) == 0.5
    # 255 regs (allocated as 256) and 128 KiB of shared memory: one block of 4 warps per SM
    assert _aot_check.occupancy(255, 131072, 4, 90) == 4 / 64
    assert _aot_check.occupancy(32, 0, 4, 90) == 1.0  # 16 blocks of 4 warps = 64 warps


def test_every_case_matches_its_kernel():
    """Each op's AOT_CASES names a kernel of its triton.py and gives every parameter a value
    (a launcher change that adds or renames one shows here, without compiling)."""
    code = (
        "from haic_kernels import _aot_check as a\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from triton.compiler import make_backend\n"
        "b = make_backend(GPUTarget('cuda', 90, 32))\n"
        "n = 0\n"
        "for op in a.op_names():\n"
        "    for c in a.cases_of(op):\n"
        "        a.specialize(a._jit(c.op, c.kernel), c.args, b)\n"
        "        n += 1\n"
        "print(n, sorted({c.op for op in a.op_names() for c in a.cases_of(op)}))\n"
    )
    if _aot_check.api_problem():
        pytest.skip(_aot_check.api_problem())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    n, ops = proc.stdout.strip().split(" ", 1)
    assert int(n) > 100
    for op in ("attention", "norm", "activation", "fp8_linear", "conv_compress", "patch_embed"):
        assert op in ops, f"{op} has no AOT_CASES"
