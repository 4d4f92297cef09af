"""The EVA2-CLIP vision tower and the adapter of CogVLM2, in stock torch modules.

Module names mirror the release's checkpoint (``model.vision.*``), so ``state_dict()`` keys are
the original tensor names. Per frame of ``image_size`` px (224 at full size)::

    patch_embedding   Conv2d(3, Dv, p, stride p) -> [grid*grid, Dv]; prepend cls_embedding;
                      add position_embedding (grid*grid + 1 rows)          -> [257, Dv]
    transformer       num_layers post-norm blocks (no final norm):
                          h = x + input_layernorm(attention(x))
                          y = h + post_attention_layernorm(mlp(h))
                      attention: fused query_key_value (bias) laid out [q | k | v], each [H, Dh];
                      full (bidirectional) over one frame's tokens, scale Dh**-0.5; dense (bias).
                      mlp: fc1 (bias) -> exact-erf GELU -> fc2 (bias)
    compress          drop CLS; 16x16 grid (row-major) -> conv 2x2/2 (bias) -> 8x8 = 64 tokens;
                      linear_proj GLU: linear_proj (no bias) -> LayerNorm(eps 1e-5) -> GELU ->
                      dense_4h_to_h(silu(gate_proj(x)) * dense_h_to_4h(x)); then [boi, x, eoi]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...constants import CLIP_MEAN, CLIP_STD
from .config import CogVLM2Config

ATTN_IMPLS: tuple[str, ...] = ("sdpa", "eager")


def check_attn_impl(impl: str) -> str:
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
    return impl


def normalize_frames(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 frames [F, H, W, 3] (RGB) -> float32 [F, 3, H, W], ``(x / 255 - mean[c]) / std[c]``.

    CLIP mean/std from `haic_kernels.constants`, as the release's ToTensor + Normalize.
    """
    if not isinstance(frames_u8, torch.Tensor):
        raise ValueError(f"frames_u8 must be a torch.Tensor, got {type(frames_u8).__name__}")
    if frames_u8.dtype != torch.uint8:
        raise ValueError(f"frames_u8 must be uint8, got {frames_u8.dtype}")
    if frames_u8.dim() != 4 or frames_u8.shape[-1] != 3:
        raise ValueError(f"frames_u8 must be [F, H, W, 3], got {tuple(frames_u8.shape)}")
    x = frames_u8.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def check_frames(frames: object, config: CogVLM2Config, name: str = "frames") -> None:
    """ValueError unless ``frames`` is uint8 [N, S, S, 3] (RGB, channels last, as decoded) or
    normalized floating point [N, 3, S, S] (S = ``config.vision.image_size``)."""
    v = config.vision
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
                f"{name}: float frames must be normalized [N, {v.in_channels}, {s}, {s}] (see "
                f"normalize_frames), got {tuple(frames.shape)}"
            )
    else:
        raise ValueError(
            f"{name} must be uint8 [N, H, W, 3] or normalized float [N, 3, H, W], got "
            f"{frames.dtype}"
        )


class PatchEmbedding(nn.Module):
    def __init__(self, config: CogVLM2Config) -> None:
        super().__init__()
        v = config.vision
        self.proj = nn.Conv2d(v.in_channels, v.hidden_size, v.patch_size, stride=v.patch_size)
        self.cls_embedding = nn.Parameter(torch.zeros(1, v.hidden_size))
        self.position_embedding = nn.Embedding(v.num_positions, v.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)  # [N, grid*grid, Dv], row-major patches
        cls = self.cls_embedding.unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight.unsqueeze(0)


class VisionAttention(nn.Module):
    def __init__(self, config: CogVLM2Config, attn_impl: str = "sdpa") -> None:
        super().__init__()
        v = config.vision
        self.num_heads = v.num_heads
        self.head_dim = v.head_dim
        self.query_key_value = nn.Linear(v.hidden_size, 3 * v.hidden_size)
        self.dense = nn.Linear(v.hidden_size, v.hidden_size)
        self.attn_impl = check_attn_impl(attn_impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        qkv = self.query_key_value(x).view(n, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, H, L, Dh]
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(-1, -2))
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(probs, v)
        return self.dense(out.transpose(1, 2).reshape(n, length, -1))


class VisionMLP(nn.Module):
    def __init__(self, config: CogVLM2Config) -> None:
        super().__init__()
        v = config.vision
        self.fc1 = nn.Linear(v.hidden_size, v.intermediate_size)
        self.fc2 = nn.Linear(v.intermediate_size, v.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU ("gelu" in the release config)


class VisionTransformerLayer(nn.Module):
    def __init__(self, config: CogVLM2Config, attn_impl: str = "sdpa") -> None:
        super().__init__()
        v = config.vision
        self.input_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.attention = VisionAttention(config, attn_impl)
        self.mlp = VisionMLP(config)
        self.post_attention_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Post-sublayer norm: the norms act on the sublayer outputs, not on the residual stream.
        h = x + self.input_layernorm(self.attention(x))
        return h + self.post_attention_layernorm(self.mlp(h))


class VisionTransformer(nn.Module):
    def __init__(self, config: CogVLM2Config, attn_impl: str = "sdpa") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            VisionTransformerLayer(config, attn_impl) for _ in range(config.vision.num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class GLU(nn.Module):
    """The adapter MLP, named as in the release (``model.vision.linear_proj.*``)."""

    def __init__(self, config: CogVLM2Config) -> None:
        super().__init__()
        dv, dt = config.vision.hidden_size, config.text.hidden_size
        inter = config.adapter_intermediate_size
        self.linear_proj = nn.Linear(dv, dt, bias=False)
        self.norm1 = nn.LayerNorm(dt, eps=config.adapter_layer_norm_eps)
        self.dense_h_to_4h = nn.Linear(dt, inter, bias=False)
        self.gate_proj = nn.Linear(dt, inter, bias=False)
        self.dense_4h_to_h = nn.Linear(inter, dt, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.linear_proj(x)))
        return self.dense_4h_to_h(F.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))


class EVA2CLIPModel(nn.Module):
    """Frames (uint8 [N, H, W, 3] or normalized float [N, 3, H, W]) -> LM-ready tokens
    [N, tokens_per_frame, Dt]."""

    def __init__(self, config: CogVLM2Config, attn_impl: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        v, dt = config.vision, config.text.hidden_size
        self.patch_embedding = PatchEmbedding(config)
        self.transformer = VisionTransformer(config, attn_impl)
        self.linear_proj = GLU(config)
        self.conv = nn.Conv2d(v.hidden_size, v.hidden_size, kernel_size=2, stride=2)
        self.boi = nn.Parameter(torch.zeros(1, 1, dt))
        self.eoi = nn.Parameter(torch.zeros(1, 1, dt))

    def embed_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (see `check_frames`) -> [N, num_positions, Dv]: patches, CLS first, plus
        learned positions. uint8 frames are normalized first (`normalize_frames`, fp32)."""
        check_frames(frames, self.config)
        if frames.dtype == torch.uint8:
            frames = normalize_frames(frames)
        return self.patch_embedding(frames.to(self.patch_embedding.proj.weight.dtype))

    def run_vision_tower(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, Dv] -> [N, L, Dv] through all blocks (no final norm)."""
        return self.transformer(x)

    def compress_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """[N, num_positions, Dv] -> [N, tokens_per_frame, Dt]: drop CLS, 2x2 conv, GLU, boi/eoi."""
        v = self.config.vision
        if x.dim() != 3 or x.shape[1] != v.num_positions or x.shape[2] != v.hidden_size:
            raise ValueError(
                f"x must be [N, {v.num_positions}, {v.hidden_size}], got {tuple(x.shape)}"
            )
        n, g = x.shape[0], v.grid
        grid = x[:, 1:].reshape(n, g, g, v.hidden_size).permute(0, 3, 1, 2)
        y = self.conv(grid).flatten(2).transpose(1, 2)  # [N, (g/2)^2, Dv], row-major
        y = self.linear_proj(y)
        boi = self.boi.expand(n, -1, -1).to(y.dtype)
        eoi = self.eoi.expand(n, -1, -1).to(y.dtype)
        return torch.cat([boi, y, eoi], dim=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.compress_and_adapt(self.run_vision_tower(self.embed_patches(frames)))
