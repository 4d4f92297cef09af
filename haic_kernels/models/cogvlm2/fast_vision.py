"""The fast EVA2-CLIP vision tower and adapter: the reference's parameters, forward through our ops.

Module names and parameters are those of `vision.EVA2CLIPModel` (``patch_embedding``,
``transformer.layers[i]``, ``linear_proj``, ``conv``, ``boi``, ``eoi``), so state dicts and
forward hooks line up with the reference. Per frame:

    embed_patches          `haic_kernels.patch_embed`: uint8 [N, H, W, 3] frames straight in
                           (normalized in the kernel) or normalized float [N, 3, H, W]
    run_vision_transformer post-norm blocks; attention is `haic_kernels.attention` (full,
                           head dim 112 at full size) on q/k/v views of the fused QKV output;
                           LayerNorms, GELU MLP and projections stay torch (cuBLAS GEMMs; the
                           bias/residual/LayerNorm fusion is left to a later issue)
    compress_and_adapt     `haic_kernels.conv_compress` (2x2/2 conv as an implicit GEMM), the
                           GLU adapter (torch), then [boi, tokens, eoi]

``from_reference`` shares the reference's parameter tensors (no copy).
"""

from __future__ import annotations

import torch
from torch import nn

from haic_kernels.ops.attention import attention
from haic_kernels.ops.conv_compress import conv_compress
from haic_kernels.ops.patch_embed import patch_embed

from .config import CogVLM2Config
from .vision import EVA2CLIPModel

__all__ = ["FastEVA2CLIPModel", "FastVisionAttention", "FastVisionTransformerLayer"]


class FastVisionAttention(nn.Module):
    """`vision.VisionAttention` (``query_key_value``, ``dense``) through `attention`."""

    def __init__(self, ref: nn.Module, backend: str) -> None:
        super().__init__()
        self.num_heads, self.head_dim = ref.num_heads, ref.head_dim
        self.query_key_value = ref.query_key_value
        self.dense = ref.dense
        self.backend = backend

    def forward(
        self, x: torch.Tensor, cls_scores: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x [N, L, Dv] -> [N, L, Dv]; with ``cls_scores`` also float32 [N, L]: the head-mean
        attention the CLS query (row 0) gives each key (what salient pruning ranks by)."""
        n, length, _ = x.shape
        qkv = self.query_key_value(x).view(n, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # [N, L, H, Dh] strided views: the kernels take strides
        scores = None
        if cls_scores:
            rows = torch.zeros(n, length, dtype=torch.bool, device=x.device)
            rows[:, 0] = True
            ctx, scores = attention(q, k, v, causal=False, key_scores=rows, backend=self.backend)
        else:
            ctx = attention(q, k, v, causal=False, backend=self.backend)
        out = self.dense(ctx.reshape(n, length, -1))
        return out if scores is None else (out, scores)


class FastVisionTransformerLayer(nn.Module):
    """Post-norm block: ``h = x + LN1(attn(x))``, ``y = h + LN2(fc2(gelu(fc1(h))))``."""

    def __init__(self, ref: nn.Module, backend: str) -> None:
        super().__init__()
        self.input_layernorm = ref.input_layernorm
        self.attention = FastVisionAttention(ref.attention, backend)
        self.mlp = ref.mlp
        self.post_attention_layernorm = ref.post_attention_layernorm

    def forward(
        self, x: torch.Tensor, cls_scores: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        res = self.attention(x, cls_scores)
        attn, scores = (res, None) if not cls_scores else res
        h = x + self.input_layernorm(attn)
        y = h + self.post_attention_layernorm(self.mlp(h))
        return y if scores is None else (y, scores)


class _Transformer(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class FastEVA2CLIPModel(nn.Module):
    """Frames -> LM-ready tokens [N, tokens_per_frame, Dt], through the haic_kernels ops."""

    def __init__(self, ref: EVA2CLIPModel, backend: str = "auto", attn_backend: str = "auto"):
        super().__init__()
        self.config: CogVLM2Config = ref.config
        self.backend = backend
        # Same attribute order as the reference, so state_dict() keys come in the same order.
        self.patch_embedding = ref.patch_embedding
        self.transformer = _Transformer(
            [FastVisionTransformerLayer(layer, attn_backend) for layer in ref.transformer.layers]
        )
        self.linear_proj = ref.linear_proj
        self.conv = ref.conv
        self.boi = ref.boi
        self.eoi = ref.eoi

    def check_frames(self, frames: object, name: str = "frames") -> None:
        """uint8 [N, S, S, 3] or floating [N, 3, S, S] (S = image_size); ValueError otherwise."""
        v = self.config.vision
        s = v.image_size
        if not isinstance(frames, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(frames).__name__}")
        if frames.dtype == torch.uint8:
            if frames.dim() != 4 or tuple(frames.shape[1:]) != (s, s, 3):
                raise ValueError(
                    f"{name}: uint8 frames must be [N, {s}, {s}, 3] (RGB, channels last), got "
                    f"{tuple(frames.shape)}"
                )
        elif frames.is_floating_point():
            if frames.dim() != 4 or tuple(frames.shape[1:]) != (v.in_channels, s, s):
                raise ValueError(
                    f"{name}: float frames must be normalized [N, {v.in_channels}, {s}, {s}], "
                    f"got {tuple(frames.shape)}"
                )
        else:
            raise ValueError(
                f"{name} must be uint8 [N, H, W, 3] or normalized float [N, 3, H, W], got "
                f"{frames.dtype}"
            )

    def embed_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] or normalized float [N, 3, H, W] -> [N, 1 + P, Dv]."""
        self.check_frames(frames)
        pe = self.patch_embedding
        return patch_embed(
            frames,
            pe.proj.weight,
            pe.proj.bias,
            pe.cls_embedding,
            pe.position_embedding.weight,
            backend=self.backend,
        )

    def run_vision_transformer(
        self, x: torch.Tensor, cls_scores: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """[N, L, Dv] -> [N, L, Dv]; with ``cls_scores`` also the last layer's CLS attention
        [N, L] (float32, head mean; see `haic_kernels.pruning.pool_cls_attention`)."""
        layers = self.transformer.layers
        scores = None
        for i, layer in enumerate(layers):
            if cls_scores and i == len(layers) - 1:
                x, scores = layer(x, True)
            else:
                x = layer(x)
        return x if not cls_scores else (x, scores)

    def compress_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1 + g*g, Dv] -> [N, tokens_per_frame, Dt]: 2x2 conv (drops CLS), GLU, boi/eoi."""
        v = self.config.vision
        if x.dim() != 3 or x.shape[1] != v.num_positions or x.shape[2] != v.hidden_size:
            raise ValueError(
                f"x must be [N, {v.num_positions}, {v.hidden_size}], got {tuple(x.shape)}"
            )
        y = conv_compress(x, self.conv.weight, self.conv.bias, grid=v.grid, backend=self.backend)
        y = self.linear_proj(y)
        n = y.shape[0]
        boi = self.boi.expand(n, -1, -1).to(y.dtype)
        eoi = self.eoi.expand(n, -1, -1).to(y.dtype)
        return torch.cat([boi, y, eoi], dim=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.compress_and_adapt(self.run_vision_transformer(self.embed_patches(frames)))
