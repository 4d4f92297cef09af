"""A byte-level tokenizer for the tiny config: no vocabulary file, no dependency.

Ids 0..255 are the UTF-8 bytes; 256 is bos, 257 eos, 258 pad (also the vision placeholder).
The tiny preset's vocab (384) leaves room above 258, so a model may predict ids that decode
to nothing; `decode` skips every id that is not a byte.
"""

from __future__ import annotations

from collections.abc import Iterable


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
