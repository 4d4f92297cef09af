"""`haic demo`: the main job, first version.

Decode a clip, sample frames with the model's policy, run the reference model end to end and
greedy-decode a few tokens, timing each stage. With the default tiny config the weights are
seeded random numbers, so the generated text is meaningless by construction; `--checkpoint DIR`
loads a real HF-format checkpoint instead. On a GPU the fast model (`FastCogVLM2`) runs; on
the CPU the reference does, followed by the tiny parity table (fast vs reference vs fp64).
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

DEFAULT_PROMPT = "Describe this video."


def bundled_clip() -> Path:
    """The committed demo clip: 5 s, 8 fps, 128x96 VP9 with the frame index drawn in."""
    return Path(str(resources.files("haic_kernels") / "assets" / "demo_clip.webm"))


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--video", type=Path, default=None, help="video file (default: the bundled clip)"
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question")
    p.add_argument(
        "--model", default="auto", choices=["auto", "fast", "reference"],
        help="auto: the fast model on a GPU, the reference (plus a parity table) on the CPU",
    )  # fmt: skip
    p.add_argument("--backend", default="auto", help="fast model's kernels (auto, torch, triton)")
    p.add_argument("--no-parity", action="store_true", help="no parity table on the CPU")
    add_model_arguments(p)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model options shared by `haic demo` and `haic run`."""
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "full"])
    p.add_argument("--variant", default="video-chat", choices=["video-chat", "video-base", "image"])
    p.add_argument("--checkpoint", type=Path, default=None, help="HF-format checkpoint directory")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


class _Timer:
    def __init__(self, device) -> None:
        self.device = device
        self.rows: list[tuple[str, float, str]] = []

    @contextmanager
    def stage(self, name: str, note: str = ""):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.rows.append((name, (time.perf_counter() - t0) * 1e3, note))

    def print(self) -> None:
        width = max(len(r[0]) for r in self.rows)
        clock = "wall clock, synchronized" if self.device.type == "cuda" else "CPU wall clock"
        print(f"\nstage timings ({clock}, one run, includes first-call overheads):")
        for name, ms, note in self.rows:
            print(f"  {name:<{width}}  {ms:9.1f} ms  {note}")


def _load_tokenizer(checkpoint: Path | None, config):
    """The byte tokenizer for the tiny config; a checkpoint's own ``tokenizer.json`` otherwise."""
    from .models.cogvlm2.tokenizer import ByteTokenizer

    byte_ids = (ByteTokenizer.bos_token_id, ByteTokenizer.eos_token_id, ByteTokenizer.pad_token_id)
    uses_bytes = (config.bos_token_id, config.eos_token_id, config.pad_token_id) == byte_ids
    tok_file = checkpoint / "tokenizer.json" if checkpoint is not None else None
    if tok_file is None or (uses_bytes and not tok_file.is_file()):
        return ByteTokenizer()
    if not tok_file.is_file():
        raise SystemExit(f"--checkpoint {checkpoint}: no tokenizer.json next to the weights")
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise SystemExit(
            f"--checkpoint {checkpoint}: reading tokenizer.json needs the `tokenizers` package"
        ) from e
    tok = Tokenizer.from_file(str(tok_file))

    class _Wrapped:
        def encode(self, text: str) -> list[int]:
            return tok.encode(text, add_special_tokens=False).ids

        def decode(self, ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True)

    return _Wrapped()


def _checkpoint_config(checkpoint: Path):
    import json

    from .models.cogvlm2.hf_config import config_from_hf
    from .models.cogvlm2.weights import CheckpointError, inspect_checkpoint

    try:
        index = inspect_checkpoint(checkpoint)
        return config_from_hf(
            json.loads((index.path / "config.json").read_text()), weight_names=index.tensors
        )
    except (CheckpointError, OSError, ValueError) as e:
        raise SystemExit(f"--checkpoint {checkpoint}: {e}") from e


def resolve_device_dtype(args: argparse.Namespace):
    """(torch.device, torch.dtype) from ``--device`` / ``--dtype`` ("auto": cuda + bf16 if any)."""
    import torch

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, args.dtype)


def build_config(args: argparse.Namespace, device):
    """The model config: the checkpoint's (``--checkpoint``) or a preset (``--config``)."""
    from .models.cogvlm2 import get_config

    if args.checkpoint is not None:
        return _checkpoint_config(args.checkpoint)
    if args.config == "full" and device.type == "cpu":
        raise SystemExit("--config full needs a GPU (about 26 GB of bf16 weights)")
    return get_config(args.config, args.variant)


def build_model(args: argparse.Namespace, config, device, dtype):
    """(model in eval mode, a note on where the weights came from)."""
    from .models.cogvlm2 import CogVLM2ForCausalLM, init_random_weights

    if args.checkpoint is not None:
        from .models.cogvlm2.weights import CheckpointError, load_pretrained

        try:
            model = load_pretrained(args.checkpoint, dtype=dtype, device=device, config=config)
        except CheckpointError as e:  # missing / mis-shaped weights: name them, no traceback
            raise SystemExit(f"--checkpoint {args.checkpoint}: {e}") from e
        note = f"checkpoint {args.checkpoint}"
    else:
        model = CogVLM2ForCausalLM(config)
        init_random_weights(model, seed=args.seed)
        model = model.to(device=device, dtype=dtype)
        note = f"random weights, seed {args.seed}"
    return model.eval(), note


def _print_parity(args: argparse.Namespace, config) -> None:
    """On the CPU the demo ran the reference: show that the fast model agrees with it."""
    from .parity import run_parity

    try:
        result = run_parity(config, num_prompts=2, video=args.video or bundled_clip(),
                            seed=args.seed, max_new_tokens=4)  # fmt: skip
    except ImportError as e:
        print(f"\nparity table skipped: the fast model is not importable ({e})")
        return
    print("\nfast model vs reference (`haic parity`, fp32, the same weights):")
    print(result.format_table())


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from .models.cogvlm2 import build_prompt, greedy_generate, normalize_frames
    from .video.pyav import VideoDecodeError, load_video

    device, dtype = resolve_device_dtype(args)
    if args.max_new_tokens < 1:
        raise SystemExit("--max-new-tokens must be at least 1")
    video = args.video or bundled_clip()
    timer = _Timer(device)

    config = build_config(args, device)

    # Decode first: a bad video should fail before any weights are built or read.
    try:
        with timer.stage("decode video", "PyAV on CPU"):
            frames_u8, selection = load_video(
                video,
                policy=config.template,
                max_frames=config.max_frames,
                size=config.vision.image_size,
            )
    except VideoDecodeError as e:
        print(f"error: cannot read the video {e}")
        return 2
    except ImportError as e:
        print(f"error: {e}")
        return 2

    from .run_video import select_model

    with timer.stage("build model"):
        model, weights_note = build_model(args, config, device, dtype)
        model, kind = select_model(args, model, device)
    tokenizer = _load_tokenizer(args.checkpoint, config)
    print(
        f"model: {config.name} {kind} ({weights_note}), {device.type}, "
        f"{str(dtype).replace('torch.', '')}"
    )
    print(
        f"video: {video.name}, {len(selection)} frames sampled ({selection.policy} policy) at "
        f"t = {', '.join(f'{t:.2f}' for t in selection.timestamps)} s"
    )
    prompt = build_prompt(tokenizer, args.prompt, len(selection), config)
    input_ids = prompt.input_ids.unsqueeze(0).to(device)
    token_types = prompt.token_type_ids.unsqueeze(0).to(device)
    print(
        f"prompt: {input_ids.shape[1]} tokens ({int(token_types.sum())} visual), "
        f"template {config.template}"
    )

    fast = kind == "fast"  # the fast model takes uint8 frames (normalized in patch embed)
    vision = model.model.vision
    with torch.inference_mode():
        with timer.stage("normalize frames", "inside patch embed" if fast else ""):
            images = frames_u8.to(device) if fast else normalize_frames(frames_u8.to(device))
            images = images if fast else images.to(dtype)
        with timer.stage("patch embed"):
            x = model.embed_patches(images) if fast else vision.embed_patches(images)
        with timer.stage("vision tower", f"{config.vision.num_layers} blocks"):
            x = model.run_vision_transformer(x) if fast else vision.run_transformer(x)
        with timer.stage("compress + adapter", "2x2 conv, GLU, boi/eoi"):
            vision_embeds = model.compress_and_adapt(x) if fast else vision.compress(x)
        with timer.stage("prefill", f"{input_ids.shape[1]} tokens"):
            out = model(input_ids, token_types, vision_embeds=vision_embeds, use_cache=True)
        with timer.stage("generate", "greedy, KV cache"):
            new_tokens = greedy_generate(
                model,
                input_ids,
                token_types,
                vision_embeds=vision_embeds,
                max_new_tokens=args.max_new_tokens,
                eos_token_id=config.eos_token_id,
            )
    timer.print()
    rows = {name: ms for name, ms, _ in timer.rows}
    per_token = (rows["generate"] - rows["prefill"]) / args.max_new_tokens
    print(
        f"  (generate = one prefill + {args.max_new_tokens} decode steps: "
        f"~{per_token:.1f} ms/token)"
    )
    ids = new_tokens[0].tolist()
    print(
        f"\nfirst-token logits: shape {tuple(out.logits.shape)}, "
        f"argmax {int(out.logits[0, -1].argmax())}"
    )
    print(f"generated token ids: {ids}")
    print(f"decoded: {tokenizer.decode(ids)!r}")
    if device.type == "cpu" and args.checkpoint is None and not args.no_parity:
        _print_parity(args, config)
    if args.checkpoint is None:
        print(
            "\nnote: these are seeded RANDOM weights, so the text above is meaningless by design; "
            "pass --checkpoint DIR (an HF-format CogVLM2 checkpoint) to load real weights."
        )
    return 0
