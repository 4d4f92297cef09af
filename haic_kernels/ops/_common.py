"""THE op contract: argument checks that also normalize layout, the cu_seqlens rule, the no-grad
rule, the output-allocation hook, backend resolution and each op's dispatch table.

Every public op goes through these helpers, so every op rejects bad input the same way, with a
message that names the argument and says what was expected:

- `check_tensor`: type, dims, dtype, device, and the layout the kernel needs (anything a kernel
  reads as a raw pointer is made contiguous here: ``x.to(dtype)`` returns ``x`` itself, strides
  and all, when the dtype already matches, so it never is enough on its own);
- `check_same_device`: one device for every tensor of a call (a meta tensor among CPU tensors is
  named, never silently split);
- `check_values`: a property of a tensor's *values* (ids in range, lengths >= 0, no NaN). CPU
  tensors are checked eagerly (ValueError); CUDA tensors get an asynchronous device assert
  (``torch._assert_async``), so a check never waits for the GPU: a lie is reported at the next
  synchronization, and the kernels are written to stay inside their buffers meanwhile; meta
  tensors have no values and are not checked;
- `check_cu_seqlens` + `check_max_seqlen`: the one rule for packed (varlen) batches;
- `check_no_grad`: inference ops refuse inputs that require grad while grad mode is on;
- `new_output`: the one allocation of every fast backend's outputs (`output_hook` lets tests
  poison them);
- `Dispatch`: one op's table of backends, resolved under the house rules of DESIGN.md:
  an explicit backend that cannot run raises `BackendUnavailable` with the reason; ``"auto"``
  picks PyTorch for CPU tensors, and on a GPU the first fast backend that is usable *and
  verified* on that GPU's architecture (`VERIFIED`), else the fallback. A path counts as
  verified once ``benchmarks/gpu_suite.sh`` has run its parity tests green on that architecture
  and the results were committed; until then ``HAIC_TRUST_UNVERIFIED=1`` lets ``auto`` choose it
  anyway (benchmarks and the GPU suite set it; explicit backends never need it).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from haic_kernels import _ext, backends
from haic_kernels.backends import BackendUnavailable
from haic_kernels.ops._values import (
    check_values,
    device_checks,
    eager_values,
    trusted_values,
    values_trusted,
)

__all__ = [
    "INT_DTYPES",
    "VERIFIED",
    "Dispatch",
    "check_bool",
    "check_cu_seqlens",
    "check_dtype",
    "check_float",
    "check_int",
    "check_max_seqlen",
    "check_no_grad",
    "check_same_device",
    "check_tensor",
    "check_triple",
    "check_values",
    "device_checks",
    "eager_values",
    "ext_runs_on",
    "interpreting",
    "is_verified",
    "new_output",
    "output_hook",
    "resolve_backend",
    "trust_unverified",
    "trusted_values",
    "values_trusted",
]

INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_INT32_MAX = 2**31 - 1

# (op, backend) -> GPU architectures ("sm_90", ...) on which that fast path passed the GPU parity
# suite (benchmarks/gpu_suite.sh, results under benchmarks/results/). Empty until a GPU run
# proves a path: no GPU has been available to this project yet.
VERIFIED: dict[tuple[str, str], frozenset[str]] = {}


# ---- backend resolution -------------------------------------------------------------------------


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
    if (
        backend == "liger"
    ):  # Liger-Kernel's Triton kernels: CUDA only (the interpreter rejects them)
        lg = backends.liger()
        if not on_cuda:
            return f"Liger-Kernel needs CUDA tensors, got tensors on {device}"
        return None if lg.usable else lg.reason
    if backend == "scaled_mm":  # torch._scaled_mm: e4m3 tensor cores
        if not on_cuda:
            return f"needs CUDA tensors, got tensors on {device}"
        if not hasattr(torch, "_scaled_mm"):
            return f"torch {torch.__version__} has no torch._scaled_mm"
        if torch.cuda.get_device_capability(device) < (8, 9):
            return f"needs sm_89 or newer (fp8 tensor cores), this device is {_arch(device)}"
        return None
    return None  # torch, sdpa and other pure-PyTorch paths run anywhere


def resolve_backend(
    op: str,
    backend: object,
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
    if not isinstance(backend, str) or (backend != "auto" and backend not in choices):
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


@dataclass(frozen=True)
class Dispatch:
    """One op's dispatch table: concrete backend name -> implementation.

    The implementations take the op's checked arguments (``backend`` excluded) and import their
    backend module lazily, so the table costs nothing until a backend runs. Each op's ``ops.py``
    builds one and its ``torch.library`` custom op calls `run`.
    """

    op: str
    impls: Mapping[str, Callable[..., Any]]
    auto_order: tuple[str, ...] = ()
    fallback: str = "torch"

    @property
    def choices(self) -> tuple[str, ...]:
        """The concrete backends (``"auto"`` excluded)."""
        return tuple(self.impls)

    def resolve(
        self,
        backend: object,
        device: torch.device,
        *,
        unsupported: Callable[[str], str | None] | None = None,
        fallback: str | None = None,
    ) -> str:
        """`resolve_backend` over this table. ``unsupported(name)`` says why a backend cannot
        express this particular call (None if it can): ``auto`` skips such backends, an
        explicit one raises ValueError with the reason."""
        fb = self.fallback if fallback is None else fallback
        if backend != "auto" and isinstance(backend, str) and backend in self.impls:
            resolve_backend(self.op, backend, device, choices=self.choices, auto_order=())
            why = unsupported(backend) if unsupported is not None else None
            if why is not None:
                raise ValueError(f"backend: {backend!r} cannot run this call: {why}")
            return backend
        order = tuple(b for b in self.auto_order if unsupported is None or unsupported(b) is None)
        return resolve_backend(
            self.op, backend, device, choices=self.choices, auto_order=order, fallback=fb
        )

    def run(self, backend: str, *args: Any) -> Any:
        """Call the implementation of ``backend`` (already resolved)."""
        impl = self.impls.get(backend)
        if impl is None:
            raise ValueError(f"backend: expected a resolved backend of {self.op}, got {backend!r}")
        return impl(*args)


# ---- output allocation --------------------------------------------------------------------------

_output_hooks: list[Callable[[torch.Tensor], torch.Tensor]] = []


def new_output(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The allocation of every fast backend's outputs (``torch.empty``: the caching allocator,
    so a call stays capturable in a CUDA graph); `output_hook` sees each buffer first."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    for hook in _output_hooks:
        out = hook(out)
    return out


@contextmanager
def output_hook(hook: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, every `new_output` buffer passes through ``hook`` (tests fill them with
    NaN so that an element a kernel forgets to write cannot pass for a right answer)."""
    _output_hooks.append(hook)
    try:
        yield
    finally:
        _output_hooks.remove(hook)


# ---- tensor checks ------------------------------------------------------------------------------


def check_tensor(
    name: str,
    value: object,
    *,
    dims: int | Iterable[int] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    shape_hint: str = "",
    device: torch.device | None = None,
    layout: str = "any",
) -> torch.Tensor:
    """``value`` must be a tensor with one of ``dims`` dimensions and one of ``dtypes`` (on
    ``device`` if given). Returns it in the layout the kernel reads:

    - ``"any"``: as is (the kernel takes its strides);
    - ``"rows"``: unit stride in the last dim (the kernel takes the other strides);
    - ``"contiguous"``: contiguous (the kernel reads it as a raw pointer).
    """
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
    if device is not None and value.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {value.device}")
    if layout == "contiguous":
        return value.contiguous()
    if layout == "rows":
        return value if value.dim() == 0 or value.stride(-1) == 1 else value.contiguous()
    if layout != "any":
        raise ValueError(f"layout: expected 'any', 'rows' or 'contiguous', got {layout!r}")
    return value


def check_dtype(name: str, value: torch.Tensor, dtypes: Iterable[torch.dtype]) -> None:
    allowed = tuple(dtypes)
    if value.dtype not in allowed:
        raise TypeError(
            f"{name}: expected dtype {' or '.join(str(d) for d in allowed)}, got {value.dtype}"
        )


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (None skipped) live on one device; returns it. A meta tensor among
    real ones is named like any other device mismatch."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected a tensor on {first.device} (where {first_name} is), "
                f"got one on {t.device}"
            )
    return first.device


def check_no_grad(op: str, **tensors: torch.Tensor | None) -> None:
    """Inference ops have no backward: under grad mode, an input that requires grad raises
    (naming it) instead of returning a tensor whose gradient would silently be missing."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{name}: requires grad, but {op} has no backward; call it under "
                "torch.no_grad() or torch.inference_mode(), or pass a detached tensor"
            )


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an int {rng}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r}")
    return value


def check_float(name: str, value: object, *, positive: bool = False) -> float:
    """A finite real number (> 0 with ``positive``); NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        want = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return v


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


# ---- the packed-batch rule ----------------------------------------------------------------------


def check_cu_seqlens(
    name: str, value: object, total: int, device: torch.device, *, what: str = "rows"
) -> torch.Tensor:
    """THE ``cu_seqlens`` rule of every op: an integer ``[B+1]`` tensor on ``device`` with
    ``cu[0] == 0``, non-decreasing, ``cu[-1] == total`` (the number of ``what``). Returns it as
    contiguous int32 (a fresh tensor when the input is strided or of another dtype).

    Values are checked eagerly for CPU tensors and with an asynchronous device assert for CUDA
    ones (no host sync); kernels clamp every boundary they read into ``[0, total]``, so a lie
    on the GPU never reads or writes outside a buffer before the assert reports it.
    """
    cu = check_tensor(name, value, dims=1, dtypes=INT_DTYPES, shape_hint="[B+1]", device=device)
    if cu.numel() < 1:
        raise ValueError(f"{name}: expected [B+1] offsets starting at 0, got an empty tensor")
    if total > _INT32_MAX:
        raise ValueError(f"{name}: at most 2^31-1 {what} are supported, got {total}")
    if values_trusted():
        pass  # the caller made these offsets (`trusted_values`)
    elif eager_values(cu):
        vals = cu.tolist()
        if vals[0] != 0 or vals[-1] != total or any(b < a for a, b in itertools.pairwise(vals)):
            shown = f"{vals[:8]}{'...' if len(vals) > 8 else ''}"
            raise ValueError(
                f"{name}: expected non-decreasing offsets from 0 to {total} (the number of "
                f"{what}), got {shown}"
            )
    elif cu.device.type != "meta":  # a handful of tiny kernels, no sync
        c = cu if cu.dtype in (torch.int32, torch.int64) else cu.to(torch.int64)
        ok = (c[1:] >= c[:-1]).all() & (c[0] == 0) & (c[-1] == total)
        torch._assert_async(
            ok, f"{name}: expected non-decreasing offsets from 0 to {total} ({what})"
        )
    return cu.to(torch.int32).contiguous()


def check_max_seqlen(
    name: str, value: object, cu: torch.Tensor, total: int, *, sync: bool = True
) -> int:
    """The longest sequence of the checked ``cu`` (from `check_cu_seqlens`), never trusted:

    - CPU: computed; a given ``value`` below it raises ValueError naming ``name``;
    - CUDA: a given ``value`` is checked by an asynchronous device assert and capped at
      ``total`` (so a huge one cannot blow up a launch grid); without one it is read from the
      device (one host sync, skipped with ``sync=False`` or under torch.compile, where
      ``total`` bounds it instead). Kernels treat it as a launch-size hint and cover longer
      sequences anyway;
    - meta: ``value`` capped at ``total``, or ``total``.
    """
    given = None if value is None else check_int(name, value, minimum=0)
    if cu.numel() < 2 or total == 0:
        return 0
    if given is not None and values_trusted():
        return min(given, total)
    if eager_values(cu):
        actual = int((cu[1:] - cu[:-1]).max())
        if given is not None and given < actual:
            raise ValueError(
                f"{name}: {given} is shorter than the longest sequence ({actual}); pass the "
                "true maximum or None"
            )
        return actual
    if cu.device.type == "meta":
        return min(given, total) if given is not None else total
    longest = (cu[1:] - cu[:-1]).max()
    if given is not None:
        torch._assert_async(longest <= given, f"{name}: shorter than the longest sequence")
        return min(given, total)
    if not sync or torch.compiler.is_compiling():
        return total
    return int(longest)
