"""conv_compress: vision tokens [F, 1 + g*g, C] -> 2x2/2 conv -> [F, (g/2)^2, C_out].

`conv_compress` is the public function; backends live in reference.py (PyTorch), triton.py
(implicit GEMM) and cuda.py (compiled 2x2 gather + cuBLAS), imported only when used.
"""

from haic_kernels.ops.conv_compress.api import conv_compress

__all__ = ["conv_compress"]
