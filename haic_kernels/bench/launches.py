"""Count the kernels a callable would launch on a GPU, and its host syncs, by tracing it on the CPU.

    from haic_kernels.bench.launches import count_launches
    report, out = count_launches(fn, *args, layers=model.model.layers, root=model)
    report.kernels, report.syncs, report.layers[0].kernels, print(report.table())

    haic bench launches --config tiny --backend triton       # vision layer, prefill, decode step

What counts as a kernel: every aten op that dispatches (a `TorchDispatchMode` sees it) except
those that only make views or metadata (their schema returns an alias of an input and the result
shares the input's storage: view, transpose, slice, ``to`` a dtype it already has, ...) or only
allocate (empty*, new_empty*); every Triton launch (``JITFunction.run`` / the interpreter's,
named by the kernel); one per call into ``haic_kernels._C`` (its decode attention is in fact
two: split + merge). A ``haic_kernels::*`` custom op is not counted itself: its implementation
runs under the tracer, so the torch ops or Triton launches of the backend it resolved to are.
What counts as a host sync: ``_local_scalar_dense`` (``.item()``, ``int()``, ``bool()``,
``if t:``), ops whose output shape depends on the data (nonzero, masked_select, unique,
boolean-mask indexing, ``repeat_interleave`` without ``output_size``, bincount), ``equal``, and
the host reads ``.tolist()``, ``.cpu()``, ``.numpy()`` (free on a CPU tensor, a device-to-host
copy on a GPU; the trace runs on the CPU standing in for that GPU run).

Value checks of the op contract (`_common.check_values`, the ``cu_seqlens`` rule) are eager
host reads for CPU tensors but asynchronous device asserts for CUDA ones. The trace runs them
the CUDA way (`_common.device_checks`): they count as the kernels a GPU launches for them
(a reduction and ``_assert_async``) and as no sync, so a CPU trace is the GPU run's count.

Per layer: with ``layers`` (modules) and ``root`` (the model), every forward pre-hook under root
sets the current layer (the index of the layer containing that module, or none), and counts go
to it; a layer's ``forward`` / ``decode`` (`ENTRY_POINTS`) sets it on entry and clears it on
return, so ops a layer calls directly count to it and code after the last layer outside.
The first call of ``fn`` may compile or autotune: `count_launches` runs it once untraced first
(``warmup=True``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from haic_kernels import _ext
from haic_kernels.bench import model_calls
from haic_kernels.ops._common import device_checks

__all__ = ["LaunchReport", "Tally", "count_launches", "decode_step", "main", "trace_model"]

# Allocation and bookkeeping ops that launch nothing (views are found from their schemas).
NO_KERNEL = frozenset(
    "aten::" + n
    for n in (
        "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "resize_",
        "set_", "lift_fresh", "detach", "sym_size", "sym_stride", "sym_numel",
        "sym_storage_offset", "record_stream", "_local_scalar_dense", "is_nonzero", "item",
    )
)  # fmt: skip
# Ops whose result the host must wait for (a value read, or a data-dependent output size).
SYNC_OPS = frozenset(
    "aten::" + n
    for n in (
        "_local_scalar_dense", "is_nonzero", "item", "equal", "nonzero", "masked_select", "_unique",
        "_unique2", "unique_consecutive", "unique_dim", "unique_dim_consecutive", "bincount",
    )
)  # fmt: skip
HOST_READS = ("tolist", "cpu", "numpy")
# A layer's entry points (a prefill calls forward, a decode step decode): inside one, counts go
# to that layer, also for ops the layer calls directly rather than through a submodule.
ENTRY_POINTS = ("forward", "decode")


@dataclass
class Tally:
    """Kernels and syncs of one layer (or of everything outside the layers), by name."""

    kernels: int = 0
    syncs: int = 0
    by_kernel: Counter = field(default_factory=Counter)
    by_sync: Counter = field(default_factory=Counter)

    def add(self, name: str, kernel: bool, sync: bool) -> None:
        if kernel:
            self.kernels += 1
            self.by_kernel[name] += 1
        if sync:
            self.syncs += 1
            self.by_sync[name] += 1

    def __sub__(self, other: Tally) -> Tally:
        return Tally(self.kernels - other.kernels, self.syncs - other.syncs,
                     self.by_kernel - other.by_kernel, self.by_sync - other.by_sync)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": self.kernels, "syncs": self.syncs, "by_kernel": dict(self.by_kernel),
                "by_sync": dict(self.by_sync)}  # fmt: skip


@dataclass
class LaunchReport:
    """One traced call: totals, per layer (index order) and outside the layers."""

    total: Tally
    layers: list[Tally]
    outside: Tally

    @property
    def kernels(self) -> int:
        return self.total.kernels

    @property
    def syncs(self) -> int:
        return self.total.syncs

    def __sub__(self, other: LaunchReport) -> LaunchReport:
        """Counts of this call beyond ``other`` (e.g. generate(n + 1) - generate(n): one step)."""
        if len(self.layers) != len(other.layers):
            raise ValueError("reports over different layer counts cannot be subtracted")
        return LaunchReport(self.total - other.total,
                            [a - b for a, b in zip(self.layers, other.layers)],
                            self.outside - other.outside)  # fmt: skip

    def per_layer(self) -> tuple[int, int]:
        """(max kernels, max syncs) over the layers (0, 0 without layers)."""
        if not self.layers:
            return 0, 0
        return max(t.kernels for t in self.layers), max(t.syncs for t in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total.to_dict(), "outside": self.outside.to_dict(),
                "layers": [t.to_dict() for t in self.layers]}  # fmt: skip

    def table(self, title: str = "") -> str:
        """Totals, per-layer kernels/syncs and the per-name counts of the first layer."""
        k, s = self.per_layer()
        lines = [f"{title}: {self.kernels} kernels, {self.syncs} host syncs"
                 + (f"; per layer at most {k} kernels, {s} syncs ({len(self.layers)} layers),"
                    f" outside the layers {self.outside.kernels} kernels, "
                    f"{self.outside.syncs} syncs" if self.layers else "")]  # fmt: skip
        first = self.layers[0] if self.layers else self.total
        label = "layer 0" if self.layers else "call"
        for name, n in first.by_kernel.most_common():
            lines.append(f"    {label} kernel  {n:4d}  {name}")
        for name, n in self.total.by_sync.most_common():
            lines.append(f"    sync          {n:4d}  {name}")
        return "\n".join(lines)


def _shares_storage(out: object, args: Sequence[object]) -> bool:
    if not isinstance(out, torch.Tensor):
        return False
    ptr = out.untyped_storage().data_ptr()
    return any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == ptr
               for a in args)  # fmt: skip


def _returns_alias(func: Any) -> bool:
    rets = func._schema.returns
    return bool(rets) and all(r.alias_info is not None and not r.alias_info.is_write
                              for r in rets)  # fmt: skip


def _data_dependent(name: str, args: Sequence[object], kwargs: dict[str, Any]) -> bool:
    if name == "aten::repeat_interleave":
        return isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None and (
            len(args) < 3 or args[2] is None)  # fmt: skip
    if name in ("aten::index", "aten::index_put", "aten::index_put_"):
        idx = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                   for i in (idx or ()))  # fmt: skip
    return False


class _Tracer(TorchDispatchMode):
    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.layers = [Tally() for _ in range(n_layers)]
        self.outside = Tally()
        self.current: int | None = None
        # > 0 inside a Triton launch: the interpreter's own tensor copies are not GPU kernels
        self.paused = 0

    def record(self, name: str, kernel: bool, sync: bool) -> None:
        if self.paused:
            return
        t = self.outside if self.current is None else self.layers[self.current]
        t.add(name, kernel, sync)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        if func.namespace == "haic_kernels":  # count what its implementation launches
            with self:
                return func._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, *args,
                                   **kwargs)  # fmt: skip
        out = func(*args, **kwargs)
        name = func._schema.name
        sync = name in SYNC_OPS or _data_dependent(name, args, kwargs)
        kernel = name not in NO_KERNEL and not (
            _returns_alias(func) and (_shares_storage(out, args) or out is None)
        )
        self.record(func._schema.name.removeprefix("aten::"), kernel, sync)
        return out


@contextlib.contextmanager
def _patched(tracer: _Tracer) -> Iterator[None]:
    """Triton launches, _C calls and host reads report to ``tracer`` while inside."""
    undo: list[tuple[object, str, object]] = []

    def patch(owner: object, attr: str, make: Callable[[Any], Any]) -> None:
        old = getattr(owner, attr)
        undo.append((owner, attr, old))
        setattr(owner, attr, make(old))

    def host_read(old, attr):
        def wrapper(self, *a, **k):
            tracer.record(f"Tensor.{attr}()", False, True)
            return old(self, *a, **k)

        return wrapper

    for attr in HOST_READS:
        patch(torch.Tensor, attr, lambda old, attr=attr: host_read(old, attr))
    for cls in _triton_runners():
        patch(cls, "run", lambda old: _counting_run(old, tracer))
    ext = _loaded_ext()
    if ext is not None:
        for attr in dir(ext):
            if attr.startswith("_") or attr == "compiled_archs" or not callable(getattr(ext, attr)):
                continue
            patch(ext, attr, lambda old, attr=attr: _counting_call(old, f"_C.{attr}", tracer))
    try:
        yield
    finally:
        for owner, attr, old in reversed(undo):
            setattr(owner, attr, old)


def _counting_run(old, tracer: _Tracer):
    def run(self, *args, grid, warmup=False, **kwargs):
        if not warmup:
            fn = getattr(self, "fn", None)
            tracer.record(f"triton {getattr(fn, '__name__', type(self).__name__)}", True, False)
        tracer.paused += 1
        try:
            return old(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            tracer.paused -= 1

    return run


def _counting_call(old, name: str, tracer: _Tracer):
    def call(*args, **kwargs):
        tracer.record(name, True, False)
        return old(*args, **kwargs)

    return call


def _triton_runners() -> list[type]:
    """The classes whose ``run`` launches a Triton kernel (none without Triton)."""
    try:
        from triton.runtime.jit import JITFunction
    except Exception:  # Triton absent or broken: nothing to count
        return []
    out: list[type] = [JITFunction]
    with contextlib.suppress(Exception):
        from triton.runtime.interpreter import InterpretedFunction

        out.append(InterpretedFunction)
    return out


def _loaded_ext():
    return _ext.load() if _ext.load_error() is None else None


def count_launches(
    fn: Callable[..., Any],
    *args: Any,
    layers: Sequence[torch.nn.Module] = (),
    root: torch.nn.Module | None = None,
    warmup: bool = True,
    **kwargs: Any,
) -> tuple[LaunchReport, Any]:
    """Trace ``fn(*args, **kwargs)``; returns (its `LaunchReport`, its result).

    ``layers``: modules whose calls (and their submodules') are counted per index; ``root``:
    the module holding them, whose other submodules count as outside the layers (default: no
    hooks outside the layers, so code after the last layer is attributed to it).
    """
    if warmup:
        with torch.no_grad():
            fn(*args, **kwargs)
    tracer = _Tracer(len(layers))
    owner: dict[int, int | None] = {}
    for i, layer in enumerate(layers):
        owner.update((id(m), i) for m in layer.modules())
    handles = []
    hooked = root.modules() if root is not None else [m for la in layers for m in la.modules()]
    for m in hooked:
        idx = owner.get(id(m))

        def pre_hook(module, inputs, idx=idx):
            tracer.current = idx

        handles.append(m.register_forward_pre_hook(pre_hook))
    entries = [(layer, attr, i) for i, layer in enumerate(layers) for attr in ENTRY_POINTS
               if callable(getattr(layer, attr, None))]  # fmt: skip
    for layer, attr, i in entries:  # an instance attribute shadows the method while tracing
        layer.__dict__[attr] = _entered(getattr(layer, attr), i, tracer)
    try:
        with _patched(tracer), device_checks(), tracer, torch.no_grad():
            out = fn(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for layer, attr, _ in entries:
            layer.__dict__.pop(attr, None)
    total = Tally()
    for t in (*tracer.layers, tracer.outside):
        total.kernels += t.kernels
        total.syncs += t.syncs
        total.by_kernel += t.by_kernel
        total.by_sync += t.by_sync
    return LaunchReport(total, tracer.layers, tracer.outside), out


def _entered(method: Callable[..., Any], idx: int, tracer: _Tracer) -> Callable[..., Any]:
    """``method`` of layer ``idx``: what runs inside counts to the layer, what follows (until
    the next layer or hooked module) outside the layers."""

    def call(*args: Any, **kwargs: Any) -> Any:
        tracer.current = idx
        try:
            return method(*args, **kwargs)
        finally:
            tracer.current = None

    return call


# ---- the model's hot paths (the calls themselves live in model_calls) ------------------------


def decode_step(models: model_calls.Models, rows, embeds: torch.Tensor, *,
                warmup: bool = True) -> LaunchReport:  # fmt: skip
    """One decode step of the fast model: ``generate(3) - generate(2)`` on ``rows``
    (``warmup=False``: the caller has run these shapes already)."""
    kw = dict(layers=models.lm_layers, root=models.fast)
    three, _ = count_launches(model_calls.generate, models.fast, rows, embeds, 3, warmup=warmup,
                              **kw)  # fmt: skip
    two, _ = count_launches(model_calls.generate, models.fast, rows, embeds, 2, warmup=False,
                            **kw)  # fmt: skip
    return three - two


def trace_model(
    size: str = "tiny", variant: str = "video-chat", *, backend: str = "auto", frames: int = 2
) -> dict[str, LaunchReport]:
    """Trace the vision tower (per block), the prefill (dense and packed, per layer) and one
    decode step of the fast model of ``size`` / ``variant`` with random weights, on the CPU."""
    cpu = torch.device("cpu")
    m = model_calls.build(size, variant, torch.float32, frames, cpu, backend)
    video = model_calls.random_frames(m.config, frames, cpu)
    rows = model_calls.prompts(m.config, frames, cpu, ("What happens?", "Why?"))  # 2 lengths
    out: dict[str, LaunchReport] = {}
    run, x = model_calls.vision_tower(m.fast, video)
    out["vision tower"], _ = count_launches(run, x, layers=m.vision_layers, root=m.fast)
    embeds = model_calls.encode(m.fast, video)
    kw = dict(layers=m.lm_layers, root=m.fast)
    out["prefill (dense)"], _ = count_launches(model_calls.generate, m.fast, rows[:1], embeds, 1,
                                               **kw)  # fmt: skip
    out["prefill (packed)"], _ = count_launches(model_calls.generate, m.fast, rows, embeds, 1,
                                                **kw)  # fmt: skip
    out["decode step"] = decode_step(m, rows[:1], embeds)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`haic bench launches`: the kernel and sync counts of the model's hot paths."""
    p = argparse.ArgumentParser(prog="haic bench launches", description=main.__doc__)
    p.add_argument("--config", default="tiny", help="size preset (tiny, small, full)")
    p.add_argument("--variant", default="video-chat", help="video-chat, video-base or image")
    p.add_argument(
        "--backend",
        default="auto",
        help="op backend: auto (PyTorch on the CPU), triton (the interpreter), torch",
    )
    p.add_argument("--frames", type=int, default=2, help="frames in the traced prompt")
    p.add_argument("--json", metavar="PATH", help="write the counts as JSON here")
    args = p.parse_args(argv)  # fmt: skip
    reports = trace_model(args.config, args.variant, backend=args.backend, frames=args.frames)
    title = f"{args.config} {args.variant}, backend={args.backend}"
    for name, r in reports.items():
        print(r.table(f"{title}: {name}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: r.to_dict() for k, r in reports.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
