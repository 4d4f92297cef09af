"""expert_linear: CogVLM's routed projections (24 frames x 66 vision + ~40 text tokens, bf16).

Cases for ``haic_kernels.ops.expert_linear.api.expert_linear`` (backends "torch", "triton")
with two vision/language experts (vision with bias, as CogVLM's QKV), against two baselines
written here: "dense gemm" (one torch.mm over all T rows with one weight: the throughput the
issue asks for >= 95% of) and "boolean-mask indexing" (the original model code: x[mask] and
x[~mask] per expert, F.linear each, scatter into the output by mask; the issue asks >= 2x).
Work per call: flops = 2*T*K*N; bytes = x read, both experts' weights read, output written.
Sizes: tiny = CPU seconds (fp32, 2 frames of 6 tokens + 7 text, K=64); full = 24 frames x
66 + 40 text tokens (1624 rows), K=4096, N = 6144 (QKV), 4096 (dense), 14336 (gate/up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import load_op, probe, raiser

SUITE = "expert_linear"
OP_MODULE = "haic_kernels.ops.expert_linear.api"
OP_BACKENDS = ("torch", "triton")

# (name, frames, vision tokens per frame, text tokens, K, N, dtype)
SHAPES: dict[str, list[tuple[str, int, int, int, int, int, torch.dtype]]] = {
    "tiny": [("tiny-t19-n96", 2, 6, 5, 64, 96, torch.float32)],
    "full": [
        # 24 x (66 + a frame-index token) + 16 more text tokens = 1624 rows, 40 of them text
        (f"f24-t1624-{what}", 24, 66, 16, 4096, n, torch.bfloat16)
        for what, n in (("qkv6144", 6144), ("dense4096", 4096), ("mlp14336", 14336))
    ],
}


def token_types(frames: int, per_frame: int, text: int, device: torch.device) -> torch.Tensor:
    """[1, T]: bos, then per frame ``per_frame`` vision tokens and one text token (its index, the
    chat template), then the rest of the text."""
    t = frames * (per_frame + 1) + text
    tt = torch.zeros(1, t, dtype=torch.long, device=device)
    for f in range(frames):
        start = 1 + f * (per_frame + 1)
        tt[0, start : start + per_frame] = 1
    return tt


def mask_indexing(x: torch.Tensor, mask: torch.Tensor, w0, w1, b1) -> torch.Tensor:
    """The original code's routing: boolean-mask gathers per expert, then masked scatters."""
    y_lang = F.linear(x[~mask], w0)
    y_vis = F.linear(x[mask], w1, b1)
    out = y_lang.new_empty(*x.shape[:-1], y_lang.shape[-1])
    out[~mask] = y_lang
    out[mask] = y_vis
    return out


def counts(t: int, k: int, n: int, dtype: torch.dtype) -> tuple[int, int]:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * t * k * n, (t * k + 2 * n * k + n + t * n) * itemsize


class _Weights:
    """The two experts' weights, made once per (shape, device) and shared by every case."""

    _cache: ClassVar[dict[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    @classmethod
    def get(cls, n: int, k: int, dtype: torch.dtype, device: torch.device):
        key = (n, k, dtype, str(device))
        if key not in cls._cache:
            g = torch.Generator(device="cpu").manual_seed(n * 31 + k)
            make = lambda *s: (torch.randn(*s, generator=g) * k**-0.5).to(device, dtype)
            cls._cache[key] = (make(n, k), make(n, k), make(n) * k**0.5)
        return cls._cache[key]


def _factory(frames, per_frame, text, k, dtype) -> Callable[[torch.device], tuple[Any, ...]]:
    def make_inputs(device: torch.device) -> tuple[Any, ...]:
        from haic_kernels.ops.expert_linear import Routing

        tt = token_types(frames, per_frame, text, device)
        x = torch.randn(tt.shape[1], k, device=device).to(dtype)
        # CogVLM's rule: the vision expert where a token and the next one are vision tokens.
        mask = torch.zeros_like(tt, dtype=torch.bool)
        mask[:, :-1] = (tt[:, :-1] == 1) & (tt[:, 1:] == 1)
        return x, mask.reshape(-1), Routing.from_vision_mask(mask)

    return make_inputs


def _make_check(label: str, n: int, k: int, dtype: torch.dtype, device: torch.device):
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        x, mask, _ = inputs
        w0, w1, b1 = _Weights.get(n, k, dtype, device)
        x64 = x.double()
        ref = torch.where(
            mask[:, None], F.linear(x64, w1.double(), b1.double()), F.linear(x64, w0.double())
        )
        if not isinstance(out, torch.Tensor) or out.shape != ref.shape or out.dtype != dtype:
            raise AssertionError(f"{label}: expected {tuple(ref.shape)} {dtype}")
        assert_parity(out, mask_indexing(x, mask, w0, w1, b1), ref, what=label)

    return check


def cases(size: str, device: torch.device) -> list[Case]:
    """Baselines first, then the op's backends, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    op, op_skip, op_error = load_op(OP_MODULE, "expert_linear")
    out: list[Case] = []
    for name, frames, per_frame, text, k, n, dtype in SHAPES[size]:
        t = frames * (per_frame + 1) + text
        flops, nbytes = counts(t, k, n, dtype)
        common = dict(
            suite=SUITE,
            name=name,
            shapes={"T": t, "K": k, "N": n, "E": 2, "vision_rows": frames * (per_frame - 1)},
            dtype=str(dtype).removeprefix("torch."),
            flops=flops,
            bytes=nbytes,
            make_inputs=_factory(frames, per_frame, text, k, dtype),
        )

        def weights(n=n, k=k, dtype=dtype):
            return _Weights.get(n, k, dtype, device)

        out.append(Case(backend="dense gemm", fn=lambda x, m, r, w=weights: torch.mm(x, w()[0].T),
                        baseline=True, **common))  # fmt: skip
        out.append(Case(backend="boolean-mask indexing", baseline=True,
                        fn=lambda x, m, r, w=weights: mask_indexing(x, m, *w()),
                        **common))  # fmt: skip
        for b in OP_BACKENDS:
            label = f"{SUITE} {b} {name}"
            if op_error is not None:
                out.append(Case(backend=b, fn=raiser(OP_MODULE, op_error), **common))
                continue
            skip = op_skip
            if skip is None and op is not None:
                skip = _probe(op, b, device, dtype)

            def fn(x, m, r, b=b, w=weights):
                w0, w1, b1 = w()
                return op(x, [w0, w1], [None, b1], r, backend=b)

            out.append(Case(backend=b, fn=fn, skip_reason=skip,
                            check=_make_check(label, n, k, dtype, device), **common))  # fmt: skip
    return out


def _probe(op, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    def call() -> None:
        from haic_kernels.ops.expert_linear import Routing

        x = torch.randn(4, 16, device=device).to(dtype)
        w = torch.randn(16, 16, device=device).to(dtype)
        r = Routing.from_expert_ids(torch.tensor([0, 1, 1, 0], device=device), 2)
        op(x, [w, w], None, r, backend=backend)

    return probe((SUITE, backend, str(device), dtype), call)
