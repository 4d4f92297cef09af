"""Prompt layout (chat / base templates) and the byte tokenizer."""

from __future__ import annotations

import pytest
import torch

from haic_kernels.constants import LANGUAGE_TOKEN_TYPE as L
from haic_kernels.constants import VISION_TOKEN_TYPE as V
from haic_kernels.models.cogvlm2 import ByteTokenizer, build_prompt, get_config, stack_prompts


def test_byte_tokenizer_roundtrip() -> None:
    tok = ByteTokenizer()
    text = "Question: ¿qué pasa? 视频 Answer:"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_token_id, *ids, tok.eos_token_id, tok.pad_token_id, 300]) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_chat_layout() -> None:
    cfg = get_config("tiny", "video-chat")
    tok = ByteTokenizer()
    frames = 12  # two-digit frame indices too
    p = build_prompt(tok, "What happens?", frames, cfg)
    expected_ids = [cfg.bos_token_id]
    expected_types = [L]
    for f in range(frames):
        expected_ids += [cfg.pad_token_id] * cfg.tokens_per_frame + tok.encode(str(f))
        expected_types += [V] * cfg.tokens_per_frame + [L] * len(str(f))
    text = tok.encode("Question: What happens? Answer:")
    expected_ids += text
    expected_types += [L] * len(text)
    assert p.input_ids.tolist() == expected_ids
    assert p.token_type_ids.tolist() == expected_types
    assert p.input_ids.dtype == torch.long and p.token_type_ids.dtype == torch.long
    assert p.num_frames == frames and len(p.vision_slices) == frames
    for sl in p.vision_slices:
        assert (p.token_type_ids[sl] == V).all() and sl.stop - sl.start == 18
    assert tok.decode(p.input_ids[p.text_slice].tolist()) == "Question: What happens? Answer:"
    assert tok.decode(p.input_ids.tolist()) == "".join(map(str, range(frames))) + (
        "Question: What happens? Answer:"
    )


def test_base_layout() -> None:
    cfg = get_config("tiny", "video-base")
    tok = ByteTokenizer()
    p = build_prompt(tok, "a cat", 3, cfg)
    frames = [cfg.pad_token_id] * 3 * cfg.tokens_per_frame
    assert p.input_ids.tolist() == [cfg.bos_token_id, *frames, *tok.encode("a cat")]
    assert p.token_type_ids.tolist() == [L] + [V] * 54 + [L] * 5
    assert [(s.start, s.stop) for s in p.vision_slices] == [(1, 19), (19, 37), (37, 55)]


def test_history_and_no_frames() -> None:
    cfg = get_config("tiny", "image")
    tok = ByteTokenizer()
    p = build_prompt(tok, "and now?", 0, cfg, history=[("hi", "hello")])
    text = "Question: hi Answer: hello\nQuestion: and now? Answer:"
    assert tok.decode(p.input_ids.tolist()) == text
    assert (p.token_type_ids == L).all() and p.vision_slices == ()


def test_hf_style_tokenizer_gets_no_special_tokens() -> None:
    class HFLike:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return ([999] if add_special_tokens else []) + [ord(c) % 200 for c in text]

        def decode(self, ids: list[int]) -> str:
            return ""

    cfg = get_config("tiny", "video-chat")
    p = build_prompt(HFLike(), "q", 1, cfg)
    assert 999 not in p.input_ids.tolist()


def test_prompt_validation() -> None:
    cfg = get_config("tiny", max_frames=4)
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="num_frames"):
        build_prompt(tok, "q", 5, cfg)
    with pytest.raises(ValueError, match="num_frames"):
        build_prompt(tok, "q", -1, cfg)
    with pytest.raises(ValueError, match="query"):
        build_prompt(tok, None, 1, cfg)  # type: ignore[arg-type]

    class Wide:
        def encode(self, text: str) -> list[int]:
            return [1000]

    with pytest.raises(ValueError, match="vocab_size"):
        build_prompt(Wide(), "q", 1, cfg)  # type: ignore[arg-type]
    a, b = build_prompt(tok, "ab", 1, cfg), build_prompt(tok, "abc", 1, cfg)
    with pytest.raises(ValueError, match="same length"):
        stack_prompts([a, b])
    ids, types = stack_prompts([a, a])
    assert ids.shape == types.shape == (2, len(a))
