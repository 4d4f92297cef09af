"""attention_vision: the vision tower's full attention, 24 frames x 257 tokens, 16 heads of 112.

Cases for ``haic_kernels.ops.attention.api.attention`` (``causal=False``, backend "triton") on
q/k/v as the tower makes them: strided views of one QKV output [F, 257, 3, 16, 112], against
torch's F.scaled_dot_product_attention (flash / memory-efficient kernels, "sdpa flash") on the
same views. The issue asks for >= SDPA-flash on every shape of the model. Work per call: flops
= 4 * F * L^2 * D * H (QK^T and PV, no causal halving); bytes = q, k, v read once, out written
once. Sizes: tiny = CPU seconds (fp32, 2 frames of 17 tokens, D 64); full = bf16, 1 and 8
videos of 24 frames (the batch of the end-to-end benchmark).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import load_op, probe, raiser

SUITE = "attention_vision"
OP_MODULE = "haic_kernels.ops.attention.api"

# (name, frames, tokens per frame, heads, head dim, dtype)
SHAPES: dict[str, list[tuple[str, int, int, int, int, torch.dtype]]] = {
    "tiny": [("tiny-f2-l17", 2, 17, 2, 64, torch.float32)],
    "full": [("f24-l257", 24, 257, 16, 112, torch.bfloat16),
             ("f192-l257", 192, 257, 16, 112, torch.bfloat16)],
}  # fmt: skip


def counts(f: int, length: int, h: int, d: int, dtype: torch.dtype) -> tuple[int, int]:
    e = torch.empty((), dtype=dtype).element_size()
    return 4 * f * length * length * d * h, 4 * f * length * h * d * e


def sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The baseline: torch SDPA (flash or memory-efficient kernel), full attention, [F, L, H, D]."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    allowed = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if q.device.type == "cpu":
        allowed.append(SDPBackend.MATH)
    with sdpa_kernel(allowed):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2))  # fmt: skip
    return out.transpose(1, 2)


def _factory(f: int, length: int, h: int, d: int, dtype: torch.dtype):
    def make_inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        qkv = torch.randn(f, length, 3, h, d, device=device).to(dtype)
        return tuple(qkv.unbind(2))  # strided views, as FastVisionAttention passes them

    return make_inputs


def _check(label: str) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        q, k, v = inputs
        ref = sdpa_flash(*(t.double() if t.device.type == "cpu" else t.float() for t in inputs))
        assert_parity(out, sdpa_flash(q, k, v), ref, what=label)

    return check


def cases(size: str, device: torch.device) -> list[Case]:
    """The SDPA baseline, then the op's Triton kernel, per shape."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    op, op_skip, op_error = load_op(OP_MODULE, "attention")
    out: list[Case] = []
    for name, f, length, h, d, dtype in SHAPES[size]:
        flops, nbytes = counts(f, length, h, d, dtype)
        common = dict(suite=SUITE, name=name, shapes={"F": f, "L": length, "H": h, "D": d},
                      dtype=str(dtype).removeprefix("torch."), flops=flops, bytes=nbytes,
                      make_inputs=_factory(f, length, h, d, dtype))  # fmt: skip
        out.append(Case(backend="sdpa flash", fn=sdpa_flash, baseline=True, **common))
        if op_error is not None:
            out.append(Case(backend="triton", fn=raiser(OP_MODULE, op_error), **common))
            continue
        fn = lambda q, k, v: op(q, k, v, causal=False, backend="triton")
        probe_in = _factory(1, 17, 2, d, dtype)(device)
        skip = op_skip or probe((SUITE, str(device), dtype, d), lambda f=fn, a=probe_in: f(*a))
        out.append(Case(backend="triton", fn=fn, skip_reason=skip,
                        check=_check(f"{SUITE} triton {name}"), **common))  # fmt: skip
    return out
