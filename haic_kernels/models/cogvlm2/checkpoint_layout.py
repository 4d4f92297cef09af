"""The HF checkpoint layout on disk: file names, dtype tags, the errors both reading and writing
raise, and the checks of where a checkpoint is and what it is loaded as (path or Hub repo id,
device, dtype). Shared by weights.py (reading, loading), save.py (writing) and tokenizer.py."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# owner/name as the Hub spells repo ids (no leading dot or slash, one slash).
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
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


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it (nothing is read from the data area)."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None  # None: a safetensors dtype this torch build has no name for
    file: str

    @property
    def nbytes(self) -> int:
        numel = 1
        for s in self.shape:
            numel *= s
        return numel * (self.dtype.itemsize if self.dtype is not None else 0)


@dataclass(frozen=True)
class CheckpointIndex:
    """What a checkpoint directory holds: each tensor's shape, dtype and file, from headers only."""

    path: Path
    tensors: dict[str, TensorInfo]
    files: tuple[str, ...]  # file names relative to `path`, in reading order
    sharded: bool

    @property
    def total_size(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def names_by_file(self) -> Iterator[tuple[str, list[str]]]:
        by_file: dict[str, list[str]] = {f: [] for f in self.files}
        for name, info in self.tensors.items():
            by_file[info.file].append(name)
        yield from by_file.items()


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


def check_device(device: object, name: str = "device") -> torch.device:
    """``device`` as a `torch.device`; ValueError/TypeError naming ``name`` when it is not one
    (``"bfloat16"`` passed as a device says so)."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"{name} must be a str or torch.device, got {type(device).__name__}")
    if isinstance(getattr(torch, device, None), torch.dtype):
        raise ValueError(f"{name}={device!r} is a dtype, not a device (pass it as dtype=)")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"{name}={device!r} is not a device ('cpu', 'cuda', 'cuda:1'): {e}") from e


def check_float_dtype(dtype: object, name: str = "dtype") -> torch.dtype | None:
    """None, or a floating-point `torch.dtype` (a name such as ``"bfloat16"`` is accepted)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, dtype)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch dtype or None, got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point dtype, got {dtype}")
    return dtype


def resolve_checkpoint(
    path_or_repo_id: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A local checkpoint directory for a path, or for a Hugging Face repo id (``owner/name``)
    found in the local HF cache only (``huggingface_hub``, ``local_files_only=True``: nothing is
    downloaded; ``cache_dir`` default: the HF cache, ``HF_HUB_CACHE``). An existing path always
    wins over a repo id of the same spelling.

    Raises `CheckpointNotFoundError` naming the path or repo id when neither exists (with how to
    download it), ImportError when a repo id is given and huggingface_hub is not installed.
    """
    p = Path(path_or_repo_id)
    text = str(path_or_repo_id)
    if p.exists() or not _REPO_ID_RE.fullmatch(text):
        if not p.exists():
            raise CheckpointNotFoundError(f"checkpoint directory {p} does not exist")
        return p
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise ImportError(
            f"{text!r} is not a local path and looks like a Hugging Face repo id; resolving it "
            "needs huggingface_hub (pip install 'haic_kernels[hub]'), or pass a local directory"
        ) from e
    try:
        return Path(snapshot_download(text, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
        raise CheckpointNotFoundError(
            f"{text!r} is neither a local directory nor a repo id in the local Hugging Face cache "
            f"(nothing is downloaded here); fetch it first with `hf download {text}` or pass the "
            f"directory ({type(e).__name__}: {e})"
        ) from e
