"""rope: rotary position embedding from position ids, rotate-half or interleaved pairs.

Public functions, argument checks, backend choice and the ``haic_kernels::rope`` custom op.
Backends are imported lazily, on first use.
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
    new_output,
    resolve_backend,
)

__all__ = ["BACKENDS", "DTYPES", "apply_rope", "inv_freq", "rope_qkv"]

CHOICES = ("torch", "triton")
BACKENDS = ("auto", *CHOICES)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT_DTYPES = (torch.int32, torch.int64)

_inv_freq_cache: dict[tuple[float, int, torch.device], torch.Tensor] = {}


def inv_freq(theta: float, head_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """fp32 ``[D/2]``: ``1 / theta ** (arange(0, D, 2) / D)``, computed as the model's rotary
    module computes it (so the angles agree bit for bit). Cached per (theta, D, device)."""
    key = (float(theta), int(head_dim), torch.device(device))
    if key not in _inv_freq_cache:
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        _inv_freq_cache[key] = 1.0 / (float(theta) ** (exponents / head_dim))
    return _inv_freq_cache[key]


def rope_qkv(
    qkv: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    theta: float = 500000.0,
    interleaved: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused QKV projection, rotate q and k, copy v: one pass over the data.

    Args:
        qkv: ``[T, W]`` or ``[B, S, W]``, ``W = (Hq + 2 Hkv) * D`` laid out ``[q | k | v]``
            with heads ``h*D .. h*D + D - 1`` inside each part (CogVLM's
            ``language_expert_query_key_value`` output); float32/16, bfloat16; unit last stride.
        position_ids: integer ``[T]`` or ``[B, S]`` (matching qkv's leading dims), >= 0
            (checked: eagerly on CPU, by an asynchronous device assert on CUDA).
        num_heads, num_kv_heads: Hq and Hkv; D = W / (Hq + 2 Hkv) must be even.
        theta: RoPE base (500000 for Llama-3 / CogVLM2), finite and > 0.
        interleaved: pairs ``(2i, 2i+1)`` instead of rotate-half ``(i, i + D/2)``.
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
    hq = check_int("num_heads", num_heads)
    hkv = check_int("num_kv_heads", num_kv_heads)
    width = qkv.shape[-1]
    if width % (hq + 2 * hkv):
        raise ValueError(
            f"qkv: last dim {width} is not a multiple of num_heads + 2 * num_kv_heads = "
            f"{hq + 2 * hkv}"
        )
    d = width // (hq + 2 * hkv)
    outs = _run(qkv, position_ids, theta, [hq, hkv, hkv], [True, True, False], d, interleaved,
                backend)  # fmt: skip
    lead = qkv.shape[:-1]
    q, k, v = (o.view(*lead, o.shape[1], d) for o in outs)
    return q, k, v


def apply_rope(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    theta: float = 500000.0,
    interleaved: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Rotary embedding of one tensor, out of place: ``x [T, H, D]`` or ``[B, S, H, D]``
    (flash-attn layout; the head dim contiguous), position_ids ``[T]`` / ``[B, S]``.

    Same formula, dtypes and backends as `rope_qkv`; returns a contiguous tensor like x.
    """
    check_tensor("x", x, dims=(3, 4), dtypes=DTYPES, shape_hint="[T, H, D] or [B, S, H, D]")
    h, d = x.shape[-2], x.shape[-1]
    flat = x.reshape(*x.shape[:-2], h * d)
    (out,) = _run(flat, position_ids, theta, [h], [True], d, interleaved, backend)
    return out.view(x.shape)


def _run(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    theta: float,
    heads: list[int],
    rotate: list[bool],
    d: int,
    interleaved: bool,
    backend: str,
) -> list[torch.Tensor]:
    name = "qkv" if len(heads) == 3 else "x"  # the caller's argument: rope_qkv's 3 groups, or x
    if d % 2 or d == 0:
        raise ValueError(f"{name}: expected an even head dim >= 2, got {d}")
    theta = check_float("theta", theta, positive=True)
    check_bool("interleaved", interleaved)
    check_tensor("position_ids", position_ids, dtypes=_INT_DTYPES)
    lead = tuple(x.shape[:-1])
    if tuple(position_ids.shape) != lead:
        raise ValueError(
            f"position_ids: expected shape {lead} (the leading dims of the input), got "
            f"{tuple(position_ids.shape)}"
        )
    check_same_device(**{name: x}, position_ids=position_ids)
    check_values(position_ids >= 0, "position_ids: expected positions >= 0")
    check_no_grad("rope", **{name: x})
    x2 = check_tensor(name, x.reshape(math.prod(lead), x.shape[-1]), layout="rows")
    pos = position_ids.reshape(-1).contiguous()
    chosen = resolve_backend("rope", backend, x.device, choices=CHOICES, auto_order=("triton",))
    # The largest frequency, theta^-((D-2)/D), must be finite in fp32 (theta < 1 can overflow).
    if -(d - 2) / d * math.log(theta) >= math.log(torch.finfo(torch.float32).max):
        raise ValueError(f"theta: {theta!r} gives non-finite frequencies 1/theta^(2i/D) in fp32")
    freqs = inv_freq(theta, d, x.device)
    return torch.ops.haic_kernels.rope(x2, pos, freqs, heads, rotate, interleaved, chosen)


@torch.library.custom_op("haic_kernels::rope", mutates_args=())
def _rope_op(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    heads: list[int],
    rotate: list[bool],
    interleaved: bool,
    backend: str,
) -> list[torch.Tensor]:
    """The op behind `rope_qkv` / `apply_rope`: x [T, sum(heads) * D] -> [T, h, D] per group."""
    if backend == "torch":
        from haic_kernels.ops.rope.reference import rope_reference

        return rope_reference(x, position_ids, inv_freq, heads, rotate, interleaved)
    if backend == "triton":
        from haic_kernels.ops.rope.triton import rope_triton

        d = 2 * inv_freq.shape[0]
        outs = [new_output((x.shape[0], h, d), x.dtype, x.device) for h in heads]
        rope_triton(x, position_ids, inv_freq, outs, rotate, interleaved)
        return outs
    raise ValueError(f"backend: expected 'torch' or 'triton', got {backend!r}")


@_rope_op.register_fake
def _rope_fake(x, position_ids, inv_freq, heads, rotate, interleaved, backend):
    d = 2 * inv_freq.shape[0]
    return [x.new_empty((x.shape[0], h, d)) for h in heads]
