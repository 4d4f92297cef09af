"""fp8_linear: per-token E4M3 activations x per-channel E4M3 weights, fp32 accumulation.

Public functions, the prepared-weight object, argument checks, backend choice and the
``haic_kernels::quantize_rows`` / ``haic_kernels::fp8_linear`` custom ops. Backends are imported
lazily: reference.py (PyTorch quantizer, emulated linear), triton.py (the quantizer),
scaled_mm.py (``torch._scaled_mm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from haic_kernels.backends import BackendUnavailable
from haic_kernels.ops._common import check_dtype, check_same_device, check_tensor, resolve_backend
from haic_kernels.ops.fp8_linear.format import E4M3_MAX

__all__ = ["E4M3_MAX", "Fp8Weight", "fp8_linear", "quantize_rows"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUANT_CHOICES = ("torch", "triton")
LINEAR_CHOICES = ("emulated", "scaled_mm")


def quantize_rows(x: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-row E4M3 quantization (one scale per token, or per output channel).

    Args:
        x: ``[M, K]`` float32/16 or bfloat16, unit last stride.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``.

    Returns:
        ``(q, scale)``: q ``[M, K]`` ``torch.float8_e4m3fn`` contiguous, scale fp32 ``[M]``::

            amax = max(max_k |x[m, k]|, 1e-12);  scale[m] = amax / 448
            q[m, k] = e4m3(clamp(x[m, k] * (448 / amax), -448, 448))   (round to nearest even)

        so ``x[m] ~ q[m] * scale[m]`` with relative error <= 2^-4 for |q| >= 2^-6.
    """
    check_tensor("x", x, dims=2, dtypes=DTYPES, shape_hint="[M, K]")
    chosen = resolve_backend("quantize_rows", backend, x.device, choices=QUANT_CHOICES,
                             auto_order=("triton",))  # fmt: skip
    if chosen == "triton" and x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 9):
        if backend != "auto":  # Triton has no e4m3 type before sm_89
            raise BackendUnavailable("quantize_rows: backend='triton' needs sm_89+ for e4m3")
        chosen = "torch"
    q, scale = torch.ops.haic_kernels.quantize_rows(x, chosen)
    return q, scale


@dataclass(frozen=True)
class Fp8Weight:
    """A linear layer's weight in E4M3 with one fp32 scale per output channel, made once.

    ``qweight`` ``[N, K]`` float8_e4m3fn (``nn.Linear.weight``'s layout), ``scale`` fp32 ``[N]``
    with ``weight[n] ~ qweight[n] * scale[n]``, ``bias`` ``[N]`` (the layer's dtype) or None.
    Half the bytes of the bf16 weight, which is what a decode step reads.
    """

    qweight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def from_linear(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, backend: str = "auto"
    ) -> Fp8Weight:
        """Quantize ``weight`` [N, K] (any float dtype) per output channel; keep ``bias``."""
        check_tensor("weight", weight, dims=2, dtypes=DTYPES, shape_hint="[N, K]")
        if bias is not None:
            check_tensor("bias", bias, dims=1, dtypes=DTYPES, shape_hint="[N]")
            if bias.shape[0] != weight.shape[0]:
                raise ValueError(f"bias: expected shape ({weight.shape[0]},) (N), got "
                                 f"{tuple(bias.shape)}")  # fmt: skip
            check_same_device(weight=weight, bias=bias)
        with torch.no_grad():
            q, scale = quantize_rows(weight.detach(), backend=backend)
        return cls(q, scale, None if bias is None else bias.detach())

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    def dequantize(self) -> torch.Tensor:
        """fp32 ``[N, K]``: ``qweight * scale[:, None]``."""
        return self.qweight.to(torch.float32) * self.scale[:, None]


def fp8_linear(x: torch.Tensor, weight: Fp8Weight, *, backend: str = "auto") -> torch.Tensor:
    """``x @ W^T + b`` with x quantized per token and W per output channel to E4M3.

    Args:
        x: ``[..., K]`` float32/16 or bfloat16 (the layer's input; quantized here, per row).
        weight: an `Fp8Weight` with ``in_features == K``, on x's device.
        backend: ``"auto"`` | ``"emulated"`` (dequantize, fp32 matmul: any device; proves the
            math) | ``"scaled_mm"`` (``torch._scaled_mm``, row-wise scales: CUDA sm_89+, bf16
            x, K and N multiples of 16). ``auto``: scaled_mm where it can run and is verified,
            else emulated. The activation quantizer follows `quantize_rows`' ``auto``.

    Returns:
        ``[..., N]`` in x's dtype::

            (qx, sx) = quantize_rows(x);  y[m, n] = sx[m] * sw[n] * sum_k qx[m, k] qw[n, k] + b[n]
    """
    check_tensor("x", x, dtypes=DTYPES)
    if not isinstance(weight, Fp8Weight):
        raise TypeError(f"weight: expected an Fp8Weight (Fp8Weight.from_linear), got "
                        f"{type(weight).__name__}")  # fmt: skip
    if x.dim() == 0 or x.shape[-1] != weight.in_features:
        raise ValueError(f"x: expected [..., {weight.in_features}] (the weight's in_features), "
                         f"got shape {tuple(x.shape)}")  # fmt: skip
    check_dtype("weight.qweight", weight.qweight, (torch.float8_e4m3fn,))
    check_same_device(x=x, weight=weight.qweight, bias=weight.bias)
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("fp8_linear has no backward: call it under torch.no_grad()")
    chosen = resolve_backend("fp8_linear", backend, x.device, choices=LINEAR_CHOICES,
                             auto_order=("scaled_mm",), fallback="emulated")  # fmt: skip
    if chosen == "scaled_mm":
        from haic_kernels.ops.fp8_linear.scaled_mm import problem

        why = problem(x, weight.qweight)
        if why is not None and backend == "auto":
            chosen = "emulated"
        elif why is not None:
            raise BackendUnavailable(f"fp8_linear: backend='scaled_mm' cannot run here: {why}")
    x2 = x.reshape(-1, x.shape[-1])
    qx, sx = quantize_rows(x2)
    out = torch.ops.haic_kernels.fp8_linear(
        x2, weight.qweight, weight.scale, weight.bias, qx, sx, chosen
    )
    return out.view(*x.shape[:-1], weight.out_features)


@torch.library.custom_op("haic_kernels::quantize_rows", mutates_args=())
def _quantize_rows_op(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The op behind `quantize_rows`: x [M, K] -> (e4m3 [M, K], fp32 [M])."""
    if backend == "torch":
        from haic_kernels.ops.fp8_linear.reference import quantize_rows_reference

        return quantize_rows_reference(x)
    if backend != "triton":
        raise ValueError(f"backend: expected one of {QUANT_CHOICES}, got {backend!r}")
    from haic_kernels.ops.fp8_linear.triton import quantize_rows_triton

    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    quantize_rows_triton(x if x.stride(-1) == 1 else x.contiguous(), q, scale)
    return q, scale


@_quantize_rows_op.register_fake
def _quantize_rows_fake(x, backend):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(
        x.shape[0], dtype=torch.float32
    )


@torch.library.custom_op("haic_kernels::fp8_linear", mutates_args=())
def _fp8_linear_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
    qx: torch.Tensor,
    xscale: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    """The op behind `fp8_linear` (x [M, K] only for its dtype; qx, xscale its quantization)."""
    if backend == "emulated":
        from haic_kernels.ops.fp8_linear.reference import fp8_linear_emulated

        return fp8_linear_emulated(x, qweight, wscale, bias, qx, xscale)
    if backend != "scaled_mm":
        raise ValueError(f"backend: expected one of {LINEAR_CHOICES}, got {backend!r}")
    from haic_kernels.ops.fp8_linear.scaled_mm import fp8_linear_scaled_mm

    return fp8_linear_scaled_mm(qweight, wscale, bias, qx, xscale).to(x.dtype)


@_fp8_linear_op.register_fake
def _fp8_linear_fake(x, qweight, wscale, bias, qx, xscale, backend):
    return x.new_empty((x.shape[0], qweight.shape[0]))
