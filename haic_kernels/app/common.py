"""What every command sets up the same way: options, device and dtype, config, tokenizer, model.

`add_model_arguments` adds the shared options (``--config``, ``--variant``, ``--checkpoint``,
``--template``, ``--preprocess``, ``--max-new-tokens``, ``--seed``, ``--device``, ``--dtype``,
``--model``, ``--backend``, ``--precision``); `prepare` turns them into a `Setup` in the order
that lets a user error surface before anything expensive: the options, the device, the config
(a preset or the checkpoint's ``config.json``), the tokenizer (checked against the config,
reading no weight), the template (and with it the frame sampling); the model is built last
(`build_model`, `select_model`: the fast model on a GPU or with ``--precision fp8``, the
reference on the CPU). Problems a user can fix raise `errors.CommandError`: one line naming
the option or file, the documented exit status.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import backends
from ..models.cogvlm2 import (
    ByteTokenizer,
    CogVLM2Config,
    CogVLM2ForCausalLM,
    FastCogVLM2,
    PromptInputs,
    SamplingParams,
    get_config,
    init_random_weights,
    resolve_template,
)
from ..models.cogvlm2.checkpoint_layout import (
    CONFIG_NAME,
    CheckpointError,
    CheckpointNotFoundError,
    check_device,
    resolve_checkpoint,
)
from ..models.cogvlm2.fast.model import BACKENDS, PRECISIONS
from ..models.cogvlm2.generate import check_context
from ..models.cogvlm2.hf_config import read_config_dir, read_json
from ..models.cogvlm2.tokenizer import load_tokenizer as load_checkpoint_tokenizer
from ..models.cogvlm2.weights import inspect_checkpoint, load_pretrained
from ..tokens import build_position_ids
from .errors import checkpoint_error, usage_error

__all__ = [
    "CHECKPOINT_MAX_NEW_TOKENS",
    "DEFAULT_PROMPT",
    "MODELS",
    "PREPROCESS",
    "RANDOM_MAX_NEW_TOKENS",
    "Setup",
    "add_model_arguments",
    "build_config",
    "build_model",
    "bundled_clip",
    "check_backend",
    "checkpoint_config",
    "checkpoint_dir",
    "device_option",
    "load_tokenizer",
    "non_negative_int",
    "positive_int",
    "prepare",
    "resolve_device_dtype",
    "select_model",
    "warn",
]

DEFAULT_PROMPT = "Describe this video."
MODELS = ("auto", "fast", "reference")
PREPROCESS = ("release", "fast")
#: ``--max-new-tokens`` when not given: a few tokens of random weights (meaningless text)...
RANDOM_MAX_NEW_TOKENS = 8
#: ...and the release demos' ``max_new_tokens`` for a checkpoint (cut to what the context holds).
CHECKPOINT_MAX_NEW_TOKENS = 2048


def bundled_clip() -> Path:
    """The committed demo clip: 5 s, 8 fps, 128x96 VP9 with the frame index drawn in."""
    return Path(str(resources.files("haic_kernels") / "assets" / "demo_clip.webm"))


def warn(prog: str, message: str) -> None:
    """One warning line on stderr (the run goes on)."""
    print(f"{prog}: warning: {message}", file=sys.stderr)


# ---- option types: argparse turns their ArgumentTypeError into "argument --x: ..." ----------


def positive_int(text: str) -> int:
    """An int >= 1 (argparse type)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An int >= 0 (argparse type)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def device_option(text: str) -> str:
    """ "auto", "cpu", "cuda" or "cuda:N" (argparse type; whether it exists here is checked by
    `resolve_device_dtype`)."""
    if text == "auto":
        return text
    if isinstance(getattr(torch, text, None), torch.dtype):
        raise argparse.ArgumentTypeError(f"{text!r} is a dtype, not a device (that is --dtype)")
    try:
        device = check_device(text)
    except (TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_model_arguments(p: argparse.ArgumentParser, *, model_help: str) -> None:
    """The model options shared by `haic demo`, `haic run` and `haic chat`."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--config",
        default=None,
        choices=["tiny", "small", "full"],
        help="preset size with seeded random weights (default: tiny); not with --checkpoint",
    )
    g.add_argument(
        "--variant",
        default=None,
        choices=["video-chat", "video-base", "image"],
        help="preset variant (default: image for an IMAGE input, else video-chat); "
        "not with --checkpoint, whose config.json decides",
    )
    g.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="HF-format checkpoint directory, or a Hub repo id already in the local "
        "Hugging Face cache (nothing is downloaded)",
    )
    g.add_argument(
        "--template",
        default=None,
        choices=["chat", "base", "vqa"],
        help="prompt template, which also picks the frame sampling (chat: 1 fps, "
        "base: 24 frames over the first 60 s); default: the official demos' choice "
        "for the model (chat for every release but cogvlm2-video-llama3-base)",
    )
    g.add_argument(
        "--preprocess",
        default=None,
        choices=PREPROCESS,
        help="release: the release's normalize-then-resize in float (the release's "
        "tokens); fast: resize in uint8, normalize inside patch_embed (<= 7.5e-3 "
        "off); default: release with --checkpoint, fast with random weights",
    )
    g.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help=f"default: {RANDOM_MAX_NEW_TOKENS} with random weights, "
        f"{CHECKPOINT_MAX_NEW_TOKENS} (the demos') with --checkpoint, cut to the "
        "context",
    )
    g.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        help="seed of the random weights (default 0) and of --do-sample (default: a random seed)",
    )
    g.add_argument(
        "--device",
        type=device_option,
        default="auto",
        help="cpu, cuda, cuda:N or auto (cuda if there is one)",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="default: bfloat16 on CUDA, float32 on the CPU",
    )
    g.add_argument("--model", default="auto", choices=MODELS, help=model_help)
    g.add_argument(
        "--backend", default="auto", choices=BACKENDS, help="kernel backend of the fast model"
    )
    g.add_argument(
        "--precision", default="native", choices=PRECISIONS,
        help="fp8: the fast model's block linears in E4M3 (implies the fast model; emulated, "
        "and said so, without an sm_89+ GPU)",
    )  # fmt: skip


# ---- the steps of `prepare`, each usable alone ------------------------------------------------


def preprocess_option(args: argparse.Namespace) -> str:
    """``--preprocess``, default: "release" with ``--checkpoint`` (the release's tokens), else
    "fast"."""
    return args.preprocess or ("release" if args.checkpoint is not None else "fast")


def max_new_tokens_option(args: argparse.Namespace) -> int:
    """``--max-new-tokens``, default: the demos' 2048 with ``--checkpoint``, else 8 (not cut to
    a prompt's context here: `Setup.new_tokens` does that per prompt)."""
    if args.max_new_tokens is not None:
        return args.max_new_tokens
    return CHECKPOINT_MAX_NEW_TOKENS if args.checkpoint is not None else RANDOM_MAX_NEW_TOKENS


def resolve_device_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) from ``--device`` / ``--dtype`` ("auto": cuda + bf16 if there is one);
    a usage error when the device is not on this machine."""
    cuda = torch.cuda.is_available()
    try:
        text = ("cuda" if cuda else "cpu") if args.device == "auto" else device_option(args.device)
    except argparse.ArgumentTypeError as e:
        raise usage_error(f"--device {args.device}: {e}") from None
    device = torch.device(text)
    if device.type == "cuda":
        if not cuda:
            why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU found"
            raise usage_error(f"--device {text}: no CUDA device here ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise usage_error(
                f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if args.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, args.dtype)


def check_backend(args: argparse.Namespace) -> None:
    """A usage error when an explicit ``--backend`` cannot run here (before any model is
    built; the ops would refuse it at their first call anyway)."""
    backend = getattr(args, "backend", "auto")
    if backend in ("auto", "torch") or getattr(args, "model", "auto") == "reference":
        return
    found = backends.get(backend)
    if not found.usable:
        raise usage_error(f"--backend {backend}: {found.reason}")


def checkpoint_dir(checkpoint: str | Path) -> Path:
    """The local directory of ``--checkpoint`` (a path, or a repo id in the local HF cache)."""
    try:
        return resolve_checkpoint(checkpoint)
    except CheckpointNotFoundError as e:
        raise usage_error(f"--checkpoint {checkpoint}: {e}") from None
    except ImportError as e:
        raise checkpoint_error(f"--checkpoint {checkpoint}: {e}") from None


def checkpoint_config(checkpoint: str | Path) -> CogVLM2Config:
    """The config of a checkpoint (its config.json, generation_config.json's stop ids, and the
    weight names of the safetensors headers for the visual-expert inference): no weight read."""
    path = checkpoint_dir(checkpoint)
    try:
        try:
            index = inspect_checkpoint(path)
        except CheckpointError:
            read_json(path / CONFIG_NAME)  # a config.json that is not JSON is named first
            raise
        return read_config_dir(index.path, weight_names=index.tensors)
    except (CheckpointError, OSError, ValueError) as e:
        raise checkpoint_error(f"--checkpoint {checkpoint}: {e}") from None


def build_config(
    args: argparse.Namespace, device: torch.device, *, image: bool | None = None
) -> CogVLM2Config:
    """The model config: the checkpoint's (``--checkpoint``) or a preset (``--config``,
    ``--variant``; the variant defaults to "image" when ``image`` is True, else video-chat)."""
    config_opt, variant = getattr(args, "config", None), getattr(args, "variant", None)
    if args.checkpoint is not None:
        for opt, value in (("--config", config_opt), ("--variant", variant)):
            if value is not None:
                raise usage_error(
                    f"{opt} {value}: --checkpoint's config.json decides the model; drop {opt} "
                    "(--template picks the prompt template)"
                )
        return checkpoint_config(args.checkpoint)
    size = config_opt or "tiny"
    if size == "full" and device.type == "cpu":
        raise usage_error("--config full needs a GPU (about 26 GB of bf16 weights)")
    return get_config(size, variant or ("image" if image else "video-chat"))


def load_tokenizer(checkpoint: str | Path | None, config: CogVLM2Config):
    """The byte tokenizer for random weights (and for a checkpoint with the byte ids and no
    tokenizer.json, as `save_checkpoint` writes the tiny model); a checkpoint's own
    ``tokenizer.json`` otherwise, checked against its config before any weight is read."""
    if checkpoint is None:
        return ByteTokenizer()
    path = checkpoint_dir(checkpoint)
    byte_ids = (ByteTokenizer.bos_token_id, ByteTokenizer.eos_token_id, ByteTokenizer.pad_token_id)
    uses_bytes = (config.bos_token_id, config.eos_token_id, config.pad_token_id) == byte_ids
    if uses_bytes and not (path / "tokenizer.json").is_file():
        return ByteTokenizer()
    try:
        return load_checkpoint_tokenizer(path, config)
    except (CheckpointError, ImportError) as e:
        raise checkpoint_error(f"--checkpoint {checkpoint}: {e}") from None


def build_model(
    args: argparse.Namespace, config: CogVLM2Config, device: torch.device, dtype: torch.dtype
) -> tuple[CogVLM2ForCausalLM, str]:
    """(the reference model in eval mode, a note on where the weights came from)."""
    if args.checkpoint is not None:
        try:
            model = load_pretrained(args.checkpoint, dtype=dtype, device=device, config=config)
        except (CheckpointError, ImportError) as e:  # missing / mis-shaped weights: named
            raise checkpoint_error(f"--checkpoint {args.checkpoint}: {e}") from None
        return model.eval(), f"checkpoint {args.checkpoint}"
    seed = args.seed or 0
    model = init_random_weights(CogVLM2ForCausalLM(config), seed=seed)
    return model.to(device=device, dtype=dtype).eval(), f"random weights, seed {seed}"


def select_model(
    args: argparse.Namespace, reference: CogVLM2ForCausalLM, device: torch.device
) -> tuple[nn.Module, str]:
    """(the model to run, "fast" | "reference" | "fast, precision fp8 (fp8_linear BACKEND)"):
    ``--model auto`` is fast on CUDA and with ``--precision fp8``. Both models have the same
    stage methods, so nothing downstream asks which it got."""
    choice, precision = args.model, getattr(args, "precision", "native")
    if choice == "auto":
        choice = "fast" if device.type == "cuda" or precision != "native" else "reference"
    if choice == "reference":
        if precision != "native":
            raise usage_error(f"--precision {precision}: an option of the fast model, not of "
                              "--model reference")  # fmt: skip
        return reference, "reference"
    try:
        fast = FastCogVLM2.from_reference(reference, backend=args.backend, precision=precision)
    except (ValueError, RuntimeError) as e:
        raise usage_error(f"--backend {args.backend}: {e}") from None
    if fast.fp8_backend is None:
        return fast.eval(), "fast"
    return fast.eval(), f"fast, precision {precision} (fp8_linear {fast.fp8_backend})"


# ---- all of it, in order ----------------------------------------------------------------------


@dataclass
class Setup:
    """A command's run, resolved from its options before any model is built.

    ``checkpoint``: the local directory (None: random weights); ``template`` / ``policy``: the
    prompt template and the frame sampling it implies ("image" for the image model);
    ``sampling``: ``--do-sample`` and friends (greedy by default); ``max_new_tokens``: the
    option, None for the default (see `new_tokens`)."""

    prog: str
    device: torch.device
    dtype: torch.dtype
    config: CogVLM2Config
    checkpoint: Path | None
    tokenizer: Any
    template: str
    policy: str
    preprocess: str
    max_new_tokens: int | None
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every stop id of the config (config.json + generation_config.json)."""
        return self.config.eos_token_ids

    def sampler(self):
        """A fresh `Sampler` for one generation (its generator seeded again)."""
        return self.sampling.sampler()

    def generation(self, prompt: PromptInputs) -> dict[str, Any]:
        """The keywords of one generation for ``prompt`` (`pipeline.answer` / `respond`, either
        model's ``generate``): `new_tokens`, every stop id, a fresh sampler."""
        return dict(max_new_tokens=self.new_tokens(prompt), eos_token_id=self.eos_token_ids,
                    sampler=self.sampler())  # fmt: skip

    def new_tokens(self, prompt: PromptInputs) -> int:
        """``--max-new-tokens`` for ``prompt``: checked against the context (a usage error when
        it does not fit); its default is cut to what the context holds."""
        last = int(build_position_ids(prompt.token_type_ids).max())
        if self.max_new_tokens is None:
            default = CHECKPOINT_MAX_NEW_TOKENS if self.checkpoint else RANDOM_MAX_NEW_TOKENS
            n = min(default, self.config.text.position_limit - last)
            if n < 1:
                raise usage_error(
                    f"prompt too long: {len(prompt)} tokens reach position {last}, past the "
                    f"model's context of {self.config.text.position_limit} positions"
                )
            return n
        try:
            check_context(self.config, last, self.max_new_tokens)
        except ValueError:
            raise usage_error(
                f"prompt too long: {len(prompt)} tokens reach position {last}, and "
                f"--max-new-tokens {self.max_new_tokens} passes the model's context of "
                f"{self.config.text.position_limit} positions"
            ) from None
        return self.max_new_tokens


def prepare(
    args: argparse.Namespace, prog: str, *, image: bool | None = None,
    sampling: SamplingParams | None = None,
) -> Setup:  # fmt: skip
    """Resolve the shared options (see the module docstring for the order). ``image``: the
    input is an image (True), a video (False) or not known yet (None); the model must take it.
    The template warning of `resolve_template` is printed here."""
    device, dtype = resolve_device_dtype(args)
    check_backend(args)
    config = build_config(args, device, image=image)
    checkpoint = checkpoint_dir(args.checkpoint) if args.checkpoint is not None else None
    tokenizer = load_tokenizer(args.checkpoint, config)
    if image is not None and image != config.vision_expert:
        what = "an image" if image else "a video"
        model = "the image model" if config.vision_expert else "a video model"
        fix = "--variant image" if image else "--variant video-chat"
        how = "a checkpoint of that model" if args.checkpoint is not None else fix
        raise usage_error(
            f"{config.name} is {model}, the input is {what}: use {how}"
            + (" (or an IMAGE input)" if config.vision_expert else "")
        )
    release = str(args.checkpoint) if args.checkpoint is not None else None
    template, policy, warning = resolve_template(config, args.template, release=release)
    if warning is not None:
        warn(prog, warning)
    preprocess = preprocess_option(args)
    return Setup(
        prog,
        device,
        dtype,
        config,
        checkpoint,
        tokenizer,
        template,
        policy,
        preprocess,
        args.max_new_tokens,
        sampling or SamplingParams(),
    )
