"""Decode attention through the CUDA kernel (haic_kernels.ops.attention.cuda).

GPU tests (marked gpu): decode_attention_cuda against a float64 softmax written here, under the
parity rule (a same-dtype PyTorch run sets the bound), over dtypes, head dims, GQA ratios, key
lengths 1..16384, padded (seqlens_k) / packed (cu_seqlens_k) / strided-cache layouts, lse, empty
sequences and CUDA-graph capture. CPU tests: the Python and binding argument checks (the binding
checks everything before its first CUDA call) and the split heuristic. The kernel's arithmetic
is also checked without a GPU by tests/test_build_decode.py (host emulation).
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from haic_kernels import _ext
from haic_kernels.ops.attention.cuda import decode_attention_cuda
from haic_kernels.testing import assert_parity, poison_

BUILT_WITH_NVCC = shutil.which("nvcc") is not None and os.environ.get(
    "HAIC_SKIP_CUDA_BUILD", ""
) in ("", "0")
needs_ext = pytest.mark.skipif(
    not BUILT_WITH_NVCC or _ext.load() is None,
    reason="haic_kernels._C is only built when nvcc is on PATH and HAIC_SKIP_CUDA_BUILD is unset",
)
DTYPES = [torch.bfloat16, torch.float16]


# ---- oracles -------------------------------------------------------------------------------------


def _lengths(seqlens: torch.Tensor | None, cu: torch.Tensor | None, b: int, s: int) -> list:
    if cu is not None:
        c = cu.tolist()
        return [(c[i], c[i + 1] - c[i]) for i in range(b)]
    lens = seqlens.tolist() if seqlens is not None else [s] * b
    return [(0, n) for n in lens]


def decode_reference(q, k, v, scale, *, seqlens_k=None, cu_seqlens_k=None, dtype=torch.float64):
    """Softmax over each sequence's valid keys, computed in ``dtype``: (out [B,Hq,D], lse [B,Hq]).

    With dtype float64 this is the oracle; with q's dtype it is the same-dtype PyTorch run of the
    parity rule (matmuls and softmax in that dtype, as an eager model would run them).
    """
    b, hq, d = q.shape
    hkv = k.shape[-2]
    r = hq // hkv
    packed = cu_seqlens_k is not None
    out = torch.zeros(b, hq, d, dtype=dtype, device=q.device)
    lse = torch.full((b, hq), -math.inf, dtype=torch.float64, device=q.device)
    for i, (first, n) in enumerate(_lengths(seqlens_k, cu_seqlens_k, b, k.shape[1])):
        if n == 0:
            continue
        kk = k[first : first + n] if packed else k[i, :n]  # [n, Hkv, D]
        vv = v[first : first + n] if packed else v[i, :n]
        kk = kk.to(dtype).repeat_interleave(r, dim=1).transpose(0, 1)  # [Hq, n, D]
        vv = vv.to(dtype).repeat_interleave(r, dim=1).transpose(0, 1)
        qq = q[i].to(dtype).unsqueeze(1)  # [Hq, 1, D]
        scores = (qq @ kk.transpose(1, 2)).squeeze(1) * scale  # [Hq, n]
        probs = torch.softmax(scores, dim=-1)
        out[i] = (probs.unsqueeze(1) @ vv).squeeze(1)
        lse[i] = torch.logsumexp(scores.double(), dim=-1)
    return out, lse


def _run(q, k, v, *, seqlens_k=None, cu_seqlens_k=None, want_lse=True):
    out = poison_(torch.empty_like(q))
    lse = poison_(torch.empty(q.shape[:2], dtype=torch.float32, device=q.device))
    scale = q.shape[-1] ** -0.5
    decode_attention_cuda(
        q, k, v, out, scale=scale, seqlens_k=seqlens_k, cu_seqlens_k=cu_seqlens_k,
        lse=lse if want_lse else None,
    )  # fmt: skip
    return out, lse, scale


def _check(q, k, v, *, seqlens_k=None, cu_seqlens_k=None, what="decode"):
    out, lse, scale = _run(q, k, v, seqlens_k=seqlens_k, cu_seqlens_k=cu_seqlens_k)
    kw = dict(seqlens_k=seqlens_k, cu_seqlens_k=cu_seqlens_k)
    ref, ref_lse = decode_reference(q, k, v, scale, **kw)
    same, _ = decode_reference(q, k, v, scale, dtype=q.dtype, **kw)
    assert_parity(out, same, ref, what=what)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), f"{what}: lse finiteness differs"
    assert (lse[~finite] == -math.inf).all(), f"{what}: empty sequences need lse = -inf"
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite], atol=2e-4, rtol=2e-5)
    return out, lse


def _qkv(b, hq, hkv, s, d, dtype, device="cuda"):
    q = torch.randn(b, hq, d, dtype=dtype, device=device)
    k = torch.randn(b, s, hkv, d, dtype=dtype, device=device)
    v = torch.randn(b, s, hkv, d, dtype=dtype, device=device)
    return q, k, v


# ---- GPU: parity ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("seqlen", [1, 17, 97, 1025, 2048, 16384])
@pytest.mark.parametrize("ratio", [1, 4])
@pytest.mark.parametrize("d", [64, 112, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_decode_parity(seed, dtype, d, ratio, seqlen):
    hkv = 2
    b = 2 if seqlen <= 2048 else 1
    q, k, v = _qkv(b, hkv * ratio, hkv, seqlen, d, dtype)
    _check(q, k, v, what=f"decode {dtype} D{d} r{ratio} L{seqlen}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_decode_cogvlm_shape_batch(seed, dtype):
    """32 query / 8 kv heads, D=128, batch 3 at 4097 keys (the benchmark's head layout)."""
    q, k, v = _qkv(3, 32, 8, 4097, 128, dtype)
    _check(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("ratio", [1, 3, 4, 8, 12])
def test_decode_gqa_ratios(seed, ratio):
    """Ratios off the power-of-two head-block sizes (3, 12) leave masked heads in a block."""
    q, k, v = _qkv(2, 2 * ratio, 2, 300, 128, torch.bfloat16)
    _check(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 112, 128])
def test_decode_padded_seqlens(seed, d):
    """Ragged valid lengths in a padded cache, including an empty sequence and a full one."""
    s = 1100
    q, k, v = _qkv(5, 8, 2, s, d, torch.bfloat16)
    seqlens = torch.tensor([s, 0, 17, 1, 1025], dtype=torch.int32, device="cuda")
    out, lse = _check(q, k, v, seqlens_k=seqlens)
    assert (out[1] == 0).all() and (lse[1] == -math.inf).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_decode_packed_cu_seqlens(seed, dtype):
    lens = [97, 0, 2048, 1, 17]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    tk = int(cu[-1])
    q = torch.randn(len(lens), 8, 128, dtype=dtype, device="cuda")
    k = torch.randn(tk, 2, 128, dtype=dtype, device="cuda")
    v = torch.randn(tk, 2, 128, dtype=dtype, device="cuda")
    out, lse = _check(q, k, v, cu_seqlens_k=cu.cuda())
    assert (out[1] == 0).all() and (lse[1] == -math.inf).all()


@pytest.mark.gpu
def test_decode_strided_cache_slices(seed):
    """K/V as views of a preallocated cache: [B, S_max, 2, Hkv, D][:, :S, i], q/out strided."""
    b, s_max, s, hkv, hq, d = 3, 2000, 1500, 4, 16, 112
    cache = torch.randn(b, s_max, 2, hkv, d, dtype=torch.bfloat16, device="cuda")
    k, v = cache[:, :s, 0], cache[:, :s, 1]
    assert not k.is_contiguous()
    q_big = torch.randn(b, hq, 2 * d, dtype=torch.bfloat16, device="cuda")
    q = q_big[:, :, d:]  # row stride 2*D
    seqlens = torch.tensor([s, 700, 33], dtype=torch.int32, device="cuda")
    _check(q, k, v, seqlens_k=seqlens)
    out_big = poison_(torch.empty(b, hq, 2 * d, dtype=torch.bfloat16, device="cuda"))
    out = out_big[:, :, :d]
    decode_attention_cuda(q, k, v, out, scale=d**-0.5, seqlens_k=seqlens)
    assert torch.isnan(out_big[:, :, d:]).all(), "wrote outside out's view"
    ref, _ = decode_reference(q, k, v, d**-0.5, seqlens_k=seqlens)
    same, _ = decode_reference(q, k, v, d**-0.5, seqlens_k=seqlens, dtype=q.dtype)
    assert_parity(out, same, ref)


@pytest.mark.gpu
def test_decode_all_empty_and_no_lse(seed):
    q, k, v = _qkv(2, 4, 4, 64, 64, torch.float16)
    seqlens = torch.zeros(2, dtype=torch.int32, device="cuda")
    out, lse, _ = _run(q, k, v, seqlens_k=seqlens)
    assert (out == 0).all() and (lse == -math.inf).all()
    q, k, v = _qkv(2, 4, 4, 0, 64, torch.float16)  # S = 0
    out, lse, _ = _run(q, k, v)
    assert (out == 0).all() and (lse == -math.inf).all()
    q, k, v = _qkv(2, 8, 2, 513, 128, torch.bfloat16)
    out, lse, _ = _run(q, k, v, want_lse=False)
    assert torch.isnan(lse).all(), "lse=None must leave the buffer alone"
    ref, _ = decode_reference(q, k, v, 128**-0.5)
    same, _ = decode_reference(q, k, v, 128**-0.5, dtype=q.dtype)
    assert_parity(out, same, ref)


@pytest.mark.gpu
def test_decode_large_scores_are_stable(seed):
    """Scores of magnitude ~100 (a peaked softmax): the online softmax must not overflow."""
    q, k, v = _qkv(1, 8, 2, 4000, 128, torch.bfloat16)
    q = q * 40
    _check(q, k, v)


@pytest.mark.gpu
def test_decode_cuda_graph_capture(seed):
    q, k, v = _qkv(2, 32, 8, 3000, 128, torch.bfloat16)
    out = torch.empty_like(q)
    lse = torch.empty(2, 32, dtype=torch.float32, device="cuda")
    seqlens = torch.tensor([3000, 1234], dtype=torch.int32, device="cuda")
    call = lambda: decode_attention_cuda(q, k, v, out, scale=0.1, seqlens_k=seqlens, lse=lse)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        call()  # warm-up outside capture (loads the module, fills the caching allocator)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    q.copy_(torch.randn_like(q))
    seqlens.copy_(torch.tensor([17, 2999], dtype=torch.int32))
    poison_(out)
    graph.replay()
    torch.cuda.synchronize()
    ref, ref_lse = decode_reference(q, k, v, 0.1, seqlens_k=seqlens)
    same, _ = decode_reference(q, k, v, 0.1, seqlens_k=seqlens, dtype=q.dtype)
    assert_parity(out, same, ref)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-4, rtol=2e-5)


# ---- CPU: argument checks ------------------------------------------------------------------------


def _cpu_args(**over):
    q = torch.randn(2, 8, 64, dtype=torch.float16)
    k = torch.randn(2, 10, 2, 64, dtype=torch.float16)
    k = over.get("k", k)
    kw = dict(q=q, k=k, v=k.clone(), out=torch.empty_like(q), scale=0.125)
    kw.update(over)
    return kw


def _call(kw):
    kw = dict(kw)
    return decode_attention_cuda(kw.pop("q"), kw.pop("k"), kw.pop("v"), kw.pop("out"), **kw)


@pytest.mark.parametrize(
    ("over", "exc", "words"),
    [
        ({"q": torch.randn(2, 8, 64)}, TypeError, "q: expected dtype"),
        ({"k": torch.randn(2, 10, 2, 64, dtype=torch.bfloat16)}, TypeError, "k: expected dtype"),
        ({"q": torch.randn(2, 8, 96, dtype=torch.float16)}, ValueError, "q: head dim"),
        ({"q": torch.randn(2, 1, 8, 64, dtype=torch.float16)}, ValueError, "q: expected 3 dims"),
        ({"out": torch.empty(2, 8, 32, dtype=torch.float16)}, ValueError, "out: expected shape"),
        ({"k": torch.randn(2, 10, 3, 64, dtype=torch.float16)}, ValueError, "must divide"),
        ({"v": torch.randn(2, 11, 2, 64, dtype=torch.float16)}, ValueError, "v: expected the"),
        ({"k": torch.randn(3, 10, 2, 64, dtype=torch.float16)}, ValueError, "k: expected batch"),
        ({"k": torch.randn(20, 2, 64, dtype=torch.float16)}, ValueError, "k: expected 4 dims"),
        (
            {"k": torch.randn(2, 10, 2, 64, 2, dtype=torch.float16)[..., 0]},
            ValueError,
            "k: expected the last dim contiguous",
        ),
        (
            {"k": torch.randn(2, 10, 2, 65, dtype=torch.float16)[..., 1:]},
            ValueError,
            "k: data pointer and strides must be 16-byte aligned",
        ),
        ({"seqlens_k": torch.tensor([1, 2])}, TypeError, "seqlens_k: expected dtype torch.int32"),
        ({"seqlens_k": torch.tensor([1], dtype=torch.int32)}, ValueError, r"seqlens_k.*\(2,\)"),
        (
            {"cu_seqlens_k": torch.tensor([0, 1, 2], dtype=torch.int32), "seqlens_k": None},
            ValueError,
            "k: expected 3 dims",
        ),
        ({"lse": torch.empty(2, 8)[:, :4]}, ValueError, "lse: expected shape"),
        ({"lse": torch.empty(2, 8, dtype=torch.float16)}, TypeError, "lse: expected dtype"),
        ({"q": [1.0]}, TypeError, "q: expected a torch.Tensor"),
        ({}, ValueError, "q: expected a CUDA tensor"),
    ],
)
def test_python_checks_arguments(over, exc, words):
    with pytest.raises(exc, match=words):
        _call(_cpu_args(**over))


def test_python_checks_packed_and_exclusive_lengths():
    q = torch.randn(2, 4, 128, dtype=torch.bfloat16)
    k = torch.randn(30, 2, 128, dtype=torch.bfloat16)
    cu = torch.tensor([0, 10, 30], dtype=torch.int32)
    with pytest.raises(ValueError, match="seqlens_k: not allowed with cu_seqlens_k"):
        decode_attention_cuda(
            q, k, k, torch.empty_like(q), scale=1.0, cu_seqlens_k=cu,
            seqlens_k=torch.tensor([1, 2], dtype=torch.int32),
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"cu_seqlens_k: expected shape \(3,\)"):
        decode_attention_cuda(q, k, k, torch.empty_like(q), scale=1.0, cu_seqlens_k=cu[:2])
    with pytest.raises(ValueError, match="q: expected a CUDA tensor"):  # everything else fine
        decode_attention_cuda(q, k, k, torch.empty_like(q), scale=1.0, cu_seqlens_k=cu)


@pytest.mark.gpu
def test_python_rejects_grad():
    q = torch.randn(1, 2, 64, dtype=torch.float16, device="cuda")
    k = torch.randn(1, 4, 2, 64, dtype=q.dtype, device=q.device)
    with pytest.raises(RuntimeError, match="no backward"):
        decode_attention_cuda(q.requires_grad_(), k, k, torch.empty_like(q), scale=1.0)


def _bind_kwargs(**over):
    kw = dict(
        q_ptr=1 << 20, k_ptr=2 << 20, v_ptr=3 << 20, out_ptr=4 << 20, lse_ptr=0, seqlens_ptr=0,
        cu_seqlens_ptr=0, dtype="bfloat16", batch=1, q_heads=32, kv_heads=8, head_dim=128,
        max_seqlen=2048, q_strides=(4096, 128), k_strides=(2048 * 1024, 1024, 128),
        v_strides=(2048 * 1024, 1024, 128), out_strides=(4096, 128), lse_strides=(32, 1),
        scale=0.088, num_splits=1, workspace_ptr=0, workspace_bytes=0, stream=0,
    )  # fmt: skip
    kw.update(over)
    return kw


@needs_ext
@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"dtype": "float32"}, "dtype must be 'float16' or 'bfloat16'"),
        ({"dtype": "float64"}, "dtype"),
        ({"head_dim": 96}, "head_dim must be 64, 112 or 128, got 96"),
        ({"q_heads": 30}, r"q_heads \(30\) must be a multiple of kv_heads \(8\)"),
        ({"kv_heads": 0}, "q_heads and kv_heads must be >= 1"),
        ({"batch": -1}, "batch must be >= 0"),
        ({"batch": 70000}, "batch must be <= 65535"),
        ({"max_seqlen": -1}, "max_seqlen must be in"),
        ({"scale": float("nan")}, "scale must be finite"),
        ({"seqlens_ptr": 5 << 20, "cu_seqlens_ptr": 6 << 20}, "seqlens_ptr and cu_seqlens_ptr are"),
        ({"num_splits": 0}, "num_splits must be in"),
        ({"num_splits": 129}, "num_splits must be in"),
        ({"num_splits": 4, "workspace_bytes": 100}, "workspace_bytes must be >= 66560"),
        ({"num_splits": 4, "workspace_bytes": 66560}, "workspace_ptr must be non-null"),
        ({"q_ptr": 0}, "q_ptr and out_ptr must be non-null"),
        ({"v_ptr": 0}, "k_ptr and v_ptr must be non-null"),
        ({"k_ptr": (2 << 20) + 8}, "k_ptr must be 16-byte aligned"),
        ({"v_strides": (2048 * 1024, 1020, 128)}, "v_strides must be non-negative multiples of 8"),
        ({"q_strides": (-1, 128)}, "q_strides must be non-negative"),
        ({"lse_strides": (32, -1)}, "lse_strides must be non-negative"),
    ],
)
def test_binding_checks_arguments(over, words):
    """These run before any CUDA call, so they are safe without a GPU."""
    import haic_kernels._C as C

    with pytest.raises(ValueError, match="decode_attention: " + words):
        C.decode_attention(**_bind_kwargs(**over))


@needs_ext
def test_binding_empty_batch_is_a_no_op():
    import haic_kernels._C as C

    C.decode_attention(**_bind_kwargs(batch=0, q_ptr=0, k_ptr=0, v_ptr=0, out_ptr=0))


@needs_ext
def test_split_heuristic():
    """B=1 fills the GPU (splits ~ 4 blocks per SM), chunks stay >= 64 keys, at most 128."""
    import haic_kernels._C as C

    def splits(b, hq, hkv, s, sms=132):
        return C.decode_attention_num_splits(
            batch=b, q_heads=hq, kv_heads=hkv, max_seqlen=s, num_sms=sms
        )

    assert splits(1, 32, 8, 16384) == 66  # 8 kv heads x 66 splits = 528 blocks = 4 per SM
    assert splits(1, 32, 8, 2048) == 32  # 2048 / 64-key chunks
    assert splits(8, 32, 8, 16384) == 9
    assert splits(1, 32, 8, 1) == 1
    assert splits(1, 1, 1, 1 << 24) == C.DECODE_ATTENTION_MAX_SPLITS == 128
    assert splits(256, 32, 8, 16384) == 1
    assert C.decode_attention_workspace_bytes(batch=1, q_heads=32, head_dim=128, num_splits=1) == 0
    assert (
        C.decode_attention_workspace_bytes(batch=2, q_heads=4, head_dim=64, num_splits=3)
        == 4 * 2 * 4 * 3 * 66
    )
