"""attention_with_kvcache: new tokens against a preallocated cache (flash_attn_with_kvcache's
shape). Every backend against the reference run on the valid rows only, with the rows past each
sequence's length filled with NaN (they must never contribute); the in-place append; errors.
"""

from __future__ import annotations

import pytest
import torch

from haic_kernels import attention_with_kvcache, backends
from haic_kernels.backends import BackendUnavailable
from haic_kernels.ops.attention.reference import attention_reference
from haic_kernels.testing import assert_parity
from tests._triton import triton_on_cpu

HAS_CUDA = torch.cuda.is_available()
FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _case(b, s_max, sq, hq, hkv, d, dtype, lens, device="cpu", new=True):
    """q, caches (NaN past each length), lengths, new k/v (or None)."""
    q = torch.randn(b, sq, hq, d, device=device).to(dtype)
    kc = torch.full((b, s_max, hkv, d), float("nan"), device=device).to(dtype)
    vc = kc.clone()
    for i, n in enumerate(lens):
        kc[i, :n] = torch.randn(n, hkv, d, device=device).to(dtype)
        vc[i, :n] = torch.randn(n, hkv, d, device=device).to(dtype)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    kn = vn = None
    if new:
        kn = torch.randn(b, sq, hkv, d, device=device).to(dtype)
        vn = torch.randn(b, sq, hkv, d, device=device).to(dtype)
    return q, kc, vc, seqlens, kn, vn


def _want(q, kc, vc, lens, causal, dtype):
    """Per sequence: the reference over the first ``lens[i]`` cache rows, in ``dtype``."""
    outs = []
    for i, n in enumerate(lens):
        k, v = kc[i, :n], vc[i, :n]
        cast = lambda t: t.cpu().to(dtype)
        outs.append(
            attention_reference(
                cast(q[i : i + 1]), cast(k)[None], cast(v)[None], causal=causal, compute_dtype=dtype
            )[0]
        )
    return torch.cat(outs)


CPU_BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not triton_on_cpu(), reason="needs the Triton interpreter"))]  # fmt: skip
# (B, S_max, Sq, Hq, Hkv, D, dtype, cached lengths, new rows, causal)
CASES = [
    (3, 20, 1, 4, 2, 64, FP32, [3, 0, 19], True, True),  # decode: append one, a full cache
    (3, 20, 1, 4, 2, 64, FP16, [3, 0, 20], False, True),  # no append: attend what is there
    (2, 24, 5, 4, 1, 64, FP32, [7, 19], True, True),  # a chunk of 5 against the cache
    (2, 24, 5, 2, 2, 128, FP16, [0, 11], True, False),  # non-causal chunk
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("b", "s_max", "sq", "hq", "hkv", "d", "dtype", "lens", "new", "causal"),
                         CASES, ids=str)  # fmt: skip
def test_parity(seed, poison_outputs, backend, b, s_max, sq, hq, hkv, d, dtype, lens, new, causal):
    q, kc, vc, seqlens, kn, vn = _case(b, s_max, sq, hq, hkv, d, dtype, lens, new=new)
    before = seqlens.clone()
    out = attention_with_kvcache(q, kc, vc, seqlens, k=kn, v=vn, causal=causal, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.equal(seqlens, before), "cache_seqlens is the caller's to advance"
    # With new rows, the caches hold them now: the oracle reads the grown valid prefix.
    valid = [n + sq for n in lens] if new else lens
    oracle = _want(q, kc, vc, valid, causal, torch.float64)
    same = _want(q, kc, vc, valid, causal, dtype)
    assert_parity(out, same, oracle, what=f"{backend} seed={seed}")


def test_append_writes_exactly_the_new_rows(seed):
    q, kc, vc, seqlens, kn, vn = _case(2, 10, 3, 2, 1, 16, FP32, [4, 7])
    k0 = kc.clone()
    attention_with_kvcache(q, kc, vc, seqlens, k=kn, v=vn, backend="torch")
    for i, n in enumerate([4, 7]):
        assert torch.equal(kc[i, n : n + 3], kn[i]) and torch.equal(vc[i, n : n + 3], vn[i])
        keep = torch.ones(10, dtype=torch.bool)
        keep[n : n + 3] = False
        assert torch.equal(kc[i, keep].isnan(), k0[i, keep].isnan())
        assert torch.equal(torch.nan_to_num(kc[i, keep]), torch.nan_to_num(k0[i, keep]))


def test_matches_attention_on_a_dense_cache(seed):
    """Every row valid: the same as plain attention with bottom-right causal alignment."""
    import haic_kernels as hk

    q, kc, vc, seqlens, _, _ = _case(2, 12, 3, 4, 2, 32, FP32, [12, 12], new=False)
    torch.testing.assert_close(
        attention_with_kvcache(q, kc, vc, seqlens, backend="torch"),
        hk.attention(q, kc, vc, causal=True, backend="torch"),
    )


def test_zero_sizes():
    q, kc, vc, seqlens, _, _ = _case(2, 0, 3, 2, 1, 16, FP32, [0, 0], new=False)
    assert torch.equal(attention_with_kvcache(q, kc, vc, seqlens), torch.zeros_like(q))
    q, kc, vc, seqlens, _, _ = _case(0, 5, 1, 2, 1, 16, FP32, [], new=False)
    assert attention_with_kvcache(q, kc, vc, seqlens).shape == (0, 1, 2, 16)


def _ok(**over):
    q, kc, vc, seqlens, kn, vn = _case(2, 8, 1, 4, 2, 64, FP32, [3, 5])
    args = dict(q=q, k_cache=kc, v_cache=vc, cache_seqlens=seqlens, k=kn, v=vn)
    args.update(over)
    return args


BAD = {
    "lens-dtype": (dict(cache_seqlens=torch.tensor([3, 5])), TypeError, "cache_seqlens"),
    "lens-shape": (
        dict(cache_seqlens=torch.tensor([3], dtype=torch.int32)),
        ValueError,
        "cache_seqlens",
    ),
    "lens-overflow": (
        dict(cache_seqlens=torch.tensor([3, 8], dtype=torch.int32)),
        ValueError,
        "cache_seqlens",
    ),
    "lens-negative": (
        dict(cache_seqlens=torch.tensor([-1, 2], dtype=torch.int32)),
        ValueError,
        "cache_seqlens",
    ),
    "k-alone": (dict(v=None), ValueError, "v"),
    "k-heads": (dict(k=torch.randn(2, 1, 3, 64), v=torch.randn(2, 1, 3, 64)), ValueError, "k"),
    "k-dtype": (
        dict(k=torch.randn(2, 1, 2, 64).half(), v=torch.randn(2, 1, 2, 64).half()),
        TypeError,
        "k",
    ),
    "cache-dtype": (dict(v_cache=torch.zeros(2, 8, 2, 64).half()), TypeError, "v_cache"),
    "cache-batch": (
        dict(k_cache=torch.zeros(3, 8, 2, 64), v_cache=torch.zeros(3, 8, 2, 64)),
        ValueError,
        "k_cache",
    ),
    "q-dims": (dict(q=torch.randn(2, 4, 64)), ValueError, "q"),
    "scale": (dict(scale=float("nan")), ValueError, "scale"),
    "backend": (dict(backend="xformers"), ValueError, "backend"),
    "triton-d": (
        dict(
            q=torch.randn(2, 1, 4, 80),
            k_cache=torch.zeros(2, 8, 2, 80),
            v_cache=torch.zeros(2, 8, 2, 80),
            k=None,
            v=None,
            backend="triton",
        ),
        ValueError,
        "backend",
    ),
    "cache-strided-append": (
        dict(k_cache=torch.zeros(2, 8, 2, 128)[..., ::2]),
        ValueError,
        "k_cache",
    ),
    "cache-broadcast-append": (
        dict(v_cache=torch.zeros(2, 1, 2, 64).expand(2, 8, 2, 64)),
        ValueError,
        "v_cache",
    ),
    "device": (
        dict(cache_seqlens=torch.tensor([3, 5], dtype=torch.int32, device="meta")),
        ValueError,
        "cache_seqlens",
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_arguments(kind):
    over, exc, name = BAD[kind]
    a = _ok(**over)
    with pytest.raises(exc) as info:
        attention_with_kvcache(a.pop("q"), a.pop("k_cache"), a.pop("v_cache"),
                               a.pop("cache_seqlens"), **a)  # fmt: skip
    assert str(info.value).startswith(name), info.value


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-tensor refusal of backend='cuda'")
def test_cuda_backend_refuses_cpu_tensors():
    a = _ok()
    with pytest.raises(BackendUnavailable, match="cuda"):
        attention_with_kvcache(a["q"], a["k_cache"], a["v_cache"], a["cache_seqlens"],
                               backend="cuda")  # fmt: skip


def test_opcheck_and_compile(seed):
    q, kc, vc, seqlens, kn, vn = _case(2, 8, 1, 4, 2, 16, FP32, [3, 5])
    op = torch.ops.haic_kernels.attention_kvcache.default
    torch.library.opcheck(op, (q, kc, vc, seqlens, True, 0.25, "torch"))  # valid rows only
    torch._dynamo.reset()
    step = torch.compile(
        lambda q, kc, vc, n, k, v: attention_with_kvcache(q, kc, vc, n, k=k, v=v),
        fullgraph=True, backend="aot_eager",
    )  # fmt: skip
    kc2, vc2 = kc.clone(), vc.clone()
    got = step(q, kc, vc, seqlens, kn, vn)
    want = attention_with_kvcache(q, kc2, vc2, seqlens, k=kn, v=vn)
    torch.testing.assert_close(got, want)
    assert torch.equal(kc.nan_to_num(), kc2.nan_to_num())


# ---- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_gpu_decode_parity(seed, poison_outputs, backend, dtype):
    if backend == "cuda" and not backends.cuda_ext().usable:
        pytest.skip(f"haic_kernels._C: {backends.cuda_ext().reason}")
    lens = [0, 1, 700, 4095]
    q, kc, vc, seqlens, kn, vn = _case(4, 4096, 1, 32, 8, 128, dtype, lens, "cuda")
    out = attention_with_kvcache(q, kc, vc, seqlens, k=kn, v=vn, backend=backend)
    grown = [n + 1 for n in lens]
    oracle = _want(q, kc, vc, grown, True, torch.float64)
    same = _want(q, kc, vc, grown, True, dtype)
    assert_parity(out.cpu(), same, oracle, what=f"{backend} {dtype} seed={seed}")


@pytest.mark.gpu
def test_gpu_cuda_graph_decode_loop(seed, monkeypatch):
    """The decode step (append + attention) captured once and replayed: no host sync, no
    allocation outside the caching allocator."""
    monkeypatch.setenv("HAIC_TRUST_UNVERIFIED", "1")
    lens = [5, 9]
    q, kc, vc, seqlens, kn, vn = _case(2, 64, 1, 8, 2, 128, BF16, lens, "cuda")
    ref_k, ref_v = kc.clone(), vc.clone()
    graph = torch.cuda.CUDAGraph()
    attention_with_kvcache(q, kc.clone(), vc.clone(), seqlens, k=kn, v=vn)  # warm up
    with torch.cuda.graph(graph):
        out = attention_with_kvcache(q, kc, vc, seqlens, k=kn, v=vn)
    graph.replay()
    want = attention_with_kvcache(q, ref_k, ref_v, seqlens, k=kn, v=vn, backend="torch")
    torch.testing.assert_close(out.float(), want.float(), atol=2e-2, rtol=2e-2)
