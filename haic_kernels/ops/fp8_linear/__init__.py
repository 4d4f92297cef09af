"""fp8_linear: E4M3 linear layers for Hopper, an option beside the bf16 default.

`Fp8Weight.from_linear` quantizes a weight once (one fp32 scale per output channel);
`fp8_linear` quantizes the activations per token at run time and multiplies through
``torch._scaled_mm`` (sm_89+) or an emulated quantize -> matmul -> dequantize path that runs
anywhere and proves the scaling math; `quantize_rows` is the per-row quantizer both use;
`fp8_linear_backend` says which backend a call runs.
"""

from haic_kernels.ops.fp8_linear.api import (
    E4M3_MAX,
    Fp8Weight,
    fp8_linear,
    fp8_linear_backend,
    quantize_rows,
)

__all__ = ["E4M3_MAX", "Fp8Weight", "fp8_linear", "fp8_linear_backend", "quantize_rows"]
