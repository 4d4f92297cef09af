"""patch_embed: frames -> normalize + patchify + GEMM + CLS + positions, [F, 1+P, D]; GEMM-bound.

Cases for ``haic_kernels.ops.patch_embed.api.patch_embed`` (backends "torch", "triton", "cuda")
and two baselines written here, independently of the op's reference: "torch eager" (what the
reference vision tower does: normalize in fp32, cast, Conv2d, flatten, cat CLS, add positions)
and "torch.compile" of that same function. Work per call, with M = F*P, K = 3*p*p, N = D:
flops = 2*M*N*K (GEMM) + 2*M*N (bias, positions); bytes = frames (1 B per uint8 pixel) + weight
+ bias + cls + positions + output [F, 1+P, D]. Sizes: tiny = 3 frames of 28x42, D = 64, fp32
(CPU, seconds); full = 1, 8 and 32 videos of 24 frames of 224x224, D = 1792, bf16.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import load_op, probe, raiser
from haic_kernels.constants import CLIP_MEAN, CLIP_STD

SUITE = "patch_embed"
PATCH = 14
OP_MODULE = "haic_kernels.ops.patch_embed.api"
OP_BACKENDS = ("torch", "triton", "cuda")

# (name, videos, frames per video, H, W, D, dtype)
SHAPES: dict[str, list[tuple[str, int, int, int, int, int, torch.dtype]]] = {
    "tiny": [("tiny-f3-28x42", 1, 3, 28, 42, 64, torch.float32)],
    "full": [(f"b{b}-f{24 * b}-224", b, 24, 224, 224, 1792, torch.bfloat16) for b in (1, 8, 32)],
}


def patch_embed_eager(
    frames: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    cls: torch.Tensor,
    pos: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The plain-PyTorch baseline: uint8 [F,H,W,3] -> [F, 1+P, D] as the vision tower computes it.

    ``mean``/``std``: fp32 [3] on the frames' device (made once, outside the timed call).
    ``compute_dtype`` (default: the weight's) is the dtype of the normalization, conv and adds.
    """
    dt = compute_dtype or weight.dtype
    nt = torch.float64 if dt == torch.float64 else torch.float32
    x = frames.permute(0, 3, 1, 2).to(nt) / 255.0
    x = (x - mean.to(nt).view(1, 3, 1, 1)) / std.to(nt).view(1, 3, 1, 1)
    p = weight.shape[-1]
    y = F.conv2d(x.to(dt), weight.to(dt), bias.to(dt), stride=p).flatten(2).transpose(1, 2)
    c = cls.to(dt).reshape(1, 1, -1).expand(y.shape[0], 1, -1)
    return torch.cat([c, y], dim=1) + pos.to(dt)


_compiled: Callable[..., torch.Tensor] | None = None


def patch_embed_compiled(*args: Any) -> torch.Tensor:
    """`patch_embed_eager` through torch.compile (compiled on first call, one per process)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(patch_embed_eager, dynamic=False)
    return _compiled(*args)


def counts(frames: int, h: int, w: int, d: int, dtype: torch.dtype) -> tuple[int, int]:
    """(flops, bytes) of one call."""
    m = frames * (h // PATCH) * (w // PATCH)
    k = 3 * PATCH * PATCH
    es = torch.empty((), dtype=dtype).element_size()
    n_pos = 1 + (h // PATCH) * (w // PATCH)
    params = (d * k + d + d + n_pos * d) * es
    return 2 * m * d * k + 2 * m * d, frames * h * w * 3 + params + frames * n_pos * d * es


def _params(
    d: int, n_pos: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=device).manual_seed(0)
    w = (torch.randn(d, 3, PATCH, PATCH, device=device, generator=g) / 3 / PATCH).to(dtype)
    b = torch.randn(d, device=device, generator=g).to(dtype)
    cls = torch.randn(1, d, device=device, generator=g).to(dtype)
    pos = torch.randn(n_pos, d, device=device, generator=g).to(dtype)
    return w, b, cls, pos


def _inputs_factory(
    n: int, h: int, w: int, d: int, dtype: torch.dtype
) -> Callable[[torch.device], tuple[torch.Tensor, ...]]:
    """Fresh frames per input set; one set of weights per case, shared (they stay resident)."""
    shared: dict[str, tuple[torch.Tensor, ...]] = {}

    def make_inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in shared:
            shared[key] = _params(d, 1 + (h // PATCH) * (w // PATCH), dtype, device)
        frames = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, device=device)
        return (frames, *shared[key])

    return make_inputs


def _probe(
    op: Callable[..., torch.Tensor], backend: str, device: torch.device, dtype: torch.dtype
) -> str | None:
    def call() -> None:
        frames = torch.randint(0, 256, (1, 28, 28, 3), dtype=torch.uint8, device=device)
        with torch.no_grad():
            op(frames, *_params(32, 5, dtype, device), backend=backend)

    return probe((SUITE, backend, str(device), dtype), call)


def _make_check(
    label: str, dtype: torch.dtype, norm: tuple[torch.Tensor, torch.Tensor]
) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        ref = patch_embed_eager(*inputs, *norm, compute_dtype=torch.float64)
        if not isinstance(out, torch.Tensor) or out.shape != ref.shape or out.dtype != dtype:
            got = (tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else type(out)
            raise AssertionError(f"{label}: expected {tuple(ref.shape)} {dtype}, got {got}")
        assert_parity(out, patch_embed_eager(*inputs, *norm), ref, what=label)

    return check


def cases(size: str, device: torch.device) -> list[Case]:
    """Baselines first, then the op's backends, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    op, op_skip, op_error = load_op(OP_MODULE, "patch_embed")
    norm = (
        torch.tensor(CLIP_MEAN, dtype=torch.float32, device=device),
        torch.tensor(CLIP_STD, dtype=torch.float32, device=device),
    )
    out: list[Case] = []
    for name, videos, fpv, h, w, d, dtype in SHAPES[size]:
        n = videos * fpv
        flops, nbytes = counts(n, h, w, d, dtype)
        common = dict(
            suite=SUITE,
            name=name,
            shapes={"videos": videos, "F": n, "H": h, "W": w, "p": PATCH, "D": d},
            dtype=str(dtype).removeprefix("torch."),
            flops=flops,
            bytes=nbytes,
            make_inputs=_inputs_factory(n, h, w, d, dtype),
            # Device time without the CPU's launch gaps for every backend alike: at one video
            # the call is ~50 us of GPU work, about what eager spends launching its 8 kernels.
            cuda_graph=size == "full",
        )
        out.append(
            Case(
                backend="torch eager",
                fn=lambda *a: patch_embed_eager(*a, *norm),
                baseline=True,
                **common,
            )
        )
        out.append(
            Case(
                backend="torch.compile",
                fn=lambda *a: patch_embed_compiled(*a, *norm),
                baseline=True,
                check=_make_check(f"{SUITE} torch.compile {name}", dtype, norm),
                **common,
            )
        )
        for b in OP_BACKENDS:
            if op_error is not None:
                out.append(Case(backend=b, fn=raiser(OP_MODULE, op_error), **common))
                continue
            skip = op_skip
            if skip is None and op is not None:
                skip = _probe(op, b, device, dtype)

            def fn(*args: torch.Tensor, b: str = b) -> torch.Tensor:
                with torch.no_grad():
                    return op(*args, backend=b)

            out.append(
                Case(
                    backend=b,
                    fn=fn,
                    skip_reason=skip,
                    check=_make_check(f"{SUITE} {b} {name}", dtype, norm),
                    **common,
                )
            )
    return out
