"""`haic parity`: the fast model against the reference and a float64 oracle, stage by stage.

The command only: options, one run per variant of `testing.model_parity.run_parity` (the
engine: the three models, hooks, the parity rule), the tables, ``--json``. The first prompt
uses a clip decoded as the demo decodes it (`pipeline.decode_clip`). Exit status: 0 when every
run passes, 1 when a stage breaks the rule or tokens differ, 2 for a usage error.

``--precision fp8`` runs the fast model in fp8 against the reference in the same dtype instead
(`testing.fp8_parity`: relative error per stage, token agreement); it fails only on non-finite
output or a logit error above `fp8_logit_bound`, never on the expected quantization error.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from .. import backends
from ..models.cogvlm2 import VARIANTS, CogVLM2Config, build_prompt, get_config, stack_prompts
from ..models.cogvlm2.config import ROPE_PRECISIONS
from ..models.cogvlm2.fast.model import BACKENDS, PRECISIONS, FastCogVLM2
from ..pruning import Compose, StaticPatches, Temporal, TextGuided, VisionMerge
from ..testing.fp8_parity import compare_precision
from ..testing.model_parity import build_models, make_inputs, max_clip_frames, run_parity
from ..testing.parity_report import write_json
from ..testing.reduction_report import format_reduction, reduction_report
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
        "--precision", default="native", choices=PRECISIONS,
        help="fp8: the fast model's block linears in E4M3 against the reference in the same "
        "dtype (relative error per stage and token agreement; the oracle options are unused)",
    )  # fmt: skip
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
    p.add_argument(
        "--rope-precision", default=None, choices=[*ROPE_PRECISIONS, "both"],
        help="RoPE angles of all three models: release (the release's bf16 angles), fp32, or "
        "both (one run each); default: the config's (release)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument(
        "--reduce", action="append", type=reduce_option, default=[], metavar="SPEC",
        help="also report token reduction inside the vision tower against none (repeatable): "
        "'merge:R' (ToMe, R pairs per frame in every block), 'merge:R@A-B' (blocks A..B), "
        "'static:T' (skip patches within T of the previous frame), joined by '+' and with "
        "LM-side pruning: 'temporal:K' (keep ratio K), 'text:K@L' (text-guided at layer L)",
    )  # fmt: skip


def reduce_option(spec: str) -> tuple[str, object]:
    """``--reduce`` SPEC -> (spec, a ``prune=`` option of `StaticPatches` / `VisionMerge`)."""
    policies: list[object] = []
    try:
        for part in spec.split("+"):
            kind, _, arg = part.partition(":")
            if kind == "static":
                policies.append(StaticPatches(int(arg)))
            elif kind == "merge":
                r, _, blocks = arg.partition("@")
                layers = None
                if blocks:
                    lo, _, hi = blocks.partition("-")
                    layers = tuple(range(int(lo), int(hi or lo) + 1))
                policies.append(VisionMerge(int(r), layers))
            elif kind == "temporal":
                policies.append(Temporal(float(arg)))
            elif kind == "text":
                ratio, _, layer = arg.partition("@")
                policies.append(TextGuided(float(ratio), layer=int(layer or 2)))
            else:
                raise ValueError(f"unknown kind {kind!r} (merge, static, temporal or text)")
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"{spec!r}: {e}") from None
    return spec, policies[0] if len(policies) == 1 else Compose(tuple(policies))


def _reduction(args: argparse.Namespace, config, dtype, device, tokenizer, clip) -> None:
    """The `reduction_report` table of ``--reduce`` on the first parity input (random weights
    of ``--seed``, or the checkpoint)."""
    models = build_models(config, dtype=dtype, device=device, seed=args.seed,
                          checkpoint=args.checkpoint, backend=args.backend,
                          oracle_dtype=dtype, oracle_device=torch.device("meta"))  # fmt: skip
    item = make_inputs(config, 1, clip=clip, seed=args.seed)[0]
    prompt = build_prompt(tokenizer, item.question, item.frames.shape[0], config)
    ids, types = (t.to(device) for t in stack_prompts([prompt]))
    try:
        rows = reduction_report(models.fast, ids, types, item.frames.to(device),
                                dict(args.reduce), max_new_tokens=args.max_new_tokens)  # fmt: skip
    except ValueError as e:
        raise usage_error(f"--reduce: {e}") from None
    print(f"token reduction in the vision tower ({config.name}, {item.source}; random weights "
          "cannot judge accuracy: see the README):")  # fmt: skip
    print(format_reduction(rows) + "\n")


def _precision_run(args: argparse.Namespace, config, dtype, device, tokenizer, clip):
    """`compare_precision` of the ``--precision`` fast model on the parity inputs."""

    def fast(reference):
        return FastCogVLM2.from_reference(reference, backend=args.backend,
                                          precision=args.precision)  # fmt: skip

    models = build_models(config, dtype=dtype, device=device, seed=args.seed,
                          checkpoint=args.checkpoint, oracle_dtype=dtype,
                          oracle_device=torch.device("meta"), fast_factory=fast)  # fmt: skip
    inputs = make_inputs(config, args.prompts, clip=clip, seed=args.seed)
    return compare_precision(models, config, inputs, tokenizer=tokenizer,
                             max_new_tokens=args.max_new_tokens)  # fmt: skip


def _rope_variants(config: CogVLM2Config, precision: str | None) -> list[CogVLM2Config]:
    """``config`` with each asked ``--rope-precision`` (None: as it is)."""
    if precision is None:
        return [config]
    wanted = ROPE_PRECISIONS if precision == "both" else (precision,)
    return [replace(config, text=replace(config.text, rope_precision=p)) for p in wanted]


def run(args: argparse.Namespace) -> int:
    """One run per variant; prints the tables; the exit status of the module docstring."""
    if args.video is not None:
        check_input_file(args.video, "--video")
    check_output_file(args.json, "--json")
    device, dtype = resolve_device_dtype(args)
    check_backend(args)
    if args.reduce and args.precision != "native":
        raise usage_error("--reduce: only with --precision native")
    if args.checkpoint is not None:
        if args.variant is not None:
            raise usage_error(f"--variant {args.variant}: --checkpoint's config.json decides")
        configs = [checkpoint_config(args.checkpoint)]
    else:
        if args.config == "full" and device.type == "cpu":
            raise usage_error("--config full needs a GPU")
        variants = VARIANTS if args.variant in (None, "all") else (args.variant,)
        configs = [get_config(args.config, v) for v in variants]
    configs = [c for config in configs for c in _rope_variants(config, args.rope_precision)]
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
            if args.precision != "native":
                result = _precision_run(args, config, dtype, device, tokenizer, clip)
            else:
                result = run_parity(
                    config, dtype=dtype, device=device, num_prompts=args.prompts, clip=clip,
                    seed=args.seed, checkpoint=args.checkpoint, backend=args.backend,
                    max_new_tokens=args.max_new_tokens,
                    oracle_dtype=getattr(torch, args.oracle_dtype),
                    oracle_device=args.oracle_device, tokenizer=tokenizer,
                )  # fmt: skip
        except (ValueError, RuntimeError, OSError) as e:
            raise usage_error(f"({config.name}) {type(e).__name__}: {e}") from None
        print(result.format_table() + "\n")
        results.append(result)
        if args.reduce:
            _reduction(args, config, dtype, device, tokenizer, clip)
    if args.json is not None:
        print(f"wrote {write_json(results, args.json)}")
    bad = [f"{r.config} (rope {r.rope_precision})" for r in results if not r.ok]
    print(f"haic parity: {'FAIL: ' + ', '.join(bad) if bad else 'all runs pass'}")
    return EXIT_FAILED if bad else EXIT_OK
