"""Tokenizers: a byte-level one for the tiny config, and a released checkpoint's tokenizer.json.

`ByteTokenizer`: no vocabulary file, no dependency. Ids 0..255 are the UTF-8 bytes; 256 is bos,
257 eos, 258 pad (also the vision placeholder). The tiny preset's vocab (384) leaves room above
258, so a model may predict ids that decode to nothing; `decode` skips every id that is not a byte.

`load_tokenizer`: a checkpoint's ``tokenizer.json`` through Hugging Face ``tokenizers``, checked
against its config before any weight is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .checkpoint_layout import (
    TOKENIZER_CONFIG_NAME,
    TOKENIZER_NAME,
    CheckpointError,
    CheckpointNotFoundError,
    resolve_checkpoint,
)
from .config import CogVLM2Config
from .hf_config import read_config_dir, read_json


class ByteTokenizer:
    """UTF-8 bytes as tokens. ``encode`` adds no special tokens; ``decode`` skips them."""

    bos_token_id: int = 256
    eos_token_id: int = 257
    pad_token_id: int = 258
    vocab_size: int = 259

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"ByteTokenizer.encode: text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes back to text; special and out-of-range ids are skipped, bad UTF-8 is replaced."""
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (
            f"ByteTokenizer(bos={self.bos_token_id}, eos={self.eos_token_id}, "
            f"pad={self.pad_token_id})"
        )


class CheckpointTokenizer:
    """A checkpoint's ``tokenizer.json`` (Hugging Face ``tokenizers``), with the `ByteTokenizer`
    interface: ``encode`` adds no special tokens (the release's ``add_special_tokens=False``),
    ``decode`` skips them (``skip_special_tokens=True``). Built by `load_tokenizer`."""

    def __init__(self, tokenizer: Any, bos_token_id: int, eos_token_ids: tuple[int, ...],
                 pad_token_id: int, path: Path) -> None:  # fmt: skip
        self._tok = tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_ids = eos_token_ids
        self.eos_token_id = eos_token_ids[0]
        self.pad_token_id = pad_token_id
        self.path = path
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode: text must be a str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token(self, token_id: int) -> str | None:
        """The token string of an id (None when the tokenizer has no such id)."""
        return self._tok.id_to_token(int(token_id))

    def __repr__(self) -> str:
        return f"CheckpointTokenizer({self.path}, vocab={self.vocab_size})"


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as a string or as an AddedToken dict
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(
    path: str | os.PathLike[str], config: CogVLM2Config | None = None
) -> CheckpointTokenizer:
    """Load ``tokenizer.json`` of a checkpoint directory (or a cached Hub repo id) and check it
    against the checkpoint's config, reading no weight (the app calls this before loading).

    ``config``: default `read_config_dir` of the same directory. Checks, each a `CheckpointError`
    naming the file and the id: the file is present and parses; bos, every eos id and the pad /
    vision placeholder id exist in the tokenizer and below ``vocab_size``; where
    ``tokenizer_config.json`` names ``bos_token`` / ``eos_token``, they are the tokens of the
    config's ids. ImportError (with the install line) when ``tokenizers`` is missing.
    """
    p = resolve_checkpoint(path)
    file = p / TOKENIZER_NAME
    if not file.is_file():
        raise CheckpointNotFoundError(
            f"no {TOKENIZER_NAME} in {p}: the checkpoint's tokenizer is needed to build prompts"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError(
            "reading tokenizer.json needs `tokenizers` (pip install tokenizers)"
        ) from e
    if config is None:
        config = read_config_dir(p)
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises its own Exception type for a bad file
        raise CheckpointError(f"{file} is not a readable tokenizer.json: {e}") from e
    out = CheckpointTokenizer(tok, config.bos_token_id, config.eos_token_ids,
                              config.pad_token_id, p)  # fmt: skip
    ids = {"bos_token_id": config.bos_token_id, "pad_token_id": config.pad_token_id}
    ids.update({f"eos_token_ids[{i}]": v for i, v in enumerate(config.eos_token_ids)})
    for name, i in ids.items():
        if out.token(i) is None:
            raise CheckpointError(f"{file} has no token for the config's {name} {i}")
    if out.vocab_size > config.text.vocab_size:
        raise CheckpointError(
            f"{file} has {out.vocab_size} tokens, more than the config's vocab_size "
            f"{config.text.vocab_size}"
        )
    tcfg = read_json(p / TOKENIZER_CONFIG_NAME, required=False)
    if isinstance(tcfg, dict):
        for key, allowed in (
            ("bos_token", (config.bos_token_id,)),
            ("eos_token", config.eos_token_ids),
        ):
            text = _token_text(tcfg.get(key))
            if text is not None and tok.token_to_id(text) not in allowed:
                raise CheckpointError(
                    f"{p / TOKENIZER_CONFIG_NAME}: {key} {text!r} is id {tok.token_to_id(text)}, "
                    f"the config's {'bos' if key == 'bos_token' else 'eos'} ids are {allowed}"
                )
    return out
