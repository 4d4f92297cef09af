"""haic_kernels.backends: the probes, their reasons, `require`, and the lazy-import rule."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from haic_kernels import _ext, backends
from haic_kernels.backends import Backend, BackendUnavailable

NAMES = ["cuda_device", "triton", "cuda_ext", "flash_attn", "dali", "pyav", "liger"]


@pytest.fixture
def fresh_probes():
    backends.cache_clear()
    yield
    backends.cache_clear()


def test_all_backends_lists_every_probe_with_reasons():
    found = backends.all_backends()
    assert [b.name for b in found] == NAMES
    for b in found:
        assert isinstance(b, Backend)
        assert isinstance(b.reason, str) and b.reason.strip(), b
        assert not (b.usable and not b.available), b
        assert b.version is None or isinstance(b.version, str)
        assert b.name in str(b)


def test_probes_are_cached():
    for name in NAMES:
        assert backends.get(name) is backends.get(name)


def test_get_unknown_name():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        backends.get("tpu")


def test_require_raises_with_the_reason():
    for b in backends.all_backends():
        if b.usable:
            assert backends.require(b.name) is b
        else:
            with pytest.raises(BackendUnavailable, match=b.name) as info:
                backends.require(b.name)
            assert b.reason in str(info.value)
    assert issubclass(BackendUnavailable, RuntimeError)


def test_cuda_device_matches_torch():
    b = backends.cuda_device()
    assert b.usable == torch.cuda.is_available()
    if not b.usable:
        assert "CUDA" in b.reason or "cuda" in b.reason.lower()


def test_triton_needs_device_or_interpreter(fresh_probes, monkeypatch):
    if not backends.triton().available:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(backends, "_cuda_capability", lambda: None)
    backends.triton.cache_clear()
    b = backends.triton()
    assert not b.usable and "TRITON_INTERPRET=1" in b.reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backends.triton.cache_clear()
    b = backends.triton()
    assert b.usable and "interpreter" in b.reason


def test_cuda_ext_reason(fresh_probes, monkeypatch):
    b = backends.cuda_ext()
    if _ext.load() is None:
        assert not b.available and not b.usable
        assert "not built" in b.reason or "failed to import" in b.reason
    elif not torch.cuda.is_available():
        archs = ",".join(_ext.load().compiled_archs())
        assert b.available and not b.usable
        assert b.reason == f"built for {archs} but no CUDA device"
    # An extension built for sm_80/sm_90a on a (pretend) sm_75 device is not usable.
    if _ext.load() is not None:
        monkeypatch.setattr(backends, "_cuda_capability", lambda: (7, 5))
        backends.cuda_ext.cache_clear()
        b = backends.cuda_ext()
        assert not b.usable and "cannot run on this sm_75" in b.reason


def test_dali_without_gpu_is_cpu_only(fresh_probes, monkeypatch):
    monkeypatch.setattr(backends, "_cuda_capability", lambda: None)
    b = backends.dali()
    if b.available:
        assert b.usable and "CPU decoder only" in b.reason and "VP9" in b.reason
    else:
        assert "not installed" in b.reason


@pytest.mark.parametrize(
    ("arch", "cap", "runs"),
    [
        ("sm_80", (8, 0), True),
        ("sm_80", (8, 6), True),
        ("sm_80", (9, 0), False),
        ("sm_90a", (9, 0), True),
        ("sm_90a", (10, 0), False),
        ("sm_86", (8, 0), False),
        ("compute_90", (10, 0), True),
        ("compute_90", (8, 9), False),
    ],
)
def test_arch_runs_on(arch, cap, runs):
    assert _ext.arch_runs_on(arch, cap) is runs


def test_import_is_lazy():
    """`import haic_kernels` loads neither triton, nor _C, nor any reference module."""
    code = (
        "import sys, haic_kernels, haic_kernels.backends, haic_kernels.ops.patchify; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('triton', 'flash_attn') "
        "or m.startswith('nvidia.dali') or m == 'haic_kernels._C' "
        "or (m.startswith('haic_kernels.') and m.endswith('.reference'))]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
