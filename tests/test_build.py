"""The build: arch parsing, the compiled extension haic_kernels._C, the kernel's host emulation."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from haic_kernels import _ext
from tests._emulation import run_emulation

ROOT = Path(__file__).resolve().parents[1]
BUILT_WITH_NVCC = shutil.which("nvcc") is not None and os.environ.get(
    "HAIC_SKIP_CUDA_BUILD", ""
) in ("", "0")


# ---- arch list -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["80;90a", "8.0;9.0a", "sm_80,sm_90a", " 80 90a ", "80;90a;80"])
def test_default_arch_spellings(spec):
    assert _ext.gencode_flags(spec) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
    ]
    assert _ext.arch_names(spec) == ["sm_80", "sm_90a"]


def test_default_is_ampere_and_hopper():
    assert _ext.arch_names(_ext.DEFAULT_CUDA_ARCHS) == ["sm_80", "sm_90a"]


def test_ptx_suffix():
    assert _ext.gencode_flags("9.0+PTX") == [
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    assert _ext.arch_names("90+PTX") == ["sm_90", "compute_90"]


@pytest.mark.parametrize("spec", ["", ";", "ampere", "9", "90b", "sm90a"])
def test_bad_arch_spec(spec):
    with pytest.raises(ValueError, match="HAIC_CUDA_ARCHS"):
        _ext.gencode_flags(spec)


def test_ext_config_is_stdlib_only():
    """setup.py loads haic_kernels/_ext.py by path in the build env, which has no torch."""
    tree = ast.parse((ROOT / "haic_kernels" / "_ext.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""]
        else:
            continue
        for mod in mods:
            assert mod.split(".")[0] in sys.stdlib_module_names | {"__future__"}, mod


# ---- the compiled extension ----------------------------------------------------------------------

needs_ext = pytest.mark.skipif(
    not BUILT_WITH_NVCC,
    reason="haic_kernels._C is only built when nvcc is on PATH and HAIC_SKIP_CUDA_BUILD is unset",
)


@needs_ext
def test_extension_imports_and_reports_archs():
    import haic_kernels._C as C

    assert C.__doc__ and "torch-free" in C.__doc__
    spec = os.environ.get("HAIC_CUDA_ARCHS", _ext.DEFAULT_CUDA_ARCHS)
    assert C.compiled_archs() == _ext.arch_names(spec)
    assert C.cuda_runtime_version() >= 12000
    # Without a driver there are no devices; with CUDA in torch too, both count the same GPUs.
    assert C.cuda_driver_version() > 0 or C.device_count() == 0
    if torch.version.cuda is not None:
        assert C.device_count() == torch.cuda.device_count()
    assert issubclass(C.CudaError, RuntimeError)


def _kwargs(**over):
    kw = dict(
        frames_ptr=1 << 20,
        shape=(1, 14, 14, 3),
        strides=(588, 42, 3, 1),
        out_ptr=2 << 20,
        out_dtype="float32",
        k_pad=588,
        patch_size=14,
        scale=(1.0, 1.0, 1.0),
        shift=(0.0, 0.0, 0.0),
        stream=0,
    )
    kw.update(over)
    return kw


@needs_ext
@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"out_dtype": "float64"}, "out_dtype"),
        ({"patch_size": 0}, "patch_size must be >= 1"),
        ({"shape": (1, 14, 14, 4)}, "3 channels"),
        ({"strides": (588, 42, 3, 2)}, "channel stride must be 1"),
        ({"shape": (1, 15, 14, 3)}, "multiples of patch_size"),
        ({"k_pad": 587}, "k_pad must be >= 3*patch_size^2 = 588"),
        ({"patch_size": 129, "shape": (1, 129, 129, 3), "k_pad": 3 * 129 * 129}, "shared memory"),
        ({"frames_ptr": 0}, "non-null"),
        ({"strides": (-1, 42, 3, 1)}, "non-negative"),
    ],
)
def test_binding_checks_arguments(over, words):
    """These checks run before any CUDA call, so they are safe without a GPU."""
    import haic_kernels._C as C

    with pytest.raises(ValueError, match=words.replace("^", r"\^").replace("*", r"\*")):
        C.patchify_u8(**_kwargs(**over))


@needs_ext
def test_binding_empty_input_is_a_no_op():
    import haic_kernels._C as C

    C.patchify_u8(**_kwargs(shape=(0, 14, 14, 3), frames_ptr=0, out_ptr=0))


@needs_ext
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_kernel_without_gpu_raises_not_crashes():
    """Pointer validation needs the driver; without one the call must raise, not crash.

    Run in a subprocess so that a crash would fail this test instead of killing pytest.
    """
    code = (
        "import haic_kernels._C as C\n"
        "kw = dict(frames_ptr=1 << 20, shape=(1, 14, 14, 3), strides=(588, 42, 3, 1), "
        "out_ptr=2 << 20, out_dtype='bfloat16', k_pad=592, patch_size=14, "
        "scale=(1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0), stream=0)\n"
        "try:\n"
        "    C.patchify_u8(**kw)\n"
        "except C.CudaError as e:\n"
        "    print('raised:', e)\n"
        "else:\n"
        "    raise SystemExit('no exception')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "raised: patchify_u8" in proc.stdout and "CUDA error" in proc.stdout


# ---- the CUDA kernel, emulated on the host -------------------------------------------------------


def test_patchify_kernel_host_emulation(tmp_path):
    """csrc/patchify.cu compiled by g++ against csrc/emu shims, threads as CUDA threads.

    Bit-exact against fmaf + rounding over aligned/misaligned inputs and outputs, crop/strided
    views, several tiles per patch row, odd k_pad; UBSan catches misaligned 16-byte accesses.
    """
    out = run_emulation(tmp_path, "patchify.cu", "patchify_emu.cpp")
    assert "0 failed" in out
