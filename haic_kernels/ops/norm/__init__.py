"""norm: RMSNorm and LayerNorm over the last dim, each optionally fused with its residual add.

`rms_norm`, `add_rms_norm` (pre-norm: ``h = x + residual``, then RMSNorm; CogVLM2's LM),
`layer_norm` and `add_layer_norm` (post-norm: ``residual + LayerNorm(x)``; EVA2-CLIP) are the
public functions; backends live in reference.py (PyTorch), triton.py (one kernel, variants as
constexpr flags) and liger.py (Liger-Kernel, optional), imported only when used.
"""

from haic_kernels.ops.norm.api import add_layer_norm, add_rms_norm, layer_norm, rms_norm

__all__ = ["add_layer_norm", "add_rms_norm", "layer_norm", "rms_norm"]
