"""`haic chat VIDEO|IMAGE`: talk about one video or image, turn by turn, like the official
CLI demos (``video_demo/cli_video_demo.py``, ``basic_demo/cli_demo.py``).

The input is decoded and encoded once (`pipeline.encode`: patch embed, vision tower, adapter);
every turn reuses those vision embeddings, with the earlier (question, answer) pairs passed as
``history=`` to `build_prompt`, as the release's ``build_conversation_input_ids`` takes them.
Questions come one per line from stdin (a terminal shows a ``User:`` prompt; a pipe needs none):

* ``clear`` forgets the history (the demos' word; the video stays);
* an empty line is skipped;
* end of input (Ctrl-D, or the end of a piped file) ends the chat, status 0; Ctrl-C: 130.

Each answer is printed as ``CogVLM2: <text>`` (``--stream``: as it is generated). A turn that
no longer fits the context (the history grows) prints a one-line error and the chat goes on;
``clear`` makes room. Options are `haic run`'s (template, preprocess, sampling, model).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from ..models.cogvlm2 import build_prompt
from ..video.image import ImageLoadError
from ..video.pyav import VideoDecodeError
from .common import DEFAULT_PROMPT, add_model_arguments, build_model, prepare, select_model
from .errors import EXIT_OK, CommandError, failed
from .generation import TextStream, add_sampling_arguments, sampling_params
from .pipeline import StageClock, decode_clip, decode_image, encode, is_image, respond
from .run import check_input_file

__all__ = ["CLEAR", "DESCRIPTION", "HELP", "add_arguments", "run"]

PROG = "haic chat"
CLEAR = "clear"
HELP = "chat about a video or image, turn by turn (questions from stdin)"
DESCRIPTION = (
    "Decode and encode VIDEO|IMAGE once, then answer each line read from stdin with the "
    "earlier turns as history. 'clear' forgets the history, an empty line is skipped, end of "
    "input (Ctrl-D) ends the chat."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="VIDEO|IMAGE", type=Path, help="the video or image")
    add_model_arguments(p, model_help="auto: the fast model on a GPU, the reference on the CPU")
    add_sampling_arguments(p)


def _questions() -> Iterator[str]:
    """Lines of stdin, stripped; a terminal gets a ``User:`` prompt."""
    tty = sys.stdin.isatty()
    while True:
        try:
            line = input("User: ") if tty else sys.stdin.readline()
        except EOFError:
            return
        if not tty and line == "":
            return
        yield line.strip()


def run(args: argparse.Namespace) -> int:
    check_input_file(args.input, "VIDEO|IMAGE")
    image = is_image(args.input)
    setup = prepare(args, PROG, image=image, sampling=sampling_params(args, PROG))
    clock = StageClock(setup.device)
    try:
        if image:
            frames = decode_image(
                args.input, setup.config, preprocess=setup.preprocess, clock=clock
            )
        else:
            frames, _ = decode_clip(
                args.input,
                setup.config,
                clock=clock,
                policy=setup.policy,
                preprocess=setup.preprocess,
            )
    except (VideoDecodeError, ImageLoadError, ImportError) as e:
        raise failed(f"cannot read {args.input}: {getattr(e, 'reason', e)}") from None
    num_frames = int(frames.shape[0])
    # The first question's prompt must fit before any weight is read.
    setup.new_tokens(
        build_prompt(
            setup.tokenizer, DEFAULT_PROMPT, num_frames, setup.config, template=setup.template
        )
    )
    reference, note = build_model(args, setup.config, setup.device, setup.dtype)
    model, kind = select_model(args, reference, setup.device)
    embeds = encode(model, frames.to(setup.device), clock)
    print(
        f"{PROG}: {setup.config.name} ({note}), {kind}, template {setup.template}; "
        f"{args.input.name}: {num_frames} frame(s). Type a question; '{CLEAR}' forgets the "
        "history, Ctrl-D ends.",
        file=sys.stderr,
    )
    history: list[tuple[str, str]] = []
    for question in _questions():
        if not question:
            continue
        if question == CLEAR:
            history.clear()
            print(f"{PROG}: history cleared", file=sys.stderr)
            continue
        text = _turn(model, embeds, question, history, setup, num_frames, args.stream)
        if text is not None:
            history.append((question, text))
    return EXIT_OK


def _turn(model, embeds, question, history, setup, num_frames, stream) -> str | None:
    """One answer, printed; None (and a one-line error) when the turn does not fit."""
    prompt = build_prompt(setup.tokenizer, question, num_frames, setup.config,
                          template=setup.template, history=history)  # fmt: skip
    try:
        generation = setup.generation(prompt)
    except CommandError as e:
        print(f"{PROG}: error: {e.message}; type '{CLEAR}' to start over", file=sys.stderr)
        return None
    ids, types = (t.unsqueeze(0).to(setup.device)
                  for t in (prompt.input_ids, prompt.token_type_ids))  # fmt: skip
    print("CogVLM2: ", end="", flush=True)
    printer = TextStream(setup.tokenizer) if stream else None
    result = respond(model, embeds, ids, types, clock=StageClock(setup.device),
                     on_token=None if printer is None else printer.on_token,
                     **generation)  # fmt: skip
    if printer is not None:
        return printer.finish()
    text = setup.tokenizer.decode(result.tokens[0].tolist())
    print(text, flush=True)
    return text
