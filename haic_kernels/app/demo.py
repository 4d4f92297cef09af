"""`haic demo`: the main job on the bundled clip, each stage timed.

Decode a clip, sample frames with the model's policy, run the model end to end through the
pipeline (`pipeline.answer`) and greedy-decode a few tokens. With the default tiny config the
weights are seeded random numbers, so the generated text is meaningless by construction;
``--checkpoint DIR`` loads a real HF-format checkpoint instead. On a GPU the fast model runs; on
the CPU the reference does, followed by the parity table of the fast model against it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.cogvlm2 import build_prompt
from ..testing.model_parity import max_clip_frames, run_parity
from ..video.image import ImageLoadError
from ..video.pyav import VideoDecodeError
from .common import (
    DEFAULT_PROMPT,
    Setup,
    add_model_arguments,
    build_model,
    bundled_clip,
    prepare,
    select_model,
)
from .errors import EXIT_OK, failed
from .generation import TextStream, add_sampling_arguments, sampling_params
from .pipeline import StageClock, answer, decode_clip, decode_image, is_image
from .run import check_input_file

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

PROG = "haic demo"
HELP = "run the model end to end on the bundled clip (tiny config, random weights)"
DESCRIPTION = (
    "Decode a clip, sample frames, run the model and decode a few tokens (greedy unless "
    "--do-sample), printing each stage's time. Random weights give meaningless text; "
    "--checkpoint DIR loads real weights."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--video", type=Path, default=None, help="video (or image) file (default: the bundled clip)"
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question")
    p.add_argument("--no-parity", action="store_true", help="no parity table on the CPU")
    add_model_arguments(
        p,
        model_help="auto: the fast model on a GPU, the reference (plus a parity table) on the CPU",
    )
    add_sampling_arguments(p)


def _print_parity(args: argparse.Namespace, setup: Setup, video: Path) -> None:
    """On the CPU the demo ran the reference: show that the fast model agrees with it."""
    config = setup.config
    frames, _ = decode_clip(video, config, max_frames=max_clip_frames(config))
    result = run_parity(
        config, num_prompts=2, clip=(frames, video.name), seed=args.seed or 0, max_new_tokens=4
    )
    print("\nfast model vs reference (`haic parity`, fp32, the same weights):")
    print(result.format_table())


def _decode(video: Path, setup: Setup, clock: StageClock, image: bool):
    """(frames, description): the image, or the frames the template's policy samples (the image
    model takes one frame of a clip)."""
    try:
        if image:
            frames = decode_image(video, setup.config, preprocess=setup.preprocess, clock=clock)
            return frames, f"image: {video.name}, {setup.config.vision.image_size} px"
        frames, sel = decode_clip(
            video, setup.config, clock=clock, policy=setup.policy, preprocess=setup.preprocess
        )
    except (VideoDecodeError, ImageLoadError, ImportError) as e:
        raise failed(f"cannot read {video}: {getattr(e, 'reason', e)}") from None
    times = ", ".join(f"{t:.2f}" for t in sel.timestamps)
    return (
        frames,
        f"video: {video.name}, {len(sel)} frames sampled ({setup.policy} policy) at t = {times} s",
    )


def run(args: argparse.Namespace) -> int:
    video = check_input_file(args.video, "--video") if args.video else bundled_clip()
    image = is_image(video)
    setup = prepare(args, PROG, image=True if image else None, sampling=sampling_params(args, PROG))
    device, dtype, config = setup.device, setup.dtype, setup.config
    clock = StageClock(device)
    # Decode and check the prompt first: a bad video fails before any weights are built or read.
    frames, described = _decode(video, setup, clock, image)
    prompt = build_prompt(
        setup.tokenizer, args.prompt, int(frames.shape[0]), config, template=setup.template
    )
    generation = setup.generation(prompt)  # a usage error when it does not fit the context
    with clock.stage("build model"):
        reference, weights_note = build_model(args, config, device, dtype)
        model, kind = select_model(args, reference, device)
    print(
        f"model: {config.name} {kind} ({weights_note}), {device.type}, "
        f"{str(dtype).replace('torch.', '')}"
    )
    print(described)
    ids, types = (t.unsqueeze(0).to(device) for t in (prompt.input_ids, prompt.token_type_ids))
    print(
        f"prompt: {ids.shape[1]} tokens ({int(types.sum())} visual), template "
        f"{setup.template}, preprocess {setup.preprocess}"
    )
    printer = None
    if args.stream:
        print("streamed: ", end="", flush=True)
        printer = TextStream(setup.tokenizer)
    on_token = None if printer is None else printer.on_token
    result = answer(model, frames.to(device), ids, types, clock=clock, on_token=on_token,
                    **generation)  # fmt: skip
    if printer is not None:
        printer.finish()
    where = "wall clock, synchronized" if device.type == "cuda" else "CPU wall clock"
    print("\n" + clock.report(f"stage timings ({where}, one run, includes first-call overheads):"))
    tps = result.decode_tokens_per_s
    print(f"  decode: {f'{tps:.1f} tokens/s' if tps else 'n/a (one token)'}")
    ids_out = result.tokens[0].tolist()
    print(f"\ngenerated token ids: {ids_out}")
    print(f"decoded: {setup.tokenizer.decode(ids_out)!r}")
    if device.type == "cpu" and args.checkpoint is None and not args.no_parity and not image:
        _print_parity(args, setup, video)
    if args.checkpoint is None:
        print(
            "\nnote: these are seeded RANDOM weights, so the text above is meaningless by design; "
            "pass --checkpoint DIR (an HF-format CogVLM2 checkpoint) to load real weights."
        )
    return EXIT_OK
