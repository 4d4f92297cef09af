"""A cache of re-laid-out weights (permuted, transposed, padded), shared by the GEMM-style ops.

Ops such as `patch_embed` and `conv_compress` take weights in the checkpoint's nn.Conv2d layout
and need them in a GEMM-friendly layout. Re-laying out a 1792 x 7168 weight costs about as much
as a small kernel, so the result is kept, keyed by the *tensor object* plus what would reveal a
change to it:

- the tensor object, through a weak reference: an entry dies with its weight, and a new tensor
  that happens to reuse the freed address is never mistaken for the old one;
- ``weight._version``: any in-place write through the tensor (``copy_``, ``load_state_dict``,
  an optimizer step) bumps it, so the next call re-lays-out;
- data pointer, shape, strides, dtype, device, and the layout's own key (padding, ...).

Limits: writes that bypass the version counter (``weight.data.copy_(...)``, or writes through a
different tensor sharing the storage, e.g. ``weight.data``, DLPack or raw pointers) are not
seen: call `clear_weight_cache()` after those. Inference tensors (created under
``torch.inference_mode()``) have no version counter and are re-laid-out on every call.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable

import torch

__all__ = ["cached_layout", "clear_weight_cache", "weight_cache_size"]

_lock = threading.Lock()
# id(weight) -> {layout key: (signature, prepared tensor)}; plus the weakref that evicts it.
_entries: dict[int, dict[Hashable, tuple[tuple, torch.Tensor]]] = {}
_refs: dict[int, weakref.ref] = {}


def _signature(weight: torch.Tensor) -> tuple:
    return (
        weight._version,
        weight.data_ptr(),
        tuple(weight.shape),
        tuple(weight.stride()),
        weight.dtype,
        weight.device,
    )


def _evict(key: int) -> Callable[[weakref.ref], None]:
    def callback(_ref: weakref.ref) -> None:
        with _lock:
            _entries.pop(key, None)
            _refs.pop(key, None)

    return callback


def cached_layout(
    weight: torch.Tensor, layout: Hashable, make: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``make(weight)``, computed once per (weight tensor, content version, ``layout``).

    ``make`` must be a pure function of the weight's values and ``layout``. The result must not
    be modified by the caller.
    """
    if weight.is_inference():
        return make(weight)  # no version counter: a cached copy could go stale unnoticed
    key = id(weight)
    sig = _signature(weight)
    with _lock:
        ref = _refs.get(key)
        if ref is not None and ref() is weight:
            hit = _entries[key].get(layout)
            if hit is not None and hit[0] == sig:
                return hit[1]
    prepared = make(weight)
    with _lock:
        ref = _refs.get(key)
        if ref is None or ref() is not weight:  # new tensor (maybe at a recycled id)
            _refs[key] = weakref.ref(weight, _evict(key))
            _entries[key] = {}
        _entries[key][layout] = (sig, prepared)
    return prepared


def clear_weight_cache() -> None:
    """Drop every cached layout (after writing weights behind the version counter's back)."""
    with _lock:
        _entries.clear()
        _refs.clear()


def weight_cache_size() -> int:
    """Number of cached (weight, layout) entries, for tests and diagnostics."""
    with _lock:
        return sum(len(v) for v in _entries.values())
