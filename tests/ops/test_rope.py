"""rope_qkv / apply_rope: against the model's RotaryEmbedding + apply_rotary, an fp64 complex
oracle (the parity rule), errors, opcheck and compile."""

from __future__ import annotations

import pytest
import torch

from haic_kernels.models.cogvlm2.language import RotaryEmbedding, apply_rotary
from haic_kernels.ops.rope import api, apply_rope, rope_qkv, rope_qkv_to_cache
from haic_kernels.testing import assert_parity
from tests._triton import triton_on_cpu

HAS_CUDA = torch.cuda.is_available()
THETA = 500000.0


def _backends():
    return ["torch", "triton"] if (triton_on_cpu() or HAS_CUDA) else ["torch"]


def _oracle(x, pos, interleaved, theta=THETA):
    """fp64: pairs as complex numbers times exp(i * pos * theta^(-2j/D)). x [B, S, H, D]."""
    d = x.shape[-1]
    xd = x.double().cpu()
    if interleaved:
        pairs = torch.complex(xd[..., 0::2], xd[..., 1::2])
    else:
        pairs = torch.complex(xd[..., : d // 2], xd[..., d // 2 :])
    freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double().cpu()[..., None, None] * freq  # [B, S, 1, D/2]
    rot = pairs * torch.polar(torch.ones_like(ang), ang)
    if interleaved:
        return torch.stack([rot.real, rot.imag], dim=-1).flatten(-2)
    return torch.cat([rot.real, rot.imag], dim=-1)


def _model_rope(x, pos, interleaved):
    """The reference model's path in x's dtype: RotaryEmbedding + apply_rotary, x [B, S, H, D]."""
    emb = RotaryEmbedding(x.shape[-1], THETA, interleaved).to(x.device)
    cos, sin = emb(pos, x.dtype)
    return apply_rotary(x.transpose(1, 2), cos, sin, interleaved).transpose(1, 2)


# (B, S, Hq, Hkv, D): decode, odd lengths, GQA 4 and 1, head dims 64 / 48 (not a power of 2)
SHAPES = [(1, 1, 4, 1, 64), (2, 17, 4, 2, 48), (1, 97, 3, 3, 64), (2, 5, 8, 2, 128)]
IDS = [f"B{b}-S{s}-H{hq}.{hkv}-D{d}" for b, s, hq, hkv, d in SHAPES]


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("b", "s", "hq", "hkv", "d"), SHAPES, ids=IDS)
@pytest.mark.parametrize("backend", _backends())
def test_rope_qkv_parity(seed, poison_outputs, backend, b, s, hq, hkv, d, dtype, interleaved):
    qkv = torch.randn(b, s, (hq + 2 * hkv) * d).to(dtype)
    pos = torch.randint(0, 9000, (b, s))
    q, k, v = rope_qkv(qkv, pos, num_heads=hq, num_kv_heads=hkv, interleaved=interleaved,
                       backend=backend)  # fmt: skip
    q_in, k_in, v_in = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q_in, k_in = q_in.view(b, s, hq, d), k_in.view(b, s, hkv, d)
    for name, got, x in (("q", q, q_in), ("k", k, k_in)):
        assert got.shape == x.shape and got.dtype == dtype and got.is_contiguous()
        model = _model_rope(x, pos, interleaved)
        assert_parity(got, model, _oracle(x, pos, interleaved), what=f"{backend} {name} {seed}")
        # the model's own formula, same dtype: equal up to fp32 rounding of cos/sin/FMA
        tol = 1e-6 if dtype == torch.float32 else 1e-3
        torch.testing.assert_close(got, model, atol=tol, rtol=tol)
    assert torch.equal(v, v_in.reshape(b, s, hkv, d))


@pytest.mark.parametrize("backend", _backends())
def test_apply_rope_packed_and_strided(seed, poison_outputs, backend):
    t, h, d = 23, 3, 64
    big = torch.randn(t, h, 2 * d)
    x = big[..., :d]  # head rows strided: goes through a contiguous copy
    pos = torch.randint(0, 100, (t,))
    got = apply_rope(x, pos, backend=backend)
    want = _model_rope(x.unsqueeze(0), pos.unsqueeze(0), False)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_positions_from_the_model_rule(seed):
    """CogVLM's repeated position ids (a frame's patches share one) rotate alike."""
    x = torch.randn(1, 6, 2, 64)
    pos = torch.tensor([[0, 1, 2, 2, 2, 3]])
    out = apply_rope(x.clone(), pos)
    same = apply_rope(x[:, 2:5].contiguous(), torch.full((1, 3), 2))
    assert torch.equal(out[:, 2:5], same)
    assert not torch.equal(out[:, 1], apply_rope(x[:, 1:2].contiguous(), pos[:, 2:3])[:, 0])


BAD = {
    "width": (lambda: rope_qkv(torch.randn(3, 100), torch.zeros(3).long(), num_heads=4,
                               num_kv_heads=2), ValueError, ["qkv", "multiple"]),
    "odd-d": (lambda: rope_qkv(torch.randn(3, 30), torch.zeros(3).long(), num_heads=4,
                               num_kv_heads=3), ValueError, ["qkv", "head dim", "even"]),
    "pos-shape": (lambda: rope_qkv(torch.randn(3, 64), torch.zeros(4).long(), num_heads=2,
                                   num_kv_heads=1), ValueError, ["position_ids", "(3,)"]),
    "pos-float": (lambda: apply_rope(torch.randn(3, 2, 8), torch.zeros(3)), TypeError,
                  ["position_ids", "float32"]),
    "x-int": (lambda: apply_rope(torch.zeros(3, 2, 8).long(), torch.zeros(3).long()), TypeError,
              ["x", "int64"]),
    "heads-0": (lambda: rope_qkv(torch.randn(3, 64), torch.zeros(3).long(), num_heads=0,
                                 num_kv_heads=1), ValueError, ["num_heads"]),
    "theta": (lambda: apply_rope(torch.randn(3, 2, 8), torch.zeros(3).long(), theta=-1.0),
              ValueError, ["theta"]),
    "theta-inf": (lambda: apply_rope(torch.randn(3, 2, 8), torch.zeros(3).long(),
                                     theta=float("inf")), ValueError, ["theta", "finite"]),
    "theta-tiny": (lambda: apply_rope(torch.randn(3, 2, 8), torch.zeros(3).long(), theta=1e-300),
                   ValueError, ["theta", "non-finite frequencies"]),
    "pos-negative": (lambda: apply_rope(torch.randn(3, 2, 8), torch.tensor([0, -1, 2])),
                     ValueError, ["position_ids", ">= 0"]),
    "backend": (lambda: apply_rope(torch.randn(3, 2, 8), torch.zeros(3).long(), backend="x"),
                ValueError, ["backend"]),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_arguments(kind):
    call, exc, words = BAD[kind]
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} missing from: {info.value}"


def test_opcheck(seed):
    x = torch.randn(7, (4 + 2 * 2) * 16)
    pos = torch.randint(0, 50, (7,))
    freqs = api.inv_freq(THETA, 16)
    for inter, release in ((False, False), (True, False), (False, True)):
        torch.library.opcheck(
            torch.ops.haic_kernels.rope.default,
            (x, pos, freqs, [4, 2, 2], [True, True, False], inter, release, "torch"),
        )


def test_torch_compile_fullgraph(seed):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(qkv, pos):
        q, k, v = rope_qkv(qkv, pos, num_heads=2, num_kv_heads=1)
        return q.sum() + k.sum() + v.sum()

    qkv, pos = torch.randn(1, 5, 4 * 32), torch.arange(5).view(1, 5)
    q, k, v = rope_qkv(qkv, pos, num_heads=2, num_kv_heads=1)
    torch.testing.assert_close(f(qkv, pos), q.sum() + k.sum() + v.sum())


@pytest.mark.gpu
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    ("t", "hq", "hkv", "d"),
    [(1, 32, 8, 128), (8192, 32, 8, 128), (1025, 8, 2, 128), (97, 4, 4, 64)],
)
def test_gpu_parity(seed, poison_outputs, t, hq, hkv, d, dtype, interleaved):  # fmt: skip
    qkv = torch.randn(1, t, (hq + 2 * hkv) * d, device="cuda").to(dtype)
    pos = torch.randint(0, 8192, (1, t), device="cuda")
    q, k, v = rope_qkv(qkv, pos, num_heads=hq, num_kv_heads=hkv, interleaved=interleaved,
                       backend="triton")  # fmt: skip
    q_in, k_in, v_in = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    for got, x in ((q, q_in.view(1, t, hq, d)), (k, k_in.view(1, t, hkv, d))):
        model = _model_rope(x, pos, interleaved)
        assert_parity(got, model, _oracle(x, pos, interleaved), what=f"gpu {dtype} {seed}")
    assert torch.equal(v, v_in.reshape(1, t, hkv, d))


# ---------------------------------------------------------------------------------------------
# rope_precision="release": the CogVLM2 release's low-precision angles, bit for bit


def _release_cos_sin(dtype, d, max_pos):
    """The release's computation, restated: its rotary module is built under HF's torch_dtype
    (the default dtype while the model is constructed), so ``inv_freq = 1 / base ** (arange(0, d,
    2) / d)`` is computed in ``dtype``; with ``pos_idx_in_fp32=False`` the cos/sin cache is
    ``cos(einsum(arange(max_pos, dtype), inv_freq))`` in ``dtype``, indexed by position."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        inv = 1.0 / (500000 ** (torch.arange(0, d, 2) / d))
    finally:
        torch.set_default_dtype(old)
    assert inv.dtype == dtype
    t = torch.arange(max_pos, dtype=inv.dtype)
    freqs = torch.einsum("i,j->ij", t, inv)
    return torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype)


def _release_rope(x, pos, cos_c, sin_c):
    """x [T, H, D] rotated as the release's rotary kernel does: fp32 math on cos/sin of x's
    dtype, rotate-half, one rounding back."""
    c = torch.cat([cos_c[pos], cos_c[pos]], -1).float().unsqueeze(1)
    s = torch.cat([sin_c[pos], sin_c[pos]], -1).float().unsqueeze(1)
    xf = x.float()
    half = x.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * c + rot * s).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_model_rotary_release_is_the_release_bit_for_bit(seed, dtype):
    d = 128
    cos_c, sin_c = _release_cos_sin(dtype, d, 4097)
    pos = torch.cat([torch.arange(4097), torch.randint(0, 4097, (500,))]).view(1, -1)
    cos, sin = RotaryEmbedding(d, THETA, False, "release")(pos, dtype)
    assert torch.equal(cos[0, 0], torch.cat([cos_c[pos[0]], cos_c[pos[0]]], -1))
    assert torch.equal(sin[0, 0], torch.cat([sin_c[pos[0]], sin_c[pos[0]]], -1))
    # ... and it is not the fp32 path: bf16 rounds positions above 256
    fp32_cos, _ = RotaryEmbedding(d, THETA, False, "fp32")(pos, dtype)
    assert not torch.equal(cos, fp32_cos)


def test_model_rotary_fp32_path_unchanged(seed):
    """The fp32 angles are today's formula; "release" in an fp32 model is the same thing."""
    d = 64
    pos = torch.randint(0, 5000, (2, 33))
    exponents = torch.arange(0, d, 2, dtype=torch.float32) / d
    ang = pos.float().unsqueeze(-1) * (1.0 / (THETA**exponents))
    ang = torch.cat([ang, ang], -1).unsqueeze(1)
    for dtype in (torch.float32, torch.bfloat16):
        cos, sin = RotaryEmbedding(d, THETA, False, "fp32")(pos, dtype)
        assert torch.equal(cos, ang.cos().to(dtype)) and torch.equal(sin, ang.sin().to(dtype))
    rel = RotaryEmbedding(d, THETA, False, "release")(pos, torch.float32)
    assert torch.equal(rel[0], ang.cos()) and torch.equal(rel[1], ang.sin())


@pytest.mark.slow
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_rope_op_release_is_the_release_bit_for_bit(seed, poison_outputs, backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and not HAS_CUDA:
        pytest.skip(
            "the Triton interpreter truncates fp32 -> bf16 casts (259 -> 258; a GPU rounds to "
            "nearest even: 260), so the kernel's bf16 rounding is checked on a GPU only"
        )
    hq, hkv, d = 4, 2, 128
    t = 4097 if backend == "torch" else 600  # the interpreter is slow; 600 still passes 512
    cos_c, sin_c = _release_cos_sin(dtype, d, 4097)
    pos = torch.randperm(4097)[:t]
    qkv = torch.randn(t, (hq + 2 * hkv) * d).to(dtype)
    q, k, v = rope_qkv(qkv, pos, num_heads=hq, num_kv_heads=hkv, rope_precision="release",
                       backend=backend)  # fmt: skip
    qs, ks, vs = qkv.view(t, hq + 2 * hkv, d).split([hq, hkv, hkv], dim=1)
    _assert_release(q, _release_rope(qs, pos, cos_c, sin_c), backend)
    _assert_release(k, _release_rope(ks, pos, cos_c, sin_c), backend)
    assert torch.equal(v, vs)
    x = torch.randn(1, t, 3, d).to(dtype)
    got = apply_rope(x, pos.view(1, t), rope_precision="release", backend=backend)
    _assert_release(got[0], _release_rope(x[0], pos, cos_c, sin_c), backend)
    # ... and the fp32 angles are far from it: positions above 2048 round in fp16/bf16
    fp32 = apply_rope(x, pos.view(1, t), rope_precision="fp32", backend=backend)
    assert (fp32 != got).float().mean() > 0.1


def _assert_release(got, want, backend):
    """The torch backend is the release bit for bit. Triton's angles are the release's bit for
    bit too, but its fp32 cos/sin (numpy's in the interpreter, libdevice's on a GPU) is not
    torch's to the last bit, and that bit can flip the rounding of cos/sin to x's dtype: so an
    element may be one ulp of x's dtype off, and only rarely (seen: 4 of 307,200)."""
    if backend == "torch":
        assert torch.equal(got, want)
        return
    ulp = torch.finfo(got.dtype).eps
    bad = got != want
    assert bad.float().mean() < 1e-3, f"{int(bad.sum())} of {bad.numel()} elements differ"
    diff = (got.float() - want.float()).abs()
    assert (diff <= 2 * ulp * want.float().abs().clamp_min(1.0)).all(), float(diff.max())


@pytest.mark.parametrize("backend", _backends())
def test_rope_op_precision_fp32_unchanged_and_release_in_fp32_is_fp32(seed, backend):
    x = torch.randn(1, 40, 2, 64)
    pos = torch.randint(0, 3000, (1, 40))
    plain = apply_rope(x, pos, backend=backend)
    assert torch.equal(plain, apply_rope(x, pos, rope_precision="fp32", backend=backend))
    assert torch.equal(plain, apply_rope(x, pos, rope_precision="release", backend=backend))
    if backend == "torch":  # Triton's cos is not torch's to the last bit
        assert torch.equal(plain, _model_rope(x, pos, False))


def test_rope_precision_is_checked():
    x = torch.randn(1, 4, 2, 64)
    with pytest.raises(ValueError, match="rope_precision"):
        apply_rope(x, torch.zeros(1, 4, dtype=torch.long), rope_precision="bf16")


# ---- rope_qkv_to_cache: the decode step's RoPE, k and v written into the cache ----------------


@pytest.mark.parametrize("release", [False, True], ids=["fp32-angles", "release"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("backend", _backends())
def test_rope_qkv_to_cache_equals_rope_qkv_then_the_row_writes(seed, poison_outputs, backend,
                                                                dtype, release):  # fmt: skip
    b, hq, hkv, d, cap = 3, 4, 2, 64, 9
    qkv = torch.randn(b, (hq + 2 * hkv) * d).to(dtype)
    pos = torch.randint(0, 4000, (b,))
    lens = torch.tensor([0, 5, cap - 1], dtype=torch.int32)
    # A slice of a larger cache (rows of other sequences around it) filled with random values.
    big_k, big_v = (torch.randn(b, cap + 3, hkv, d).to(dtype) for _ in range(2))
    kc, vc = big_k[:, 1 : cap + 1], big_v[:, 1 : cap + 1]
    want_k, want_v = big_k.clone(), big_v.clone()
    kw = dict(num_heads=hq, num_kv_heads=hkv, rope_precision="release" if release else "fp32")
    # The same backend's rope_qkv (itself held against an fp64 oracle above): bit for bit.
    q_want, k_want, v_want = rope_qkv(qkv, pos, backend=backend, **kw)
    rows = torch.arange(b)
    want_k[rows, 1 + lens.long()] = k_want
    want_v[rows, 1 + lens.long()] = v_want
    q = rope_qkv_to_cache(qkv, pos, kc, vc, lens, backend=backend, **kw)
    assert torch.equal(q, q_want)
    # the rows written hold rope_qkv's values; nothing else in the caches moved
    assert torch.equal(big_k, want_k) and torch.equal(big_v, want_v)


def test_rope_qkv_to_cache_bad_arguments():
    qkv, pos = torch.randn(2, 4 * 16), torch.zeros(2, dtype=torch.long)
    kc, vc = torch.zeros(2, 5, 1, 16), torch.zeros(2, 5, 1, 16)
    lens = torch.tensor([0, 4], dtype=torch.int32)
    kw = dict(num_heads=2, num_kv_heads=1)
    cases = {
        "cache_seqlens": lambda: rope_qkv_to_cache(qkv, pos, kc, vc, torch.tensor(
            [0, 5], dtype=torch.int32), **kw),
        "cache_seqlens ": lambda: rope_qkv_to_cache(qkv, pos, kc, vc, lens.long(), **kw),
        "k_cache": lambda: rope_qkv_to_cache(qkv, pos, kc[:, :, :, :8], vc, lens, **kw),
        "v_cache": lambda: rope_qkv_to_cache(qkv, pos, kc, vc.transpose(0, 1).contiguous()
                                             .transpose(0, 1), lens, **kw),
        "qkv": lambda: rope_qkv_to_cache(qkv[None], pos[None], kc, vc, lens, **kw),
        "position_ids": lambda: rope_qkv_to_cache(qkv, torch.tensor([0, -3]), kc, vc, lens, **kw),
    }  # fmt: skip
    for name, call in cases.items():
        with pytest.raises((ValueError, TypeError), match=rf"^{name.strip()}"):
            call()
    assert not kc.any() and not vc.any()  # nothing written by a refused call


def test_rope_to_cache_opcheck(seed):
    x = torch.randn(3, (4 + 2 * 2) * 16)
    pos = torch.randint(0, 50, (3,))
    kc, vc = torch.randn(3, 6, 2, 16), torch.randn(3, 6, 2, 16)
    lens = torch.tensor([0, 2, 5], dtype=torch.int32)
    torch.library.opcheck(
        torch.ops.haic_kernels.rope_to_cache.default,
        (x, pos, api.inv_freq(THETA, 16), kc, vc, lens, [4, 2, 2], False, False, "torch"),
    )
