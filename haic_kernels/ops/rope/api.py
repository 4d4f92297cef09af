"""rope: rotary position embedding from position ids, rotate-half or interleaved pairs.

The public functions: argument checks and backend choice. The ``haic_kernels::rope`` custom op
and its dispatch table live in ops.py.
"""

from __future__ import annotations

import math

import torch

from haic_kernels.ops._common import (
    check_bool,
    check_float,
    check_int,
    check_no_grad,
    check_same_device,
    check_tensor,
    check_values,
)
from haic_kernels.ops.rope.ops import DISPATCH, TO_CACHE

__all__ = ["BACKENDS", "DTYPES", "PRECISIONS", "apply_rope", "inv_freq", "rope_qkv",
           "rope_qkv_to_cache"]  # fmt: skip

BACKENDS = ("auto", *DISPATCH.choices)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT_DTYPES = (torch.int32, torch.int64)
PRECISIONS = ("fp32", "release")

_inv_freq_cache: dict[tuple[float, int, torch.device, torch.dtype], torch.Tensor] = {}


def inv_freq(
    theta: float,
    head_dim: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """fp32 ``[D/2]``: ``1 / theta ** (arange(0, D, 2) / D)`` computed in ``dtype`` (each step
    rounded to it, as the release's buffer is built in a bf16 model), returned as fp32 values.
    Computed as the model's rotary module computes it, so the angles agree bit for bit. Cached
    per (theta, D, device, dtype)."""
    key = (float(theta), int(head_dim), torch.device(device), dtype)
    if key not in _inv_freq_cache:
        exponents = torch.arange(0, head_dim, 2, device=device).to(dtype) / head_dim
        _inv_freq_cache[key] = (1.0 / (float(theta) ** exponents)).float()
    return _inv_freq_cache[key]


def rope_qkv(
    qkv: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    theta: float = 500000.0,
    interleaved: bool = False,
    rope_precision: str = "fp32",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused QKV projection, rotate q and k, copy v: one pass over the data.

    Args:
        qkv: ``[T, W]`` or ``[B, S, W]``, ``W = (Hq + 2 Hkv) * D`` laid out ``[q | k | v]``
            with heads ``h*D .. h*D + D - 1`` inside each part (CogVLM's
            ``language_expert_query_key_value`` output); float32/16, bfloat16; any strides (a
            last dim that is not contiguous costs a copy).
        position_ids: integer ``[T]`` or ``[B, S]`` (matching qkv's leading dims), >= 0
            (checked: eagerly on CPU, by an asynchronous device assert on CUDA).
        num_heads, num_kv_heads: Hq and Hkv; D = W / (Hq + 2 Hkv) must be even.
        theta: RoPE base (500000 for Llama-3 / CogVLM2), finite and > 0.
        interleaved: pairs ``(2i, 2i+1)`` instead of rotate-half ``(i, i + D/2)``.
        rope_precision: ``"fp32"``: the angles below in fp32; ``"release"``: as the CogVLM2
            release computes them in a model of qkv's dtype - ``pos``, ``f_i`` (built in that
            dtype, see `inv_freq`) and ``pos * f_i`` rounded to it (the same as fp32 for fp32
            input). ``TextConfig.rope_precision`` says which a model uses.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` (``auto``: Triton for CUDA tensors where
            verified, else PyTorch).

    Returns:
        ``q [.., Hq, D]``, ``k [.., Hkv, D]``, ``v [.., Hkv, D]`` (leading dims of qkv: the
        flash-attn layout [B, S, H, D]), each contiguous, in qkv's dtype::

            f_i = theta ** (-2i / D)      angle = pos * f_i   (fp32)
            c, s = cos(angle), sin(angle) rounded to qkv's dtype (as the model's rotary module)
            (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)   in fp32, rounded once

    Gradients: none (raises if qkv requires grad).
    """
    check_tensor("qkv", qkv, dims=(2, 3), dtypes=DTYPES, shape_hint="[T, W] or [B, S, W]")
    hq, hkv, d = _qkv_heads(qkv, num_heads, num_kv_heads)
    outs = _run(qkv, position_ids, theta, [hq, hkv, hkv], [True, True, False], d, interleaved,
                rope_precision, backend)  # fmt: skip
    lead = qkv.shape[:-1]
    q, k, v = (o.view(*lead, o.shape[1], d) for o in outs)
    return q, k, v


def rope_qkv_to_cache(
    qkv: torch.Tensor,
    position_ids: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    theta: float = 500000.0,
    interleaved: bool = False,
    rope_precision: str = "fp32",
    backend: str = "auto",
) -> torch.Tensor:
    """`rope_qkv` for one new token per sequence, whose k and v go straight into a KV cache:
    one kernel where `rope_qkv` and the two row writes of an append are three.

    Args:
        qkv: ``[B, W]``, one token of each sequence (as in `rope_qkv`); position_ids ``[B]``.
        k_cache, v_cache: ``[B, S, Hkv, D]`` in qkv's dtype and device, the same strides, each
            row's ``Hkv * D`` values contiguous (a slice along S of a larger cache is fine).
        cache_seqlens: int32 ``[B]`` in ``[0, S - 1]``: k and v of sequence b go to row
            ``cache_seqlens[b]`` (checked like positions; not advanced: the caller's).
        num_heads, num_kv_heads, theta, interleaved, rope_precision, backend: as `rope_qkv`.

    Returns:
        ``q [B, Hq, D]`` contiguous; the caches hold the rotated k and the v of each token, the
        values `rope_qkv` returns, bit for bit.
    """
    check_tensor("qkv", qkv, dims=2, dtypes=DTYPES, shape_hint="[B, W]")
    hq, hkv, d = _qkv_heads(qkv, num_heads, num_kv_heads)
    b = qkv.shape[0]
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, t, dims=4, dtypes=(qkv.dtype,), shape_hint="[B, S, Hkv, D]")
        if t.shape[0] != b or t.shape[2:] != (hkv, d) or t.shape[1] == 0:
            raise ValueError(f"{name}: expected [B, S, Hkv, D] = [{b}, S >= 1, {hkv}, {d}], got "
                             f"{tuple(t.shape)}")  # fmt: skip
        if t.stride(3) != 1 or t.stride(2) != d:
            raise ValueError(f"{name}: each row's heads must be contiguous (strides [.., {d}, 1]), "
                             f"got strides {tuple(t.stride())}")  # fmt: skip
    if v_cache.stride() != k_cache.stride():
        raise ValueError(f"v_cache: expected the strides of k_cache {tuple(k_cache.stride())}, got "
                         f"{tuple(v_cache.stride())}")  # fmt: skip
    lens = check_tensor("cache_seqlens", cache_seqlens, dims=1, dtypes=(torch.int32,))
    if lens.shape[0] != b:
        raise ValueError(f"cache_seqlens: expected shape ({b},), got {tuple(lens.shape)}")
    check_same_device(qkv=qkv, k_cache=k_cache, v_cache=v_cache, cache_seqlens=lens)
    check_no_grad("rope_qkv_to_cache", k_cache=k_cache, v_cache=v_cache)
    s_max = k_cache.shape[1]
    check_values(lambda: (lens >= 0) & (lens < s_max),
                 f"cache_seqlens: expected rows in [0, {s_max - 1}]")  # fmt: skip
    x2, pos, freqs, release, _ = _prepare(qkv, position_ids, theta, d, interleaved,
                                          rope_precision, "qkv")  # fmt: skip
    chosen = TO_CACHE.resolve(backend, qkv.device)
    return torch.ops.haic_kernels.rope_to_cache(x2, pos, freqs, k_cache, v_cache,
                                                lens.contiguous(), [hq, hkv, hkv], interleaved,
                                                release, chosen)  # fmt: skip


def _qkv_heads(qkv: torch.Tensor, num_heads: object, num_kv_heads: object) -> tuple[int, ...]:
    """(Hq, Hkv, D) of a fused QKV row."""
    hq = check_int("num_heads", num_heads)
    hkv = check_int("num_kv_heads", num_kv_heads)
    width = qkv.shape[-1]
    if width % (hq + 2 * hkv):
        raise ValueError(
            f"qkv: last dim {width} is not a multiple of num_heads + 2 * num_kv_heads = "
            f"{hq + 2 * hkv}"
        )
    return hq, hkv, width // (hq + 2 * hkv)


def apply_rope(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    theta: float = 500000.0,
    interleaved: bool = False,
    rope_precision: str = "fp32",
    backend: str = "auto",
) -> torch.Tensor:
    """Rotary embedding of one tensor, out of place: ``x [T, H, D]`` or ``[B, S, H, D]``
    (flash-attn layout; the head dim contiguous), position_ids ``[T]`` / ``[B, S]``.

    Same formula, dtypes and backends as `rope_qkv`; returns a contiguous tensor like x.
    """
    check_tensor("x", x, dims=(3, 4), dtypes=DTYPES, shape_hint="[T, H, D] or [B, S, H, D]")
    h, d = x.shape[-2], x.shape[-1]
    flat = x.reshape(*x.shape[:-2], h * d)
    (out,) = _run(flat, position_ids, theta, [h], [True], d, interleaved, rope_precision, backend)
    return out.view(x.shape)


def _run(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    theta: float,
    heads: list[int],
    rotate: list[bool],
    d: int,
    interleaved: bool,
    rope_precision: str,
    backend: str,
) -> list[torch.Tensor]:
    name = "qkv" if len(heads) == 3 else "x"  # the caller's argument: rope_qkv's 3 groups, or x
    x2, pos, freqs, release, dev = _prepare(x, position_ids, theta, d, interleaved,
                                            rope_precision, name)  # fmt: skip
    chosen = DISPATCH.resolve(backend, dev)
    return torch.ops.haic_kernels.rope(x2, pos, freqs, heads, rotate, interleaved, release, chosen)


def _prepare(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    theta: float,
    d: int,
    interleaved: bool,
    rope_precision: str,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, torch.device]:
    """The checks and kernel arguments both ops share: (x as rows, positions [T], the
    frequencies, release rounding, device)."""
    if d % 2 or d == 0:
        raise ValueError(f"{name}: expected an even head dim >= 2, got {d}")
    theta = check_float("theta", theta, positive=True)
    check_bool("interleaved", interleaved)
    if rope_precision not in PRECISIONS:
        raise ValueError(f"rope_precision: expected one of {PRECISIONS}, got {rope_precision!r}")
    check_tensor("position_ids", position_ids, dtypes=_INT_DTYPES)
    lead = tuple(x.shape[:-1])
    if tuple(position_ids.shape) != lead:
        raise ValueError(
            f"position_ids: expected shape {lead} (the leading dims of the input), got "
            f"{tuple(position_ids.shape)}"
        )
    check_same_device(**{name: x}, position_ids=position_ids)
    check_values(lambda: position_ids >= 0, "position_ids: expected positions >= 0")
    check_no_grad("rope", **{name: x})
    x2 = check_tensor(name, x.reshape(math.prod(lead), x.shape[-1]), layout="rows")
    pos = position_ids.reshape(-1).contiguous()
    # In fp32 the release's rounding is the identity: one kernel variant less to run.
    release = rope_precision == "release" and x.dtype != torch.float32
    freq_dtype = x.dtype if release else torch.float32
    # The largest frequency, theta^-((D-2)/D), must be finite in the dtype it is built in.
    if -(d - 2) / d * math.log(theta) >= math.log(torch.finfo(freq_dtype).max):
        raise ValueError(f"theta: {theta!r} gives non-finite frequencies 1/theta^(2i/D)")
    freqs = inv_freq(theta, d, x.device, freq_dtype)
    return x2, pos, freqs, release, x.device
