"""Decode attention through the compiled CUDA kernel (csrc/decode_attention.cuh, haic_kernels._C).

One new query token per sequence against a KV cache, flash-decoding style: the keys of each
(sequence, kv head) are cut into splits that run as separate blocks (so batch 1 fills the GPU);
each block reads every K/V row once for all the query heads of its GQA group, and a second small
kernel merges the splits. The fp32 workspace for the partial results is allocated here with torch
(the caching allocator; no cudaMalloc on the kernel path), so a call can be captured in a CUDA
graph. Imported lazily by the attention dispatcher; never imports the reference.
"""

from __future__ import annotations

from functools import cache

import torch

from haic_kernels import _ext
from haic_kernels.backends import BackendUnavailable

__all__ = ["decode_attention_cuda", "num_splits"]

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
HEAD_DIMS = (64, 112, 128)


def _ext_module():
    ext = _ext.load()
    if ext is None:
        raise BackendUnavailable(f"haic_kernels._C is unavailable: {_ext.load_error()}")
    if not hasattr(ext, "decode_attention"):
        raise BackendUnavailable(
            "haic_kernels._C was built without decode_attention; rebuild (pip install -e .)"
        )
    return ext


@cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_splits(
    batch: int, q_heads: int, kv_heads: int, max_seqlen: int, device: torch.device
) -> int:
    """Splits per (sequence, kv head) the kernel will use on ``device`` (a CUDA device)."""
    ext = _ext_module()
    return ext.decode_attention_num_splits(
        batch=batch,
        q_heads=q_heads,
        kv_heads=kv_heads,
        max_seqlen=max_seqlen,
        num_sms=_sm_count(device.index if device.index is not None else 0),
    )


def _check_last_dim(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{name}: expected the last dim contiguous (stride 1), got {t.stride()}")


def _check_lengths(name: str, t: torch.Tensor, n: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: expected dtype torch.int32, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (where q is), got {t.device}")
    if t.stride(0) != 1:
        raise ValueError(f"{name}: expected a contiguous tensor")


def _validate(q, k, v, out, seqlens_k, cu_seqlens_k, lse) -> tuple[bool, int]:
    """Checks everything the kernel relies on; returns (packed, max_seqlen)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if q.dtype not in _DTYPE_NAMES:
        raise TypeError(f"q: expected dtype torch.float16 or torch.bfloat16, got {q.dtype}")
    for name, t in (("k", k), ("v", v), ("out", out)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (the dtype of q), got {t.dtype}")
    if q.dim() != 3:
        raise ValueError(f"q: expected 3 dims [B, Hq, D], got shape {tuple(q.shape)}")
    b, hq, d = q.shape
    if d not in HEAD_DIMS:
        raise ValueError(f"q: head dim must be one of {HEAD_DIMS}, got {d}")
    if tuple(out.shape) != (b, hq, d):
        raise ValueError(
            f"out: expected shape {(b, hq, d)} (the shape of q), got {tuple(out.shape)}"
        )
    packed = cu_seqlens_k is not None
    if packed and seqlens_k is not None:
        raise ValueError("seqlens_k: not allowed with cu_seqlens_k (packed K/V has its lengths)")
    want_dims = 3 if packed else 4
    layout = "[Tk, Hkv, D] (packed, with cu_seqlens_k)" if packed else "[B, S, Hkv, D]"
    for name, t in (("k", k), ("v", v)):
        if t.dim() != want_dims:
            raise ValueError(f"{name}: expected {want_dims} dims {layout}, got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not packed and k.shape[0] != b:
        raise ValueError(f"k: expected batch {b} (q's), got {k.shape[0]}")
    hkv, dk = k.shape[-2], k.shape[-1]
    if dk != d:
        raise ValueError(f"k: expected head dim {d} (q's), got {dk}")
    if hkv < 1 or hq % hkv != 0:
        raise ValueError(f"k: kv heads ({hkv}) must divide the query heads of q ({hq})")
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        _check_last_dim(name, t)
    for name, t in (("k", k), ("v", v)):
        if t.numel() and (t.data_ptr() % 16 or any(s % 8 for s in t.stride()[:-1])):
            raise ValueError(
                f"{name}: data pointer and strides must be 16-byte aligned (rows of 8-element "
                f"vectors); got strides {t.stride()}, offset {t.storage_offset()}"
            )
    if packed:
        _check_lengths("cu_seqlens_k", cu_seqlens_k, b + 1, q.device)
    if seqlens_k is not None:
        _check_lengths("seqlens_k", seqlens_k, b, q.device)
    if lse is not None:
        if not isinstance(lse, torch.Tensor):
            raise TypeError(f"lse: expected a torch.Tensor, got {type(lse).__name__}")
        if lse.dtype != torch.float32:
            raise TypeError(f"lse: expected dtype torch.float32, got {lse.dtype}")
        if tuple(lse.shape) != (b, hq):
            raise ValueError(f"lse: expected shape {(b, hq)}, got {tuple(lse.shape)}")
    for name, t in (("k", k), ("v", v), ("out", out), ("lse", lse)):
        if t is not None and t.device != q.device:
            raise ValueError(
                f"{name}: expected a tensor on {q.device} (where q is), got {t.device}"
            )
    # Last, so that every check above also runs (and is tested) on CPU tensors.
    if q.device.type != "cuda":
        raise ValueError(f"q: expected a CUDA tensor, got one on {q.device}")
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse)):
        if t is not None and t.requires_grad:
            raise RuntimeError(f"{name}: decode_attention_cuda has no backward (requires_grad)")
    return packed, int(k.shape[0] if packed else k.shape[1])


def decode_attention_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    *,
    scale: float,
    seqlens_k: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> None:
    """Write decode attention into ``out`` (and ``lse``) on the current stream.

    Shapes (last dims contiguous, other strides free; K/V rows 16-byte aligned):
        q, out: [B, Hq, D], fp16 or bf16, D in {64, 112, 128};
        k, v:   padded [B, S, Hkv, D] (e.g. a slice of a preallocated cache) with optional
                ``seqlens_k`` int32 [B] (valid lengths, default S; clamped to [0, S]), or packed
                [Tk, Hkv, D] with ``cu_seqlens_k`` int32 [B+1] (sequence b owns rows
                cu[b]..cu[b+1]-1; not checked for monotonicity, which would need a host sync:
                a decreasing pair reads as an empty sequence, never out of bounds);
        lse:    optional fp32 [B, Hq], written.
    Query head h reads kv head h // (Hq // Hkv). The query is the last position, so it sees
    every valid key (causal is implicit):
        out[b, h] = softmax_j(scale * q[b, h] . k[b, j, g]) @ v[b, :, g]   (fp32 accumulation)
        lse[b, h] = log(sum_j exp(scale * q[b, h] . k[b, j, g]))
    A sequence with no valid keys gives out = 0 and lse = -inf.
    """
    packed, max_seqlen = _validate(q, k, v, out, seqlens_k, cu_seqlens_k, lse)
    ext = _ext_module()
    scale = float(scale)
    b, hq, d = q.shape
    hkv = k.shape[-2]
    if b == 0:
        return
    device = q.device
    splits = num_splits(b, hq, hkv, max_seqlen, device)
    ws_bytes = ext.decode_attention_workspace_bytes(
        batch=b, q_heads=hq, head_dim=d, num_splits=splits
    )
    workspace = torch.empty((ws_bytes + 3) // 4, dtype=torch.float32, device=device)
    k_strides = (0, *k.stride()[:2]) if packed else tuple(k.stride()[:3])
    v_strides = (0, *v.stride()[:2]) if packed else tuple(v.stride()[:3])
    with torch.cuda.device(device):
        ext.decode_attention(
            q_ptr=q.data_ptr(),
            k_ptr=k.data_ptr() if k.numel() else 0,
            v_ptr=v.data_ptr() if v.numel() else 0,
            out_ptr=out.data_ptr(),
            lse_ptr=lse.data_ptr() if lse is not None else 0,
            seqlens_ptr=seqlens_k.data_ptr() if seqlens_k is not None else 0,
            cu_seqlens_ptr=cu_seqlens_k.data_ptr() if cu_seqlens_k is not None else 0,
            dtype=_DTYPE_NAMES[q.dtype],
            batch=b,
            q_heads=hq,
            kv_heads=hkv,
            head_dim=d,
            max_seqlen=max_seqlen if k.numel() else 0,
            q_strides=tuple(q.stride()[:2]),
            k_strides=k_strides,
            v_strides=v_strides,
            out_strides=tuple(out.stride()[:2]),
            lse_strides=tuple(lse.stride()) if lse is not None else (0, 0),
            scale=scale,
            num_splits=splits,
            workspace_ptr=workspace.data_ptr() if ws_bytes else 0,
            workspace_bytes=ws_bytes,
            stream=torch.cuda.current_stream(device).cuda_stream,
        )
