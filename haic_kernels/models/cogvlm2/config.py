"""CogVLM2 configuration: one frozen dataclass per tower, presets by size and variant.

Sizes (``PRESET_SIZES``):

* ``full``  - the released sizes (MODEL_SPEC.md; the public ``config.json`` files):
  EVA2-CLIP-E vision tower 1792 wide, 63 blocks, 16 heads, MLP 15360, 224 px / patch 14;
  Llama-3-8B language model 4096 wide, 32 layers, 32 query / 8 key-value heads of 128,
  SwiGLU 14336, vocab 128256; adapter GLU 14336; ids bos 128000, eos 128001, pad 128002.
* ``small`` - a GPU-test size with the full model's kernel shapes where they matter: 224 px,
  patch 14 (66 tokens per frame, as in full), vision head dim 112 (4 heads, 448 wide, 4 blocks,
  MLP 1792), text head dim 128 with GQA ratio 4 (8 query / 2 key-value heads, 1024 wide, 4 layers,
  SwiGLU 3584), adapter 3584, the real vocab and token ids. About 0.34 B parameters.
* ``tiny``  - for CPU tests: 112 px, patch 14 (8x8 grid -> 16 tokens + boi/eoi = 18 per frame),
  vision 224 wide, 2 blocks, 2 heads of 112, MLP 448; text 512 wide, 2 layers, 8 query / 2
  key-value heads of 64, SwiGLU 1024, adapter 1024, vocab 384 with the byte tokenizer's ids
  (bos 256, eos 257, pad 258).

Variants (``VARIANTS``):

* ``video-chat`` - cogvlm2-video-llama3-chat: no vision expert, chat template.
* ``video-base`` - cogvlm2-video-llama3-base: no vision expert, base template.
* ``image``      - cogvlm2-llama3-chat-19B: vision expert on, chat template.

Differences from the released ``config.json`` files that are deliberate (see `get_config`):
the released video models say ``max_position_embeddings: 2048`` and the image model 8192; the
presets follow that for ``full``. The released image model runs its tower at 1344 px (9217
positions, 2306 tokens per image); the ``image`` preset keeps 224 px so that all variants share
the video kernels' shapes (``get_config("full", "image", vision={"image_size": 1344})`` gives the
released tower). Stop ids are a tuple (``eos_token_ids``): the image release lists two (128001
``<|end_of_text|>``, 128009 ``<|eot_id|>``) and generation stops on either.

``template`` is what the checkpoint's ``config.json`` says (``template_version``); the template a
run uses is chosen by `haic_kernels.models.cogvlm2.templates.resolve_template`, which follows the
official demos and warns when it differs from this field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

PRESET_SIZES: tuple[str, ...] = ("tiny", "small", "full")
VARIANTS: tuple[str, ...] = ("video-chat", "video-base", "image")
# The release's three prompt templates (its ``_history_to_prompt``): "chat"
# ("Question: .. Answer:"), "vqa" ("Question: .. Short answer:"), "base" (the raw query).
TEMPLATES: tuple[str, ...] = ("chat", "base", "vqa")
ROPE_PRECISIONS: tuple[str, ...] = ("release", "fp32")

Template = Literal["chat", "base", "vqa"]


def _check_positive(owner: str, **values: int | float) -> None:
    # NaN compares False with everything and inf is positive: both must be named, not passed.
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{owner}.{name} must be a positive finite number, got {v!r}")


def _check_int(owner: str, **values: Any) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{owner}.{name} must be an int, got {type(v).__name__} {v!r}")


@dataclass(frozen=True)
class VisionConfig:
    """EVA2-CLIP vision tower: patch embed, ``num_layers`` post-norm ViT blocks, no final norm."""

    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-6
    in_channels: int = 3

    def __post_init__(self) -> None:
        ints = dict(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            in_channels=self.in_channels,
        )
        _check_int("VisionConfig", **ints)
        _check_positive("VisionConfig", layer_norm_eps=self.layer_norm_eps, **ints)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VisionConfig.image_size ({self.image_size}) must be a multiple of "
                f"patch_size ({self.patch_size})"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"VisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )

    @property
    def grid(self) -> int:
        """Patches per side: image_size // patch_size (16 at 224 px, patch 14)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_positions(self) -> int:
        """Rows of the learned position table: the patches plus the CLS token."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TextConfig:
    """Llama-3-shaped decoder: RMSNorm, GQA attention with RoPE, SwiGLU MLP, untied lm_head."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 8192
    # RoPE pairs dims (i, i + D/2) ("rotate half", False) or (2i, 2i+1) (True). MODEL_SPEC marks
    # rotate-half as inferred (the release's rotary helper calls its kernel non-interleaved).
    rope_interleaved: bool = False
    # How RoPE angles are computed - the single source for the reference and the fast model:
    # "release": as the release does (``pos_idx_in_fp32=False``): positions, inv_freq and their
    # product rounded to the model's dtype, so in bf16 the angles are bf16 (identical to "fp32" in
    # an fp32 model); "fp32": angles in fp32 whatever the dtype (more accurate, not the release's).
    rope_precision: Literal["release", "fp32"] = "release"
    # Positions the model may use (prompt + new tokens); None: max_position_embeddings. The
    # release never bounds positions (its RoPE cache grows on demand), so release configs set the
    # Llama-3-8B context here even where config.json says max_position_embeddings 2048.
    context_length: int | None = None

    def __post_init__(self) -> None:
        ints = dict(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
        )
        if self.context_length is not None:
            ints["context_length"] = self.context_length
        _check_int("TextConfig", **ints)
        _check_positive(
            "TextConfig", rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta, **ints
        )
        if self.rope_precision not in ROPE_PRECISIONS:
            raise ValueError(
                f"TextConfig.rope_precision must be one of {ROPE_PRECISIONS}, got "
                f"{self.rope_precision!r}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"TextConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads}) for grouped-query attention"
            )
        if not isinstance(self.rope_interleaved, bool):
            raise ValueError(
                f"TextConfig.rope_interleaved must be a bool, got {self.rope_interleaved!r}"
            )
        if self.head_dim % 2:
            raise ValueError(f"TextConfig.head_dim ({self.head_dim}) must be even for RoPE")
        # The release derives head_dim as hidden_size // num_heads; keep the two consistent.
        if self.num_heads * self.head_dim != self.hidden_size:
            raise ValueError(
                f"TextConfig: num_heads * head_dim ({self.num_heads} * {self.head_dim}) must equal "
                f"hidden_size ({self.hidden_size})"
            )

    @property
    def position_limit(self) -> int:
        """Positions a sequence may reach (exclusive): ``context_length`` or, if unset,
        ``max_position_embeddings``."""
        limit = self.context_length
        return limit if limit is not None else self.max_position_embeddings

    @property
    def gqa_ratio(self) -> int:
        """Query heads per kv head: kv head j serves query heads ratio*j .. ratio*j + ratio-1."""
        return self.num_heads // self.num_kv_heads

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        """Width of the fused QKV projection, split [q | k | v] (6144 at full size)."""
        return self.q_size + 2 * self.kv_size


@dataclass(frozen=True, kw_only=True)
class CogVLM2Config:
    """The whole model: vision tower, adapter (2x2 conv + GLU + boi/eoi), language model.

    Keyword-only. ``vision_expert`` switches the language model's routed experts on (image
    model: vision tokens use ``vision_expert_*`` / ``vision_mlp`` weights) or off (video models:
    only ``language_expert_*`` / ``language_mlp`` weights exist and every token uses them).
    """

    name: str
    vision: VisionConfig
    text: TextConfig
    adapter_intermediate_size: int
    adapter_layer_norm_eps: float = 1e-5
    vision_expert: bool
    template: Template
    max_frames: int = 24
    bos_token_id: int
    # Every id here ends a sequence (config.json / generation_config.json may list several).
    eos_token_ids: tuple[int, ...]
    pad_token_id: int

    def __post_init__(self) -> None:
        if not isinstance(self.vision, VisionConfig):
            raise ValueError(f"CogVLM2Config.vision must be a VisionConfig, got {self.vision!r}")
        if not isinstance(self.text, TextConfig):
            raise ValueError(f"CogVLM2Config.text must be a TextConfig, got {self.text!r}")
        if self.vision.grid % 2:
            raise ValueError(
                f"CogVLM2Config: the vision grid ({self.vision.image_size} // "
                f"{self.vision.patch_size} = {self.vision.grid}) must be even for the 2x2/2 conv"
            )
        if self.template not in TEMPLATES:
            raise ValueError(
                f"CogVLM2Config.template must be one of {TEMPLATES}, got {self.template!r}"
            )
        if not isinstance(self.vision_expert, bool):
            raise ValueError(
                f"CogVLM2Config.vision_expert must be a bool, got {self.vision_expert!r}"
            )
        _check_int(
            "CogVLM2Config",
            adapter_intermediate_size=self.adapter_intermediate_size,
            max_frames=self.max_frames,
            bos_token_id=self.bos_token_id,
            pad_token_id=self.pad_token_id,
        )
        eos = self.eos_token_ids
        if not isinstance(eos, tuple) or not eos:
            raise ValueError(
                f"CogVLM2Config.eos_token_ids must be a non-empty tuple of ints, got {eos!r}"
            )
        _check_int("CogVLM2Config", **{f"eos_token_ids[{i}]": v for i, v in enumerate(eos)})
        _check_positive(
            "CogVLM2Config",
            adapter_intermediate_size=self.adapter_intermediate_size,
            adapter_layer_norm_eps=self.adapter_layer_norm_eps,
            max_frames=self.max_frames,
        )
        ids = {"bos_token_id": self.bos_token_id, "pad_token_id": self.pad_token_id}
        ids.update({f"eos_token_ids[{i}]": v for i, v in enumerate(eos)})
        for name, v in ids.items():
            if not 0 <= v < self.text.vocab_size:
                raise ValueError(
                    f"CogVLM2Config.{name} ({v}) must be in [0, vocab_size={self.text.vocab_size})"
                )

    @property
    def eos_token_id(self) -> int:
        """The first stop id (the one HF configs list first). Stop on all of `eos_token_ids`."""
        return self.eos_token_ids[0]

    @property
    def tokens_per_frame(self) -> int:
        """LM tokens per frame: (grid/2)^2 compressed patches plus boi and eoi (66 at 224 px)."""
        return (self.vision.grid // 2) ** 2 + 2


def count_parameters(config: CogVLM2Config) -> dict[str, int]:
    """Parameter count of the model `config` describes, by part, computed from the sizes alone.

    Keys: ``vision_tower`` (patch embed, CLS, positions, blocks), ``adapter`` (conv, GLU,
    boi/eoi), ``language`` (embeddings, decoder layers, final norm, lm_head) and ``total``.
    """
    v, t = config.vision, config.text
    dv, dt = v.hidden_size, t.hidden_size
    patch = v.in_channels * v.patch_size**2 * dv + dv + dv + v.num_positions * dv
    block = (dv * 3 * dv + 3 * dv) + (dv * dv + dv)  # fused qkv, dense (all with bias)
    block += (dv * v.intermediate_size + v.intermediate_size) + (v.intermediate_size * dv + dv)
    block += 4 * dv  # two LayerNorms
    vision_tower = patch + v.num_layers * block
    adapter = dv * dv * 4 + dv  # 2x2 conv with bias
    adapter += dv * dt + 2 * dt + 3 * dt * config.adapter_intermediate_size  # GLU
    adapter += 2 * dt  # boi, eoi
    expert = dt * t.qkv_size + t.q_size * dt + 3 * dt * t.intermediate_size
    layer = expert + 2 * dt
    if config.vision_expert:
        layer += expert + t.qkv_size  # the vision QKV has a bias
    language = 2 * t.vocab_size * dt + t.num_layers * layer + dt
    return {
        "vision_tower": vision_tower,
        "adapter": adapter,
        "language": language,
        "total": vision_tower + adapter + language,
    }


_VISION: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_size=112, patch_size=14, hidden_size=224, num_layers=2, num_heads=2,
        intermediate_size=448,
    ),
    "small": dict(
        image_size=224, patch_size=14, hidden_size=448, num_layers=4, num_heads=4,
        intermediate_size=1792,
    ),
    "full": dict(
        image_size=224, patch_size=14, hidden_size=1792, num_layers=63, num_heads=16,
        intermediate_size=15360,
    ),
}  # fmt: skip

_TEXT: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=512, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=64,
        intermediate_size=1024, vocab_size=384,
    ),
    "small": dict(
        hidden_size=1024, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=128,
        intermediate_size=3584, vocab_size=128256,
    ),
    "full": dict(
        hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
        intermediate_size=14336, vocab_size=128256,
    ),
}  # fmt: skip

_TOP: dict[str, dict[str, Any]] = {
    "tiny": dict(
        adapter_intermediate_size=1024, bos_token_id=256, eos_token_ids=(257,), pad_token_id=258
    ),
    "small": dict(
        adapter_intermediate_size=3584, bos_token_id=128000, eos_token_ids=(128001,),
        pad_token_id=128002,
    ),
    "full": dict(
        adapter_intermediate_size=14336, bos_token_id=128000, eos_token_ids=(128001,),
        pad_token_id=128002,
    ),
}  # fmt: skip

_VARIANT: dict[str, dict[str, Any]] = {
    "video-chat": dict(vision_expert=False, template="chat"),
    "video-base": dict(vision_expert=False, template="base"),
    "image": dict(vision_expert=True, template="chat"),
}


def get_config(size: str = "tiny", variant: str = "video-chat", **overrides: Any) -> CogVLM2Config:
    """A preset configuration, optionally with fields replaced.

    ``overrides`` replace top-level fields of `CogVLM2Config` (``max_frames=8``,
    ``template="base"``, ...). ``vision`` and ``text`` may be a full `VisionConfig` /
    `TextConfig` or a dict of the fields to change, e.g. ``text={"num_layers": 1}``.
    The name is ``cogvlm2-<variant>-<size>`` unless ``name`` is given.
    """
    if size not in PRESET_SIZES:
        raise ValueError(f"size must be one of {PRESET_SIZES}, got {size!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    text_fields = dict(_TEXT[size])
    # The released video configs say 2048, the image config 8192. The release enforces neither
    # (its demos ask for 2048 new tokens), so positions are bounded by Llama-3-8B's 8192.
    if size == "full" and variant != "image":
        text_fields["max_position_embeddings"] = 2048
        text_fields["context_length"] = 8192
    vision = VisionConfig(**_VISION[size])
    text = TextConfig(**text_fields)

    known = {f.name for f in dataclasses.fields(CogVLM2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"get_config: unknown override(s) {unknown}; fields are {sorted(known)}")
    v_over = overrides.pop("vision", None)
    t_over = overrides.pop("text", None)
    if isinstance(v_over, dict):
        vision = dataclasses.replace(vision, **v_over)
    elif v_over is not None:
        vision = v_over
    if isinstance(t_over, dict):
        text = dataclasses.replace(text, **t_over)
    elif t_over is not None:
        text = t_over

    fields: dict[str, Any] = dict(
        name=f"cogvlm2-{variant}-{size}", **_TOP[size], **_VARIANT[variant]
    )
    if variant == "image" and size != "tiny":  # the image release also stops on <|eot_id|>
        fields["eos_token_ids"] = (128001, 128009)
    fields.update(overrides)
    return CogVLM2Config(vision=vision, text=text, **fields)
