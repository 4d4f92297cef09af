"""``config.json`` <-> `CogVLM2Config`: the release's field names, mapped both ways.

Split from weights.py: the tensors and the config are read by different code paths, and the
field tables below are the part most likely to change when a new release renames something.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import CogVLM2Config


# Our field -> the release's config.json key. `head_dim` and `rope_theta` are absent from the
# release (its modeling code uses hidden_size / num_attention_heads and a fixed RoPE base of
# 500000); they are written for completeness and fall back to those values when absent.
# fmt: off
_TEXT_KEYS = {
    "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "num_kv_heads": "num_multi_query_heads",
    "head_dim": "head_dim", "intermediate_size": "intermediate_size", "vocab_size": "vocab_size",
    "rms_norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
    "max_position_embeddings": "max_position_embeddings",
}
# Our VisionConfig field -> key inside the release's "vision_config".
_VISION_KEYS = {
    "image_size": "image_size", "patch_size": "patch_size", "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers", "num_heads": "num_heads",
    "intermediate_size": "intermediate_size", "layer_norm_eps": "layer_norm_eps",
    "in_channels": "in_channels",
}
_TOP_KEYS = {
    "template": "template_version", "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id", "pad_token_id": "pad_token_id",
}
# fmt: on
# Our fields the release's config.json has no key for (name, vision_expert, adapter sizes,
# max_frames, ...) live under this key; HF's config class keeps unknown keys as attributes.
EXTENSION_KEY = "haic_kernels"
# Inferred from the release: the image model (with visual expert) is "CogVLMForCausalLM", the
# video models without it are "CogVLMVideoForCausalLM".
_ARCH_EXPERT = {"CogVLMForCausalLM": True, "CogVLMVideoForCausalLM": False}


def _jsonable(value: Any, what: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, what) for v in value]
    raise TypeError(f"config field {what} = {value!r} has no JSON form")


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def infer_vision_expert(weight_names: Iterable[str]) -> bool:
    """Whether a checkpoint has visual-expert weights (``*.vision_expert_*``, ``*.vision_mlp.*``).

    An inference, not a field of the release's config.json: the image model ships those
    weights, the video model does not (its layers hold only ``language_expert_*`` weights).
    """
    return any(".vision_expert_" in n or ".vision_mlp." in n for n in weight_names)


def config_to_hf(config: CogVLM2Config) -> dict[str, Any]:
    """Our config as a CogVLM2 ``config.json`` dict (the release's field names).

    Layout: top-level LM fields (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``num_multi_query_heads`` (the release's name for KV heads), ``intermediate_size``,
    ``vocab_size``, ``rms_norm_eps``, ``max_position_embeddings``, ``template_version``, token
    ids, plus ``head_dim``/``rope_theta``), ``vision_config`` (``image_size``, ``patch_size``,
    ``hidden_size``, ``num_heads``, ``num_hidden_layers``, ``intermediate_size``,
    ``layer_norm_eps``, ``in_channels``, ``num_positions``, ...) and our remaining fields under
    ``"haic_kernels"``. `config_from_hf` inverts it exactly.
    """
    text, vision = config.text, config.vision
    hf: dict[str, Any] = {
        "architectures": [
            "CogVLMForCausalLM" if config.vision_expert else "CogVLMVideoForCausalLM"
        ],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
    }
    hf.update({k: _jsonable(getattr(text, f), f) for f, k in _TEXT_KEYS.items()})
    hf.update({k: _jsonable(getattr(config, f), f) for f, k in _TOP_KEYS.items()})
    vc: dict[str, Any] = {
        "dropout_prob": 0.0,
        "hidden_act": "gelu",
        "num_positions": (vision.image_size // vision.patch_size) ** 2 + 1,
    }
    vc.update({k: _jsonable(getattr(vision, f), f) for f, k in _VISION_KEYS.items()})
    hf["vision_config"] = vc

    def rest(obj: Any, known: Iterable[str]) -> dict[str, Any]:
        return {
            f.name: _jsonable(getattr(obj, f.name), f.name)
            for f in dataclasses.fields(obj)
            if f.name not in known
        }

    ext = rest(config, [*_TOP_KEYS, "text", "vision"])
    for part, obj, known in (("text", text, _TEXT_KEYS), ("vision", vision, _VISION_KEYS)):
        extra = rest(obj, known)
        if extra:
            ext[part] = extra
    hf[EXTENSION_KEY] = ext
    return hf


def _build(
    cls: type,
    src: Mapping[str, Any],
    keys: Mapping[str, str],
    extra: Mapping[str, Any],
    **fallback: Any,
) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {f: src[k] for f, k in keys.items() if k in src}
    kw.update({f: _from_json(v) for f, v in extra.items() if f in names})
    kw.update({f: v for f, v in fallback.items() if f not in kw})
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"config.json lacks fields for {cls.__name__}: {e}") from e


def config_from_hf(
    hf: Mapping[str, Any], *, weight_names: Iterable[str] | None = None
) -> CogVLM2Config:
    """A `CogVLM2Config` from a CogVLM2 ``config.json`` dict (the release's, or `config_to_hf`'s).

    Fields the release does not record are taken from the ``"haic_kernels"`` extension when
    present, else: ``num_multi_query_heads`` -> ``num_key_value_heads`` -> ``num_attention_heads``;
    ``head_dim`` = hidden_size / num_attention_heads; ``rope_theta``, ``max_frames``,
    ``adapter_layer_norm_eps`` -> our dataclass defaults; ``adapter_intermediate_size`` ->
    ``intermediate_size`` (the release's adapter GLU reuses it). ``vision_expert`` (inferred):
    the extension, else the presence of visual-expert names in ``weight_names`` (see
    `infer_vision_expert`), else the ``architectures`` name; otherwise a ValueError.
    """
    from .config import CogVLM2Config, TextConfig, VisionConfig

    ext = dict(hf.get(EXTENSION_KEY) or {})
    vc = hf.get("vision_config")
    if not isinstance(vc, Mapping):
        raise ValueError("config has no 'vision_config' object; is this a CogVLM2 config.json?")
    for where, act, ours in (
        ("", hf.get("hidden_act"), "silu"),
        ("vision_", vc.get("hidden_act"), "gelu"),
    ):
        if act not in (None, ours):
            raise ValueError(f"{where}hidden_act {act!r} is not supported (CogVLM2 uses {ours!r})")

    heads = hf.get("num_attention_heads")
    derived = {"num_kv_heads": hf.get("num_key_value_heads", heads)}
    if heads and "hidden_size" in hf:
        derived["head_dim"] = hf["hidden_size"] // heads
    text = _build(TextConfig, hf, _TEXT_KEYS, ext.pop("text", {}), **derived)
    vision = _build(VisionConfig, vc, _VISION_KEYS, ext.pop("vision", {}))
    positions = (vision.image_size // vision.patch_size) ** 2 + 1
    if vc.get("num_positions", positions) != positions:
        raise ValueError(
            f"vision_config num_positions {vc['num_positions']} != (image_size / patch_size)^2 + 1"
            f" = {positions}"
        )

    if "vision_expert" not in ext:
        names = list(weight_names) if weight_names is not None else []
        arch = [a for a in hf.get("architectures") or [] if a in _ARCH_EXPERT]
        if names:
            ext["vision_expert"] = infer_vision_expert(names)
        elif arch:
            ext["vision_expert"] = _ARCH_EXPERT[arch[0]]
        else:
            raise ValueError(
                "config.json does not say whether the model has a visual expert; pass the "
                "checkpoint's weight names (weight_names=...) to infer it"
            )
    eos = hf.get("eos_token_id")
    top: dict[str, Any] = {f: hf[k] for f, k in _TOP_KEYS.items() if k in hf}
    if isinstance(eos, list):  # some HF configs list several stop ids; ours keeps the first
        top["eos_token_id"] = eos[0]
    variant = "image" if ext["vision_expert"] else f"video-{top.get('template', 'chat')}"
    ext.setdefault("name", f"cogvlm2-{variant}-hf")
    ext.setdefault("adapter_intermediate_size", hf.get("intermediate_size"))
    return _build(CogVLM2Config, top, {f: f for f in top}, ext, vision=vision, text=text)
