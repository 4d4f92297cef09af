"""A real Llama-3 tokenizer for tests, with no download: Meta's own, from the ``llama-models``
package on PyPI (``llama_models/llama3/tokenizer.model``, tiktoken format; used here under the
Llama 3 Community License, which allows this use), and a ``tokenizer.json`` made from it with
transformers' own tiktoken converter (how Hugging Face builds the Llama-3 tokenizer.json).

The CogVLM2 releases ship Llama-3-8B-Instruct's tokenizer: same BPE, bos ``<|begin_of_text|>``
128000, ``<|end_of_text|>`` 128001, ``<|eot_id|>`` 128009, 128002 a reserved special token (the
vision placeholder).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

REASON = "needs the dev extra `llama-models` (Meta's Llama-3 tokenizer.model on PyPI)"


def meta_tokenizer():
    """Meta's reference Llama-3 tokenizer (tiktoken); the test skips without llama-models."""
    try:
        from llama_models.llama3.tokenizer import Tokenizer
    except ImportError:
        pytest.skip(REASON)
    return Tokenizer.get_instance()


class MetaEncoder:
    """Meta's tokenizer with the prompt builder's interface (no special tokens added)."""

    def __init__(self) -> None:
        self.tok = meta_tokenizer()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, bos=False, eos=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids))


@functools.cache
def _converted_json() -> str:
    try:
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError:
        pytest.skip("needs the dev extra `transformers` (its tiktoken -> tokenizer.json converter)")
    import llama_models.llama3.tokenizer as mod

    meta = meta_tokenizer()
    specials = sorted(meta.special_tokens, key=meta.special_tokens.get)
    conv = TikTokenConverter(
        vocab_file=str(Path(mod.__file__).with_name("tokenizer.model")),
        pattern=mod.Tokenizer.pat_str,
        extra_special_tokens=specials,
    )
    return conv.converted().to_str()


def write_tokenizer_json(directory: Path) -> Path:
    """Write the Llama-3 ``tokenizer.json`` into ``directory``; returns its path."""
    out = Path(directory) / "tokenizer.json"
    out.write_text(_converted_json())
    return out
