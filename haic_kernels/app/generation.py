"""How a command chooses its tokens and shows them: the sampling flags and ``--stream``.

``--do-sample --temperature --top-k --top-p --repetition-penalty`` (and the shared ``--seed``)
build one `SamplingParams`; each generation gets a fresh `Sampler` from it (``sampler=``, taken
by both models). The default is greedy, as the release demos decode (the video demo's
``top_k=1``). ``--stream`` prints the answer as it is generated (`TextStream`, fed by the
models' ``stream`` iterators through `pipeline.respond`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import torch

from ..models.cogvlm2 import SamplingParams
from .common import non_negative_int, warn
from .errors import usage_error

__all__ = ["TextStream", "add_sampling_arguments", "sampling_params"]

# SamplingParams field -> its flag (its messages name the field).
_FLAGS = {
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "repetition_penalty": "--repetition-penalty",
}
_WARPERS = ("temperature", "top_k", "top_p")  # what greedy decoding ignores (as HF does)


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling flags and ``--stream`` (run, chat, demo)."""
    g = p.add_argument_group("generation (default: greedy, as the release demos)")
    g.add_argument(
        "--do-sample",
        action="store_true",
        help="sample from the distribution shaped by the flags below (seeded by "
        "--seed) instead of taking the most likely token",
    )
    g.add_argument("--temperature", type=float, default=None, help="> 0 (default 1.0)")
    g.add_argument("--top-k", type=non_negative_int, default=None, help="0 = off (default)")
    g.add_argument("--top-p", type=float, default=None, help="in (0, 1]; 1 = off (default)")
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="> 0; 1 = off (default); applies to greedy decoding too",
    )
    g.add_argument("--stream", action="store_true", help="print the answer as it is generated")


def sampling_params(args: argparse.Namespace, prog: str) -> SamplingParams:
    """`SamplingParams` of the flags; a usage error naming the flag for a bad value, a warning
    for a flag that greedy decoding ignores."""
    given = {f: getattr(args, f, None) for f in _FLAGS}
    given = {f: v for f, v in given.items() if v is not None}
    do_sample = bool(getattr(args, "do_sample", False))
    ignored = [_FLAGS[f] for f in _WARPERS if f in given]
    if ignored and not do_sample:
        warn(prog, f"{', '.join(ignored)} only apply with --do-sample; decoding greedily")
    try:
        return SamplingParams(do_sample=do_sample, seed=getattr(args, "seed", None), **given)
    except ValueError as e:
        text = str(e)
        flag = next((flag for f, flag in _FLAGS.items() if text.startswith(f)), "--do-sample")
        raise usage_error(f"{flag}: {text}") from None


class TextStream:
    """Writes the text of a growing answer as its tokens arrive.

    Each `push` decodes all ids so far and writes what was not written yet, so tokens that only
    make sense together (byte-level BPE pieces of one character) come out whole: text ending in
    U+FFFD (an incomplete UTF-8 sequence) is held back until the next token completes it.
    """

    def __init__(self, tokenizer: Any, out: TextIO | None = None) -> None:
        self.tokenizer = tokenizer
        self.out = out if out is not None else sys.stdout
        self.ids: list[int] = []
        self.written = ""

    def push(self, ids: Sequence[int]) -> None:
        """Add the next token ids (one per step for one row) and write the new text."""
        self.ids.extend(int(i) for i in ids)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self._write(text)

    def on_token(self, tokens: torch.Tensor) -> None:
        """`push` a step's tokens int64 [1] (what `pipeline.respond` calls with)."""
        self.push(tokens.tolist())

    def finish(self) -> str:
        """Write whatever is left (even an incomplete character) and a newline; return the
        answer's text (all ids decoded at once)."""
        text = self.tokenizer.decode(self.ids)
        self._write(text)
        self.out.write("\n")
        self.out.flush()
        return text

    def _write(self, text: str) -> None:
        # More ids can in principle rewrite earlier text (a tokenizer's clean-up): what was
        # written stays, only the length beyond it is written.
        if len(text) > len(self.written):
            self.out.write(text[len(self.written) :])
            self.out.flush()
            self.written = text
