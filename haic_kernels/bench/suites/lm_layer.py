"""lm_layer: one CogVLM2 LM decoder layer, fast modules vs the reference (SDPA), 1.6k / 8k tokens.

The baseline is the reference `language.CogVLMDecoderLayer` (boolean-mask expert routing,
nn.Linear, rotate-half in PyTorch, F.scaled_dot_product_attention); "fast auto" is
`fast.FastCogVLMDecoderLayer.from_reference` on the same parameters (expert_linear, rope_qkv,
attention; backends chosen by "auto"), "fast triton" the same with every backend "triton".
The issue asks for >= 1.3x at 1.6k and 8k tokens. Both get the precomputed per-forward inputs a
model hands every layer (vision mask, position ids; the fast layer also its Routing).
Work per call: flops = 2*T*(params of one expert set) + causal attention 2*T^2*Hq*D; bytes =
the weights read once (both experts for the image variant) + hidden states in and out.
Sizes: tiny = the tiny config (fp32, CPU, 2 frames); full = the full config, bf16, prompts of
24 frames (1624 tokens) and 121 frames (8148 tokens), image (vision expert) and video variants.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import probe

SUITE = "lm_layer"

# (name, size preset, variant, frames, tokens per frame incl. boi/eoi, tail text, dtype)
SHAPES: dict[str, list[tuple[str, str, str, int, int, int, torch.dtype]]] = {
    "tiny": [("tiny-image-t48", "tiny", "image", 2, 18, 10, torch.float32)],
    "full": [
        (f"{variant}-t{frames * 67 + tail}", "full", variant, frames, 66, tail, torch.bfloat16)
        for variant in ("image", "video-chat")
        for frames, tail in ((24, 16), (121, 41))
    ],
}


def token_types(frames: int, per_frame: int, tail: int, device: torch.device) -> torch.Tensor:
    """[1, T]: bos, per frame its vision tokens and one frame-index text token, then text."""
    t = frames * (per_frame + 1) + tail
    tt = torch.zeros(1, t, dtype=torch.long, device=device)
    for f in range(frames):
        start = 1 + f * (per_frame + 1)
        tt[0, start : start + per_frame] = 1
    return tt


class _Layers:
    """(reference layer, fp32 reference copy) per (preset, variant, dtype, device), made once."""

    _cache: ClassVar[dict[Any, tuple[torch.nn.Module, torch.nn.Module]]] = {}

    @classmethod
    def get(cls, preset: str, variant: str, dtype: torch.dtype, device: torch.device):
        key = (preset, variant, dtype, str(device))
        if key not in cls._cache:
            from haic_kernels.models.cogvlm2.config import get_config
            from haic_kernels.models.cogvlm2.language import CogVLMDecoderLayer

            cfg = get_config(preset, variant)
            torch.manual_seed(0)
            with torch.device(device):
                layer = CogVLMDecoderLayer(cfg, attn_impl="sdpa")
            with torch.no_grad():
                for name, p in layer.named_parameters():
                    if "layernorm" in name:
                        p.fill_(1.0)
                    else:
                        p.normal_(0.0, 0.02)
            layer.requires_grad_(False)
            ref32 = copy.deepcopy(layer).float()
            cls._cache[key] = (layer.to(dtype), ref32)
        return cls._cache[key]


def counts(preset: str, variant: str, t: int, dtype: torch.dtype) -> tuple[int, int]:
    from haic_kernels.models.cogvlm2.config import get_config

    c = get_config(preset, variant).text
    per_expert = c.hidden_size * c.qkv_size + c.q_size * c.hidden_size
    per_expert += 3 * c.hidden_size * c.intermediate_size
    experts = 2 if variant == "image" else 1
    itemsize = torch.empty((), dtype=dtype).element_size()
    flops = 2 * t * per_expert + 2 * t * t * c.num_heads * c.head_dim
    return flops, (experts * per_expert + 2 * t * c.hidden_size) * itemsize


def _factory(preset, variant, frames, per_frame, tail, dtype) -> Callable[..., tuple[Any, ...]]:
    def make_inputs(device: torch.device) -> tuple[Any, ...]:
        from haic_kernels.models.cogvlm2.config import get_config
        from haic_kernels.models.cogvlm2.fast import TokenBatch
        from haic_kernels.tokens import vision_expert_mask

        cfg = get_config(preset, variant)
        tt = token_types(frames, per_frame, tail, device)
        x = torch.randn(1, tt.shape[1], cfg.text.hidden_size, device=device).to(dtype)
        # The fast layer's batch metadata (positions, routing), built once outside the timing.
        batch = TokenBatch.from_inputs(torch.zeros_like(tt), tt, config=cfg)
        mask = vision_expert_mask(tt) if cfg.vision_expert else None
        return x, mask, batch.position_ids[None], batch

    return make_inputs


def _make_check(label: str, preset: str, variant: str, dtype: torch.dtype, device: torch.device):
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        x, mask, pos, _ = inputs
        layer, ref32 = _Layers.get(preset, variant, dtype, device)
        with torch.no_grad():
            same = layer(x, mask, pos)[0]
            ref = ref32(x.float(), mask, pos)[0]
        if not isinstance(out, torch.Tensor) or out.shape != ref.shape or out.dtype != dtype:
            raise AssertionError(f"{label}: expected {tuple(ref.shape)} {dtype}")
        assert_parity(out, same, ref, what=label)

    return check


def cases(size: str, device: torch.device) -> list[Case]:
    """The reference layer (baseline), then the fast layer with auto / triton backends."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    out: list[Case] = []
    for name, preset, variant, frames, per_frame, tail, dtype in SHAPES[size]:
        t = frames * (per_frame + 1) + tail
        flops, nbytes = counts(preset, variant, t, dtype)
        common = dict(
            suite=SUITE,
            name=name,
            shapes={"T": t, "frames": frames, "vision_expert": int(variant == "image")},
            dtype=str(dtype).removeprefix("torch."),
            flops=flops,
            bytes=nbytes,
            make_inputs=_factory(preset, variant, frames, per_frame, tail, dtype),
        )
        key = (preset, variant, dtype, device)

        def ref_fn(x, mask, pos, batch, key=key):
            with torch.no_grad():
                return _Layers.get(*key)[0](x, mask, pos)[0]

        out.append(Case(backend="reference sdpa", fn=ref_fn, baseline=True, **common))
        for label, backend in (("fast auto", "auto"), ("fast triton", "triton")):
            fn = _fast_fn(key, backend)
            skip = None
            if backend == "triton":
                skip = probe((SUITE, backend, str(device)), lambda d=device: _probe_triton(d))
            out.append(Case(backend=label, fn=fn, skip_reason=skip,
                            check=_make_check(f"{SUITE} {label} {name}", preset, variant, dtype,
                                              device), **common))  # fmt: skip
    return out


_fast_layers: dict[Any, torch.nn.Module] = {}


def _fast_fn(key: tuple[Any, ...], backend: str) -> Callable[..., torch.Tensor]:
    def fn(x, mask, pos, batch):
        from haic_kernels.models.cogvlm2.config import get_config
        from haic_kernels.models.cogvlm2.fast.layers import FastDecoderLayer

        fkey = (*key, backend)
        if fkey not in _fast_layers:
            cfg = get_config(key[0], key[1])
            _fast_layers[fkey] = FastDecoderLayer(_Layers.get(*key)[0], cfg, backend, backend)
        with torch.no_grad():
            return _fast_layers[fkey](x[0], batch).x[None]

    return fn


def _probe_triton(device: torch.device) -> None:
    from haic_kernels.ops.expert_linear import Routing, expert_linear

    x = torch.randn(4, 16, device=device)
    r = Routing.from_expert_ids(torch.zeros(4, dtype=torch.long, device=device), 1)
    expert_linear(x, [torch.randn(16, 16, device=device)], None, r, backend="triton")
