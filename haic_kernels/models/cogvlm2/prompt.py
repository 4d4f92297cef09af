"""Prompt layout of CogVLM2-Video: where the frame tokens go and which text surrounds them.

Read from the release (``build_conversation_input_ids`` of the video model and the video demo,
which passes ``template_version="chat"`` for cogvlm2-video-llama3-chat and ``"base"`` for
cogvlm2-video-llama3-base)::

    chat:  [bos] (frame_0 "0") (frame_1 "1") ... (frame_{F-1} "F-1") "Question: {q} Answer:"
    base:  [bos] frame_0 frame_1 ... frame_{F-1} "{q}"

where each frame is ``tokens_per_frame`` (66 at full size) copies of the placeholder id
``config.pad_token_id`` with token type vision, and everything else is language. Each piece
of text - every frame index and the question text - is tokenized on its own, without special
tokens, as the release does (so a frame index never merges with its neighbours).
With ``history`` (earlier turns), the chat text is
``"Question: {q1} Answer: {a1}\\n" ... "Question: {q} Answer:"``, as the release's
``_history_to_prompt``; the base template ignores history.

Assumptions: the frame index is the frame's ordinal (0, 1, ...) - with the chat sampling policy
of one frame per second it equals the second; the release's image model (single image) uses the
same layout with one frame and no index.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ...constants import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE
from .config import CogVLM2Config


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class PromptInputs:
    """One prompt. ``input_ids`` / ``token_type_ids``: LongTensor [S]; ``vision_slices[f]``: the
    positions of frame f's tokens; ``text_slice``: the question text at the end."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    num_frames: int
    vision_slices: tuple[slice, ...]
    text_slice: slice

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, for a plain or a Hugging Face tokenizer."""
    encode = tokenizer.encode
    try:
        params = inspect.signature(encode).parameters
    except (TypeError, ValueError):
        params = {}
    if "add_special_tokens" in params:
        ids = encode(text, add_special_tokens=False)  # type: ignore[call-arg]
    else:
        ids = encode(text)
    ids = getattr(ids, "ids", ids)  # a `tokenizers.Encoding`
    return [int(i) for i in ids]


def chat_text(query: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The chat template's text: earlier turns, then ``"Question: {query} Answer:"``."""
    turns = "".join(f"Question: {q} Answer: {a}\n" for q, a in history)
    return f"{turns}Question: {query} Answer:"


def build_prompt(
    tokenizer: Tokenizer,
    query: str,
    num_frames: int,
    config: CogVLM2Config,
    *,
    history: Sequence[tuple[str, str]] | None = None,
) -> PromptInputs:
    """Token ids and types for ``num_frames`` frames and ``query`` in ``config.template``.

    ``tokenizer`` is anything with ``encode(str) -> list[int]`` (a Hugging Face tokenizer is
    called with ``add_special_tokens=False``). bos and the frame placeholder come from
    ``config`` (``bos_token_id``, ``pad_token_id``), not from the tokenizer.
    """
    if not isinstance(query, str):
        raise ValueError(f"query must be a str, got {type(query).__name__}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int):
        raise ValueError(f"num_frames must be an int, got {num_frames!r}")
    if not 0 <= num_frames <= config.max_frames:
        raise ValueError(
            f"num_frames must be in [0, max_frames={config.max_frames}], got {num_frames}"
        )
    tpf = config.tokens_per_frame
    ids: list[int] = [config.bos_token_id]
    types: list[int] = [LANGUAGE_TOKEN_TYPE]
    slices: list[slice] = []
    for f in range(num_frames):
        slices.append(slice(len(ids), len(ids) + tpf))
        ids += [config.pad_token_id] * tpf
        types += [VISION_TOKEN_TYPE] * tpf
        if config.template == "chat":
            index_ids = _encode(tokenizer, str(f))
            ids += index_ids
            types += [LANGUAGE_TOKEN_TYPE] * len(index_ids)
    text = chat_text(query, history or ()) if config.template == "chat" else query
    text_ids = _encode(tokenizer, text)
    start = len(ids)
    ids += text_ids
    types += [LANGUAGE_TOKEN_TYPE] * len(text_ids)
    vocab = config.text.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"tokenizer produced ids outside [0, vocab_size={vocab}): {bad[:8]}")
    return PromptInputs(
        input_ids=torch.tensor(ids, dtype=torch.long),
        token_type_ids=torch.tensor(types, dtype=torch.long),
        num_frames=num_frames,
        vision_slices=tuple(slices),
        text_slice=slice(start, len(ids)),
    )


def stack_prompts(prompts: Sequence[PromptInputs]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch prompts of equal length: (input_ids [B, S], token_type_ids [B, S]).

    The reference model has no padding mask, so lengths must match (ValueError otherwise).
    """
    if not prompts:
        raise ValueError("prompts must not be empty")
    lengths = {len(p) for p in prompts}
    if len(lengths) != 1:
        raise ValueError(
            f"prompts must all have the same length to be batched, got {sorted(lengths)}"
        )
    return (
        torch.stack([p.input_ids for p in prompts]),
        torch.stack([p.token_type_ids for p in prompts]),
    )
