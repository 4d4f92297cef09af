"""CogVLM2(-Video): configuration, the plain-PyTorch reference model, prompts and decoding.

``reference`` is the oracle (stock torch modules, original checkpoint names); ``fast`` runs the
same model through haic_kernels ops (`FastCogVLM2`, the same stage methods); ``weights`` reads
and writes HF-format checkpoints; ``prompt`` / ``generate`` / ``tokenizer`` are shared by both.
"""

from __future__ import annotations

from .config import (
    PRESET_SIZES,
    TEMPLATES,
    VARIANTS,
    CogVLM2Config,
    TextConfig,
    VisionConfig,
    count_parameters,
    get_config,
)
from .fast import FastCausalLMOutput, FastCogVLM2, TokenBatch, pad_prompts
from .generate import generate, greedy_generate, stream_generate
from .prompt import PromptInputs, build_prompt, stack_prompts
from .reference import (
    ATTN_IMPLS,
    CausalLMOutput,
    CogVLM2ForCausalLM,
    CogVLM2Model,
    EVA2CLIPModel,
    KVCache,
    build_position_ids,
    check_frames,
    init_random_weights,
    normalize_frames,
    set_attn_impl,
    vision_expert_mask,
)
from .sampling import Sampler, SamplingParams
from .templates import resolve_template
from .tokenizer import ByteTokenizer, load_tokenizer

__all__ = [
    "ATTN_IMPLS",
    "PRESET_SIZES",
    "TEMPLATES",
    "VARIANTS",
    "ByteTokenizer",
    "CausalLMOutput",
    "CogVLM2Config",
    "CogVLM2ForCausalLM",
    "CogVLM2Model",
    "EVA2CLIPModel",
    "FastCausalLMOutput",
    "FastCogVLM2",
    "KVCache",
    "PromptInputs",
    "Sampler",
    "SamplingParams",
    "TextConfig",
    "TokenBatch",
    "VisionConfig",
    "build_position_ids",
    "build_prompt",
    "check_frames",
    "count_parameters",
    "generate",
    "get_config",
    "greedy_generate",
    "init_random_weights",
    "load_tokenizer",
    "normalize_frames",
    "pad_prompts",
    "resolve_template",
    "set_attn_impl",
    "stack_prompts",
    "stream_generate",
    "vision_expert_mask",
]
