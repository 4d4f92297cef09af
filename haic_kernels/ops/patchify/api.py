"""patchify: uint8 video frames -> normalized rows in patch order, ready for the patch-embed GEMM.

Public function, argument checks, backend choice and the ``haic_kernels::patchify`` custom op.
Backends are imported lazily, on first use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from haic_kernels.constants import CLIP_MEAN, CLIP_STD
from haic_kernels.ops._common import check_int, check_triple, resolve_backend

__all__ = ["BACKENDS", "DTYPES", "patchify"]

CHOICES = ("torch", "triton", "cuda")
BACKENDS = ("auto", *CHOICES)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def patchify(
    frames: torch.Tensor,
    *,
    patch_size: int = 14,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    dtype: torch.dtype = torch.float32,
    k_multiple: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Normalize uint8 frames and lay them out as patch rows: the A operand of the patch embed.

    Args:
        frames: uint8 ``[F, H, W, 3]``, channels last as video decoders produce them. Any
            strides (a crop view, every other frame, ...) as long as the channel stride is 1.
            ``H`` and ``W`` must be multiples of ``patch_size``.
        patch_size: ``p``, the side of a square patch (14 for EVA2-CLIP).
        mean, std: per-channel normalization (RGB), CLIP's by default.
        dtype: output dtype: ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``.
        k_multiple: pad each row to a multiple of this many elements (e.g. 8 for 16-byte-aligned
            bf16 rows: 588 -> 592). Padding columns are exactly 0.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"cuda"``. ``"auto"`` picks, for CUDA
            tensors, the compiled kernel, else Triton, each only where it is usable and verified
            on that GPU (see ``haic_kernels.ops._common``), else PyTorch; for CPU tensors
            PyTorch. An explicit backend that cannot run raises `BackendUnavailable`.

    Returns:
        Contiguous ``[F, P, K_pad]`` of ``dtype`` on ``frames.device``, with ``P = (H/p)*(W/p)``
        patches in row-major grid order (``pw`` fastest) and ``K = 3*p*p`` columns in
        ``(c, kh, kw)`` order (``kw`` fastest), the flatten order of an ``nn.Conv2d(3, D, p, p)``
        weight; ``K_pad`` is ``K`` rounded up to ``k_multiple``::

            out[f, ph*(W/p) + pw, c*p*p + kh*p + kw] =
                (frames[f, ph*p + kh, pw*p + kw, c] / 255 - mean[c]) / std[c]
            out[f, :, K:] = 0

        computed in fp32 and rounded once to ``dtype``. Hence, for a conv with weight
        ``w [D, 3, p, p]`` and bias ``b``::

            patchify(x) @ w.reshape(D, -1).T + b
                == conv2d(normalized x as [F, 3, H, W], w, b, stride=p).flatten(2).transpose(1, 2)

    Gradients: none. ``frames`` is an integer tensor, so nothing upstream can require grad, and
    the op has no backward.

    Registered as ``torch.ops.haic_kernels.patchify`` (with a fake kernel), so
    ``torch.compile(fullgraph=True)`` traces through it.
    """
    _check_frames(frames)
    p = check_int("patch_size", patch_size)
    _, h, w, _ = frames.shape
    if h % p != 0 or w % p != 0:
        raise ValueError(
            f"frames: H and W must be multiples of patch_size={p}, got H={h}, W={w} "
            "(crop or resize the frames first)"
        )
    mean_v = check_triple("mean", mean)
    std_v = check_triple("std", std)
    if any(s == 0.0 for s in std_v):
        raise ValueError(f"std: every entry must be non-zero, got {tuple(std_v)}")
    if dtype not in DTYPES:
        raise ValueError(
            f"dtype: expected one of torch.float32, torch.float16, torch.bfloat16, got {dtype}"
        )
    m = check_int("k_multiple", k_multiple)
    k_pad = -(-3 * p * p // m) * m
    chosen = _resolve_backend(backend, frames)
    return torch.ops.haic_kernels.patchify(frames, p, mean_v, std_v, dtype, k_pad, chosen)


def _check_frames(frames: object) -> None:
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames: expected a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(
            f"frames: expected dtype torch.uint8 (decoded video frames), got {frames.dtype}; "
            "float images belong to patch_embed's float path (coming later)"
        )
    if frames.dim() != 4:
        raise ValueError(
            f"frames: expected 4 dims [F, H, W, 3], got {frames.dim()} dims with shape "
            f"{tuple(frames.shape)} (a single frame needs frames[None])"
        )
    if frames.shape[-1] != 3:
        raise ValueError(
            f"frames: expected 3 channels in the last dim (channels last, RGB), got shape "
            f"{tuple(frames.shape)}; for [F, 3, H, W] use frames.permute(0, 2, 3, 1)"
        )
    if frames.stride(-1) != 1:
        raise ValueError(
            f"frames: the channel stride must be 1 (interleaved RGB bytes), got strides "
            f"{tuple(frames.stride())}; call .contiguous() first"
        )


def _resolve_backend(backend: str, frames: torch.Tensor) -> str:
    return resolve_backend(
        "patchify", backend, frames.device, choices=CHOICES, auto_order=("cuda", "triton")
    )


def _new_output(shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device):
    """Output allocation of the fast backends (tests replace it to poison the buffer)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _scale_shift(mean: list[float], std: list[float]) -> tuple[tuple[float, ...], ...]:
    # (x/255 - mean)/std == x * (1/(255 std)) + (-mean/std): one FMA per element in the kernels.
    scale = tuple(1.0 / (255.0 * s) for s in std)
    shift = tuple(-m / s for m, s in zip(mean, std))
    return scale, shift


@torch.library.custom_op("haic_kernels::patchify", mutates_args=())
def _patchify_op(
    frames: torch.Tensor,
    patch_size: int,
    mean: list[float],
    std: list[float],
    dtype: torch.dtype,
    k_pad: int,
    backend: str,
) -> torch.Tensor:
    """The op behind `patchify` (arguments already checked, ``backend`` already resolved)."""
    if backend == "torch":
        from haic_kernels.ops.patchify.reference import patchify_reference

        return patchify_reference(frames, patch_size, mean, std, dtype, k_pad)
    n, h, w, _ = frames.shape
    out = _new_output((n, (h // patch_size) * (w // patch_size), k_pad), dtype, frames.device)
    scale, shift = _scale_shift(mean, std)
    if backend == "triton":
        from haic_kernels.ops.patchify.triton import patchify_triton

        patchify_triton(frames, out, patch_size, scale, shift)
    elif backend == "cuda":
        from haic_kernels.ops.patchify.cuda import patchify_cuda

        patchify_cuda(frames, out, patch_size, scale, shift)
    else:
        raise ValueError(f"backend: expected 'torch', 'triton' or 'cuda', got {backend!r}")
    return out


@_patchify_op.register_fake
def _patchify_fake(
    frames: torch.Tensor,
    patch_size: int,
    mean: list[float],
    std: list[float],
    dtype: torch.dtype,
    k_pad: int,
    backend: str,
) -> torch.Tensor:
    n, h, w, _ = frames.shape
    return frames.new_empty((n, (h // patch_size) * (w // patch_size), k_pad), dtype=dtype)
