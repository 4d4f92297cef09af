"""Fast LM modules (models/cogvlm2/fast.py) against the reference modules from one state dict.

Tiny config, fp32 on CPU: prefill, a second multi-token chunk and decode steps through the KV
cache (positions from `KVCache.continue_positions`), for the image variant (vision expert) and
the video variant (language expert only). The parity rule: the fast layer and the fp32
reference layer against the same reference layer in fp64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from haic_kernels.backends import BackendUnavailable
from haic_kernels.models.cogvlm2 import language as L
from haic_kernels.models.cogvlm2.config import get_config
from haic_kernels.models.cogvlm2.fast import (
    FastCogVLMDecoderLayer,
    FastVisionExpertAttention,
    FastVisionExpertMLP,
    routing_from_mask,
)
from haic_kernels.ops.expert_linear import Routing
from haic_kernels.testing import assert_parity
from tests._triton import triton_on_cpu

HAS_CUDA = torch.cuda.is_available()
VARIANTS = ["image", "video-chat"]


def _layer(variant: str, device: str = "cpu") -> tuple[L.CogVLMDecoderLayer, object]:
    cfg = get_config("tiny", variant)
    ref = L.CogVLMDecoderLayer(cfg).to(device)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "layernorm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.04)
    return ref, cfg


def _token_types(b: int, s: int) -> torch.Tensor:
    # text, a frame-like vision run, text, and in row 1 a vision run reaching the chunk's end
    tt = torch.zeros(b, s, dtype=torch.long)
    tt[:, 2 : 2 + s // 2] = 1
    if b > 1:
        tt[1, s - 4 :] = 1
    return tt


def test_state_dict_names_and_shapes_match_both_ways(seed):
    for variant in VARIANTS:
        ref, cfg = _layer(variant)
        fast = FastCogVLMDecoderLayer(cfg)
        ref_sd, fast_sd = ref.state_dict(), fast.state_dict()
        assert list(ref_sd) == list(fast_sd)
        assert all(ref_sd[k].shape == fast_sd[k].shape for k in ref_sd)
        fast.load_state_dict(ref_sd)  # strict, both ways
        other = L.CogVLMDecoderLayer(cfg)
        other.load_state_dict(fast.state_dict())
        assert all(torch.equal(other.state_dict()[k], ref_sd[k]) for k in ref_sd)
        for sub_ref, sub_fast in (
            (ref.self_attn, FastVisionExpertAttention(cfg)),
            (ref.mlp, FastVisionExpertMLP(cfg)),
        ):
            sub_fast.load_state_dict(sub_ref.state_dict())
            assert list(sub_fast.state_dict()) == list(sub_ref.state_dict())


def test_from_reference_shares_parameters(seed):
    ref, _ = _layer("image")
    fast = FastCogVLMDecoderLayer.from_reference(ref)
    ref_params = dict(ref.named_parameters())
    fast_params = dict(fast.named_parameters())
    assert list(ref_params) == list(fast_params)
    assert all(fast_params[k] is ref_params[k] for k in ref_params)


def _run_chunks(layer, cfg, chunks, fast: bool, routing_reuse: bool = False):
    """Run token-type chunks through ``layer`` with a KVCache between them; outputs per chunk."""
    outs, past, cache = [], None, None
    g = torch.Generator().manual_seed(1234)
    dtype = next(layer.parameters()).dtype
    for tt in chunks:
        b, s = tt.shape
        x = torch.randn(b, s, cfg.text.hidden_size, generator=g, dtype=torch.float64)
        x = x.to(device=tt.device, dtype=dtype)
        pos = L.build_position_ids(tt) if cache is None else cache.continue_positions(tt)
        mask = L.vision_expert_mask(tt) if cfg.vision_expert else None
        kwargs = {}
        if fast and routing_reuse:
            kwargs["routing"] = (
                Routing.from_token_types(tt) if cfg.vision_expert
                else Routing.from_token_types(tt, num_experts=1)
            )  # fmt: skip
        with torch.no_grad():
            y, (k, v) = layer(x, mask, pos, past, **kwargs)
        assert k.shape == (b, cfg.text.num_kv_heads, (past[0].shape[2] if past else 0) + s,
                           cfg.text.head_dim)  # fmt: skip
        outs.extend([y, k, v])
        past = (k, v)
        cache = L.KVCache(keys=[k], values=[v], last_position=pos[:, -1],
                          last_token_type=tt[:, -1])  # fmt: skip
    return outs


def _chunks(b: int = 2) -> list[torch.Tensor]:
    first = _token_types(b, 29)
    first[:, -1] = 0  # a vision run may not be split across calls (KVCache rule)
    second = torch.zeros(b, 7, dtype=torch.long)
    second[:, 1:5] = 1  # a small frame inside a later chunk: multi-token causal with a cache
    decode = [torch.zeros(b, 1, dtype=torch.long) for _ in range(3)]
    return [first, second, *decode]


def _expert_backends() -> list[str]:
    return ["torch", "triton"] if triton_on_cpu() else ["torch"]


@pytest.mark.parametrize("backend", _expert_backends())
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_layer_matches_reference(seed, variant, backend):
    ref, cfg = _layer(variant)
    ref64 = copy.deepcopy(ref).double()
    fast = FastCogVLMDecoderLayer(cfg, backend=backend)
    fast.load_state_dict(ref.state_dict())
    chunks = _chunks()
    got = _run_chunks(fast, cfg, chunks, fast=True, routing_reuse=backend == "torch")
    same = _run_chunks(ref, cfg, chunks, fast=False)
    want = _run_chunks(ref64, cfg, chunks, fast=False)
    names = [f"{w}[{i // 3}]" for i in range(len(got)) for w in ("out", "k", "v")][: len(got)]
    for name, a, b, c in zip(names, got, same, want):
        assert_parity(a, b, c, what=f"{variant} {backend} {name} seed={seed}")


def test_attention_and_mlp_modules_alone(seed):
    ref, cfg = _layer("image")
    attn = FastVisionExpertAttention.from_reference(ref.self_attn, backend="torch")
    mlp = FastVisionExpertMLP.from_reference(ref.mlp, backend="torch")
    tt = _token_types(2, 13)
    x = torch.randn(2, 13, cfg.text.hidden_size)
    mask, pos = L.vision_expert_mask(tt), L.build_position_ids(tt)
    with torch.no_grad():
        a_ref, (k_ref, v_ref) = ref.self_attn(x, mask, pos)
        a, (k, v) = attn(x, mask, pos)
        torch.testing.assert_close(a, a_ref, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, v_ref)
        torch.testing.assert_close(mlp(x, mask), ref.mlp(x, mask), atol=2e-5, rtol=1e-4)
        # mask None on the image layer: every token language, as the reference's `routed`
        torch.testing.assert_close(mlp(x, None), ref.mlp(x, None), atol=2e-5, rtol=1e-4)


def test_attention_backend_triton_if_available(seed):
    ref, cfg = _layer("image")
    fast = FastCogVLMDecoderLayer.from_reference(ref, backend="torch", attn_backend="triton")
    tt = _token_types(1, 17)
    x = torch.randn(1, 17, cfg.text.hidden_size)
    mask, pos = L.vision_expert_mask(tt), L.build_position_ids(tt)
    try:
        with torch.no_grad():
            y, _ = fast(x, mask, pos)
    except (BackendUnavailable, ValueError) as exc:
        pytest.skip(f"attention backend 'triton' cannot run here: {exc}")
    with torch.no_grad():
        torch.testing.assert_close(y, ref(x, mask, pos)[0], atol=1e-4, rtol=1e-4)


def test_routing_errors(seed):
    ref, cfg = _layer("video-chat")
    fast = FastCogVLMDecoderLayer.from_reference(ref, backend="torch")
    tt = _token_types(1, 9)
    x = torch.randn(1, 9, cfg.text.hidden_size)
    pos = L.build_position_ids(tt)
    with torch.no_grad(), pytest.raises(ValueError, match="routing: built for 2 experts"):
        fast(x, None, pos, routing=Routing.from_token_types(tt))
    with torch.no_grad(), pytest.raises(ValueError, match="route: built for 5 tokens"):
        fast(x, None, pos, routing=routing_from_mask(None, 5, x.device))
    with torch.no_grad(), pytest.raises(TypeError, match="routing"):
        fast(x, None, pos, routing="all-language")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_fast_layer_bf16(seed, monkeypatch, variant):
    monkeypatch.setenv("HAIC_TRUST_UNVERIFIED", "1")
    cfg = get_config("small", variant)
    ref = L.CogVLMDecoderLayer(cfg).cuda()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "layernorm" in name
                    else 0.02 * torch.randn_like(p))  # fmt: skip
    ref64 = copy.deepcopy(ref).double()
    ref16 = copy.deepcopy(ref).bfloat16()
    fast = FastCogVLMDecoderLayer.from_reference(ref16)
    chunks = [c.cuda() for c in _chunks()]
    chunks[0] = torch.cat([chunks[0]] * 40, dim=1)  # ~1.2k tokens of prefill
    chunks[0][:, -1] = 0
    got = _run_chunks(fast, cfg, chunks, fast=True, routing_reuse=True)
    same = _run_chunks(ref16, cfg, chunks, fast=False)
    want = _run_chunks(ref64, cfg, chunks, fast=False)
    for i, (a, b, c) in enumerate(zip(got, same, want)):
        assert_parity(a, b, c, what=f"gpu {variant} output {i} seed={seed}")
