"""The HF checkpoint layout on disk: file names, dtype tags, and the errors both reading and
writing raise. Shared by weights.py (reading, loading) and save.py (writing)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_PICKLE_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")

#: Names that may sit on one side only without being an error. ``inv_freq`` is derived from
#: rope_theta at construction and our reference does not save it; the released video checkpoint
#: indexes 32 tensors more than the model has parameters (1029 vs 997), one per LM layer, most
#: likely this buffer (inferred from the count, not read).
KNOWN_IGNORED: tuple[str, ...] = ("*.rotary_emb.inv_freq",)

# Lists longer than this in an error message are cut, with the count of what was left out.
_MAX_LISTED = 20

# safetensors dtype tag -> torch attribute; the optional ones depend on the torch build.
_ST_NAMES = "F64:float64 F32:float32 F16:float16 BF16:bfloat16 F8_E4M3:float8_e4m3fn I64:int64"
_ST_NAMES += " F8_E5M2:float8_e5m2 I32:int32 I16:int16 I8:int8 U64:uint64 U32:uint32 U16:uint16"
_ST_NAMES += " U8:uint8 BOOL:bool"
_ST_DTYPES: dict[str, torch.dtype] = {
    tag: getattr(torch, attr)
    for tag, attr in (item.split(":") for item in _ST_NAMES.split())
    if hasattr(torch, attr)
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or loaded as asked. The message names the path and lists
    every problem found (``missing``, ``unexpected``, ``mismatched`` hold them for code)."""

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The directory, or a file the checkpoint needs (a shard, config.json), does not exist."""


def _listing(items: Sequence[str], indent: str = "    ") -> str:
    shown = [f"{indent}{s}" for s in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"{indent}... and {len(items) - _MAX_LISTED} more")
    return "\n".join(shown)
