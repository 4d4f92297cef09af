"""patchify: uint8 frames [F,H,W,3] -> normalized patches [F, (H/p)*(W/p), K_pad]; memory-bound.

Cases for ``haic_kernels.ops.patchify.api.patchify`` (backends "torch", "triton", "cuda") and two
baselines written here, independently of the op's reference: "torch eager" (permute, float,
normalize, reshape/permute into patches, pad, cast, contiguous) and "torch.compile" of that same
function. Work per call: bytes = F*H*W*3 (uint8 in) + F*P*K_pad*itemsize (out); flops = 2 per
input element (x * 1/(255 std) + (-mean/std), one multiply-add; padding columns are free).
Sizes: tiny = 3 frames of 56x56, fp32 out (CPU, seconds); full = 1, 8 and 32 videos of 24 frames
of 224x224, bf16 out, K padded to a multiple of 8 (592).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import load_op, probe, raiser
from haic_kernels.constants import CLIP_MEAN, CLIP_STD

SUITE = "patchify"
PATCH = 14
OP_MODULE = "haic_kernels.ops.patchify.api"
OP_BACKENDS = ("torch", "triton", "cuda")

# (name, videos, frames per video, H, W, out dtype, k_multiple)
SHAPES: dict[str, list[tuple[str, int, int, int, int, torch.dtype, int]]] = {
    "tiny": [("tiny-f3-56", 1, 3, 56, 56, torch.float32, 1)],
    "full": [(f"b{b}-f{24 * b}-224", b, 24, 224, 224, torch.bfloat16, 8) for b in (1, 8, 32)],
}


def patchify_eager(
    frames: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    patch_size: int,
    dtype: torch.dtype,
    k_pad: int,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The plain-PyTorch baseline: [F,H,W,3] uint8 -> [F, (H/p)*(W/p), k_pad] in ``dtype``.

    Column order (c, kh, kw), as nn.Conv2d's weight flattens; columns past 3*p*p are zero.
    """
    n, h, w, c = frames.shape
    p = patch_size
    x = frames.permute(0, 3, 1, 2).to(compute_dtype)
    x = (x / 255 - mean.to(compute_dtype).view(1, c, 1, 1)) / std.to(compute_dtype).view(1, c, 1, 1)
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    x = x.reshape(n, (h // p) * (w // p), c * p * p)
    if k_pad > c * p * p:
        x = F.pad(x, (0, k_pad - c * p * p))
    return x.to(dtype).contiguous()


_compiled: Callable[..., torch.Tensor] | None = None


def patchify_compiled(*args: Any) -> torch.Tensor:
    """`patchify_eager` through torch.compile (compiled on first call, one per process)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(patchify_eager, dynamic=False)
    return _compiled(*args)


def k_padded(patch_size: int, k_multiple: int) -> int:
    k = 3 * patch_size * patch_size
    return -(-k // k_multiple) * k_multiple


def counts(frames: int, h: int, w: int, p: int, k_pad: int, dtype: torch.dtype) -> tuple[int, int]:
    """(flops, bytes) of one call."""
    n_in = frames * h * w * 3
    n_out = frames * (h // p) * (w // p) * k_pad
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * n_in, n_in + n_out * itemsize


def _probe(
    op: Callable[..., torch.Tensor], backend: str, device: torch.device, dtype: torch.dtype, km: int
) -> str | None:
    def call() -> None:
        shape = (1, 2 * PATCH, 2 * PATCH, 3)
        frames = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
        op(frames, patch_size=PATCH, dtype=dtype, k_multiple=km, backend=backend)

    return probe((SUITE, backend, str(device), dtype, km), call)


def _make_check(
    label: str, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype, k_pad: int
) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        (frames,) = inputs
        ref = patchify_eager(frames, mean, std, PATCH, torch.float64, k_pad, torch.float64)
        if not isinstance(out, torch.Tensor) or out.shape != ref.shape or out.dtype != dtype:
            got = (tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else type(out)
            raise AssertionError(f"{label}: expected {tuple(ref.shape)} {dtype}, got {got}")
        same = patchify_eager(frames, mean, std, PATCH, dtype, k_pad)
        assert_parity(out, same, ref, what=label)

    return check


def _frames_factory(n: int, h: int, w: int) -> Callable[[torch.device], tuple[torch.Tensor]]:
    def make_inputs(device: torch.device) -> tuple[torch.Tensor]:
        return (torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, device=device),)

    return make_inputs


def cases(size: str, device: torch.device) -> list[Case]:
    """Baselines first, then the op's backends, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    op, op_skip, op_error = load_op(OP_MODULE, "patchify")
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=device)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=device)
    out: list[Case] = []
    for name, videos, fpv, h, w, dtype, km in SHAPES[size]:
        n = videos * fpv
        k_pad = k_padded(PATCH, km)
        flops, nbytes = counts(n, h, w, PATCH, k_pad, dtype)
        shapes = {"videos": videos, "F": n, "H": h, "W": w, "p": PATCH, "K_pad": k_pad}
        # Full-size calls take 4-120 us, about a kernel launch or a few: without graph replay
        # the CPU's launch gaps would be most of what the events measure.
        graph = size == "full"
        common = dict(
            suite=SUITE,
            name=name,
            shapes=shapes,
            dtype=str(dtype).removeprefix("torch."),
            flops=flops,
            bytes=nbytes,
            make_inputs=_frames_factory(n, h, w),
            cuda_graph=graph,
        )
        eager_args = (mean, std, PATCH, dtype, k_pad)
        out.append(
            Case(
                backend="torch eager",
                fn=lambda x, a=eager_args: patchify_eager(x, *a),
                baseline=True,
                **common,
            )
        )
        out.append(
            Case(
                backend="torch.compile",
                fn=lambda x, a=eager_args: patchify_compiled(x, *a),
                baseline=True,
                check=_make_check(f"{SUITE} torch.compile {name}", mean, std, dtype, k_pad),
                **common,
            )
        )
        for b in OP_BACKENDS:
            label = f"{SUITE} {b} {name}"
            if op_error is not None:
                out.append(Case(backend=b, fn=raiser(OP_MODULE, op_error), **common))
                continue
            skip = op_skip
            if skip is None and op is not None:
                skip = _probe(op, b, device, dtype, km)
            out.append(
                Case(
                    backend=b,
                    fn=lambda x, b=b, d=dtype, km=km: op(
                        x, patch_size=PATCH, dtype=d, k_multiple=km, backend=b
                    ),
                    skip_reason=skip,
                    check=_make_check(label, mean, std, dtype, k_pad),
                    **common,
                )
            )
    return out
