"""``FastCogVLM2(precision="fp8")``: E4M3 block linears (fast/precision.py) on the CPU.

Tiny config, fp32 weights, the emulated fp8_linear. Native stays the native model (no fp8 call,
no quantized buffer, the same logits bit for bit); fp8 quantizes every block linear once, at
build; each quantized linear equals `fp8_linear` of an `Fp8Weight` made independently from its
weight (one vision and one two-expert LM linear); fp8 logits are finite, really quantized, and
within `fp8_logit_bound` of the reference; a bad ``precision`` is named.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haic_kernels import Fp8Weight, fp8_linear
from haic_kernels.models.cogvlm2 import FastCogVLM2, get_config, stack_prompts
from haic_kernels.models.cogvlm2.fast import precision as precision_module
from haic_kernels.models.cogvlm2.fast.batch import TokenBatch
from haic_kernels.models.cogvlm2.fast.layers import _linear
from haic_kernels.ops.fp8_linear import api as fp8_api
from haic_kernels.testing.fp8_parity import fp8_logit_bound

# Linears per block: vision qkv, dense, fc1, fc2; LM qkv, dense, gate, up, down per expert.
VISION_LINEARS, LM_LINEARS_PER_EXPERT = 4, 5


@pytest.fixture
def image_inputs(tiny_model, tiny_prompts):
    """(reference image model, ids [1, S], types [1, S], uint8 frames [1, H, W, 3])."""
    ref = tiny_model("image")
    prompts, frames = tiny_prompts(ref.config, [("what is in the picture?", 1)])
    ids, types = stack_prompts(prompts)
    return ref, ids, types, frames[0]


def _count(monkeypatch, owner, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (still calling through)."""
    calls = [0]
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_native_is_the_native_model_bit_for_bit(image_inputs, monkeypatch) -> None:
    ref, ids, types, frames = image_inputs
    default = FastCogVLM2.from_reference(ref, backend="torch")
    native = FastCogVLM2.from_reference(ref, backend="torch", precision="native")
    layers = [*native.model.layers, *native.model.vision.transformer.layers]
    assert all(layer.fp8 is None for layer in layers) and native.fp8_backend is None
    assert not list(native.buffers()) or all(b.dtype != torch.float8_e4m3fn
                                             for b in native.buffers())  # fmt: skip
    assert list(native.state_dict()) == list(ref.state_dict())
    calls = _count(monkeypatch, precision_module, "fp8_linear")
    with torch.inference_mode():
        a = default(ids, types, frames).logits
        b = native(ids, types, frames).logits
    assert calls[0] == 0 and torch.equal(a, b)


def test_fp8_quantizes_once_and_runs_every_block_linear(image_inputs, monkeypatch) -> None:
    ref, ids, types, frames = image_inputs
    cfg = ref.config
    made = _count(monkeypatch, Fp8Weight, "from_linear")
    fast = FastCogVLM2.from_reference(ref, backend="torch", precision="fp8")
    experts = 2  # the image model: language and vision experts
    per_forward = (VISION_LINEARS * cfg.vision.num_layers
                   + LM_LINEARS_PER_EXPERT * experts * cfg.text.num_layers)  # fmt: skip
    assert made[0] == per_forward  # one Fp8Weight per linear, at build
    assert list(fast.state_dict()) == list(ref.state_dict())  # the E4M3 copies are not state
    assert fast.fp8_backend == "emulated"  # no sm_89+ GPU here: said, not hidden
    linears = _count(monkeypatch, precision_module, "fp8_linear")
    quantized = _count(monkeypatch, fp8_api, "quantize_rows")
    with torch.inference_mode(), pytest.warns(UserWarning, match="runs emulated"):
        first = fast(ids, types, frames).logits
    with torch.inference_mode():
        second = fast(ids, types, frames).logits
    # Every block linear ran in fp8 (both experts have rows: text and image tokens), and the
    # only quantize_rows calls were the activations' (one per fp8_linear): no weight again.
    assert made[0] == per_forward and linears[0] == 2 * per_forward
    assert quantized[0] == linears[0] and torch.equal(first, second)


def test_fp8_logits_are_finite_quantized_and_within_the_bound(image_inputs) -> None:
    ref, ids, types, frames = image_inputs
    fast = FastCogVLM2.from_reference(ref, backend="torch", precision="fp8")
    with torch.inference_mode(), pytest.warns(UserWarning):
        got = fast(ids, types, frames).logits
        want = ref(ids, types, frames).logits
    assert torch.isfinite(got).all()
    rel = ((got - want).norm() / want.norm()).item()
    # E4M3 error is there (a native path would give ~1e-6) and inside the documented bound.
    assert 1e-2 < rel <= fp8_logit_bound(ref.config), rel


def test_each_quantized_linear_is_fp8_linear_of_its_weight(image_inputs) -> None:
    ref, ids, types, _ = image_inputs
    fast = FastCogVLM2.from_reference(ref, backend="torch", precision="fp8")
    gen = torch.Generator().manual_seed(5)
    # A vision linear, its bias kept in the model dtype.
    block = fast.model.vision.transformer.layers[0]
    qkv = block.attention.query_key_value
    x = torch.randn(2, 7, qkv.in_features, generator=gen)
    want = fp8_linear(x, Fp8Weight.from_linear(qkv.weight, qkv.bias), backend="emulated")
    with pytest.warns(UserWarning):
        got = block.fp8.linear(x, qkv)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, F.linear(x, qkv.weight, qkv.bias), rtol=1e-3, atol=1e-3)
    # An LM linear with two experts: each token through its expert's own E4M3 weight.
    layer = fast.model.layers[1]
    batch = TokenBatch.from_inputs(ids, types, None, config=ref.config)
    route = batch.routing
    assert route.num_experts == 2 and 0 < int(route.counts[1]) < batch.input_ids.numel()
    lang, vis = layer.mlp.language_mlp.up_proj, layer.mlp.vision_mlp.up_proj
    x = torch.randn(route.num_tokens, lang.in_features, generator=gen)
    got = _linear(x, lang, vis, route, "torch", layer.fp8)
    is_vis = route.expert_ids.bool()
    for rows, linear in ((~is_vis, lang), (is_vis, vis)):
        w = Fp8Weight.from_linear(linear.weight, linear.bias)
        torch.testing.assert_close(got[rows], fp8_linear(x[rows], w, backend="emulated"),
                                   rtol=1e-6, atol=1e-6)  # fmt: skip


def test_fp8_formats_survive_dtype_and_device_moves(tiny_model) -> None:
    fast = FastCogVLM2.from_reference(tiny_model("video-chat"), backend="torch", precision="fp8")
    fast.to(torch.bfloat16)
    fp8 = fast.model.layers[0].fp8
    dtypes = {name.rsplit("_", 1)[1]: b.dtype for name, b in fp8.named_buffers()}
    assert dtypes == {"qweight": torch.float8_e4m3fn, "scale": torch.float32}
    w = fp8.weight(fast.model.layers[0].self_attn.language_expert_dense)
    assert w.bias is None and w.qweight.dtype == torch.float8_e4m3fn
    built = FastCogVLM2(get_config("tiny", "video-chat"), backend="torch", precision="fp8")
    assert built.precision == "fp8" and built.model.vision.transformer.layers[1].fp8 is not None


@pytest.mark.parametrize("bad", ["fp16", "FP8", None])
def test_bad_precision_is_named(tiny_model, tmp_path, bad) -> None:
    ref = tiny_model("video-chat")
    with pytest.raises(ValueError, match="precision"):
        FastCogVLM2.from_reference(ref, precision=bad)
    with pytest.raises(ValueError, match="precision"):
        FastCogVLM2(ref.config, precision=bad)
    with pytest.raises(ValueError, match="precision"):  # before the (missing) checkpoint
        FastCogVLM2.from_pretrained(tmp_path / "absent", precision=bad, device="cpu")
