"""rope: rotary position embedding on q and k, fused with the QKV split (CogVLM2's LM).

`rope_qkv` (the fused QKV projection output -> rotated q, k and v in flash-attn layout) and
`apply_rope` (one [.., H, D] tensor) are the public functions; backends live in reference.py
(PyTorch) and triton.py, imported only when used.
"""

from haic_kernels.ops.rope.api import apply_rope, rope_qkv, rope_qkv_to_cache

__all__ = ["apply_rope", "rope_qkv", "rope_qkv_to_cache"]
