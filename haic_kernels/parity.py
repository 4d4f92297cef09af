"""Whole-model parity: the fast model against the reference, stage by stage (`haic parity`).

Three models are built from one state dict (seeded random weights or a checkpoint):

* ``fast``       - `FastCogVLM2.from_reference(reference)` (shares the reference's parameters);
* ``reference``  - `CogVLM2ForCausalLM` in the fast model's dtype (PyTorch's own error);
* ``oracle``     - a float64 copy of the reference (the high-precision answer).

All three run on the same frames and prompts. Forward hooks, registered by module name (the two
models have the same module tree), capture each stage's output: patch embed, every vision block,
the adapter (GLU), every LM layer, the final norm; the logits come from the forward itself. Each
stage follows DESIGN.md's rule (`haic_kernels.testing.parity`): the fast error against the
oracle must be at most 2x the same-dtype reference's error plus an atol. Greedy tokens are
compared over N prompts (the bundled clip first, then seeded synthetic frames with other
questions): the fast model's tokens must equal the reference's or the oracle's.

A stage whose module the fast model never calls (a fused path that bypasses it) is listed as
"not observed" and does not fail the run; the stages after it and the logits still do.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .testing import DEFAULT_ATOL, parity

QUESTIONS = (
    "Describe this video.",
    "What moves, and where does it go?",
    "How many objects are there?",
    "What color is the background?",
)


# ---- what is compared ----------------------------------------------------------------------


def stage_modules(config) -> list[tuple[str, str]]:
    """(stage label, module name) in execution order, for ``config``'s depth."""
    out = [("patch embed", "model.vision.patch_embedding")]
    out += [
        (f"vision block {i}", f"model.vision.transformer.layers.{i}")
        for i in range(config.vision.num_layers)
    ]
    out.append(("adapter", "model.vision.linear_proj"))
    out += [(f"LM layer {i}", f"model.layers.{i}") for i in range(config.text.num_layers)]
    out.append(("final norm", "model.norm"))
    return out


@dataclass
class StageResult:
    """One stage, worst case over the prompts. Relative errors are normwise:
    ``max|x - oracle| / max|oracle|`` and ``mean|x - oracle| / mean|oracle|``."""

    stage: str
    module: str
    shape: tuple[int, ...] | None
    fast_max_rel: float | None = None
    fast_mean_rel: float | None = None
    ref_max_rel: float | None = None
    ratio: float | None = None  # fast max|err| / bound: <= 1 passes
    ok: bool = True
    note: str = ""


@dataclass
class PromptResult:
    index: int
    source: str
    question: str
    frames: int
    tokens: int
    fast_ids: list[int]
    reference_ids: list[int]
    oracle_ids: list[int]

    @property
    def match(self) -> bool:
        return self.fast_ids in (self.reference_ids, self.oracle_ids)


@dataclass
class ParityResult:
    config: str
    dtype: str
    device: str
    backend: str
    oracle_dtype: str
    stages: list[StageResult] = field(default_factory=list)
    prompts: list[PromptResult] = field(default_factory=list)

    @property
    def failed_stages(self) -> list[str]:
        return [s.stage for s in self.stages if not s.ok]

    @property
    def tokens_ok(self) -> bool:
        return all(p.match for p in self.prompts)

    @property
    def ok(self) -> bool:
        return not self.failed_stages and self.tokens_ok

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for p, row in zip(self.prompts, d["prompts"], strict=True):
            row["match"] = p.match
        d.update(ok=self.ok, failed_stages=self.failed_stages, tokens_ok=self.tokens_ok)
        return d

    def format_table(self) -> str:
        """The report `haic parity` prints."""
        lines = [
            f"parity: {self.config}, fast {self.dtype} on {self.device} (backend {self.backend}) "
            f"vs reference {self.dtype} vs oracle {self.oracle_dtype}",
            f"  {'stage':<16} {'shape':<18} {'fast max rel':>12} {'fast mean rel':>13} "
            f"{'ref max rel':>11} {'err/bound':>9}  verdict",
        ]
        for s in self.stages:
            shape = "x".join(map(str, s.shape)) if s.shape else "-"
            if s.fast_max_rel is None:
                lines.append(f"  {s.stage:<16} {shape:<18} {'-':>12} {'-':>13} {'-':>11} "
                             f"{'-':>9}  {s.note}")  # fmt: skip
                continue
            lines.append(
                f"  {s.stage:<16} {shape:<18} {s.fast_max_rel:12.3e} {s.fast_mean_rel:13.3e} "
                f"{s.ref_max_rel:11.3e} {s.ratio:9.3f}  {'ok' if s.ok else 'FAIL'}"
                + (f" ({s.note})" if s.note else "")
            )
        lines.append("greedy tokens (fast must equal the reference's or the oracle's):")
        for p in self.prompts:
            verdict = "match" if p.match else "MISMATCH"
            lines.append(
                f"  prompt {p.index}: {p.source}, {p.frames} frames, {p.tokens} tokens, "
                f"{p.question!r}: fast {p.fast_ids} ref {p.reference_ids} "
                f"oracle {p.oracle_ids}  {verdict}"
            )
        n_match = sum(p.match for p in self.prompts)
        bad = self.failed_stages
        lines.append(
            f"result: {'PASS' if self.ok else 'FAIL'} - "
            f"{len(self.stages) - len(bad)}/{len(self.stages)} stages within the rule "
            f"(fast err <= 2x reference err + atol), tokens match on "
            f"{n_match}/{len(self.prompts)} prompts"
            + (f"; failed: {', '.join(bad)}" if bad else "")
        )
        return "\n".join(lines)


# ---- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityInput:
    frames: torch.Tensor  # uint8 [F, H, W, 3]
    question: str
    source: str


def make_inputs(
    config, num_prompts: int, *, video: str | Path | None = None, seed: int = 0
) -> list[ParityInput]:
    """``num_prompts`` (frames, question) pairs: ``video`` decoded with the config's policy
    first (if given and readable), then seeded random frames with 1..max_frames frames (one
    for the image variant) and other questions."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    size = config.vision.image_size
    most = 1 if config.vision_expert else min(config.max_frames, 6)
    out: list[ParityInput] = []
    if video is not None:
        from .video.pyav import load_video

        frames, _ = load_video(video, policy=config.template, max_frames=most, size=size)
        out.append(ParityInput(frames.contiguous(), QUESTIONS[0], Path(video).name))
    gen = torch.Generator().manual_seed(seed)
    while len(out) < num_prompts:
        i = len(out)
        n = 1 if most == 1 else 1 + (i * 2 + 1) % most
        frames = torch.randint(0, 256, (n, size, size, 3), generator=gen, dtype=torch.uint8)
        out.append(ParityInput(frames, QUESTIONS[i % len(QUESTIONS)], f"random frames {i}"))
    return out


# ---- models --------------------------------------------------------------------------------


def default_fast_factory(backend: str) -> Callable[[nn.Module], nn.Module]:
    def make(reference: nn.Module) -> nn.Module:
        from .models.cogvlm2.fast_model import FastCogVLM2

        return FastCogVLM2.from_reference(reference, backend=backend)

    return make


@dataclass
class ParityModels:
    reference: nn.Module
    fast: nn.Module
    oracle: nn.Module


def build_models(
    config,
    *,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    oracle_dtype: torch.dtype = torch.float64,
    oracle_device: torch.device | None = None,
    fast_factory: Callable[[nn.Module], nn.Module] | None = None,
) -> ParityModels:
    """The three models from one state dict: seeded random (``seed``) or ``checkpoint``."""
    from .models.cogvlm2 import CogVLM2ForCausalLM, init_random_weights

    if checkpoint is not None:
        from .models.cogvlm2.weights import load_pretrained

        master = load_pretrained(checkpoint, dtype=torch.float32, device="cpu", config=config)
    else:
        master = init_random_weights(CogVLM2ForCausalLM(config), seed=seed)
    oracle = copy.deepcopy(master).to(device=oracle_device or device, dtype=oracle_dtype).eval()
    reference = master.to(device=device, dtype=dtype).eval()
    fast = (fast_factory or default_fast_factory(backend))(reference)
    return ParityModels(reference=reference, fast=fast.eval(), oracle=oracle)


# ---- running -------------------------------------------------------------------------------


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return getattr(out, "logits", None) if not isinstance(out, (tuple, list)) else None


def capture(
    model: nn.Module, names: Sequence[str], call: Callable[[], Any]
) -> tuple[dict[str, torch.Tensor], Any]:
    """Run ``call()`` with forward hooks on ``model``'s modules ``names``; returns (the first
    output of each module that ran, kept on the CPU, and ``call()``'s result). A module called
    more than once keeps its first output."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None and name not in seen:
                seen[name] = t.detach().to("cpu", copy=True)

        return hook

    try:
        for name in names:
            if name in modules:
                handles.append(modules[name].register_forward_hook(hook_for(name)))
        result = call()
    finally:
        for h in handles:
            h.remove()
    return seen, result


def _generate(model: nn.Module, ids, types, frames, max_new_tokens: int, eos: int) -> list[int]:
    from .models.cogvlm2 import greedy_generate

    gen = getattr(model, "generate", None)
    if callable(gen):
        out = gen(ids, types, frames, max_new_tokens=max_new_tokens, eos_token_id=eos)
    else:
        out = greedy_generate(
            model, ids, types, frames, max_new_tokens=max_new_tokens, eos_token_id=eos
        )
    return out[0].tolist()


def _rel(err: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    if not err.numel():
        return 0.0, 0.0
    max_rel = (err.max() / ref.abs().max().clamp_min(1e-30)).item()
    mean_rel = (err.mean() / ref.abs().mean().clamp_min(1e-30)).item()
    return max_rel, mean_rel


def _merge(stage: StageResult, fast, ref, oracle, atol: float | None) -> None:
    """Fold one prompt's tensors into ``stage`` (keeping the worst case)."""
    if fast.shape != oracle.shape or ref.shape != oracle.shape:
        stage.ok = False
        stage.note = f"shape {tuple(fast.shape)} vs reference {tuple(oracle.shape)}"
        return
    rep = parity(fast, ref, oracle, atol=atol)
    o = oracle.double()
    if not rep.ok and rep.bound == 0.0:  # non-finite fast output
        stage.ok = False
        stage.note = "non-finite values in the fast output"
        stage.fast_max_rel = stage.fast_mean_rel = stage.ref_max_rel = stage.ratio = float("inf")
        return
    f_max, f_mean = _rel((fast.double() - o).abs(), o)
    r_max, _ = _rel((ref.double() - o).abs(), o)
    ratio = rep.fast_max_err / rep.bound
    if stage.shape is None or oracle.numel() > math.prod(stage.shape):
        stage.shape = tuple(oracle.shape)  # the largest of the prompts
    stage.fast_max_rel = max(stage.fast_max_rel or 0.0, f_max)
    stage.fast_mean_rel = max(stage.fast_mean_rel or 0.0, f_mean)
    stage.ref_max_rel = max(stage.ref_max_rel or 0.0, r_max)
    stage.ratio = max(stage.ratio or 0.0, ratio)
    stage.ok = stage.ok and rep.ok


def compare(
    models: ParityModels,
    config,
    inputs: Sequence[ParityInput],
    *,
    tokenizer=None,
    max_new_tokens: int = 4,
    atol: float | None = None,
) -> ParityResult:
    """Stage-by-stage errors and greedy tokens of ``models`` over ``inputs``."""
    from .models.cogvlm2 import ByteTokenizer, CogVLM2ForCausalLM, build_prompt, normalize_frames

    tokenizer = tokenizer or ByteTokenizer()
    ref_p = next(models.reference.parameters())
    ora_p = next(models.oracle.parameters())
    stages = stage_modules(config)
    names = [m for _, m in stages]
    result = ParityResult(
        config=config.name,
        dtype=str(ref_p.dtype).removeprefix("torch."),
        device=str(ref_p.device),
        backend=str(getattr(models.fast, "backend", "auto")),
        oracle_dtype=str(ora_p.dtype).removeprefix("torch."),
        stages=[StageResult(label, mod, None) for label, mod in stages],
    )
    result.stages.append(StageResult("logits", "lm_head (output)", None))
    seen_fast: set[str] = set()
    for i, item in enumerate(inputs):
        prompt = build_prompt(tokenizer, item.question, item.frames.shape[0], config)
        ids, types = prompt.input_ids.unsqueeze(0), prompt.token_type_ids.unsqueeze(0)
        runs = {}
        for key, model, p in (
            ("oracle", models.oracle, ora_p),
            ("reference", models.reference, ref_p),
            ("fast", models.fast, ref_p),
        ):
            dev_ids, dev_types = ids.to(p.device), types.to(p.device)
            if key == "fast" and not isinstance(model, CogVLM2ForCausalLM):
                frames = item.frames.to(p.device)  # uint8: normalized inside patch embed
            else:
                frames = normalize_frames(item.frames.to(p.device)).to(p.dtype)
            with torch.inference_mode():
                args = (dev_ids, dev_types, frames)
                caught, out = capture(model, names, lambda m=model, a=args: m(*a))
                caught["logits"] = out.logits.detach().cpu()
                patch = "model.vision.patch_embedding"
                if patch not in caught and callable(getattr(model, "embed_patches", None)):
                    # A fused patch embed bypasses the module: ask the stage entry point.
                    caught[patch] = model.embed_patches(frames).detach().cpu()
                tokens = _generate(
                    model, dev_ids, dev_types, frames, max_new_tokens, config.eos_token_id
                )
            runs[key] = (caught, tokens)
        for stage in result.stages:
            key = "logits" if stage.stage == "logits" else stage.module
            got = [runs[k][0].get(key) for k in ("fast", "reference", "oracle")]
            if got[0] is not None:
                seen_fast.add(key)
            if got[1] is None or got[2] is None:
                stage.note = "not called by the reference"
                continue
            if got[0] is None:
                continue
            _merge(stage, got[0], got[1], got[2], atol)
        result.prompts.append(
            PromptResult(
                index=i,
                source=item.source,
                question=item.question,
                frames=int(item.frames.shape[0]),
                tokens=len(prompt),
                fast_ids=runs["fast"][1],
                reference_ids=runs["reference"][1],
                oracle_ids=runs["oracle"][1],
            )
        )
    for stage in result.stages:
        key = "logits" if stage.stage == "logits" else stage.module
        if key not in seen_fast and not stage.note:
            stage.note = "not observed (the fast model does not call this module)"
    return result


def run_parity(
    config,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    num_prompts: int = 3,
    video: str | Path | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    max_new_tokens: int = 4,
    oracle_dtype: torch.dtype = torch.float64,
    oracle_device: torch.device | str | None = None,
    tokenizer=None,
    fast_factory: Callable[[nn.Module], nn.Module] | None = None,
) -> ParityResult:
    """Build the three models and `compare` them on ``num_prompts`` inputs."""
    device = torch.device(device)
    models = build_models(
        config,
        dtype=dtype,
        device=device,
        seed=seed,
        checkpoint=checkpoint,
        backend=backend,
        oracle_dtype=oracle_dtype,
        oracle_device=torch.device(oracle_device) if oracle_device is not None else None,
        fast_factory=fast_factory,
    )
    inputs = make_inputs(config, num_prompts, video=video, seed=seed)
    result = compare(
        models,
        config,
        inputs,
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        atol=DEFAULT_ATOL.get(dtype),  # keyed by the compute dtype: the logits are fp32
    )
    result.backend = backend
    return result


def write_json(results: Sequence[ParityResult], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"ok": all(r.ok for r in results), "runs": [r.to_dict() for r in results]}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


# ---- `haic parity` -------------------------------------------------------------------------


def parity_command(args) -> int:
    """`haic parity`: one run per variant; prints the tables; 0 when every run passes, 1 when
    a stage breaks the rule or tokens differ, 2 for a usage error."""
    from .demo import _checkpoint_config, _load_tokenizer, bundled_clip, resolve_device_dtype
    from .models.cogvlm2 import VARIANTS, get_config

    device, dtype = resolve_device_dtype(args)
    if args.prompts < 1 or args.max_new_tokens < 1:
        raise SystemExit("haic parity: --prompts and --max-new-tokens must be at least 1")
    if args.checkpoint is not None:
        if args.variant is not None:
            raise SystemExit("haic parity: --variant comes from the checkpoint's config.json")
        configs = [_checkpoint_config(args.checkpoint)]
    else:
        if args.config == "full" and device.type == "cpu":
            raise SystemExit("haic parity: --config full needs a GPU")
        variants = VARIANTS if args.variant in (None, "all") else (args.variant,)
        configs = [get_config(args.config, v) for v in variants]
    video = None
    if not args.no_video:
        from . import backends

        if backends.get("pyav").usable:
            video = args.video or bundled_clip()
    results = []
    for config in configs:
        try:
            result = run_parity(
                config,
                dtype=dtype,
                device=device,
                num_prompts=args.prompts,
                video=video,
                seed=args.seed,
                checkpoint=args.checkpoint,
                backend=args.backend,
                max_new_tokens=args.max_new_tokens,
                oracle_dtype=getattr(torch, args.oracle_dtype),
                oracle_device=args.oracle_device,
                tokenizer=_load_tokenizer(args.checkpoint, config),
            )
        except (ValueError, RuntimeError, OSError) as e:
            print(f"haic parity: error ({config.name}): {type(e).__name__}: {e}")
            return 2
        print(result.format_table() + "\n")
        results.append(result)
    if args.json is not None:
        print(f"wrote {write_json(results, args.json)}")
    bad = [r.config for r in results if not r.ok]
    print(f"haic parity: {'FAIL: ' + ', '.join(bad) if bad else 'all runs pass'}")
    return 1 if bad else 0


def add_parity_arguments(p) -> None:
    """The options of `haic parity`."""
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "full"])
    p.add_argument(
        "--variant",
        default=None,
        choices=["video-chat", "video-base", "image", "all"],
        help="default: all (random weights) or the checkpoint's",
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="HF-format checkpoint directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--backend", default="auto", help="kernel backend of the fast model")
    p.add_argument("--prompts", type=int, default=3, help="prompts/videos to compare tokens on")
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and frames")
    p.add_argument("--video", type=Path, default=None, help="first video (default: bundled clip)")
    p.add_argument("--no-video", action="store_true", help="synthetic frames only")
    p.add_argument(
        "--oracle-dtype", default="float64", choices=["float64", "float32"],
        help="precision of the oracle copy (float32 for the full config: fp64 would not fit)",
    )  # fmt: skip
    p.add_argument("--oracle-device", default=None, help="device of the oracle (default: same)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
