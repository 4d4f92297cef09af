"""conv_compress: drop CLS + 2x2/2 conv over the token grid as an implicit GEMM; GEMM-bound.

Cases for ``haic_kernels.ops.conv_compress.api.conv_compress`` (backends "torch", "triton",
"cuda") and two baselines written here: "torch eager" (what the reference model does: slice off
CLS, view the tokens as [F, C, g, g], nn.Conv2d-style F.conv2d, flatten back to tokens) and
"dense gemm" (torch.mm of a ready [M, K] matrix by [K, N], the same M, N, K: the ceiling the
implicit GEMM is held to, >= 80%). Work per call, with M = F*(g/2)^2, N = C_out, K = 4*C:
flops = 2*M*N*K + M*N (bias); bytes = the g*g grid tokens + weight + bias + output. Sizes:
tiny = 3 frames, g = 4, C = C_out = 64, fp32 (CPU, seconds); full = 1, 8 and 32 videos of 24
frames, g = 16, C = C_out = 1792, bf16 (K = 7168).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import load_op, probe, raiser

SUITE = "conv_compress"
OP_MODULE = "haic_kernels.ops.conv_compress.api"
OP_BACKENDS = ("torch", "triton", "cuda")

# (name, videos, frames per video, grid, C, C_out, dtype)
SHAPES: dict[str, list[tuple[str, int, int, int, int, int, torch.dtype]]] = {
    "tiny": [("tiny-f3-g4", 1, 3, 4, 64, 64, torch.float32)],
    "full": [(f"b{b}-f{24 * b}-g16", b, 24, 16, 1792, 1792, torch.bfloat16) for b in (1, 8, 32)],
}


def conv_compress_eager(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, g: int
) -> torch.Tensor:
    """The plain-PyTorch baseline: [F, 1+g*g, C] -> [F, (g/2)^2, C_out], as the model does it."""
    n, _, c = x.shape
    img = x[:, 1:].reshape(n, g, g, c).permute(0, 3, 1, 2)
    return F.conv2d(img, weight, bias, stride=2).flatten(2).transpose(1, 2)


def counts(frames: int, g: int, c: int, c_out: int, dtype: torch.dtype) -> tuple[int, int]:
    """(flops, bytes) of one call."""
    m, k = frames * (g // 2) ** 2, 4 * c
    es = torch.empty((), dtype=dtype).element_size()
    return 2 * m * c_out * k + m * c_out, (frames * g * g * c + k * c_out + c_out + m * c_out) * es


def _params(c: int, c_out: int, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator(device=device).manual_seed(0)
    w = (torch.randn(c_out, c, 2, 2, device=device, generator=gen) / (2 * c**0.5)).to(dtype)
    return w, torch.randn(c_out, device=device, generator=gen).to(dtype)


def _inputs_factory(n: int, g: int, c: int, c_out: int, dtype: torch.dtype):
    """Fresh tokens per input set; one weight per case, shared (it stays resident)."""
    shared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        if str(device) not in shared:
            shared[str(device)] = _params(c, c_out, dtype, device)
        x = torch.randn(n, 1 + g * g, c, device=device).to(dtype)
        return (x, *shared[str(device)])

    return make_inputs


def _gemm_inputs_factory(m: int, k: int, n: int, dtype: torch.dtype):
    shared: dict[str, torch.Tensor] = {}

    def make_inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        if str(device) not in shared:
            shared[str(device)] = (torch.randn(k, n, device=device) / k**0.5).to(dtype)
        return (torch.randn(m, k, device=device).to(dtype), shared[str(device)])

    return make_inputs


def _probe(
    op: Callable[..., torch.Tensor], backend: str, device: torch.device, dtype: torch.dtype
) -> str | None:
    def call() -> None:
        x = torch.randn(1, 17, 16, device=device).to(dtype)
        with torch.no_grad():
            op(x, *_params(16, 16, dtype, device), grid=4, backend=backend)

    return probe((SUITE, backend, str(device), dtype), call)


def _make_check(label: str, g: int, dtype: torch.dtype) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        x, w, b = inputs
        ref = conv_compress_eager(x.double(), w.double(), b.double(), g)
        if not isinstance(out, torch.Tensor) or out.shape != ref.shape or out.dtype != dtype:
            got = (tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else type(out)
            raise AssertionError(f"{label}: expected {tuple(ref.shape)} {dtype}, got {got}")
        assert_parity(out, conv_compress_eager(x, w, b, g), ref, what=label)

    return check


def cases(size: str, device: torch.device) -> list[Case]:
    """Baselines first, then the op's backends, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    op, op_skip, op_error = load_op(OP_MODULE, "conv_compress")
    out: list[Case] = []
    for name, videos, fpv, g, c, c_out, dtype in SHAPES[size]:
        n = videos * fpv
        flops, nbytes = counts(n, g, c, c_out, dtype)
        m, k = n * (g // 2) ** 2, 4 * c
        common = dict(
            suite=SUITE,
            name=name,
            shapes={"videos": videos, "F": n, "g": g, "C": c, "M": m, "N": c_out, "K": k},
            dtype=str(dtype).removeprefix("torch."),
            flops=flops,
            bytes=nbytes,
            # Device time without launch gaps, for every backend alike (see patch_embed.py).
            cuda_graph=size == "full",
        )
        inputs = _inputs_factory(n, g, c, c_out, dtype)
        out.append(
            Case(
                backend="torch eager",
                fn=lambda x, w, b, g=g: conv_compress_eager(x, w, b, g),
                baseline=True,
                make_inputs=inputs,
                **common,
            )
        )
        out.append(
            Case(
                backend="dense gemm",
                fn=torch.mm,
                baseline=True,
                make_inputs=_gemm_inputs_factory(m, k, c_out, dtype),
                **common,
            )
        )
        for b in OP_BACKENDS:
            if op_error is not None:
                fail = raiser(OP_MODULE, op_error)
                out.append(Case(backend=b, fn=fail, make_inputs=inputs, **common))
                continue
            skip = op_skip
            if skip is None and op is not None:
                skip = _probe(op, b, device, dtype)

            def fn(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, b=b, g=g):
                with torch.no_grad():
                    return op(x, w, bias, grid=g, backend=b)

            out.append(
                Case(
                    backend=b,
                    fn=fn,
                    skip_reason=skip,
                    check=_make_check(f"{SUITE} {b} {name}", g, dtype),
                    make_inputs=inputs,
                    **common,
                )
            )
    return out
