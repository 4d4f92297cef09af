"""`haic parity`: the fast model against the reference and a float64 oracle, stage by stage.

The command only: options, one run per variant of `testing.model_parity.run_parity` (the
engine: the three models, hooks, the parity rule), the tables, ``--json``. The first prompt
uses a clip decoded as the demo decodes it (`pipeline.decode_clip`). Exit status: 0 when every
run passes, 1 when a stage breaks the rule or tokens differ, 2 for a usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import backends
from ..models.cogvlm2 import VARIANTS, get_config
from ..models.cogvlm2.fast.model import BACKENDS
from ..testing.model_parity import max_clip_frames, run_parity
from ..testing.parity_report import write_json
from .common import (
    bundled_clip,
    check_backend,
    checkpoint_config,
    device_option,
    load_tokenizer,
    positive_int,
    resolve_device_dtype,
)
from .errors import EXIT_FAILED, EXIT_OK, usage_error
from .pipeline import decode_clip
from .run import check_input_file, check_output_file

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "check the fast model against the reference, stage by stage"
DESCRIPTION = (
    "Build the reference model, the fast model and a float64 oracle from one state dict "
    "(seeded random weights or --checkpoint), run them on the same frames and prompts, and "
    "print each stage's max/mean relative error (patch embed, vision blocks, adapter, LM "
    "layers, logits) and whether greedy tokens match. Exit status 1 if a stage breaks the "
    "parity rule (fast error > 2x the same-dtype reference's error + atol) or the tokens differ."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "full"])
    p.add_argument(
        "--variant",
        default=None,
        choices=["video-chat", "video-base", "image", "all"],
        help="default: all (random weights) or the checkpoint's",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="HF-format checkpoint directory, or a Hub repo id in the local cache",
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", type=device_option, default="auto", help="cpu, cuda or auto")
    p.add_argument(
        "--backend", default="auto", choices=BACKENDS, help="kernel backend of the fast model"
    )
    p.add_argument(
        "--prompts", type=positive_int, default=3, help="prompts/videos to compare tokens on"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=4)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and frames")
    p.add_argument("--video", type=Path, default=None, help="first video (default: bundled clip)")
    p.add_argument("--no-video", action="store_true", help="synthetic frames only")
    p.add_argument(
        "--oracle-dtype", default="float64", choices=["float64", "float32"],
        help="precision of the oracle copy (float32 for the full config: fp64 would not fit)",
    )  # fmt: skip
    p.add_argument(
        "--oracle-device",
        type=device_option,
        default=None,
        help="device of the oracle (default: same)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")


def run(args: argparse.Namespace) -> int:
    """One run per variant; prints the tables; the exit status of the module docstring."""
    if args.video is not None:
        check_input_file(args.video, "--video")
    check_output_file(args.json, "--json")
    device, dtype = resolve_device_dtype(args)
    check_backend(args)
    if args.checkpoint is not None:
        if args.variant is not None:
            raise usage_error(f"--variant {args.variant}: --checkpoint's config.json decides")
        configs = [checkpoint_config(args.checkpoint)]
    else:
        if args.config == "full" and device.type == "cpu":
            raise usage_error("--config full needs a GPU")
        variants = VARIANTS if args.variant in (None, "all") else (args.variant,)
        configs = [get_config(args.config, v) for v in variants]
    # The tokenizers are read and checked before any weight is.
    tokenizers = [load_tokenizer(args.checkpoint, config) for config in configs]
    video = None
    if not args.no_video and backends.get("pyav").usable:
        video = args.video or bundled_clip()
    results = []
    for config, tokenizer in zip(configs, tokenizers):
        try:
            clip = None
            if video is not None:
                frames, _ = decode_clip(video, config, max_frames=max_clip_frames(config))
                clip = (frames, video.name)
            result = run_parity(
                config,
                dtype=dtype,
                device=device,
                num_prompts=args.prompts,
                clip=clip,
                seed=args.seed,
                checkpoint=args.checkpoint,
                backend=args.backend,
                max_new_tokens=args.max_new_tokens,
                oracle_dtype=getattr(torch, args.oracle_dtype),
                oracle_device=args.oracle_device,
                tokenizer=tokenizer,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise usage_error(f"({config.name}) {type(e).__name__}: {e}") from None
        print(result.format_table() + "\n")
        results.append(result)
    if args.json is not None:
        print(f"wrote {write_json(results, args.json)}")
    bad = [r.config for r in results if not r.ok]
    print(f"haic parity: {'FAIL: ' + ', '.join(bad) if bad else 'all runs pass'}")
    return EXIT_FAILED if bad else EXIT_OK
