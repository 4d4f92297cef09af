"""Load and save CogVLM2 checkpoints in the Hugging Face safetensors layout.

On-disk layout, as the public release ships it and as `save_checkpoint` writes it::

    <dir>/config.json                       HF config, the release's field names (`config_to_hf`)
    <dir>/model.safetensors                 everything, when it fits in one shard
      - or -
    <dir>/model.safetensors.index.json      {"metadata": {"total_size": <bytes of all tensors>},
                                             "weight_map": {<tensor name>: <shard file name>}}
    <dir>/model-00001-of-0000N.safetensors  shard i of N, each a plain safetensors file
    ...

Tensor names are the release's own (``model.vision.patch_embedding.proj.weight``,
``model.layers.0.self_attn.language_expert_query_key_value.weight``, ``lm_head.weight``, ...). The
reference model's ``state_dict`` keys are exactly these names, so nothing is renamed here.

Only safetensors is read. Pickle formats (``pytorch_model.bin``, ``*.pt``) are refused: unpickling
runs arbitrary code from the file, and safetensors also lets a shard be read tensor by tensor.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open

# Imported lazily at runtime (config.py / reference.py must be able to import this module).
if TYPE_CHECKING:
    from .config import CogVLM2Config
    from .reference import CogVLM2ForCausalLM

from .checkpoint_layout import (
    _MAX_LISTED,
    _PICKLE_GLOBS,
    _ST_DTYPES,
    CONFIG_NAME,
    KNOWN_IGNORED,
    SAFE_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    CheckpointIndex,
    CheckpointNotFoundError,
    TensorInfo,
    _listing,
    check_device,
    check_float_dtype,
    resolve_checkpoint,
)
from .hf_config import (
    EXTENSION_KEY,
    config_from_hf,
    config_to_hf,
    infer_vision_expert,
    read_config_dir,
)
from .save import parse_size, save_checkpoint

# One public checkpoint API: file names and errors live in checkpoint_layout.py, the config.json
# mapping in hf_config.py, writing in save.py.
__all__ = [
    "CONFIG_NAME",
    "EXTENSION_KEY",
    "KNOWN_IGNORED",
    "SAFE_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "CheckpointError",
    "CheckpointIndex",
    "CheckpointNotFoundError",
    "LoadReport",
    "TensorInfo",
    "config_from_hf",
    "config_to_hf",
    "infer_vision_expert",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "load_state_dict_from_dir",
    "parameters_on_meta",
    "parse_size",
    "read_config_dir",
    "resolve_checkpoint",
    "save_checkpoint",
]


@dataclass(frozen=True)
class LoadReport:
    """What `load_checkpoint` did. ``ignored`` holds names matched by the ignore patterns, from
    either side; ``missing``/``unexpected`` are non-empty only with ``strict=False``."""

    path: Path
    files: tuple[str, ...]
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: tuple[str, ...]
    dtypes: dict[str, int]  # dtype name -> number of tensors loaded with it
    nbytes: int
    seconds: float

    def __str__(self) -> str:
        dts = ", ".join(f"{n} {k}" for k, n in sorted(self.dtypes.items()))
        return (
            f"loaded {len(self.loaded)} tensors ({self.nbytes / 1e9:.3f} GB; {dts}) from "
            f"{len(self.files)} file(s) in {self.path} in {self.seconds:.2f} s; "
            f"ignored {len(self.ignored)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}"
        )


# ---------------------------------------------------------------------------------------------
# reading


def _no_weights_error(path: Path) -> CheckpointError:
    present = sorted(p.name for p in path.iterdir())
    pickled = sorted({n for n in present for g in _PICKLE_GLOBS if fnmatch.fnmatch(n, g)})
    if pickled:
        return CheckpointError(
            f"{path} holds {', '.join(pickled)} but no {SAFE_WEIGHTS_NAME} or {SAFE_INDEX_NAME}: "
            "pickle checkpoints are not supported, because unpickling runs arbitrary code from the "
            "file. Convert it once with safetensors in a trusted environment "
            "(safetensors.torch.save_file) or download the .safetensors files of the release."
        )
    others = [n for n in present if n.endswith(".safetensors")]
    hint = f" (other safetensors files here: {', '.join(others)})" if others else ""
    shown = ", ".join(present[:_MAX_LISTED]) or "nothing"
    return CheckpointNotFoundError(
        f"no {SAFE_WEIGHTS_NAME} or {SAFE_INDEX_NAME} in {path}{hint}; the directory holds {shown}"
    )


def _read_header(file: Path) -> dict[str, TensorInfo]:
    try:
        with safe_open(str(file), framework="pt") as f:
            out = {}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                sl = f.get_slice(name)
                out[name] = TensorInfo(
                    tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype()), file.name
                )
            return out
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file: {e}") from e


def _read_weight_map(index_file: Path) -> dict[str, str]:
    dupes: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for k, v in items:
            if k in seen:
                dupes.append(k)
            seen[k] = v
        return seen

    try:
        data = json.loads(index_file.read_text(), object_pairs_hook=pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_file} is not valid JSON: {e}") from e
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError(f"{index_file} has no 'weight_map' object of name -> shard file")
    if dupes:
        raise CheckpointError(f"{index_file} lists these names more than once:\n{_listing(dupes)}")
    bad = sorted({v for v in wm.values() if Path(v).name != v or v in (".", "..")})
    if bad:
        raise CheckpointError(f"{index_file} names shards outside its directory: {', '.join(bad)}")
    return wm


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointIndex:
    """Read only the headers of a checkpoint directory and check that it is consistent.

    ``path`` is a directory in the layout of this module's docstring (or a single ``.safetensors``
    file). Raises `CheckpointNotFoundError` for a missing directory, file or shard, and
    `CheckpointError` for anything else: no safetensors files, pickle files only, both layouts at
    once, a name listed in the index but absent from its shard, a name in more than one shard, a
    shard tensor the index does not list, an unreadable file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint directory {p} does not exist")
    if p.is_file():
        if p.suffix in (".bin", ".pt", ".pth", ".ckpt"):
            raise _no_weights_error(p.parent)
        if p.suffix != ".safetensors":
            raise CheckpointError(f"{p} is not a checkpoint directory or a .safetensors file")
        return CheckpointIndex(p.parent, _read_header(p), (p.name,), False)
    index_file, single = p / SAFE_INDEX_NAME, p / SAFE_WEIGHTS_NAME
    if index_file.exists() and single.exists():
        raise CheckpointError(
            f"{p} holds both {SAFE_WEIGHTS_NAME} and {SAFE_INDEX_NAME}; it is unclear which one "
            "is current (remove the stale one, or re-save with save_checkpoint)"
        )
    if single.exists():
        return CheckpointIndex(p, _read_header(single), (SAFE_WEIGHTS_NAME,), False)
    if not index_file.exists():
        raise _no_weights_error(p)

    weight_map = _read_weight_map(index_file)
    files = tuple(sorted(set(weight_map.values())))
    absent = [f for f in files if not (p / f).is_file()]
    if absent:
        raise CheckpointNotFoundError(
            f"{index_file} names {len(absent)} shard file(s) missing from {p}:\n{_listing(absent)}"
        )
    headers = {f: _read_header(p / f) for f in files}
    holders: dict[str, list[str]] = {}
    for f, header in headers.items():
        for name in header:
            holders.setdefault(name, []).append(f)
    problems: list[str] = []
    absent_keys = [f"{n} (index says {f})" for n, f in weight_map.items() if n not in headers[f]]
    if absent_keys:
        problems.append(f"listed in the index but absent from that shard:\n{_listing(absent_keys)}")
    dupes = [f"{n} in {', '.join(fs)}" for n, fs in holders.items() if len(fs) > 1]
    if dupes:
        problems.append(f"present in more than one shard:\n{_listing(dupes)}")
    unlisted = [f"{n} in {fs[0]}" for n, fs in holders.items() if n not in weight_map]
    if unlisted:
        problems.append(f"in a shard but not listed in the index:\n{_listing(unlisted)}")
    if problems:
        raise CheckpointError(f"inconsistent sharded checkpoint {p}:\n  " + "\n  ".join(problems))
    tensors = {n: headers[f][n] for f in files for n in headers[f]}
    return CheckpointIndex(p, tensors, files, True)


def _read_file(
    file: Path, names: Iterable[str], dtype: torch.dtype | None, device: str
) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(str(file), framework="pt", device=device) as f:
            for name in names:
                t = f.get_tensor(name)
                if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                    t = t.to(dtype)
                yield name, t
    except SafetensorError as e:
        raise CheckpointError(f"reading {file} failed: {e}") from e


def load_state_dict_from_dir(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint directory (single file or sharded) into a dict.

    Shards are read one after the other, tensor by tensor, so peak memory is the result plus
    about one tensor. ``dtype`` casts floating-point tensors only (integer and bool tensors keep
    theirs); ``None`` keeps the checkpoint's dtypes. Errors: see `inspect_checkpoint`.
    """
    dtype = check_float_dtype(dtype)
    dev = str(check_device(device))
    index = inspect_checkpoint(path)
    out: dict[str, torch.Tensor] = {}
    for file, names in index.names_by_file():
        out.update(_read_file(index.path / file, names, dtype, dev))
    return out


# ---------------------------------------------------------------------------------------------
# loading into a module


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def _shape(s: Sequence[int]) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]"


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with parameters on the ``meta`` device and buffers on the CPU.

    Parameters cost nothing (no allocation, no random init), while buffers computed at
    construction (RoPE ``inv_freq``, position tables) stay real: a module built entirely under
    ``torch.device("meta")`` would keep those on meta, and no checkpoint holds them.
    """
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = torch.nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad
            )

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def load_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike[str] | CheckpointIndex,
    *,
    strict: bool = True,
    dtype: torch.dtype | None = None,
    ignore: Sequence[str] = KNOWN_IGNORED,
    device: str | torch.device | None = None,
) -> LoadReport:
    """Load a checkpoint directory into ``model``, after checking all of it against the model.

    Before any tensor data is read, the checkpoint's headers are compared with
    ``model.state_dict()``: missing names, unexpected names and shape mismatches (name, expected
    shape, checkpoint shape) are collected and raised together as one `CheckpointError`, so a
    failed load leaves the model untouched. ``strict=False`` tolerates missing and unexpected
    names (they are reported), never shape mismatches. Names matching an ``ignore`` glob are
    skipped on both sides and reported in ``LoadReport.ignored``.

    Tensors are assigned, not copied (``load_state_dict(assign=True)``), shard by shard: this is
    what lets a model built with `parameters_on_meta` (or under ``torch.device("meta")``) be
    loaded without ever being initialised. Consequences: loaded tensors keep the checkpoint's
    dtype unless ``dtype`` is given (floating-point tensors only), they live on ``device``
    (default: the device of the model's first non-meta parameter, else CPU), and parameters that
    were tied in ``model`` are untied (CogVLM2 ties none). Any parameter or buffer that would stay
    on ``meta`` is an error.
    """
    t0 = time.perf_counter()
    dtype = check_float_dtype(dtype)
    if device is not None:
        device = check_device(device)
    index = path if isinstance(path, CheckpointIndex) else inspect_checkpoint(path)
    model_sd = model.state_dict(keep_vars=True)
    expected = {k: tuple(v.shape) for k, v in model_sd.items()}
    ckpt = index.tensors

    ignored = [k for k in ckpt if _matches(k, ignore)]
    ignored += [k for k in expected if k not in ckpt and _matches(k, ignore)]
    missing = [k for k in expected if k not in ckpt and not _matches(k, ignore)]
    unexpected = [k for k in ckpt if k not in expected and not _matches(k, ignore)]
    mismatched = [
        (k, expected[k], info.shape)
        for k, info in ckpt.items()
        if k in expected and expected[k] != info.shape and not _matches(k, ignore)
    ]
    bad_shapes = {k for k, _, _ in mismatched}
    to_load = [k for k in ckpt if k in expected and k not in bad_shapes and not _matches(k, ignore)]

    loading = set(to_load)
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]
    left_on_meta = [n for n, t in named if t.is_meta and n not in loading]

    problems: list[str] = []
    if missing and strict:
        problems.append(
            f"{len(missing)} missing (in the model, not in the checkpoint):\n"
            + _listing([f"{k} {_shape(expected[k])}" for k in missing])
        )
        if any("vision_expert" in k or ".vision_mlp." in k for k in missing) and not any(
            "vision_expert" in k or ".vision_mlp." in k for k in ckpt
        ):
            problems.append(
                "hint: the model has vision-expert weights and the checkpoint has none (a video "
                "checkpoint?); build it with vision_expert=False"
            )
    if unexpected and strict:
        problems.append(
            f"{len(unexpected)} unexpected (in the checkpoint, not in the model):\n"
            + _listing([f"{k} {_shape(ckpt[k].shape)}" for k in unexpected])
        )
    # A float parameter stored as int32 / bool / an unknown tag would be cast silently (or
    # assigned as is); refuse it, from the headers, before any data is read.
    wrong_dtype = [
        f"{k} ({ckpt[k].file}): {ckpt[k].dtype or 'unknown dtype'}, the model's is "
        f"{model_sd[k].dtype}"
        for k in to_load
        if ckpt[k].dtype is None
        or ckpt[k].dtype.is_floating_point != model_sd[k].is_floating_point()
    ]
    if wrong_dtype:
        problems.append(
            f"{len(wrong_dtype)} stored with a dtype of the wrong kind:\n" + _listing(wrong_dtype)
        )
    if mismatched:
        problems.append(
            f"{len(mismatched)} with a different shape:\n"
            + _listing(
                [
                    f"{k}: model expects {_shape(e)}, checkpoint has {_shape(g)}"
                    for k, e, g in mismatched
                ]
            )
        )
    listed = set(missing) if strict else set()
    meta_only = [n for n in left_on_meta if n not in listed]
    if meta_only:
        problems.append(
            f"{len(meta_only)} would stay on the meta device (nothing to load them from; build "
            "the model with parameters_on_meta() so that buffers are real):\n" + _listing(meta_only)
        )
    if problems:
        raise CheckpointError(
            f"checkpoint {index.path} does not fit {type(model).__name__}:\n  "
            + "\n  ".join(problems),
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )

    if device is None:
        real = next((p for p in model.parameters() if not p.is_meta), None)
        device = real.device if real is not None else torch.device("cpu")
    dev = str(torch.device(device))
    dtypes: Counter[str] = Counter()
    nbytes = 0
    with torch.no_grad():
        for file, names in index.names_by_file():
            wanted = [n for n in names if n in loading]
            if not wanted:
                continue
            part = dict(_read_file(index.path / file, wanted, dtype, dev))
            for t in part.values():
                dtypes[str(t.dtype).removeprefix("torch.")] += 1
                nbytes += t.numel() * t.element_size()
            model.load_state_dict(part, strict=False, assign=True)
            del part
    return LoadReport(
        path=index.path,
        files=index.files,
        loaded=tuple(to_load),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        ignored=tuple(ignored),
        dtypes=dict(dtypes),
        nbytes=nbytes,
        seconds=time.perf_counter() - t0,
    )


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None = torch.bfloat16,
    device: str | torch.device = "cpu",
    config: CogVLM2Config | None = None,
) -> CogVLM2ForCausalLM:
    """The reference model with a checkpoint's weights, in eval mode on ``device``.

    ``path``: a checkpoint directory, or a Hugging Face repo id resolved in the local HF cache
    only (`resolve_checkpoint`). Reads ``config.json`` (+ ``generation_config.json``;
    `read_config_dir`, with the checkpoint's weight names for the visual-expert inference) unless
    ``config`` is given, builds the model with `parameters_on_meta` (no random init of 13-19B
    parameters), loads strictly with `load_checkpoint` (floating-point weights cast to ``dtype``;
    ``None`` keeps the checkpoint's) straight onto ``device``, then moves the buffers there too.
    ``dtype`` and ``device`` are checked before anything is read.
    """
    from .reference import CogVLM2ForCausalLM

    dtype = check_float_dtype(dtype)
    device = check_device(device)
    index = inspect_checkpoint(resolve_checkpoint(path))
    if config is None:
        if not (index.path / CONFIG_NAME).is_file():
            raise CheckpointNotFoundError(f"no {CONFIG_NAME} in {index.path}; pass config=...")
        config = read_config_dir(index.path, weight_names=index.tensors)
    _check_stored_inv_freq(index, config, dtype)
    with parameters_on_meta():
        model = CogVLM2ForCausalLM(config)
    load_checkpoint(model, index, strict=True, dtype=dtype, device=device)
    return model.to(device).eval()


def _check_stored_inv_freq(index: CheckpointIndex, config: CogVLM2Config, dtype) -> None:
    # HF loads a stored ``rotary_emb.inv_freq`` (the released video index lists one per layer)
    # over the one it builds; haic always builds it from rope_theta. Say when they differ.
    from .language import rope_inv_freq

    name = next((n for n in index.tensors if n.endswith(".rotary_emb.inv_freq")), None)
    if name is None or config.text.rope_precision != "release":
        return
    (_, stored), *_ = _read_file(index.path / index.tensors[name].file, [name], None, "cpu")
    run_dtype = dtype or stored.dtype
    ours = rope_inv_freq(config.text.head_dim, config.text.rope_theta, run_dtype)
    if stored.shape != ours.shape or not torch.equal(stored.to(run_dtype), ours):
        warnings.warn(
            f"{index.path}: the stored {name} ({stored.dtype}) differs from the inv_freq haic "
            f"builds from rope_theta in {run_dtype}; the release uses the stored one, so bf16 "
            "RoPE angles (and tokens) may differ from the release's",
            stacklevel=3,
        )
