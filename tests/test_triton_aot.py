"""Every Triton kernel compiles for sm_90 and sm_80 with the real compiler, without a GPU.

The interpreter the other CPU tests use checks none of tl.dot's layout rules, generates no bf16
code and has no shared-memory limit; `haic_kernels._aot_check` runs Triton's ahead-of-time path
(down to a cubin) per kernel, autotune config and dtype. It runs in a subprocess because the
kernels' modules must be imported with TRITON_INTERPRET unset, which conftest.py sets here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from haic_kernels import _aot_check

# The quick set (108 compilations: sm_90 every autotune config in bf16 + one per other dtype, sm_80
# bf16 with one config per autotune set) took 336 s on 2 nearly idle cores (2026-12-02; 75 s
# before the attention kernel's bounds clamping, whose register spills lengthen ptxas), and runs
# next to another test process under `make test`: the limit leaves room for that.
# ``python -m haic_kernels._aot_check --full`` compiles everything (much longer).
TIMEOUT_S = 1500


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


def _case(variant: str, group: str = ""):
    from haic_kernels._aot_cases import Case

    return Case("op", "_k", variant, {}, {}, group=group)


def test_classify_prunes_only_autotune_configs_with_a_fitting_sibling():
    big = _aot_check.Result("op._k[x]", 80, False, 0.1, shared=300_000, error="smem")
    fits = {("op._k[bf16]", 80)}
    assert _aot_check._classify(_case("bf16,a", "op._k[bf16]"), big, fits) == "PRUNE"
    big.error = "smem"
    assert _aot_check._classify(_case("bf16,a", "op._k[bf16]"), big, set()) == "FAIL"
    assert _aot_check._classify(_case("bf16"), big, fits) == "FAIL"  # not autotuned
    broken = _aot_check.Result("op._k[x]", 90, False, 0.1, error="CompilationError: ...")
    assert _aot_check._classify(_case("bf16,a", "op._k[bf16]"), broken, fits) == "FAIL"


def test_select_keeps_sm90_whole_and_one_bf16_config_per_set_elsewhere():
    cases = [_case("bf16,a", "g"), _case("bf16,b", "g"), _case("fp16,a", "h"), _case("bf16")]
    assert _aot_check._select(cases, 90, full=False) == cases
    assert _aot_check._select(cases, 80, full=True) == cases
    assert _aot_check._select(cases, 80, full=False) == [cases[0], cases[3]]
