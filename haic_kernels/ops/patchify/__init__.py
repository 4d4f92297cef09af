"""patchify: uint8 frames [F, H, W, 3] -> normalized patch rows [F, (H/p)*(W/p), K_pad].

`patchify` is the public function; backends live in reference.py (PyTorch), triton.py and
cuda.py (haic_kernels._C), and are imported only when used.
"""

from haic_kernels.ops.patchify.api import patchify

__all__ = ["patchify"]
