"""Prompt layout of CogVLM2(-Video): where the frame tokens go and which text surrounds them.

The release's ``build_conversation_input_ids``, restated (video model, and the image model's of
cogvlm2-llama3-chat-19B)::

    video, chat:      [bos] (frame_0 "0") (frame_1 "1") ... (frame_{F-1} "F-1") text
    video, base/vqa:  [bos] frame_0 frame_1 ... frame_{F-1} text
    image (any):      [bos] image text            (no index after the single image)
    no frames:        [bos] text

where each frame (image) is ``tokens_per_frame`` copies of the placeholder id
``config.pad_token_id`` (66 at 224 px, 2306 for the image release's 1344 px) with token type
vision, everything else is language, and ``text`` is `templates.prompt_text` of the template,
the query and the history (multi-turn: earlier (query, response) pairs, as the release takes
them). Each piece of text - every frame index and the whole text - is tokenized on its own,
without special tokens (``encode(..., add_special_tokens=False)``), as the release does, so a
frame index never merges with its neighbours.

Assumption: the video release writes the time index only with the chat template (read from its
code as ``add_time_indices = template_version == "chat"``; vqa on video is not exercised by its
demos). The index is the frame's ordinal (0, 1, ...): with chat sampling (one frame per second)
it equals the second.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ...constants import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE
from .config import CogVLM2Config
from .templates import check_template, prompt_text


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


def build_prompt(
    tokenizer: Tokenizer,
    query: str,
    num_frames: int,
    config: CogVLM2Config,
    *,
    history: Sequence[tuple[str, str]] | None = None,
    template: str | None = None,
) -> PromptInputs:
    """Token ids and types for ``num_frames`` frames and ``query``, laid out as the release does.

    ``template``: "chat" | "base" | "vqa"; None takes ``config.template`` (pick it with
    `templates.resolve_template`, as the demos do). ``history``: earlier (query, response) turns.
    The image release takes 0 or 1 image (more are laid out back to back, without indices: no
    release does that, the tests of the expert routing do). ``tokenizer`` is anything with
    ``encode(str) -> list[int]`` (a Hugging Face tokenizer is called with
    ``add_special_tokens=False``). bos and the frame placeholder come from ``config``
    (``bos_token_id``, ``pad_token_id``), not from the tokenizer.
    """
    template = check_template(config.template if template is None else template)
    text = prompt_text(template, query, history)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int):
        raise ValueError(f"num_frames must be an int, got {num_frames!r}")
    if not 0 <= num_frames <= config.max_frames:
        raise ValueError(
            f"num_frames must be in [0, max_frames={config.max_frames}], got {num_frames}"
        )
    tpf = config.tokens_per_frame
    time_indices = template == "chat" and not config.vision_expert
    ids: list[int] = [config.bos_token_id]
    types: list[int] = [LANGUAGE_TOKEN_TYPE]
    slices: list[slice] = []
    for f in range(num_frames):
        slices.append(slice(len(ids), len(ids) + tpf))
        ids += [config.pad_token_id] * tpf
        types += [VISION_TOKEN_TYPE] * tpf
        if time_indices:
            index_ids = _encode(tokenizer, str(f))
            ids += index_ids
            types += [LANGUAGE_TOKEN_TYPE] * len(index_ids)
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
