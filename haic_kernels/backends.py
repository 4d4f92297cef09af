"""What can run here, and why not: CUDA device, Triton, haic_kernels._C, flash-attn, DALI, PyAV,
Liger-Kernel.

Every probe is lazy (nothing heavy is imported until it is asked for) and cached for the life of
the process. Each returns a `Backend`:

- ``available``: the software is installed / importable;
- ``usable``: it can run work in this process (e.g. the extension also needs a CUDA device of an
  architecture it was built for);
- ``reason``: one line saying what it is or why it cannot be used (never empty).

Ops call `require` for an explicit ``backend=...`` so that a request that cannot run fails with
that reason instead of falling back silently.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

__all__ = [
    "Backend",
    "BackendUnavailable",
    "all_backends",
    "cache_clear",
    "cuda_device",
    "cuda_ext",
    "dali",
    "flash_attn",
    "get",
    "liger",
    "pyav",
    "require",
    "require_on",
    "triton",
]


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    name: str
    available: bool
    usable: bool
    reason: str
    version: str | None = None

    def __str__(self) -> str:
        state = "usable" if self.usable else ("installed, not usable" if self.available else "no")
        ver = f" {self.version}" if self.version else ""
        return f"{self.name}{ver}: {state} - {self.reason}"


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        return False


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@cache
def _cuda_capability() -> tuple[int, int] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()


@cache
def cuda_device() -> Backend:
    """A CUDA device that torch can use (the current one is described)."""
    import torch

    version = torch.version.cuda
    if version is None:
        return Backend(
            "cuda_device", False, False, f"torch {torch.__version__} is built without CUDA"
        )
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return Backend(
            "cuda_device",
            True,
            False,
            f"torch has CUDA {version} but sees no device{hint}",
            version,
        )
    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    count = torch.cuda.device_count()
    name = torch.cuda.get_device_name(idx)
    reason = f"{name} (sm_{major}{minor}), device {idx} of {count}, CUDA {version}"
    return Backend("cuda_device", True, True, reason, version)


@cache
def triton() -> Backend:
    """Triton: usable on a CUDA device, or on CPU tensors when TRITON_INTERPRET=1."""
    if not _has_module("triton"):
        return Backend("triton", False, False, "not installed (pip install triton)")
    try:
        import triton as _triton
    except Exception as e:  # a broken install should not break `import haic_kernels`
        return Backend("triton", False, False, f"installed but failed to import: {e}")
    version = getattr(_triton, "__version__", None)
    if _interpret_env():
        reason = "interpreter (TRITON_INTERPRET=1): runs CPU tensors, slowly; fp32/fp16 only"
        return Backend("triton", True, True, reason, version)
    if _cuda_capability() is not None:
        return Backend("triton", True, True, "compiles for the CUDA device", version)
    reason = "no CUDA device, and TRITON_INTERPRET=1 was not set to use the interpreter"
    return Backend("triton", True, False, reason, version)


@cache
def cuda_ext() -> Backend:
    """haic_kernels._C, the compiled CUDA kernels: usable on a device it was built for."""
    from haic_kernels import _ext

    ext = _ext.load()
    if ext is None:
        return Backend("cuda_ext", False, False, _ext.load_error())
    archs = list(ext.compiled_archs())
    rt = ext.cuda_runtime_version()
    version = f"CUDA runtime {rt // 1000}.{rt % 1000 // 10}"
    built = ",".join(archs) or "no architectures"
    cap = _cuda_capability()
    if cap is None:
        return Backend("cuda_ext", True, False, f"built for {built} but no CUDA device", version)
    dev = f"sm_{cap[0]}{cap[1]}"
    if not any(_ext.arch_runs_on(a, cap) for a in archs):
        reason = (
            f"built for {built}, which cannot run on this {dev} device "
            "(rebuild with HAIC_CUDA_ARCHS including it)"
        )
        return Backend("cuda_ext", True, False, reason, version)
    return Backend("cuda_ext", True, True, f"built for {built}; runs on this {dev}", version)


@cache
def flash_attn() -> Backend:
    """flash-attn (Dao-AILab): needs a CUDA device of compute capability 8.0 or newer."""
    if not _has_module("flash_attn"):
        return Backend("flash_attn", False, False, "not installed (pip install flash-attn)")
    version = _dist_version("flash-attn", "flash_attn")
    cap = _cuda_capability()
    if cap is None:
        return Backend("flash_attn", True, False, "installed but no CUDA device", version)
    if cap < (8, 0):
        reason = f"needs sm_80 or newer, this device is sm_{cap[0]}{cap[1]}"
        return Backend("flash_attn", True, False, reason, version)
    try:  # only imported where it can run: it loads CUDA libraries at import time
        importlib.import_module("flash_attn")
    except Exception as e:
        return Backend("flash_attn", True, False, f"installed but failed to import: {e}", version)
    return Backend("flash_attn", True, True, f"runs on sm_{cap[0]}{cap[1]}", version)


@cache
def dali() -> Backend:
    """NVIDIA DALI video decoding: GPU decoder with a CUDA device, else CPU (VP8/VP9/MJPEG)."""
    if not _has_module("nvidia.dali"):
        return Backend("dali", False, False, "not installed (pip install haic_kernels[video])")
    version = _dist_version(
        "nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"
    )
    if _cuda_capability() is None:
        reason = (
            "CPU decoder only (VP8, VP9, MJPEG): no CUDA device for the GPU decoder "
            "(H.264/HEVC/AV1 go through PyAV)"
        )
        return Backend("dali", True, True, reason, version)
    return Backend(
        "dali", True, True, "GPU decoder (H.264, HEVC, AV1, VP9) on the CUDA device", version
    )


@cache
def pyav() -> Backend:
    """PyAV (FFmpeg bindings): CPU decoding of any container/codec FFmpeg supports."""
    if not _has_module("av"):
        return Backend("pyav", False, False, "not installed (pip install av)")
    return Backend("pyav", True, True, "FFmpeg decoding on the CPU", _dist_version("av"))


@cache
def liger() -> Backend:
    """Liger-Kernel (linkedin, pure Triton): the optional ``backend="liger"`` of the norm and
    activation ops. CUDA only: its kernels call ``.to()`` on scalar arguments, which Triton's
    interpreter (plain Python floats) rejects, so it cannot run on CPU tensors."""
    if not _has_module("liger_kernel"):
        return Backend("liger", False, False, "not installed (pip install haic_kernels[liger])")
    version = _dist_version("liger-kernel", "liger_kernel")
    if _cuda_capability() is None:
        reason = "installed, but needs a CUDA device (its kernels do not run under the interpreter)"
        return Backend("liger", True, False, reason, version)
    return Backend("liger", True, True, "fused RMSNorm and SiLU*mul on the CUDA device", version)


_PROBES: dict[str, Callable[[], Backend]] = {
    "cuda_device": cuda_device,
    "triton": triton,
    "cuda_ext": cuda_ext,
    "flash_attn": flash_attn,
    "dali": dali,
    "pyav": pyav,
    "liger": liger,
}


def get(name: str) -> Backend:
    """The probe result for ``name`` (one of `all_backends`' names)."""
    try:
        probe = _PROBES[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(_PROBES)}") from None
    return probe()


def all_backends() -> list[Backend]:
    """Every probe, in a fixed order: cuda_device, triton, cuda_ext, flash_attn, dali, pyav,
    liger."""
    return [probe() for probe in _PROBES.values()]


def require(name: str) -> Backend:
    """The `Backend` for ``name`` if usable, else raise `BackendUnavailable` with its reason."""
    b = get(name)
    if not b.usable:
        raise BackendUnavailable(f"{name} is not usable here: {b.reason}")
    return b


def require_on(name: str, device: object) -> Backend:
    """`require`, and the tensors must be on a CUDA device (backends with no CPU path)."""
    b = require(name)
    if getattr(device, "type", str(device)) != "cuda":
        raise BackendUnavailable(f"{name} needs CUDA tensors, got tensors on {device}")
    return b


def cache_clear() -> None:
    """Forget every cached probe (tests; or after changing TRITON_INTERPRET / devices)."""
    for probe in (*_PROBES.values(), _cuda_capability):
        probe.cache_clear()
    from haic_kernels import _ext

    _ext._load.cache_clear()
