"""``config.json`` <-> `CogVLM2Config`: the release's field names and defaults, mapped both ways.

Split from weights.py: the tensors and the config are read by different code paths, and the
field tables below are the part most likely to change when a new release renames something.

Defaults are the release's own: a key absent from a release ``config.json`` takes the default of
the release's ``CogVLMConfig`` class (configuration_cogvlm.py), never a value guessed from another
field. The image release's file, for one, has no ``num_multi_query_heads``: its class default is
8 (not the 32 attention heads). Every value is checked before a dataclass is built: a wrong type
(``"4096"``), NaN, an infinity or a non-positive size raises `CheckpointError` naming the file and
the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .checkpoint_layout import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    CheckpointError,
    CheckpointNotFoundError,
)
from .config import TEMPLATES, CogVLM2Config, TextConfig, VisionConfig

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
    "pad_token_id": "pad_token_id",
}
# The release's CogVLMConfig defaults (configuration_cogvlm.py of the CogVLM2 releases). It has no
# pad_token_id default (PretrainedConfig's is None); the release's modeling code hard-codes 128002
# as the padding index and vision placeholder, so that is the default here. RoPE base 500000 is
# hard-coded in its attention module.
RELEASE_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_multi_query_heads": 8,
    "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "template_version": "chat", "bos_token_id": 128000, "eos_token_id": 128001,
    "pad_token_id": 128002, "rope_theta": 500000.0,
}
# The release's vision tower reads every one of these from "vision_config"; it has no defaults.
_VISION_REQUIRED = (*_VISION_KEYS.values(), "num_positions")
_FLOAT_KEYS = {"rms_norm_eps", "rope_theta", "layer_norm_eps"}
# fmt: on
# Llama-3-8B's context. The release never bounds positions by max_position_embeddings (its RoPE
# cache grows on demand; the video configs say 2048 yet the demos ask for 2048 new tokens).
LLAMA3_CONTEXT = 8192
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
    ids (``eos_token_id`` an int, or a list when there are several), plus
    ``head_dim``/``rope_theta``), ``vision_config`` (``image_size``, ``patch_size``,
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
    eos = list(config.eos_token_ids)
    hf["eos_token_id"] = eos[0] if len(eos) == 1 else eos
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

    ext = rest(config, [*_TOP_KEYS, "eos_token_ids", "text", "vision"])
    for part, obj, known in (("text", text, _TEXT_KEYS), ("vision", vision, _VISION_KEYS)):
        extra = rest(obj, known)
        if extra:
            ext[part] = extra
    hf[EXTENSION_KEY] = ext
    return hf


def _value(src: Mapping[str, Any], key: str, where: str, source: str) -> Any:
    """``src[key]`` checked for its kind: an int size, a positive finite float, or a string."""
    v = src[key]
    name = f"{where}{key}"
    if key in _FLOAT_KEYS:
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0
        if not ok:
            raise CheckpointError(f"{source}: {name} must be a positive finite number, got {v!r}")
        return float(v)
    if key == "template_version":
        if v not in TEMPLATES:
            raise CheckpointError(f"{source}: {name} must be one of {TEMPLATES}, got {v!r}")
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointError(f"{source}: {name} must be an integer, got {type(v).__name__} {v!r}")
    if key not in ("bos_token_id", "pad_token_id") and v <= 0:
        raise CheckpointError(f"{source}: {name} must be positive, got {v}")
    return v


def _eos_ids(value: Any, name: str, source: str) -> tuple[int, ...]:
    ids = value if isinstance(value, list) else [value]
    bad = [v for v in ids if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if not ids or bad:
        raise CheckpointError(f"{source}: {name} must be an id or a list of ids, got {value!r}")
    return tuple(ids)


def _build(cls: type, kw: dict[str, Any], source: str) -> Any:
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e


def config_from_hf(
    hf: Any,
    *,
    weight_names: Iterable[str] | None = None,
    generation_config: Any = None,
    source: str = CONFIG_NAME,
) -> CogVLM2Config:
    """A `CogVLM2Config` from a CogVLM2 ``config.json`` dict (the release's, or `config_to_hf`'s).

    Keys absent from ``hf`` take the release's CogVLMConfig defaults (`RELEASE_DEFAULTS`), unless
    the ``"haic_kernels"`` extension holds our own field. Derived: ``head_dim`` = hidden_size /
    num_attention_heads; ``adapter_intermediate_size`` = ``intermediate_size`` (the release's
    adapter GLU reuses it); ``context_length`` = 8192 for release files whose
    max_position_embeddings is smaller (the release bounds no position). ``eos_token_id`` may
    be an int or a list; the ids of ``generation_config`` (the dict of generation_config.json)
    are added after them.
    ``vision_expert`` (inferred): the extension, else visual-expert names in ``weight_names``
    (`infer_vision_expert`), else the ``architectures`` name.

    Raises `CheckpointError` naming ``source`` and the key: not a JSON object, a missing
    ``vision_config`` key, a size that is not an integer (``"4096"``), NaN / infinite /
    non-positive values, an unknown template or activation, inconsistent sizes.
    """
    if not isinstance(hf, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    ext = hf.get(EXTENSION_KEY) or {}
    if not isinstance(ext, Mapping):
        raise CheckpointError(f"{source}: {EXTENSION_KEY} must be an object, got {ext!r}")
    ext = dict(ext)
    vc = hf.get("vision_config")
    if not isinstance(vc, Mapping):
        raise CheckpointError(
            f"{source}: no 'vision_config' object; is this a CogVLM2 config.json?"
        )
    for where, act, ours in (
        ("", hf.get("hidden_act", "silu"), "silu"),
        ("vision_config.", vc.get("hidden_act", "gelu"), "gelu"),
    ):
        if act != ours:
            raise CheckpointError(
                f"{source}: {where}hidden_act {act!r} is not supported (CogVLM2 uses {ours!r})"
            )
    absent = [k for k in _VISION_REQUIRED if k not in vc]
    if absent:
        raise CheckpointError(f"{source}: vision_config lacks {', '.join(absent)}")

    top = {**RELEASE_DEFAULTS, **hf}
    text_kw = {f: _value(top, k, "", source) for f, k in _TEXT_KEYS.items() if k in top}
    text_kw.setdefault("head_dim", text_kw["hidden_size"] // text_kw["num_heads"])
    text_ext = dict(ext.pop("text", {}))
    release_file = "context_length" not in text_ext and EXTENSION_KEY not in hf
    if release_file and text_kw["max_position_embeddings"] < LLAMA3_CONTEXT:
        text_kw["context_length"] = LLAMA3_CONTEXT
    text_kw.update({f: _from_json(v) for f, v in text_ext.items()})
    text = _build(TextConfig, text_kw, source)

    vision_kw = {f: _value(vc, k, "vision_config.", source) for f, k in _VISION_KEYS.items()}
    vision_kw.update({f: _from_json(v) for f, v in dict(ext.pop("vision", {})).items()})
    vision = _build(VisionConfig, vision_kw, source)
    positions = (vision.image_size // vision.patch_size) ** 2 + 1
    if _value(vc, "num_positions", "vision_config.", source) != positions:
        raise CheckpointError(
            f"{source}: vision_config.num_positions {vc['num_positions']} != "
            f"(image_size / patch_size)^2 + 1 = {positions}"
        )

    if "vision_expert" not in ext:
        names = list(weight_names) if weight_names is not None else []
        arch = [a for a in hf.get("architectures") or [] if a in _ARCH_EXPERT]
        if names:
            ext["vision_expert"] = infer_vision_expert(names)
        elif arch:
            ext["vision_expert"] = _ARCH_EXPERT[arch[0]]
        else:
            raise CheckpointError(
                f"{source} does not say whether the model has a visual expert; pass the "
                "checkpoint's weight names (weight_names=...) to infer it"
            )
    fields: dict[str, Any] = {f: _value(top, k, "", source) for f, k in _TOP_KEYS.items()}
    eos = _eos_ids(top["eos_token_id"], "eos_token_id", source)
    if generation_config is not None:
        gen_source = str(Path(source).with_name(GENERATION_CONFIG_NAME))
        if not isinstance(generation_config, Mapping):
            raise CheckpointError(f"{gen_source}: expected a JSON object")
        if generation_config.get("eos_token_id") is not None:
            more = _eos_ids(generation_config["eos_token_id"], "eos_token_id", gen_source)
            eos += tuple(i for i in more if i not in eos)
    fields["eos_token_ids"] = eos
    # Not named after template_version: the chat releases' files say "base" (see templates.py).
    ext.setdefault("name", "cogvlm2-image-hf" if ext["vision_expert"] else "cogvlm2-video-hf")
    ext.setdefault("adapter_intermediate_size", text.intermediate_size)
    known = {f.name for f in dataclasses.fields(CogVLM2Config)}
    fields.update({f: _from_json(v) for f, v in ext.items() if f in known})
    return _build(CogVLM2Config, dict(fields, vision=vision, text=text), source)


def read_json(file: Path, *, required: bool = True) -> Any:
    """The parsed contents of ``file``; `CheckpointError` (naming it) when unreadable, not UTF-8 or
    not JSON; None when it is absent and not ``required``."""
    if not file.is_file():
        if required:
            raise CheckpointNotFoundError(f"no {file.name} in {file.parent}")
        return None
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file} is not UTF-8 text: {e}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    except OSError as e:
        raise CheckpointError(f"{file} cannot be read: {e}") from e


def read_config_dir(
    path: str | Path, *, weight_names: Iterable[str] | None = None
) -> CogVLM2Config:
    """`CogVLM2Config` of a checkpoint directory from ``config.json`` (and the stop ids of
    ``generation_config.json`` when present). Reads no weight: cheap enough to call first."""
    p = Path(path)
    cfg_file = p / CONFIG_NAME
    hf = read_json(cfg_file)
    gen = read_json(p / GENERATION_CONFIG_NAME, required=False)
    return config_from_hf(
        hf, weight_names=weight_names, generation_config=gen, source=str(cfg_file)
    )
