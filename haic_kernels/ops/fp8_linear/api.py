"""fp8_linear: per-token E4M3 activations x per-channel E4M3 weights, fp32 accumulation.

Public functions, the prepared-weight object, argument checks and backend choice; the
``haic_kernels::quantize_rows`` / ``haic_kernels::fp8_linear`` custom ops and their dispatch
tables live in ops.py. Backends are imported lazily: reference.py (PyTorch quantizer, emulated
linear), triton.py (the quantizer), scaled_mm.py (``torch._scaled_mm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from haic_kernels.ops._common import check_dtype, check_no_grad, check_same_device, check_tensor
from haic_kernels.ops.fp8_linear.format import E4M3_MAX
from haic_kernels.ops.fp8_linear.ops import LINEAR, QUANTIZE

__all__ = ["E4M3_MAX", "Fp8Weight", "fp8_linear", "fp8_linear_backend", "quantize_rows"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUANT_CHOICES = QUANTIZE.choices
LINEAR_CHOICES = LINEAR.choices


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
    chosen = QUANTIZE.resolve(backend, x.device, unsupported=lambda b: _no_e4m3(b, x))
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
    check_no_grad("fp8_linear", x=x)
    chosen = fp8_linear_backend(x, weight, backend=backend)
    x2 = x.reshape(-1, x.shape[-1])
    qx, sx = quantize_rows(x2)
    out = torch.ops.haic_kernels.fp8_linear(
        x2, weight.qweight, weight.scale, weight.bias, qx, sx, chosen
    )
    return out.view(*x.shape[:-1], weight.out_features)


def fp8_linear_backend(x: torch.Tensor, weight: Fp8Weight, *, backend: str = "auto") -> str:
    """The concrete backend ``fp8_linear(x, weight, backend=backend)`` runs ("emulated" or
    "scaled_mm"): what a caller reports so that an emulated run never passes for a fast one.
    ``auto`` gives scaled_mm only where it is usable (CUDA sm_89+, bf16 x, K and N multiples
    of 16) and verified on this GPU (`haic_kernels.ops._common.VERIFIED`); an explicit backend
    that cannot run this call raises ValueError."""
    return LINEAR.resolve(backend, x.device, unsupported=lambda b: _scaled_mm_problem(b, x, weight))


def _no_e4m3(backend: str, x: torch.Tensor) -> str | None:
    """Triton has no e4m3 type before sm_89."""
    if backend == "triton" and x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 9):
        return "Triton's e4m3 type needs sm_89 or newer"
    return None


def _scaled_mm_problem(backend: str, x: torch.Tensor, weight: Fp8Weight) -> str | None:
    """Why ``torch._scaled_mm`` cannot express this call (dtype, K/N alignment), or None."""
    if backend != "scaled_mm" or x.device.type != "cuda":
        return None  # the device itself is the contract's business (`_common._usable_here`)
    from haic_kernels.ops.fp8_linear.scaled_mm import problem

    return problem(x, weight.qweight)
