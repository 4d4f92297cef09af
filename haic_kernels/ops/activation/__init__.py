"""activation: the elementwise tails of the MLPs, fused.

`bias_gelu` (EVA2-CLIP's fc1 bias + exact-erf GELU, after a bias-free GEMM) and `silu_mul`
(Llama's SwiGLU ``silu(gate) * up``, from two tensors or one fused gate/up projection output)
are the public functions; backends live in reference.py (PyTorch), triton.py (one kernel, the
variant a constexpr flag) and liger.py (Liger-Kernel's SiLU*mul, optional).
"""

from haic_kernels.ops.activation.api import bias_gelu, silu_mul

__all__ = ["bias_gelu", "silu_mul"]
