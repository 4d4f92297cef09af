"""patch_embed: video frames -> patch tokens with CLS and learned positions, [F, 1 + P, D].

The public function: argument checks and backend choice. The ``haic_kernels::patch_embed``
custom op and its dispatch table live in ops.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from haic_kernels.constants import CLIP_MEAN, CLIP_STD
from haic_kernels.ops._common import check_dtype, check_no_grad, check_same_device, check_tensor
from haic_kernels.ops.patch_embed.ops import DISPATCH
from haic_kernels.ops.patchify.api import check_normalization

__all__ = ["BACKENDS", "DTYPES", "patch_embed"]

BACKENDS = ("auto", *DISPATCH.choices)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def patch_embed(
    frames: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cls: torch.Tensor,
    pos: torch.Tensor,
    *,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    backend: str = "auto",
) -> torch.Tensor:
    """EVA2-CLIP patch embedding of whole frames: normalize, patchify, GEMM, CLS, positions.

    Args:
        frames: either uint8 ``[F, H, W, 3]`` RGB, channels last, as video decoders produce them
            (any strides; a channel stride other than 1 costs a copy), normalized in-kernel as
            ``(x/255 - mean[c]) / std[c]``; or float (fp32/fp16/bf16) ``[F, 3, H, W]`` images
            that are **already normalized** (what ``nn.Conv2d`` receives in the reference
            vision tower; ``mean``/``std`` are then ignored), any strides, cast to the weight's
            dtype. ``H`` and ``W`` must be multiples of the patch size ``p``.
        weight: ``[D, 3, p, p]``, the ``nn.Conv2d(3, D, p, stride=p)`` weight (fp32/fp16/bf16);
            its dtype is the compute and output dtype.
        bias: ``[D]`` or None (the conv's bias).
        cls: ``[D]``, ``[1, D]`` or ``[1, 1, D]``: the CLS embedding.
        pos: ``[1 + P, D]`` (or ``[1, 1 + P, D]``) learned positions, row 0 for CLS, then the
            ``P = (H/p)*(W/p)`` patches in row-major grid order (``nn.Embedding.weight``).
        mean, std: per-channel normalization of uint8 frames (RGB), CLIP's by default.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"cuda"``. ``"auto"`` picks, for CUDA
            tensors, the fused Triton kernel, else the compiled patchify kernel + cuBLAS, each
            only where usable and verified on that GPU (see ``haic_kernels.ops._common``), else
            PyTorch; for CPU tensors PyTorch. An explicit backend that cannot run raises
            `BackendUnavailable`.

    Returns:
        Contiguous ``[F, 1 + P, D]`` in ``weight.dtype``::

            out[f, 0]         = cls + pos[0]
            out[f, 1 + ph*(W/p) + pw, d] = bias[d] + pos[1 + ph*(W/p) + pw, d]
                + sum_{c,kh,kw} x[f, c, ph*p + kh, pw*p + kw] * weight[d, c, kh, kw]

        with ``x`` the normalized frames rounded to ``weight.dtype``, products accumulated in
        fp32 and the sum rounded once (the PyTorch reference rounds after the conv and again
        after each add). The weight is re-laid-out once per tensor and content version and
        cached (see ``haic_kernels.ops._weight_cache``).

    Gradients: none. Raises RuntimeError when grad mode is on and an input requires grad: call
    it under ``torch.no_grad()`` or ``torch.inference_mode()``.

    Registered as ``torch.ops.haic_kernels.patch_embed`` (with a fake kernel), so
    ``torch.compile(fullgraph=True)`` traces through it.
    """
    frames, (h, w) = _check_frames(frames)
    check_tensor("weight", weight, dims=4, dtypes=DTYPES, shape_hint="[D, 3, p, p]")
    d, c_in, kh, kw = weight.shape
    if c_in != 3 or kh != kw or kh < 1:
        raise ValueError(
            f"weight: expected shape [D, 3, p, p] (nn.Conv2d(3, D, p, stride=p).weight), "
            f"got {tuple(weight.shape)}"
        )
    p = kh
    if h % p != 0 or w % p != 0:
        raise ValueError(
            f"frames: H and W must be multiples of the patch size p={p} (weight.shape[-1]), "
            f"got H={h}, W={w} (crop or resize the frames first)"
        )
    n_patches = (h // p) * (w // p)
    if bias is not None:
        check_tensor("bias", bias, dims=1)
        _check_param("bias", bias, weight, (d,))
        bias = bias.contiguous()  # read as a raw pointer
    check_tensor("cls", cls, dims=(1, 2, 3), shape_hint="[D], [1, D] or [1, 1, D]")
    if cls.numel() != d or any(s != 1 for s in cls.shape[:-1]):
        raise ValueError(
            f"cls: expected [D], [1, D] or [1, 1, D] with D={d}, got {tuple(cls.shape)}"
        )
    _check_param("cls", cls, weight, tuple(cls.shape))
    check_tensor("pos", pos, dims=(2, 3), shape_hint="[1 + P, D] or [1, 1 + P, D]")
    if pos.shape[-2:] != (1 + n_patches, d) or (pos.dim() == 3 and pos.shape[0] != 1):
        raise ValueError(
            f"pos: expected [1 + P, D] = [{1 + n_patches}, {d}] for {h}x{w} frames with p={p} "
            f"(P = (H/p)*(W/p) = {n_patches}), got {tuple(pos.shape)}"
        )
    _check_param("pos", pos, weight, tuple(pos.shape))
    check_same_device(frames=frames, weight=weight, bias=bias, cls=cls, pos=pos)
    mean_v, std_v = check_normalization(mean, std, weight.dtype)
    check_no_grad("patch_embed", frames=frames, weight=weight, bias=bias, cls=cls, pos=pos)
    chosen = _resolve_backend(backend, frames)
    cls_d = cls.reshape(d).contiguous()
    pos_2d = pos.reshape(1 + n_patches, d).contiguous()
    return torch.ops.haic_kernels.patch_embed(
        frames, weight, bias, cls_d, pos_2d, mean_v, std_v, chosen
    )


def _check_frames(frames: object) -> tuple[torch.Tensor, tuple[int, int]]:
    """(frames in the layout the kernels read, (H, W)); raises naming ``frames`` otherwise."""
    check_tensor("frames", frames, dims=4, shape_hint="[F, H, W, 3] uint8 or [F, 3, H, W] float")
    assert isinstance(frames, torch.Tensor)
    if frames.dtype == torch.uint8:
        if frames.shape[-1] != 3:
            raise ValueError(
                f"frames: uint8 frames must be [F, H, W, 3] with 3 channels last (RGB), got "
                f"shape {tuple(frames.shape)}"
            )
        # The compiled patchify kernel reads interleaved RGB bytes (channel stride 1).
        return check_tensor("frames", frames, layout="rows"), (frames.shape[1], frames.shape[2])
    if frames.dtype not in DTYPES:
        raise TypeError(
            f"frames: expected dtype torch.uint8 ([F, H, W, 3] decoded frames) or "
            f"float32/float16/bfloat16 ([F, 3, H, W] normalized images), got {frames.dtype}"
        )
    if frames.shape[1] != 3:
        raise ValueError(
            f"frames: float frames must be [F, 3, H, W] (3 channels, channels first), got shape "
            f"{tuple(frames.shape)}"
        )
    return frames, (frames.shape[2], frames.shape[3])


def _check_param(name: str, t: torch.Tensor, weight: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    check_dtype(name, t, (weight.dtype,))


def _resolve_backend(backend: str, frames: torch.Tensor) -> str:
    return DISPATCH.resolve(backend, frames.device)
