"""Value checks (no host sync on CUDA): `check_values` and the switches that say how and whether
it checks (`device_checks`, `trusted_values`). Re-exported by `haic_kernels.ops._common`, the op
contract, which is where ops import them from; a leaf (torch only), so the contract's packed-batch
rule can build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

__all__ = ["check_values", "device_checks", "eager_values", "trusted_values", "values_trusted"]


_DEVICE_CHECKS: ContextVar[bool] = ContextVar("haic_device_checks", default=False)


@contextmanager
def device_checks() -> Iterator[None]:
    """Within the block, value checks of CPU tensors run as they do on CUDA: asynchronous asserts
    (``torch._assert_async``; on the CPU it still raises at once, as a RuntimeError naming the
    argument), never a host read. The launch counter (`bench.launches`) traces under it, so a CPU
    trace counts the check kernels a GPU launches and none of the host syncs it does not do."""
    token = _DEVICE_CHECKS.set(True)
    try:
        yield
    finally:
        _DEVICE_CHECKS.reset(token)


_TRUSTED: ContextVar[bool] = ContextVar("haic_trusted_values", default=False)


@contextmanager
def trusted_values() -> Iterator[None]:
    """Within the block, `check_values` checks nothing. For a loop over inputs it made itself
    and validated once (the decode step: its positions and cache lengths), which would otherwise
    launch the same check kernels in every layer. Shape, dtype and device checks still run (they
    launch nothing). Under torch.compile the checks run anyway (dynamo cannot read the flag)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def values_trusted() -> bool:
    """Whether value checks are off here (inside `trusted_values`, outside torch.compile, whose
    dynamo cannot read the flag)."""
    return not torch.compiler.is_compiling() and _TRUSTED.get()


def eager_values(t: torch.Tensor) -> bool:
    """Whether ``t``'s values are checked now, on the host: CPU tensors outside torch.compile
    and outside `device_checks`."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling() and not _DEVICE_CHECKS.get()


def check_values(ok: torch.Tensor | Callable[[], torch.Tensor], msg: str) -> None:
    """Raise ``ValueError(msg)`` unless every element of the bool tensor ``ok`` is True.

    CPU: checked now. CUDA (and under torch.compile): an asynchronous device assert, so the
    check never waits for the GPU; the error surfaces at the next synchronization. Meta: no
    values, nothing to check. Within `trusted_values`: nothing. ``ok`` may be a callable making
    the tensor, so that on a hot path nothing is computed when the values are trusted. ``msg``
    must start with the argument's name.
    """
    if values_trusted():
        return
    if callable(ok):
        ok = ok()
    if ok.device.type == "meta" or ok.numel() == 0:
        return
    if eager_values(ok):
        if not bool(ok.all()):
            raise ValueError(msg)
    else:
        torch._assert_async(ok.all(), msg)
