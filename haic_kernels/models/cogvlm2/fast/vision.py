"""The fast EVA2-CLIP vision tower and adapter, on the reference's modules (same names, same
parameters: state dicts and forward hooks line up). Stages:

    embed_patches       `haic_kernels.patch_embed`: uint8 [N, H, W, 3] frames straight in
                        (normalized in the kernel) or normalized float [N, 3, H, W]
    run_vision_tower    post-norm blocks; attention is `haic_kernels.attention` (full, head dim
                        112 at full size) on q/k/v views of the fused QKV output; each
                        ``x + LN(f(x))`` is one `add_layer_norm` pass, fc1's bias joins the
                        exact GELU (`bias_gelu`); the projections stay torch (cuBLAS), or
                        fp8_linear with ``precision="fp8"`` (`precision.run_linear`)
    compress_and_adapt  `haic_kernels.conv_compress` (2x2/2 conv as an implicit GEMM), the GLU
                        adapter (torch), then [boi, tokens, eoi]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from haic_kernels.ops.activation import bias_gelu
from haic_kernels.ops.conv_compress import conv_compress
from haic_kernels.ops.norm import add_layer_norm
from haic_kernels.ops.patch_embed import patch_embed
from haic_kernels.pruning import VisionReduction, pool_cls_attention
from haic_kernels.pruning.vision import cu_frames_of

from ..vision import EVA2CLIPModel, check_frames
from .layers import attend
from .precision import Fp8Options, quantize_block, run_linear
from .vision_reduce import run_reduced_tower

__all__ = ["FastEVA2CLIPModel", "FastVisionLayer"]


class FastVisionLayer(nn.Module):
    """Post-norm block ``h = x + LN1(attn(x))``, ``y = h + LN2(fc2(gelu(fc1(h))))`` on the
    reference block's modules. ``backend`` goes to attention, ``op_backend`` (default
    ``backend``) to the fused norm and activation ops; ``fp8`` (None: native) quantizes the
    four projections once, here (`precision.quantize_block`)."""

    def __init__(
        self, ref: nn.Module, backend: str, op_backend: str | None = None,
        fp8: Fp8Options | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_layernorm = ref.input_layernorm
        self.attention = ref.attention
        self.mlp = ref.mlp
        self.post_attention_layernorm = ref.post_attention_layernorm
        self.backend = backend
        self.op_backend = backend if op_backend is None else op_backend
        self.fp8 = quantize_block(self, fp8)

    def _post_norm(self, out: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm):
        """``residual + norm(out)``, the norm rounded first as the reference's: one pass."""
        return add_layer_norm(out, residual, norm.weight, norm.bias, eps=norm.eps,
                              backend=self.op_backend)  # fmt: skip

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        """``fc2(gelu(fc1(h)))``: fc1 without its bias (cuBLAS), the bias added inside the one
        elementwise pass the exact GELU needs anyway (`bias_gelu`)."""
        fc1, fp8 = self.mlp.fc1, self.fp8
        g = bias_gelu(run_linear(fp8, fc1, h, bias=False), fc1.bias, backend=self.op_backend)
        return run_linear(fp8, self.mlp.fc2, g)

    def forward(
        self, x: torch.Tensor, cls_scores: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x [N, L, Dv] -> [N, L, Dv]; with ``cls_scores`` also float32 [N, L]: the head-mean
        attention the CLS query (row 0) gives each key (what salient pruning ranks by)."""
        rows = None
        if cls_scores:
            rows = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            rows[:, 0] = True
        h, _, scores = self.attention_residual(x, rows)
        y = self.mlp_residual(h)
        return y if scores is None else (y, scores)

    # The two halves of the block, so token reduction can run between them (`vision_reduce`).

    def attention_residual(
        self, x: torch.Tensor, rows: torch.Tensor | None = None, **attn: object
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``h = x + LN1(attn(x))`` -> (h, the keys [..., H, Dh], key scores or None). x [N, L, Dv]
        (frames) or [T, Dv] (packed frames: ``attn`` holds cu_seqlens, max_seqlen, key_bias);
        ``rows``: the query rows whose attention mass `attention`'s key_scores returns."""
        a = self.attention
        lead = x.shape[:-1]
        qkv = run_linear(self.fp8, a.query_key_value, x).view(*lead, 3, a.num_heads, a.head_dim)
        q, k, v = qkv.unbind(-3)  # strided views: the kernels take strides
        ctx, scores = attend(q, k, v, rows, causal=False, backend=self.backend, **attn)
        out = run_linear(self.fp8, a.dense, ctx.reshape(*lead, -1))
        h = self._post_norm(out, x, self.input_layernorm)
        return h, k, scores

    def mlp_residual(self, h: torch.Tensor) -> torch.Tensor:
        """``y = h + LN2(fc2(gelu(fc1(h))))``, any leading shape."""
        return self._post_norm(self._mlp(h), h, self.post_attention_layernorm)


class _Transformer(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class FastEVA2CLIPModel(nn.Module):
    """Frames -> LM-ready tokens [N, tokens_per_frame, Dt], through the haic_kernels ops."""

    def __init__(
        self, ref: EVA2CLIPModel, backend: str, attn_backend: str, fp8: Fp8Options | None = None
    ) -> None:
        super().__init__()
        self.config = ref.config
        self.backend = backend
        # The reference's attribute order, so state_dict() keys come in the same order.
        self.patch_embedding = ref.patch_embedding
        self.transformer = _Transformer(
            [FastVisionLayer(layer, attn_backend, backend, fp8) for layer in ref.transformer.layers]
        )
        self.linear_proj = ref.linear_proj
        self.conv = ref.conv
        self.boi = ref.boi
        self.eoi = ref.eoi

    def embed_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] or normalized float [N, 3, H, W] -> [N, 1 + P, Dv]."""
        check_frames(frames, self.config)
        pe = self.patch_embedding
        return patch_embed(frames, pe.proj.weight, pe.proj.bias, pe.cls_embedding,
                           pe.position_embedding.weight, backend=self.backend)  # fmt: skip

    def run_vision_tower(
        self, x: torch.Tensor, cls_scores: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """[N, L, Dv] -> [N, L, Dv]; with ``cls_scores`` also the last block's CLS attention
        [N, L] (float32, head mean; see `haic_kernels.pruning.pool_cls_attention`)."""
        layers = self.transformer.layers
        for layer in layers[:-1]:
            x = layer(x)
        return layers[-1](x, cls_scores) if len(layers) else x

    def run_reduced_tower(
        self,
        x: torch.Tensor,
        reduction: VisionReduction,
        frames: torch.Tensor,
        frames_per_video: Sequence[int],
    ) -> torch.Tensor:
        """`run_vision_tower` with token reduction: the packed tower of `run_reduced_tower`
        (module ``vision_reduce``); ``self.reduction_trace`` keeps the rows each block ran."""
        cu = cu_frames_of(frames_per_video, 1, x.device)
        x, _, tok = run_reduced_tower(self, x, reduction, frames, cu)
        self.reduction_trace = tok.trace
        return x

    def compress_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1 + g*g, Dv] -> [N, tokens_per_frame, Dt]: 2x2 conv (drops CLS), GLU, boi/eoi."""
        v = self.config.vision
        if x.dim() != 3 or x.shape[1] != v.num_positions or x.shape[2] != v.hidden_size:
            raise ValueError(
                f"x must be [N, {v.num_positions}, {v.hidden_size}], got {tuple(x.shape)}"
            )
        y = self.linear_proj(
            conv_compress(x, self.conv.weight, self.conv.bias, grid=v.grid, backend=self.backend)
        )
        n = y.shape[0]
        return torch.cat([self.boi.expand(n, -1, -1).to(y.dtype), y,
                          self.eoi.expand(n, -1, -1).to(y.dtype)], dim=1)  # fmt: skip

    def encode(
        self,
        frames: torch.Tensor,
        cls_scores: bool = False,
        reduction: VisionReduction | None = None,
        cu_frames: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The three stages: (LM rows [N * tokens_per_frame, Dt], with ``cls_scores`` the last
        block's CLS attention pooled per LM patch token [N, patches], else None). With a
        ``reduction`` the tower runs packed (`run_reduced_tower`; ``cu_frames`` int [B+1]: the
        videos' frames) and ``self.reduction_trace`` keeps the rows each block ran."""
        x = self.embed_patches(frames)
        if reduction is None:
            x = self.run_vision_tower(x, cls_scores)
            x, cls = x if cls_scores else (x, None)
        else:
            x, cls, tok = run_reduced_tower(self, x, reduction, frames, cu_frames, cls_scores)
            self.reduction_trace = tok.trace
        rows = self.compress_and_adapt(x).flatten(0, 1)
        return rows, None if cls is None else pool_cls_attention(cls)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.compress_and_adapt(self.run_vision_tower(self.embed_patches(frames)))
