"""What every command sets up the same way: options, device and dtype, config, model, tokenizer.

`add_model_arguments` adds the shared options (``--config``, ``--variant``, ``--checkpoint``,
``--max-new-tokens``, ``--seed``, ``--device``, ``--dtype``, ``--model``, ``--backend``); the
builders turn them into a config (a preset or the checkpoint's), the reference model (seeded
random weights or the checkpoint), the model to run (`select_model`: the fast model on a GPU,
the reference on the CPU) and the tokenizer. Problems a user can fix raise `SystemExit` with
the option at fault, never a traceback.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..models.cogvlm2 import (
    ByteTokenizer,
    CogVLM2Config,
    CogVLM2ForCausalLM,
    FastCogVLM2,
    get_config,
    init_random_weights,
)
from ..models.cogvlm2.fast.model import BACKENDS
from ..models.cogvlm2.hf_config import config_from_hf
from ..models.cogvlm2.weights import CheckpointError, inspect_checkpoint, load_pretrained

__all__ = [
    "DEFAULT_PROMPT",
    "MODELS",
    "add_model_arguments",
    "build_config",
    "build_model",
    "bundled_clip",
    "checkpoint_config",
    "load_tokenizer",
    "resolve_device_dtype",
    "select_model",
]

DEFAULT_PROMPT = "Describe this video."
MODELS = ("auto", "fast", "reference")


def bundled_clip() -> Path:
    """The committed demo clip: 5 s, 8 fps, 128x96 VP9 with the frame index drawn in."""
    return Path(str(resources.files("haic_kernels") / "assets" / "demo_clip.webm"))


def add_model_arguments(p: argparse.ArgumentParser, *, model_help: str) -> None:
    """The model options shared by `haic demo` and `haic run`."""
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "full"])
    p.add_argument("--variant", default="video-chat", choices=["video-chat", "video-base", "image"])
    p.add_argument("--checkpoint", type=Path, default=None, help="HF-format checkpoint directory")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--model", default="auto", choices=MODELS, help=model_help)
    p.add_argument(
        "--backend", default="auto", choices=BACKENDS, help="kernel backend of the fast model"
    )


def load_tokenizer(checkpoint: Path | None, config: CogVLM2Config):
    """The byte tokenizer for the tiny config; a checkpoint's own ``tokenizer.json`` otherwise."""
    byte_ids = (ByteTokenizer.bos_token_id, ByteTokenizer.eos_token_id, ByteTokenizer.pad_token_id)
    uses_bytes = (config.bos_token_id, config.eos_token_id, config.pad_token_id) == byte_ids
    tok_file = checkpoint / "tokenizer.json" if checkpoint is not None else None
    if tok_file is None or (uses_bytes and not tok_file.is_file()):
        return ByteTokenizer()
    if not tok_file.is_file():
        raise SystemExit(f"--checkpoint {checkpoint}: no tokenizer.json next to the weights")
    try:
        from tokenizers import Tokenizer  # optional: only real checkpoints need it
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


def checkpoint_config(checkpoint: Path) -> CogVLM2Config:
    """The config of an HF-format checkpoint directory (its config.json and weight names)."""
    try:
        index = inspect_checkpoint(checkpoint)
        return config_from_hf(
            json.loads((index.path / "config.json").read_text()), weight_names=index.tensors
        )
    except (CheckpointError, OSError, ValueError) as e:
        raise SystemExit(f"--checkpoint {checkpoint}: {e}") from e


def resolve_device_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) from ``--device`` / ``--dtype`` ("auto": cuda + bf16 if there is one)."""
    cuda = torch.cuda.is_available()
    device = torch.device(("cuda" if cuda else "cpu") if args.device == "auto" else args.device)
    if args.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, args.dtype)


def build_config(args: argparse.Namespace, device: torch.device) -> CogVLM2Config:
    """The model config: the checkpoint's (``--checkpoint``) or a preset (``--config``)."""
    if args.checkpoint is not None:
        return checkpoint_config(args.checkpoint)
    if args.config == "full" and device.type == "cpu":
        raise SystemExit("--config full needs a GPU (about 26 GB of bf16 weights)")
    return get_config(args.config, args.variant)


def build_model(
    args: argparse.Namespace, config: CogVLM2Config, device: torch.device, dtype: torch.dtype
) -> tuple[CogVLM2ForCausalLM, str]:
    """(the reference model in eval mode, a note on where the weights came from)."""
    if args.checkpoint is not None:
        try:
            model = load_pretrained(args.checkpoint, dtype=dtype, device=device, config=config)
        except CheckpointError as e:  # missing / mis-shaped weights: name them, no traceback
            raise SystemExit(f"--checkpoint {args.checkpoint}: {e}") from e
        return model.eval(), f"checkpoint {args.checkpoint}"
    model = init_random_weights(CogVLM2ForCausalLM(config), seed=args.seed)
    return model.to(device=device, dtype=dtype).eval(), f"random weights, seed {args.seed}"


def select_model(
    args: argparse.Namespace, reference: CogVLM2ForCausalLM, device: torch.device
) -> tuple[nn.Module, str]:
    """(the model to run, "fast" | "reference"): ``--model auto`` is fast on CUDA. Both have
    the same stage methods, so nothing downstream asks which it got."""
    choice = args.model
    if choice == "auto":
        choice = "fast" if device.type == "cuda" else "reference"
    if choice == "reference":
        return reference, "reference"
    try:
        return FastCogVLM2.from_reference(reference, backend=args.backend).eval(), "fast"
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"--backend {args.backend}: {e}") from e
