"""Shared plumbing of the op folders: argument checks, backend choice, the verified-path record.

Every op's ``api.py`` validates with these helpers (so every message names the argument and says
what was expected) and resolves ``backend=`` through `resolve_backend`, which implements the
house rules of DESIGN.md:

- an explicit backend that cannot run raises `BackendUnavailable` with the reason;
- ``"auto"`` picks PyTorch for CPU tensors, and on a GPU the first fast backend that is usable
  *and verified* on that GPU's architecture (`VERIFIED`), else PyTorch. A path counts as verified
  once ``benchmarks/gpu_suite.sh`` has run its parity tests green on that architecture and the
  results were committed; until then ``HAIC_TRUST_UNVERIFIED=1`` lets ``auto`` choose it anyway
  (benchmarks and the GPU suite set it; explicit backends never need it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import torch

from haic_kernels import _ext, backends
from haic_kernels.backends import BackendUnavailable

__all__ = [
    "VERIFIED",
    "check_dtype",
    "check_int",
    "check_same_device",
    "check_tensor",
    "check_triple",
    "ext_runs_on",
    "interpreting",
    "is_verified",
    "resolve_backend",
    "trust_unverified",
]

# (op, backend) -> GPU architectures ("sm_90", ...) on which that fast path passed the GPU parity
# suite (benchmarks/gpu_suite.sh, results under benchmarks/results/). Empty until a GPU run
# proves a path: no GPU has been available to this project yet.
VERIFIED: dict[tuple[str, str], frozenset[str]] = {}


def trust_unverified() -> bool:
    """HAIC_TRUST_UNVERIFIED=1: let ``auto`` choose fast paths not yet verified on this GPU."""
    return os.environ.get("HAIC_TRUST_UNVERIFIED", "0").lower() in ("1", "true", "on", "yes")


def _arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def is_verified(op: str, backend: str, device: torch.device) -> bool:
    """Whether ``auto`` may choose ``backend`` for ``op`` on ``device`` (a CUDA device)."""
    return trust_unverified() or _arch(device) in VERIFIED.get((op, backend), frozenset())


def interpreting() -> bool:
    """True when Triton runs kernels through its interpreter.

    Triton decides this from TRITON_INTERPRET when a kernel is decorated; reading the variable
    (rather than decorating a probe kernel) keeps this traceable by torch.compile.
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def ext_runs_on(device: torch.device) -> bool:
    """Whether haic_kernels._C holds code that runs on ``device`` (a CUDA device)."""
    ext = _ext.load()
    if ext is None:
        return False
    cap = torch.cuda.get_device_capability(device)
    return any(_ext.arch_runs_on(a, cap) for a in ext.compiled_archs())


def _usable_here(op: str, backend: str, device: torch.device) -> str | None:
    """None if ``backend`` can run ``op`` on tensors on ``device``, else the reason it cannot."""
    on_cuda = device.type == "cuda"
    if backend == "triton":
        tri = backends.triton()
        if not tri.available:
            return tri.reason
        if on_cuda:
            return None if tri.usable else tri.reason
        if device.type == "cpu" and interpreting():
            return None
        return (
            f"Triton needs CUDA tensors, or CPU tensors with the interpreter (TRITON_INTERPRET=1 "
            f"set before triton is imported); got tensors on {device}"
        )
    if backend == "cuda":
        if not on_cuda:
            return f"needs CUDA tensors, got tensors on {device}; use backend='torch' or 'auto'"
        ext = backends.cuda_ext()
        if not ext.usable:
            return f"haic_kernels._C is unusable: {ext.reason}"
        if not ext_runs_on(device):
            return f"haic_kernels._C has no code for {device} ({_arch(device)}): {ext.reason}"
        return None
    if backend == "flash_attn":
        fa = backends.flash_attn()
        if not on_cuda:
            return f"flash-attn needs CUDA tensors, got tensors on {device}"
        return None if fa.usable else fa.reason
    return None  # torch, sdpa and other pure-PyTorch paths run anywhere


def resolve_backend(
    op: str,
    backend: str,
    device: torch.device,
    *,
    choices: Sequence[str],
    auto_order: Sequence[str],
    fallback: str = "torch",
) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into a concrete backend for tensors on ``device``.

    Args:
        op: the op's name, for messages and the `VERIFIED` record.
        backend: what the user asked for.
        choices: the concrete backends this op has (``"auto"`` is added).
        auto_order: fast backends ``auto`` tries on a GPU, best first.
        fallback: what ``auto`` returns on CPU, or when no fast path is usable and verified.
    """
    if backend != "auto" and backend not in choices:
        raise ValueError(f"backend: expected one of {('auto', *choices)}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda":
            return fallback
        for cand in auto_order:
            if _usable_here(op, cand, device) is None and is_verified(op, cand, device):
                return cand
        return fallback
    reason = _usable_here(op, backend, device)
    if reason is not None:
        raise BackendUnavailable(f"{op}: backend={backend!r} cannot run here: {reason}")
    return backend


# ---- argument checks ----------------------------------------------------------------------------


def check_tensor(
    name: str,
    value: object,
    *,
    dims: int | Iterable[int] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    shape_hint: str = "",
) -> torch.Tensor:
    """``value`` must be a tensor with one of ``dims`` dimensions and one of ``dtypes``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if dims is not None:
        allowed = (dims,) if isinstance(dims, int) else tuple(dims)
        if value.dim() not in allowed:
            want = " or ".join(str(d) for d in allowed)
            hint = f" {shape_hint}" if shape_hint else ""
            raise ValueError(f"{name}: expected {want} dims{hint}, got shape {tuple(value.shape)}")
    if dtypes is not None:
        check_dtype(name, value, dtypes)
    return value


def check_dtype(name: str, value: torch.Tensor, dtypes: Iterable[torch.dtype]) -> None:
    allowed = tuple(dtypes)
    if value.dtype not in allowed:
        raise TypeError(
            f"{name}: expected dtype {' or '.join(str(d) for d in allowed)}, got {value.dtype}"
        )


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (None skipped) live on one device; returns it."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected a tensor on {first.device} (where {first_name} is), "
                f"got {t.device}"
            )
    return first.device


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_triple(name: str, values: object) -> list[float]:
    """Three finite numbers (R, G, B)."""
    try:
        out = [float(v) for v in values]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected 3 numbers (R, G, B), got {values!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name}: expected 3 numbers (R, G, B), got {len(out)}: {out}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name}: expected finite numbers, got {out}")
    return out
