"""patchify: uint8 video frames -> normalized rows in patch order, ready for the patch-embed GEMM.

The public function: argument checks and backend choice. The ``haic_kernels::patchify`` custom op
and its dispatch table live in ops.py; the normalization checks here are shared with patch_embed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from haic_kernels.constants import CLIP_MEAN, CLIP_STD
from haic_kernels.ops._common import check_int, check_tensor, check_triple
from haic_kernels.ops.patchify.ops import DISPATCH

__all__ = ["BACKENDS", "DTYPES", "check_normalization", "patchify"]

BACKENDS = ("auto", *DISPATCH.choices)
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
            strides (a crop view, every other frame, ...); a channel stride other than 1 costs
            one copy. ``H`` and ``W`` must be multiples of ``patch_size``.
        patch_size: ``p``, the side of a square patch (14 for EVA2-CLIP).
        mean, std: per-channel normalization (RGB), CLIP's by default. ``std`` entries must be
            > 0 and large enough that every normalized value is finite in ``dtype``.
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
    frames = _check_frames(frames)
    p = check_int("patch_size", patch_size)
    _, h, w, _ = frames.shape
    if h % p != 0 or w % p != 0:
        raise ValueError(
            f"frames: H and W must be multiples of patch_size={p}, got H={h}, W={w} "
            "(crop or resize the frames first)"
        )
    if dtype not in DTYPES:
        raise ValueError(
            f"dtype: expected one of torch.float32, torch.float16, torch.bfloat16, got {dtype}"
        )
    mean_v, std_v = check_normalization(mean, std, dtype)
    m = check_int("k_multiple", k_multiple)
    k_pad = -(-3 * p * p // m) * m
    chosen = _resolve_backend(backend, frames)
    return torch.ops.haic_kernels.patchify(frames, p, mean_v, std_v, dtype, k_pad, chosen)


def check_normalization(
    mean: object, std: object, dtype: torch.dtype
) -> tuple[list[float], list[float]]:
    """(mean, std) as lists of 3 floats, with every ``(x/255 - mean)/std`` finite in ``dtype``.

    ``std == 1e-50`` passes a non-zero test but overflows: the check bounds the largest
    normalized value, ``max(|mean|, |1 - mean|) / std``, by half the dtype's largest finite
    value (headroom for the fp32 FMA's rounding), which also keeps the kernels' ``1/(255 std)``
    finite.
    """
    mean_v = check_triple("mean", mean)
    std_v = check_triple("std", std)
    if any(s <= 0.0 for s in std_v):
        raise ValueError(f"std: every entry must be > 0, got {tuple(std_v)}")
    limit = torch.finfo(dtype).max / 2
    for m, s in zip(mean_v, std_v):
        largest = max(abs(m), abs(1.0 - m)) / s
        if not largest <= limit:
            raise ValueError(
                f"std: {s!r} is too small: (x/255 - {m!r}) / {s!r} reaches {largest:.3g}, not "
                f"finite in {dtype} (largest {torch.finfo(dtype).max:.3g})"
            )
    return mean_v, std_v


def _check_frames(frames: object) -> torch.Tensor:
    check_tensor("frames", frames)
    assert isinstance(frames, torch.Tensor)
    if frames.dtype != torch.uint8:
        raise TypeError(
            f"frames: expected dtype torch.uint8 (decoded video frames), got {frames.dtype}; "
            "normalized float images go to patch_embed's float path"
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
    # The kernels read interleaved RGB bytes (channel stride 1) and take the other strides.
    return check_tensor("frames", frames, layout="rows")


def _resolve_backend(backend: str, frames: torch.Tensor) -> str:
    return DISPATCH.resolve(backend, frames.device)
