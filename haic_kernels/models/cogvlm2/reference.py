"""CogVLM2(-Video) in plain PyTorch modules: the oracle every fast path is checked against.

Written from the public release's description (MODEL_SPEC.md) with stock modules only
(nn.Conv2d, nn.Linear, nn.LayerNorm, nn.Embedding, F.scaled_dot_product_attention), independent
of ``haic_kernels.ops``. The module tree mirrors the release checkpoint, so ``state_dict()`` keys
are the original tensor names (``model.vision.patch_embedding.proj.weight``,
``model.layers.0.self_attn.language_expert_query_key_value.weight``, ``lm_head.weight``, ...).
No buffer is persistent: RoPE ``inv_freq`` is rebuilt from ``rope_theta``.

The vision tower and adapter live in `vision.py`, the decoder pieces (position ids, routing,
KV cache) in `language.py`; this module assembles them and re-exports the public names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...constants import VISION_TOKEN_TYPE
from ...tokens import build_position_ids, check_token_types, vision_expert_mask
from .config import CogVLM2Config
from .generate import SamplerFn, generate, stream_generate
from .language import (
    CogVLMDecoderLayer,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    VisionExpertAttention,
    VisionExpertMLP,
    apply_rotary,
    causal_attention,
)
from .vision import (
    ATTN_IMPLS,
    GLU,
    EVA2CLIPModel,
    PatchEmbedding,
    VisionAttention,
    check_attn_impl,
    check_frames,
    normalize_frames,
)

__all__ = [
    "ATTN_IMPLS",
    "GLU",
    "CausalLMOutput",
    "CogVLM2ForCausalLM",
    "CogVLM2Model",
    "CogVLMDecoderLayer",
    "EVA2CLIPModel",
    "KVCache",
    "PatchEmbedding",
    "RMSNorm",
    "RotaryEmbedding",
    "VisionExpertAttention",
    "VisionExpertMLP",
    "VisionStages",
    "apply_rotary",
    "build_position_ids",
    "causal_attention",
    "check_frames",
    "init_random_weights",
    "normalize_frames",
    "set_attn_impl",
    "vision_expert_mask",
]


def _now(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def check_vision_inputs(
    config: CogVLM2Config,
    num_slots: int,
    frames: torch.Tensor | None,
    vision_embeds: torch.Tensor | None,
) -> None:
    """ValueError unless exactly what fills ``num_slots`` vision positions was given: frames
    (``tokens_per_frame`` slots each) or vision_embeds (checked by `vision_embed_rows`)."""
    tpf = config.tokens_per_frame
    if frames is not None and vision_embeds is not None:
        raise ValueError("pass frames or vision_embeds, not both")
    if frames is not None:
        check_frames(frames, config)
        if frames.shape[0] * tpf != num_slots:
            raise ValueError(
                f"frames: {frames.shape[0]} frames give {frames.shape[0] * tpf} vision "
                f"tokens ({tpf} per frame) but token_type_ids has {num_slots} vision slots"
            )
    elif vision_embeds is None and num_slots:
        raise ValueError(
            f"token_type_ids has {num_slots} vision slots but neither frames nor "
            "vision_embeds was given"
        )


def vision_embed_rows(
    vision_embeds: torch.Tensor, hidden: int, num_slots: int
) -> torch.Tensor | None:
    """``vision_embeds`` ([N, tokens, hidden] or [num_vision_tokens, hidden]) as the rows that
    fill ``num_slots`` vision positions (None when there are none); ValueError on a mismatch."""
    if vision_embeds.shape[-1] != hidden or vision_embeds.dim() not in (2, 3):
        raise ValueError(
            f"vision_embeds must be [N, tokens, {hidden}] or [num_vision_tokens, {hidden}], "
            f"got {tuple(vision_embeds.shape)}"
        )
    rows = vision_embeds.reshape(-1, hidden)
    if rows.shape[0] != num_slots:
        raise ValueError(
            f"vision_embeds holds {rows.shape[0]} vision tokens but token_type_ids has "
            f"{num_slots} vision slots"
        )
    return rows if num_slots else None


@dataclass
class CausalLMOutput:
    """``logits`` [B, S, V] (float32, as the release returns them); ``past_key_values`` is the
    updated `KVCache` when ``use_cache=True``, else None."""

    logits: torch.Tensor
    past_key_values: KVCache | None = None


def set_attn_impl(module: nn.Module, attn_impl: str) -> None:
    """Switch every attention module under ``module`` to ``"sdpa"`` or ``"eager"``."""
    check_attn_impl(attn_impl)
    for m in module.modules():
        if isinstance(m, (VisionAttention, VisionExpertAttention)):
            m.attn_impl = attn_impl


class CogVLM2Model(nn.Module):
    """``embed_tokens``, ``layers``, ``norm`` and the vision tower ``vision`` (release order)."""

    def __init__(self, config: CogVLM2Config, attn_impl: str = "sdpa") -> None:
        super().__init__()
        t = config.text
        self.config = config
        self.embed_tokens = nn.Embedding(t.vocab_size, t.hidden_size)
        self.layers = nn.ModuleList(
            CogVLMDecoderLayer(config, attn_impl) for _ in range(t.num_layers)
        )
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.vision = EVA2CLIPModel(config, attn_impl)


class VisionStages:
    """The vision stages of a CogVLM2 model, one definition for the reference and `FastCogVLM2`
    (so callers never ask which they hold): each runs ``self.model.vision``'s stage."""

    model: nn.Module

    def embed_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (uint8 [N, H, W, 3] or normalized float [N, 3, H, W]) -> [N, 1 + P, Dv]."""
        return self.model.vision.embed_patches(frames)

    def run_vision_tower(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1 + P, Dv] -> [N, 1 + P, Dv] through every vision block."""
        return self.model.vision.run_vision_tower(x)

    def compress_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1 + P, Dv] -> [N, tokens_per_frame, Dt]: 2x2 conv, GLU adapter, boi/eoi."""
        return self.model.vision.compress_and_adapt(x)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames -> [N, tokens_per_frame, Dt]: the three stages above."""
        return self.model.vision(frames)


class CogVLM2ForCausalLM(VisionStages, nn.Module):
    """The whole model. ``attn_impl`` ("sdpa" | "eager") can be switched at any time; the
    stages (`VisionStages`, ``forward``, ``generate``) are `FastCogVLM2`'s."""

    def __init__(self, config: CogVLM2Config, *, attn_impl: str = "sdpa") -> None:
        super().__init__()
        if not isinstance(config, CogVLM2Config):
            raise ValueError(f"config must be a CogVLM2Config, got {type(config).__name__}")
        self.config = config
        self._attn_impl = check_attn_impl(attn_impl)
        self.model = CogVLM2Model(config, attn_impl)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)

    @property
    def attn_impl(self) -> str:
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, value: str) -> None:
        set_attn_impl(self, value)
        self._attn_impl = value

    def generate(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        frames: torch.Tensor | None = None,
        *,
        vision_embeds: torch.Tensor | None = None,
        max_new_tokens: int,
        eos_token_id: int | Sequence[int] | None = None,
        sampler: SamplerFn | None = None,
        timings: dict | None = None,
        **options,
    ) -> torch.Tensor:
        """New tokens [B, n_new] (`generate.generate` with a KV cache; ``sampler``: a
        `sampling.Sampler`, None = greedy; ``options`` go to it). The fast model's signature.

        ``timings`` (a dict) gets "prefill_s" (the first forward: the prompt), "decode_s" (the
        rest) and "decode_tokens" (tokens produced after the first, over the batch)."""
        marks = [_now(input_ids.device)] if timings is not None else []

        def prefilled(*_: object) -> None:  # the first forward the loop makes: the prompt
            if len(marks) == 1:
                marks.append(_now(input_ids.device))

        hook = self.register_forward_hook(prefilled)
        try:
            out = generate(self, input_ids, token_type_ids, frames, vision_embeds=vision_embeds,
                           max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                           sampler=sampler, **options)  # fmt: skip
        finally:
            hook.remove()
        if timings is not None:
            end = _now(input_ids.device)
            prefilled = marks[1] if len(marks) > 1 else end
            timings["prefill_s"] = prefilled - marks[0]
            timings["decode_s"] = end - prefilled
            timings["decode_tokens"] = max(out.shape[1] - 1, 0) * out.shape[0]
        return out

    def stream(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        frames: torch.Tensor | None = None,
        **options,
    ) -> Iterator[torch.Tensor]:
        """`generate`'s loop as an iterator (`generate.stream_generate`; ``options``: generate's
        keywords but ``timings``): each step's new tokens int64 [B]. The fast model's signature."""
        return stream_generate(self, input_ids, token_type_ids, frames, **options)

    # -----------------------------------------------------------------------------------------

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        past: KVCache | None,
    ) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point:
            raise ValueError("input_ids must be an integer tensor [B, S]")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, S] with S >= 1, got {tuple(input_ids.shape)}")
        if not isinstance(token_type_ids, torch.Tensor) or token_type_ids.shape != input_ids.shape:
            got = tuple(token_type_ids.shape) if isinstance(token_type_ids, torch.Tensor) else None
            raise ValueError(
                f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {got}"
            )
        check_token_types(token_type_ids)
        vocab = self.config.text.vocab_size
        if bool(((input_ids < 0) | (input_ids >= vocab)).any()):
            raise ValueError(f"input_ids must lie in [0, vocab_size={vocab})")
        if position_ids is not None and tuple(position_ids.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"position_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(position_ids.shape)}"
            )
        if past is not None:
            if not isinstance(past, KVCache):
                raise ValueError(f"past_key_values must be a KVCache, got {type(past).__name__}")
            if past.num_layers != self.config.text.num_layers:
                raise ValueError(
                    f"past_key_values has {past.num_layers} layers, the model "
                    f"{self.config.text.num_layers}"
                )
            if past.batch_size != input_ids.shape[0]:
                raise ValueError(
                    f"past_key_values holds batch {past.batch_size}, input_ids batch "
                    f"{input_ids.shape[0]}"
                )

    def _check_keep(
        self, keep: torch.Tensor | None, keep_from_layer: int, shape: torch.Size
    ) -> torch.Tensor | None:
        """The kept columns [B, S_kept] (sequence order), or None without ``keep``."""
        layers = self.config.text.num_layers
        if isinstance(keep_from_layer, bool) or not isinstance(keep_from_layer, int):
            raise ValueError(f"keep_from_layer must be an int, got {keep_from_layer!r}")
        if not 0 <= keep_from_layer < layers:
            raise ValueError(
                f"keep_from_layer must be in [0, num_layers={layers}), got {keep_from_layer}"
            )
        if keep is None:
            return None
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
            raise ValueError("keep must be a bool tensor [B, S] (True = the token stays)")
        if tuple(keep.shape) != tuple(shape):
            raise ValueError(
                f"keep must have the shape of input_ids {tuple(shape)}, got {tuple(keep.shape)}"
            )
        counts = keep.sum(dim=1)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
            raise ValueError(
                f"keep must keep the same number (>= 1) of tokens in every row, got "
                f"{counts.tolist()} (the reference has no padding: run rows separately)"
            )
        return keep.nonzero()[:, 1].view(shape[0], int(counts[0]))

    def _vision_rows(
        self,
        num_slots: int,
        frames: torch.Tensor | None,
        vision_embeds: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The [num_slots, Dt] rows that fill the vision-type positions, in order."""
        dt = self.config.text.hidden_size
        check_vision_inputs(self.config, num_slots, frames, vision_embeds)
        if frames is not None:
            return self.encode_frames(frames).reshape(-1, dt) if num_slots else None
        if vision_embeds is not None:
            return vision_embed_rows(vision_embeds, dt, num_slots)
        return None

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        frames: torch.Tensor | None = None,
        *,
        vision_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        keep: torch.Tensor | None = None,
        keep_from_layer: int = 0,
    ) -> CausalLMOutput:
        """Logits for ``input_ids`` [B, S] with types ``token_type_ids`` [B, S] (0 text, 1 vision).

        ``frames`` [B*F, ...] (uint8 [N, H, W, 3], or normalized float [N, 3, H, W], see
        `check_frames`) are the frames of all sequences in order; their tokens fill the
        vision-type slots in order (row-major over [B, S]). ``vision_embeds`` ([N,
        tokens_per_frame, Dt] from ``encode_frames``, or the flattened [num_vision_tokens, Dt])
        may be given instead, e.g. after pruning.
        ``position_ids`` default to `build_position_ids` (continued from the cache's last
        position when ``past_key_values`` is given). With ``use_cache`` the returned
        ``past_key_values`` holds every layer's keys/values including this call's tokens.
        Vision-expert routing (image variant) follows `vision_expert_mask` of this call's
        ``token_type_ids``.

        Token pruning: ``keep`` (bool [B, S], the same number of True per row) drops this call's
        tokens where it is False, from decoder layer ``keep_from_layer`` on (0: before the first
        layer; K > 0: layers 0..K-1 see every token, later layers - and their KV cache - only
        the kept ones, FastV-style). Kept tokens keep the position ids computed on the full
        sequence, and routing is recomputed (`vision_expert_mask`) on the kept token types.
        ``logits`` (and the cache's last position/type) then cover only the kept tokens,
        [B, S_kept, V]. ``keep=None`` is the unpruned model, unchanged.
        """
        self._check_inputs(input_ids, token_type_ids, position_ids, past_key_values)
        kept_idx = self._check_keep(keep, keep_from_layer, input_ids.shape)
        vis = token_type_ids == VISION_TOKEN_TYPE
        rows = self._vision_rows(int(vis.sum()), frames, vision_embeds)

        x = self.model.embed_tokens(input_ids)
        if rows is not None:
            x = x.index_put((vis,), rows.to(device=x.device, dtype=x.dtype))
        if position_ids is None:
            if past_key_values is None:
                position_ids = build_position_ids(token_type_ids)
            else:
                position_ids = past_key_values.continue_positions(token_type_ids)
        max_pos = self.config.text.position_limit  # the release bounds no position: 8192 there
        if int(position_ids.max()) >= max_pos or int(position_ids.min()) < 0:
            raise ValueError(
                f"position_ids: ids up to {int(position_ids.max())} exceed the {max_pos} "
                "positions of this config (context_length, else max_position_embeddings)"
            )
        vision_mask = vision_expert_mask(token_type_ids) if self.config.vision_expert else None

        new_keys, new_values = [], []
        for i, layer in enumerate(self.model.layers):
            if kept_idx is not None and i == keep_from_layer:
                x = x.gather(1, kept_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                position_ids = position_ids.gather(1, kept_idx)
                token_type_ids = token_type_ids.gather(1, kept_idx)
                if vision_mask is not None:
                    vision_mask = vision_expert_mask(token_type_ids)
            past = None
            if past_key_values is not None:
                past = (past_key_values.keys[i], past_key_values.values[i])
            x, (k, v) = layer(x, vision_mask, position_ids, past)
            if use_cache:
                new_keys.append(k)
                new_values.append(v)
        logits = self.lm_head(self.model.norm(x)).float()

        cache = None
        if use_cache:
            cache = KVCache(
                keys=new_keys,
                values=new_values,
                last_position=position_ids[:, -1].clone(),
                last_token_type=token_type_ids[:, -1].clone(),
            )
        return CausalLMOutput(logits=logits, past_key_values=cache)


# ---------------------------------------------------------------------------------------------


_NORM_WEIGHTS = ("layernorm.weight", "norm.weight", "norm1.weight")
_UNIT_TABLES = ("embed_tokens.weight", "boi", "eoi")
_SMALL_TABLES = ("position_embedding.weight", "cls_embedding")


@torch.no_grad()
def init_random_weights(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Fill every parameter of ``model`` with seeded random values; returns ``model``.

    Deterministic for a given (seed, model structure), independent of the global RNG and of the
    device: values are drawn on the CPU in ``named_parameters()`` order, then copied. Chosen so
    that nothing is degenerate and parity tests exercise every term, at any size:

    * norm weights ``1 + 0.1 z``; every bias (norm biases included) ``std * z``;
    * token embeddings and boi/eoi ``z`` (unit scale, as nn.Embedding's default), so that each
      token - and each image - visibly changes the logits;
    * the vision CLS vector and position table ``std * z`` (small next to the patch content);
    * weight matrices and conv kernels ``max(std, fan_in ** -0.5) * z``: about 0.02 at full
      size, and unit-scale activations in the small presets, where 0.02 would make attention
      nearly uniform and every position alike (so a wrong softmax scale or mask would hardly
      show).

    ``z`` is standard normal. Drawing on the CPU costs about a minute at full size.
    Raises ValueError for parameters on the meta device.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    for name, p in model.named_parameters():
        if p.is_meta:
            raise ValueError(f"init_random_weights: parameter {name} is on the meta device")
        z = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith(_NORM_WEIGHTS):
            value = 1.0 + 0.1 * z
        elif name.endswith(_UNIT_TABLES):
            value = z
        elif p.dim() >= 2 and not name.endswith(_SMALL_TABLES):
            value = max(std, p[0].numel() ** -0.5) * z
        else:
            value = std * z
        p.copy_(value.to(device=p.device, dtype=p.dtype))
    return model
