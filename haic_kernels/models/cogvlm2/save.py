"""Write a CogVLM2 state dict in the HF safetensors layout (single file, or shards + index).

See weights.py for the layout; `load_checkpoint` / `load_pretrained` read what this writes.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from .checkpoint_layout import (
    _SHARD_RE,
    CONFIG_NAME,
    SAFE_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    _listing,
)
from .hf_config import config_to_hf

if TYPE_CHECKING:
    from .config import CogVLM2Config


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string: ``"5GB"`` (decimal, as in HF), ``"500MiB"``, ``"512"``."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"size must be int bytes or a string like '5GB', got {size!r}")
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", size.lower())
        if m is None:
            raise ValueError(f"cannot read {size!r} as a size (examples: 5GB, 500MB, 2GiB, 4096)")
        value = int(float(m.group(1)) * _UNITS[m.group(2) or "b"])
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _plan_shards(sd: Mapping[str, torch.Tensor], limit: int) -> list[list[str]]:
    # Greedy in state-dict order, as HF does: a tensor larger than the limit gets a shard alone.
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in sd.items():
        n = _nbytes(t)
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def _standalone(t: torch.Tensor, shared: bool) -> torch.Tensor:
    # safetensors refuses tensors that share storage and writes only dense data: give every
    # tensor its own contiguous CPU storage, copying only where that is not already so.
    t = t.detach()
    if t.device.type != "cpu":
        return t.to("cpu").contiguous()
    whole = (
        t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == _nbytes(t)
    )
    return t if whole and not shared else t.clone(memory_format=torch.contiguous_format)


def save_checkpoint(
    model_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    config: CogVLM2Config | Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write a state dict in the HF layout of this module's docstring; return the files written.

    One ``model.safetensors`` when everything fits in ``max_shard_size`` (int bytes, or a string
    such as ``"5GB"``/``"200MB"``/``"1GiB"``), else ``model-0000i-of-0000N.safetensors`` shards
    plus ``model.safetensors.index.json``. Shards are filled greedily in state-dict order; a
    tensor larger than the limit gets a shard of its own. Tensors that share storage (tied or
    views of one buffer) or are not contiguous are copied per shard, so each name is saved
    whole. Files are written under temporary names and renamed at the end; stale
    ``model*.safetensors`` and index files from an earlier save to the same directory are
    removed. ``config`` (a `CogVLM2Config`, or an HF dict written as is) goes to
    ``config.json``; ``torch_dtype`` is filled from the tensors when absent.
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        sd = dict(model_or_state_dict.state_dict())
    else:
        sd = dict(model_or_state_dict)
    out = Path(path)
    not_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    on_meta = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_meta]
    if not_tensors or on_meta:
        raise CheckpointError(
            f"cannot save to {out}: "
            + (f"values that are not tensors:\n{_listing(not_tensors)}\n" if not_tensors else "")
            + (f"tensors on the meta device (no data):\n{_listing(on_meta)}" if on_meta else "")
        )
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"cannot save to {out}: it exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    storages = Counter(
        (v.device, v.untyped_storage().data_ptr())
        for v in sd.values()
        if v.untyped_storage().nbytes() > 0
    )
    shared = {
        k
        for k, v in sd.items()
        if v.untyped_storage().nbytes() > 0
        and storages[(v.device, v.untyped_storage().data_ptr())] > 1
    }
    shards = _plan_shards(sd, parse_size(max_shard_size))
    n = len(shards)
    names = (
        [SAFE_WEIGHTS_NAME]
        if n == 1
        else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    )
    pending: list[tuple[Path, Path]] = []
    try:
        for name, keys in zip(names, shards):
            tmp = out / f".{name}.tmp"
            pending.append((tmp, out / name))
            part = {k: _standalone(sd[k], k in shared) for k in keys}
            save_file(part, tmp, metadata={"format": "pt"})
            del part
        if n > 1:
            index = {
                "metadata": {"total_size": sum(_nbytes(t) for t in sd.values())},
                "weight_map": {k: names[i] for i, keys in enumerate(shards) for k in keys},
            }
            tmp = out / f".{SAFE_INDEX_NAME}.tmp"
            pending.append((tmp, out / SAFE_INDEX_NAME))
            tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    keep = {final.name for _, final in pending}
    for f in out.iterdir():
        stale = f.name in (SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME) or _SHARD_RE.match(f.name)
        if stale and f.name not in keep:
            f.unlink()
    for tmp, final in pending:
        os.replace(tmp, final)
    written = [final for _, final in pending]

    if config is not None:
        hf = dict(config) if isinstance(config, Mapping) else config_to_hf(config)
        by_dtype: Counter[str] = Counter()
        for t in sd.values():
            if t.is_floating_point():
                by_dtype[str(t.dtype).removeprefix("torch.")] += _nbytes(t)
        if by_dtype:
            hf.setdefault("torch_dtype", by_dtype.most_common(1)[0][0])
        (out / CONFIG_NAME).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
        written.append(out / CONFIG_NAME)
    return written
