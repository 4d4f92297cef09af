"""The fast LM decoder layer (models/cogvlm2/fast/layers.py) against the reference layer.

Tiny config, fp32 on CPU, one state dict: a prefill over packed rows of different lengths
(``forward`` on a `TokenBatch`) against the reference layer run on each row alone, then decode
steps through the static cache (``decode``) against the reference continuing from its KV cache,
for the image variant (vision expert) and the video variant (language expert only). The parity
rule: the fast layer and the fp32 reference layer against the same reference layer in fp64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from haic_kernels.models.cogvlm2 import TokenBatch, vision_expert_mask
from haic_kernels.models.cogvlm2 import language as L
from haic_kernels.models.cogvlm2.config import get_config
from haic_kernels.models.cogvlm2.fast.cache import StaticKVCache
from haic_kernels.models.cogvlm2.fast.layers import FastDecoderLayer
from haic_kernels.testing import assert_parity
from tests._triton import triton_on_cpu

VARIANTS = ["image", "video-chat"]
STEPS = 3


def _layer(
    variant: str, device: str = "cpu", **overrides: object
) -> tuple[L.CogVLMDecoderLayer, object]:
    cfg = get_config("tiny", variant, **overrides)
    ref = L.CogVLMDecoderLayer(cfg).to(device)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "layernorm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.04)
    return ref, cfg


def _rows(lengths: list[int], device: str = "cpu") -> list[torch.Tensor]:
    """Token types per row: text, a frame-like vision run, text; row 1 also ends in a vision run
    (its last token is still a language-expert token: it has no next token)."""
    rows = []
    for b, s in enumerate(lengths):
        t = torch.zeros(s, dtype=torch.long, device=device)
        t[2 : 2 + s // 2] = 1
        if b == 1:
            t[s - 4 :] = 1
        rows.append(t)
    return rows


def _run_reference(layer, rows, xs, steps):
    """Per row: (prefill out [S, D], k, v [S, Hkv, Dh], then each step's out [D])."""
    vision = isinstance(getattr(layer.self_attn, "vision_expert_dense", None), torch.nn.Module)
    outs = []
    for tt, x, step_x in zip(rows, *xs):
        mask = vision_expert_mask(tt[None]) if vision else None
        pos = L.build_position_ids(tt[None])
        y, (k, v) = layer(x[None], mask, pos)
        got = [y[0], k[0].transpose(0, 1), v[0].transpose(0, 1)]
        cache = L.KVCache([k], [v], pos[:, -1], tt[None, -1])
        for i in range(steps):
            lang = torch.zeros(1, 1, dtype=torch.long, device=tt.device)
            p = cache.continue_positions(lang)
            y, (k, v) = layer(step_x[i][None, None], None, p, (cache.keys[0], cache.values[0]))
            cache = L.KVCache([k], [v], p[:, -1], lang[:, -1])
            got.append(y[0, 0])
        outs.append(got)
    return outs


def _run_fast(layer, cfg, rows, xs, steps):
    batch = TokenBatch.from_inputs([torch.zeros_like(t) for t in rows], rows, config=cfg)
    with torch.no_grad():
        out = layer(torch.cat(xs[0]), batch)
        cache = StaticKVCache()
        cache.begin(steps)
        cache.store(0, out.k, out.v, batch)
        pos = batch.position_ids[batch.last_index] + 1
        steps_out = []
        for i in range(steps):
            # decode leaves the residual add to the next norm (`Pending`): done here as it would
            o = layer.decode(torch.stack([s[i] for s in xs[1]]), pos, cache.layers[0])
            steps_out.append(o.residual + o.out)
            cache.advance()
            pos = pos + 1
    outs = []
    for b, (a, z) in enumerate(zip(batch.cu_seqlens[:-1].tolist(), batch.cu_seqlens[1:].tolist())):
        outs.append([out.x[a:z], out.k[a:z], out.v[a:z], *[s[b] for s in steps_out]])
    return outs


def _inputs(cfg, lengths, dtype, steps=STEPS):
    g = torch.Generator().manual_seed(1234)
    d = cfg.text.hidden_size
    xs = [torch.randn(s, d, generator=g, dtype=torch.float64).to(dtype) for s in lengths]
    step_xs = [torch.randn(steps, d, generator=g, dtype=torch.float64).to(dtype) for _ in lengths]
    return xs, step_xs


def test_state_dict_names_and_shared_parameters():
    for variant in VARIANTS:
        ref, cfg = _layer(variant)
        fast = FastDecoderLayer(ref, cfg, "torch", "torch")
        assert list(fast.state_dict()) == list(ref.state_dict())
        ref_params = dict(ref.named_parameters())
        assert all(p is ref_params[k] for k, p in fast.named_parameters())


@pytest.mark.parametrize("backend", ["torch", "triton"] if triton_on_cpu() else ["torch"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_layer_matches_reference(seed, variant, backend):
    ref, cfg = _layer(variant)
    ref64 = copy.deepcopy(ref).double()
    fast = FastDecoderLayer(ref, cfg, backend, "torch")
    lengths = [29, 17, 8]
    rows = _rows(lengths)
    xs = _inputs(cfg, lengths, torch.float32)
    xs64 = tuple([x.double() for x in part] for part in xs)
    got = _run_fast(fast, cfg, rows, xs, STEPS)
    with torch.no_grad():
        same = _run_reference(ref, rows, xs, STEPS)
        want = _run_reference(ref64, rows, xs64, STEPS)
    names = ["out", "k", "v", *[f"step {i}" for i in range(STEPS)]]
    for b in range(len(lengths)):
        for name, a, s, w in zip(names, got[b], same[b], want[b]):
            assert_parity(a, s, w, what=f"{variant} {backend} row {b} {name} seed={seed}")


@torch.no_grad()
def test_fast_layer_follows_the_configs_rope_precision_in_bf16(seed):
    """bf16 keys after RoPE equal the reference layer's bit for bit with the config's
    ``rope_precision``, both "release" (the release's bf16 angles) and "fp32"; at positions up to
    1199 the two precisions give visibly different keys, so a fast layer that ignored the config
    could not pass."""
    s = 1200
    types = torch.zeros(s, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    keys = {}
    for precision in ("release", "fp32"):
        ref, cfg = _layer("video-chat", text={"rope_precision": precision})
        ref = ref.to(torch.bfloat16)
        x = torch.randn(s, cfg.text.hidden_size, generator=g).to(torch.bfloat16)
        batch = TokenBatch.from_inputs([torch.zeros_like(types)], [types], config=cfg)
        out = FastDecoderLayer(ref, cfg, "torch", "torch")(x, batch)
        _, (k, _v) = ref(x[None], None, L.build_position_ids(types[None]))
        assert torch.equal(out.k, k[0].transpose(0, 1)), precision
        other = get_config(
            "tiny",
            "video-chat",
            text={"rope_precision": "fp32" if precision == "release" else "release"},
        )
        keys[precision] = (out.k, FastDecoderLayer(ref, other, "torch", "torch")(x, batch).k)
    for precision, (same, other) in keys.items():
        assert (same.float() - other.float()).abs().max() > 0.5, precision


def test_attention_backend_triton_if_available(seed):
    if not triton_on_cpu():
        pytest.skip("attention backend 'triton' needs the Triton interpreter here")
    ref, cfg = _layer("image")
    fast = FastDecoderLayer(ref, cfg, "torch", "triton")
    rows = _rows([17])
    xs = _inputs(cfg, [17], torch.float32, steps=1)
    got = _run_fast(fast, cfg, rows, xs, 1)
    with torch.no_grad():
        want = _run_reference(ref, rows, xs, 1)
    torch.testing.assert_close(got[0][0], want[0][0], atol=1e-4, rtol=1e-4)


def test_routing_for_another_model_is_refused():
    ref, cfg = _layer("video-chat")
    fast = FastDecoderLayer(ref, cfg, "torch", "torch")
    rows = _rows([9])
    image_batch = TokenBatch.from_inputs([torch.zeros(9, dtype=torch.long)], rows,
                                         config=get_config("tiny", "image"))  # fmt: skip
    with torch.no_grad(), pytest.raises(ValueError, match="routing: built for 2 experts"):
        fast(torch.randn(9, cfg.text.hidden_size), image_batch)


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
    fast = FastDecoderLayer(ref16, cfg, "auto", "auto")
    lengths = [1200, 333]  # ~1.5k tokens of prefill, two rows
    rows = _rows(lengths, "cuda")
    xs = tuple([x.cuda() for x in part] for part in _inputs(cfg, lengths, torch.bfloat16))
    got = _run_fast(fast, cfg, rows, xs, STEPS)
    with torch.no_grad():
        same = _run_reference(ref16, rows, xs, STEPS)
        want = _run_reference(ref64, rows, tuple([x.double() for x in p] for p in xs), STEPS)
    for b in range(len(lengths)):
        for i, (a, s, w) in enumerate(zip(got[b], same[b], want[b])):
            assert_parity(a, s, w, what=f"gpu {variant} row {b} output {i} seed={seed}")
