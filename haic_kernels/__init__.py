"""haic_kernels: Triton and CUDA kernels for fast CogVLM2-Video inference.

The public functional API lives here; each op is a folder under ``haic_kernels/ops/`` with its
PyTorch reference and its fast backends. Importing this package needs only torch: Triton, the
compiled extension ``haic_kernels._C``, flash-attn, DALI and PyAV load when first used. Run
``haic info`` to see which are usable on this machine and why the others are not.
"""

from __future__ import annotations

from haic_kernels import backends, pruning
from haic_kernels.constants import CLIP_MEAN, CLIP_STD
from haic_kernels.ops import token_prune
from haic_kernels.ops.attention import AttentionOutput, attention, attention_with_kvcache
from haic_kernels.ops.conv_compress import conv_compress
from haic_kernels.ops.expert_linear import Routing, expert_linear
from haic_kernels.ops.patch_embed import patch_embed
from haic_kernels.ops.patchify import patchify
from haic_kernels.ops.rope import apply_rope, rope_qkv

# isort: split
# ---- issue 14 (fused kernels): norm, activation and fp8 ops; one block for the merge ----
from haic_kernels.ops.activation import bias_gelu, silu_mul
from haic_kernels.ops.fp8_linear import Fp8Weight, fp8_linear, quantize_rows
from haic_kernels.ops.norm import add_layer_norm, add_rms_norm, layer_norm, rms_norm

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 - the issue-14 block stays separate until the merge
    "CLIP_MEAN",
    "CLIP_STD",
    "AttentionOutput",
    "Routing",
    "__version__",
    "apply_rope",
    "attention",
    "attention_with_kvcache",
    "backends",
    "conv_compress",
    "expert_linear",
    "patch_embed",
    "patchify",
    "pruning",
    "rope_qkv",
    "token_prune",
    # ---- issue 14 (fused kernels) ----
    "Fp8Weight",
    "add_layer_norm",
    "add_rms_norm",
    "bias_gelu",
    "fp8_linear",
    "layer_norm",
    "quantize_rows",
    "rms_norm",
    "silu_mul",
]
