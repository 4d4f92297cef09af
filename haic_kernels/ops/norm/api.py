"""norm: row-wise RMSNorm and LayerNorm, each optionally fused with the residual add around it.

Public functions, argument checks and backend choice; the ``haic_kernels::row_norm`` custom op
and its dispatch table live in ops.py (backends imported lazily, on first use).

The residual sits on the side each model puts it:

- Llama-style pre-norm (CogVLM2's LM): ``h = x + residual`` (rounded to the dtype, as the model
  adds), then ``RMSNorm(h)``; both are returned, ``h`` being the next layer's residual;
- EVA2-CLIP's post-norm (the vision tower): ``residual + LayerNorm(x)``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import check_no_grad, check_same_device, check_tensor
from haic_kernels.ops.norm.ops import DISPATCH

__all__ = ["BACKENDS", "DTYPES", "add_layer_norm", "add_rms_norm", "layer_norm", "rms_norm"]

CHOICES = DISPATCH.choices
BACKENDS = ("auto", *CHOICES)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-5, backend: str = "auto"
) -> torch.Tensor:
    """RMSNorm over the last dim, in fp32, rounded once to x's dtype (CogVLM2's `RMSNorm`).

    Args:
        x: ``[..., D]`` float32/16 or bfloat16 (any leading dims; the last dim is normalized).
        weight: ``[D]``, any float dtype (upcast to fp32).
        eps: added to the mean square (1e-5 for Llama-3 / CogVLM2).
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"liger"`` (Liger-Kernel, CUDA only,
            optional dependency). ``auto``: Triton on CUDA where verified, else PyTorch.

    Returns:
        ``[..., D]`` contiguous, x's dtype::

            h = float32(x);  y = dtype(float32(weight) * (h * rsqrt(mean(h^2) + eps)))
    """
    (y,) = _run("rms", x, None, weight, None, eps, "none", backend)
    return y


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    *,
    eps: float = 1e-5,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add + RMSNorm in one pass (a pre-norm decoder layer's ``h = x + sublayer``).

    Args:
        x: ``[..., D]`` the sublayer's output; float32/16 or bfloat16.
        residual: the residual stream, x's shape and dtype.
        weight, eps, backend: as `rms_norm`.

    Returns:
        ``(rms_norm(h, weight, eps), h)`` with ``h = dtype(x + residual)``: the sum is rounded to
        the dtype first, as the model's ``x + attn`` is, and normalized from that rounded value,
        so both outputs are the reference model's numbers.
    """
    y, h = _run("rms", x, residual, weight, None, eps, "pre", backend)
    return y, h


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """LayerNorm over the last dim (biased variance), in fp32, rounded once to x's dtype.

    Args:
        x: ``[..., D]`` float32/16 or bfloat16.
        weight: ``[D]``; bias: ``[D]`` or None; any float dtype (upcast to fp32).
        eps: added to the variance (1e-6 in EVA2-CLIP's blocks, 1e-5 in the adapter).
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``.

    Returns:
        ``[..., D]`` contiguous, x's dtype: ``dtype((x - mean) * rsqrt(var + eps) * w + b)``.
    """
    (y,) = _run("layer", x, None, weight, bias, eps, "none", backend)
    return y


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """EVA2-CLIP's post-norm residual: ``residual + LayerNorm(x)`` in one pass.

    Args:
        x: ``[..., D]`` the sublayer's output (attention or MLP); float32/16 or bfloat16.
        residual: the block input, x's shape and dtype.
        weight, bias, eps, backend: as `layer_norm`.

    Returns:
        ``dtype(residual + dtype(LayerNorm(x)))``: the norm is rounded to the dtype before the
        add, as the model's ``x + self.input_layernorm(attn)`` is; contiguous, x's dtype.
    """
    (y,) = _run("layer", x, residual, weight, bias, eps, "post", backend)
    return y


def _run(
    kind: str,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    mode: str,
    backend: str,
) -> list[torch.Tensor]:
    check_tensor("x", x, dtypes=DTYPES)
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: expected [..., D] with D >= 1, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        check_tensor(name, t, dims=1, dtypes=DTYPES, shape_hint="[D]")
        if t.shape[0] != d:
            raise ValueError(f"{name}: expected shape ({d},) (x's last dim), got {tuple(t.shape)}")
    if residual is not None:
        check_tensor("residual", residual, dtypes=(x.dtype,))
        if residual.shape != x.shape:
            raise ValueError(
                f"residual: expected x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
            )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    check_same_device(x=x, residual=residual, weight=weight, bias=bias)
    check_no_grad("norm", x=x, residual=residual, weight=weight, bias=bias)
    if backend == "liger" and kind != "rms":  # no device makes this call expressible
        raise ValueError("backend: 'liger' serves rms_norm and add_rms_norm only")
    chosen = DISPATCH.resolve(backend, x.device)
    x2 = x.reshape(-1, d)
    r2 = residual.reshape(-1, d) if residual is not None else None
    outs = torch.ops.haic_kernels.row_norm(x2, r2, weight, bias, float(eps), kind, mode, chosen)
    return [o.view(x.shape) for o in outs]
