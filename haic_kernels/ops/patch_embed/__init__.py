"""patch_embed: frames (uint8 [F, H, W, 3] or float [F, 3, H, W]) -> [F, 1 + P, D] tokens.

`patch_embed` is the public function; backends live in reference.py (PyTorch), triton.py (one
fused implicit-GEMM kernel) and cuda.py (compiled patchify + cuBLAS), imported only when used.
"""

from haic_kernels.ops.patch_embed.api import patch_embed

__all__ = ["patch_embed"]
