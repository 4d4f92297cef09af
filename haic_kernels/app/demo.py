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
from ..video.pyav import VideoDecodeError
from .common import (
    DEFAULT_PROMPT,
    add_model_arguments,
    build_config,
    build_model,
    bundled_clip,
    load_tokenizer,
    resolve_device_dtype,
    select_model,
)
from .pipeline import StageClock, answer, decode_clip

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "run the model end to end on the bundled clip (tiny config, random weights)"
DESCRIPTION = (
    "Decode a clip, sample frames, run the model and greedy-decode a few tokens, printing each "
    "stage's time. Random weights give meaningless text; --checkpoint DIR loads real weights."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--video", type=Path, default=None, help="video file (default: the bundled clip)"
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question")
    p.add_argument("--no-parity", action="store_true", help="no parity table on the CPU")
    add_model_arguments(
        p, model_help="auto: the fast model on a GPU, the reference (plus a parity table) on "
        "the CPU",
    )  # fmt: skip


def _print_parity(args: argparse.Namespace, config, video: Path) -> None:
    """On the CPU the demo ran the reference: show that the fast model agrees with it."""
    frames, _ = decode_clip(video, config, max_frames=max_clip_frames(config))
    result = run_parity(config, num_prompts=2, clip=(frames, video.name), seed=args.seed,
                        max_new_tokens=4)  # fmt: skip
    print("\nfast model vs reference (`haic parity`, fp32, the same weights):")
    print(result.format_table())


def run(args: argparse.Namespace) -> int:
    device, dtype = resolve_device_dtype(args)
    if args.max_new_tokens < 1:
        raise SystemExit("--max-new-tokens must be at least 1")
    video = args.video or bundled_clip()
    clock = StageClock(device)
    config = build_config(args, device)
    # Decode first: a bad video should fail before any weights are built or read.
    try:
        frames, selection = decode_clip(video, config, clock=clock)
    except (VideoDecodeError, ImportError) as e:
        print(f"error: cannot read the video {e}")
        return 2
    with clock.stage("build model"):
        reference, weights_note = build_model(args, config, device, dtype)
        model, kind = select_model(args, reference, device)
    tokenizer = load_tokenizer(args.checkpoint, config)
    print(
        f"model: {config.name} {kind} ({weights_note}), {device.type}, "
        f"{str(dtype).replace('torch.', '')}"
    )
    print(
        f"video: {video.name}, {len(selection)} frames sampled ({selection.policy} policy) at "
        f"t = {', '.join(f'{t:.2f}' for t in selection.timestamps)} s"
    )
    prompt = build_prompt(tokenizer, args.prompt, len(selection), config)
    ids, types = (t.unsqueeze(0).to(device) for t in (prompt.input_ids, prompt.token_type_ids))
    print(f"prompt: {ids.shape[1]} tokens ({int(types.sum())} visual), template {config.template}")
    result = answer(model, frames.to(device), ids, types, clock=clock,
                    max_new_tokens=args.max_new_tokens,
                    eos_token_id=config.eos_token_id)  # fmt: skip
    where = "wall clock, synchronized" if device.type == "cuda" else "CPU wall clock"
    print("\n" + clock.report(f"stage timings ({where}, one run, includes first-call overheads):"))
    tps = result.decode_tokens_per_s
    print(f"  decode: {f'{tps:.1f} tokens/s' if tps else 'n/a (one token)'}")
    ids_out = result.tokens[0].tolist()
    print(f"\ngenerated token ids: {ids_out}")
    print(f"decoded: {tokenizer.decode(ids_out)!r}")
    if device.type == "cpu" and args.checkpoint is None and not args.no_parity:
        _print_parity(args, config, video)
    if args.checkpoint is None:
        print(
            "\nnote: these are seeded RANDOM weights, so the text above is meaningless by design; "
            "pass --checkpoint DIR (an HF-format CogVLM2 checkpoint) to load real weights."
        )
    return 0
