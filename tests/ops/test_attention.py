"""attention: the reference against an explicit softmax, fast backends vs the parity rule, errors.

The fp64 oracle is the reference computed in float64; the same-dtype run is the reference in the
input dtype; the fast output must stay within 2x the same-dtype error (+ atol) of the oracle,
for ``out``, ``lse`` and the key scores alike. The reference itself is checked against a dense
softmax with a mask built by Python loops from the documented rule.
"""

from __future__ import annotations

import pytest
import torch

from haic_kernels import backends
from haic_kernels.backends import BackendUnavailable
from haic_kernels.ops.attention import api
from haic_kernels.ops.attention.api import AttentionOutput, attention
from haic_kernels.ops.attention.reference import attention_reference
from haic_kernels.testing import assert_parity
from tests._triton import needs_triton_cpu

HAS_CUDA = torch.cuda.is_available()
FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _ids(n: int, device) -> torch.Tensor:
    """Frame ids like the model's: text (-1) runs and frames of a few tokens, odd lengths."""
    ids = torch.full((n,), -1, dtype=torch.int32)
    pos, frame = 1, 0
    while pos < n:
        size = int(torch.randint(3, 12, (1,)))
        ids[pos : pos + size] = frame
        pos += size + int(torch.randint(0, 3, (1,)))
        frame += 1
    return ids.to(device)


def _inputs(b, sq, sk, hq, hkv, d, mode, dtype, device="cpu", scores=False):
    q = torch.randn(b, sq, hq, d, dtype=dtype, device=device)
    k = torch.randn(b, sk, hkv, d, dtype=dtype, device=device)
    v = torch.randn(b, sk, hkv, d, dtype=dtype, device=device)
    ids = torch.stack([_ids(sq, device) for _ in range(b)]) if mode == "block_ids" else None
    sel = None
    if scores:
        sel = torch.rand(b, sq, device=device) < 0.3
        sel[:, -1] = True  # the last token, FastV's choice
        if b > 1:
            sel[1] = False  # a sequence with no chosen row scores 0
    return q, k, v, ids, sel


def _check(fast, q, k, v, *, causal, ids, sel, cu=None, cu_k=None, what=""):
    """fast = (out, lse[, scores]) against the fp64 oracle and the same-dtype PyTorch run."""
    kw = dict(cu_seqlens=cu, cu_seqlens_k=cu_k, block_ids=ids, key_scores=sel, causal=causal)
    oracle = attention_reference(
        q.cpu().double(), k.cpu().double(), v.cpu().double(),
        **{n: (t.cpu() if isinstance(t, torch.Tensor) else t) for n, t in kw.items()},
    )  # fmt: skip
    same = attention_reference(q, k, v, compute_dtype=q.dtype, **kw)
    out, lse = fast[0], fast[1]
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_parity(out, same[0], oracle[0], what=f"out {what}")
    # Rows that see no key: lse -inf in all three; compare the rest.
    dead = torch.isneginf(oracle[1])
    assert torch.equal(torch.isneginf(lse.cpu()), dead), f"lse -inf rows {what}"
    assert_parity(
        lse.float().masked_fill(dead.to(lse.device), 0),
        same[1].masked_fill(dead.to(lse.device), 0),
        oracle[1].masked_fill(dead, 0),
        atol=1e-5,
        what=f"lse {what}",
    )
    if sel is not None:
        scores = fast[2]
        assert scores.dtype == torch.float32 and scores.shape == oracle[2].shape
        assert_parity(scores, same[2], oracle[2], atol=1e-6, what=f"scores {what}")


# ---- the reference against a dense softmax with a loop-built mask ----------------------------


def _loop_mask(sq, sk, causal, ids):
    m = torch.zeros(sq, sk, dtype=torch.bool)
    for i in range(sq):
        for j in range(sk):
            vis = (not causal) or j <= i + sk - sq
            if ids is not None and ids[i] == ids[j] and ids[i] >= 0:
                vis = True
            m[i, j] = vis
    return m


@pytest.mark.parametrize(
    ("sq", "sk", "causal", "with_ids"),
    [(9, 9, True, False), (9, 9, False, False), (13, 13, True, True), (3, 11, True, False)],
)
def test_reference_matches_explicit_softmax(seed, sq, sk, causal, with_ids):
    hq, hkv, d = 4, 2, 8
    q = torch.randn(2, sq, hq, d, dtype=torch.float64)
    k = torch.randn(2, sk, hkv, d, dtype=torch.float64)
    v = torch.randn(2, sk, hkv, d, dtype=torch.float64)
    ids = torch.stack([_ids(sq, "cpu"), _ids(sq, "cpu")]) if with_ids else None
    sel = torch.rand(2, sq) < 0.5
    sel[0, -1] = True
    sel[1] = False
    out, lse, scores = attention_reference(
        q, k, v, causal=causal, block_ids=ids, key_scores=sel, scale=0.3
    )
    for b in range(2):
        mask = _loop_mask(sq, sk, causal, None if ids is None else ids[b].tolist())
        mass = torch.zeros(sk, dtype=torch.float64)
        for h in range(hq):
            s = (q[b, :, h] @ k[b, :, h // 2].T) * 0.3
            s = s.masked_fill(~mask, float("-inf"))
            p = torch.softmax(s, dim=-1)
            torch.testing.assert_close(out[b, :, h], p @ v[b, :, h // 2])
            torch.testing.assert_close(lse[b, h], torch.logsumexp(s, -1))
            mass += p[sel[b]].sum(0)
        n = int(sel[b].sum())
        want = mass / (hq * n) if n else mass
        torch.testing.assert_close(scores[b], want)
    # Each chosen row's probabilities sum to 1, so the mean over rows and heads sums to 1 too.
    torch.testing.assert_close(scores[0].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_reference_rows_that_see_nothing():
    q, k, v = (torch.randn(1, n, 2, 8, dtype=torch.float64) for n in (5, 3, 3))
    out, lse, _ = attention_reference(q, k, v, causal=True)
    # Sq=5, Sk=3 bottom-right: rows 0 and 1 see no key.
    assert torch.equal(out[0, :2], torch.zeros_like(out[0, :2]))
    assert torch.isneginf(lse[0, :, :2]).all() and torch.isfinite(lse[0, :, 2:]).all()


# ---- Triton under the interpreter --------------------------------------------------------------

# (B, Sq, Sk, Hq, Hkv, D, mode, dtype): a sparse grid over the axes rather than the full
# cross product (the interpreter is slow): seqlens 1/17/97/128/513, D 64/112/128, GQA 1 and 4.
CASES = [
    (1, 1, 1, 4, 1, 64, "causal", FP32),
    (2, 17, 17, 4, 4, 112, "full", FP16),
    (1, 97, 97, 4, 1, 128, "causal", FP16),
    (2, 128, 128, 2, 2, 64, "block_ids", FP32),
    (1, 97, 97, 4, 1, 112, "block_ids", FP16),
    (1, 513, 513, 1, 1, 64, "causal", FP32),  # 17 row tiles of 32 (half the 1025 of old: CI time)
    (2, 17, 97, 4, 1, 64, "causal", FP32),  # Sq < Sk: bottom-right causal
    (1, 97, 17, 2, 1, 64, "causal", FP16),  # Sq > Sk: the first 80 rows see nothing
    (1, 1, 128, 8, 2, 128, "causal", FP16),  # decode: one token against a cache
    (1, 1, 97, 4, 4, 64, "full", FP32),
]
CASE_IDS = [
    f"B{b}-{sq}x{sk}-h{hq}/{hkv}-d{d}-{m}-{str(t)[6:]}" for b, sq, sk, hq, hkv, d, m, t in CASES
]


@needs_triton_cpu
@pytest.mark.parametrize(("b", "sq", "sk", "hq", "hkv", "d", "mode", "dtype"), CASES, ids=CASE_IDS)
def test_triton_parity(seed, poison_outputs, b, sq, sk, hq, hkv, d, mode, dtype):
    q, k, v, ids, _ = _inputs(b, sq, sk, hq, hkv, d, mode, dtype)
    causal = mode != "full"
    res = attention(q, k, v, causal=causal, block_ids=ids, return_lse=True, backend="triton")
    _check(res, q, k, v, causal=causal, ids=ids, sel=None, what=f"triton seed={seed}")
    alone = attention(q, k, v, causal=causal, block_ids=ids, backend="triton")  # no lse buffer
    assert torch.equal(alone, res[0])


SCORE_CASES = [
    (2, 97, 97, 4, 1, 64, "causal", FP32),
    (2, 40, 40, 4, 2, 128, "block_ids", FP16),
    (1, 33, 50, 2, 2, 112, "full", FP16),
    (2, 17, 70, 4, 4, 64, "causal", FP16),
]


@needs_triton_cpu
@pytest.mark.parametrize(("b", "sq", "sk", "hq", "hkv", "d", "mode", "dtype"), SCORE_CASES, ids=str)
def test_triton_key_scores(seed, poison_outputs, b, sq, sk, hq, hkv, d, mode, dtype):
    q, k, v, ids, sel = _inputs(b, sq, sk, hq, hkv, d, mode, dtype, scores=True)
    causal = mode != "full"
    res = attention(
        q, k, v, causal=causal, block_ids=ids, key_scores=sel, return_lse=True, backend="triton"
    )
    assert res.lse is not None and res.key_scores is not None  # both extras asked for
    _check(res, q, k, v, causal=causal, ids=ids, sel=sel, what=f"triton seed={seed}")
    again = attention(q, k, v, causal=causal, block_ids=ids, key_scores=sel, backend="triton")
    assert again.lse is None
    assert torch.equal(again.key_scores, res.key_scores), "the key scores must be deterministic"


def _packed(lens_q, lens_k, hq, hkv, d, dtype, device="cpu", mode="causal", scores=False):
    cu = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    tq, tk = int(cu[-1]), int(cu_k[-1])
    q = torch.randn(tq, hq, d, dtype=dtype, device=device)
    k = torch.randn(tk, hkv, d, dtype=dtype, device=device)
    v = torch.randn(tk, hkv, d, dtype=dtype, device=device)
    ids = torch.cat([_ids(n, device) for n in lens_q]) if mode == "block_ids" else None
    sel = None
    if scores:
        sel = torch.rand(tq, device=device) < 0.3
        sel[cu[1:].long() - 1] = True
        sel[cu[1] : cu[2]] = False  # the second sequence has no chosen row
    return q, k, v, cu.to(device), cu_k.to(device), ids, sel


# (lens_q, lens_k, Hq, Hkv, D, mode, dtype, key scores)
VARLEN_CASES = [
    ([17, 1, 97], [17, 1, 97], 4, 1, 64, "causal", FP16, False),
    ([40, 9, 65], [40, 9, 65], 2, 2, 128, "block_ids", FP32, True),
    ([1, 1, 1], [17, 40, 97], 8, 2, 64, "causal", FP16, True),  # a decode batch
    ([5, 0, 30], [20, 3, 30], 2, 1, 112, "full", FP32, True),  # an empty sequence
]


@needs_triton_cpu
@pytest.mark.parametrize(
    ("lens_q", "lens_k", "hq", "hkv", "d", "mode", "dtype", "scores"), VARLEN_CASES, ids=str
)
def test_triton_varlen(seed, poison_outputs, lens_q, lens_k, hq, hkv, d, mode, dtype, scores):
    q, k, v, cu, cu_k, ids, sel = _packed(
        lens_q, lens_k, hq, hkv, d, dtype, mode=mode, scores=scores
    )
    causal = mode != "full"
    res = attention(
        q, k, v, causal=causal, cu_seqlens=cu, cu_seqlens_k=cu_k, block_ids=ids, key_scores=sel,
        return_lse=True, backend="triton",
    )  # fmt: skip
    _check(res, q, k, v, causal=causal, ids=ids, sel=sel, cu=cu, cu_k=cu_k, what=f"seed={seed}")


# ---- sdpa (runs anywhere) and the torch backend ------------------------------------------------


@pytest.mark.parametrize("mode", ["causal", "full", "block_ids", "cross"])
def test_sdpa_backend(seed, mode):
    sk = 29 if mode == "cross" else 23
    q, k, v, ids, sel = _inputs(2, 23, sk, 4, 2, 48, mode, FP32, scores=True)
    causal = mode != "full"
    res = attention(
        q, k, v, causal=causal, block_ids=ids, key_scores=sel, return_lse=True, backend="sdpa"
    )
    _check(res, q, k, v, causal=causal, ids=ids, sel=sel, what=f"sdpa seed={seed}")


def test_sdpa_varlen(seed):
    q, k, v, cu, cu_k, _, sel = _packed([7, 0, 30], [20, 3, 30], 4, 2, 32, FP32, scores=True)
    res = attention(q, k, v, cu_seqlens=cu, cu_seqlens_k=cu_k, key_scores=sel, return_lse=True,
                    backend="sdpa")  # fmt: skip
    _check(res, q, k, v, causal=True, ids=None, sel=sel, cu=cu, cu_k=cu_k, what="sdpa varlen")


def test_auto_on_cpu_is_torch_and_return_forms(seed):
    q, k, v, _, sel = _inputs(1, 9, 9, 2, 1, 16, "causal", FP32, scores=True)
    assert api._resolve_backend("auto", q, k, False, None, None, None) == "torch"
    out = attention(q, k, v)
    assert type(out) is torch.Tensor  # no extras: a plain tensor
    with_lse = attention(q, k, v, return_lse=True)
    with_scores = attention(q, k, v, key_scores=sel)
    both = attention(q, k, v, key_scores=sel, return_lse=True)
    for res in (with_lse, with_scores, both):
        assert isinstance(res, AttentionOutput) and torch.equal(res.out, out)
    assert with_lse.key_scores is None and with_scores.lse is None
    assert with_lse.lse.shape == (1, 2, 9) and with_scores.key_scores.shape == (1, 9)
    assert torch.equal(both.lse, with_lse.lse)
    assert torch.equal(both.key_scores, with_scores.key_scores)
    ref = attention_reference(q, k, v, scale=0.125)[0]
    torch.testing.assert_close(attention(q, k, v, scale=0.125), ref)


def test_no_gradient():
    q, k, v, _, _ = _inputs(1, 4, 4, 2, 1, 8, "causal", FP32)
    with pytest.raises(RuntimeError, match="no backward"):
        attention(q.requires_grad_(), k, v)
    with torch.no_grad():
        assert attention(q, k, v).grad_fn is None


# ---- argument checks ---------------------------------------------------------------------------


def _t(*shape, dtype=FP32):
    return torch.randn(shape).to(dtype)


def _cu(*vals, dtype=torch.int32):
    return torch.tensor(vals, dtype=dtype)


Q, K = _t(2, 5, 4, 16), _t(2, 5, 2, 16)
P, PK = _t(9, 4, 16), _t(9, 2, 16)
BAD_CALLS = {
    "heads": (lambda: attention(_t(2, 5, 3, 16), K, K), ValueError, ["k", "multiple", "(3)"]),
    "dtype-mix": (lambda: attention(Q, K.half(), K.half()), TypeError, ["k", "float32"]),
    "dtype-int": (lambda: attention(Q.int(), K, K), TypeError, ["q", "dtype"]),
    "dims": (lambda: attention(P, PK, PK), ValueError, ["q", "cu_seqlens"]),
    "v-shape": (lambda: attention(Q, K, _t(2, 6, 2, 16)), ValueError, ["v", "shape of k"]),
    "head-dim": (
        lambda: attention(Q, _t(2, 5, 2, 8), _t(2, 5, 2, 8)),
        ValueError,
        ["k", "head dim"],
    ),
    "triton-d": (
        lambda: attention(_t(1, 4, 2, 80), _t(1, 4, 2, 80), _t(1, 4, 2, 80), backend="triton"),
        ValueError,
        ["head dim 80", "triton"],
    ),
    "cu-float": (
        lambda: attention(P, PK, PK, cu_seqlens=_cu(0, 4, 9, dtype=torch.float32)),
        TypeError,
        ["cu_seqlens", "int32"],
    ),
    "cu-2d": (
        lambda: attention(P, PK, PK, cu_seqlens=_cu(0, 4, 9)[None]),
        ValueError,
        ["cu_seqlens", "1 dims"],
    ),
    "cu-decreasing": (
        lambda: attention(P, PK, PK, cu_seqlens=_cu(0, 6, 4, 9)),
        ValueError,
        ["cu_seqlens", "non-decreasing", "[0, 6, 4, 9]"],
    ),
    "cu-start": (
        lambda: attention(P, PK, PK, cu_seqlens=_cu(1, 9)),
        ValueError,
        ["cu_seqlens", "from 0 to 9"],
    ),
    "cu-total": (
        lambda: attention(P, PK, PK, cu_seqlens=_cu(0, 4, 8)),
        ValueError,
        ["cu_seqlens", "to 9"],
    ),
    "max_seqlen-short": (
        lambda: attention(P, PK, PK, cu_seqlens=_cu(0, 4, 9), max_seqlen=3),
        ValueError,
        ["max_seqlen", "longest sequence (5)"],
    ),
    "max_seqlen-negative": (
        lambda: attention(P, PK, PK, cu_seqlens=_cu(0, 4, 9), max_seqlen=-1),
        ValueError,
        ["max_seqlen", ">= 0"],
    ),
    "cu-k-len": (
        lambda: attention(P, PK, PK, cu_seqlens=_cu(0, 4, 9), cu_seqlens_k=_cu(0, 9)),
        ValueError,
        ["cu_seqlens_k", "3 entries"],
    ),
    "block_ids-full": (
        lambda: attention(Q, K, K, causal=False, block_ids=torch.zeros(2, 5, dtype=torch.int32)),
        ValueError,
        ["block_ids", "causal=True"],
    ),
    "block_ids-shape": (
        lambda: attention(Q, K, K, block_ids=torch.zeros(2, 4, dtype=torch.int32)),
        ValueError,
        ["block_ids", "(2, 5)"],
    ),
    "block_ids-cross": (
        lambda: attention(Q, _t(2, 7, 2, 16), _t(2, 7, 2, 16), block_ids=torch.zeros(2, 5)),
        TypeError,
        ["block_ids", "int32"],
    ),
    "key_scores-dtype": (
        lambda: attention(Q, K, K, key_scores=torch.ones(2, 5)),
        TypeError,
        ["key_scores", "bool"],
    ),
    "key_scores-shape": (
        lambda: attention(Q, K, K, key_scores=torch.ones(2, 4, dtype=torch.bool)),
        ValueError,
        ["key_scores", "(2, 5)"],
    ),
    "scale": (lambda: attention(Q, K, K, scale=-1.0), ValueError, ["scale", "> 0"]),
    "backend": (
        lambda: attention(Q, K, K, backend="xformers"),
        ValueError,
        ["backend", "xformers"],
    ),
    "flash-ids": (
        lambda: attention(
            Q, K, K, block_ids=torch.zeros(2, 5, dtype=torch.int32), backend="flash_attn"
        ),
        (ValueError, BackendUnavailable),
        ["flash"],
    ),
    "cuda-cpu": (
        lambda: attention(_t(2, 1, 4, 64), _t(2, 5, 2, 64), _t(2, 5, 2, 64), backend="cuda"),
        BackendUnavailable,
        ["cuda", "CUDA"],
    ),
}


@pytest.mark.parametrize(("call", "exc", "words"), list(BAD_CALLS.values()), ids=list(BAD_CALLS))
def test_bad_arguments(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for word in words:
        assert word in msg, f"{word!r} missing from: {msg}"


# ---- torch.library registration ----------------------------------------------------------------


def test_opcheck(seed):
    q, k, v, ids, sel = _inputs(2, 9, 9, 4, 2, 16, "block_ids", FP32, scores=True)
    pq, pk, pv, cu, cu_k, _, psel = _packed([3, 6], [5, 6], 4, 2, 16, FP32, scores=True)
    op = torch.ops.haic_kernels.attention.default
    cases = [
        (q, k, v, None, None, None, None, True, 0.25, 0, 0, False, "torch"),
        (q, k, v, None, None, ids, sel, True, 0.25, 0, 0, True, "torch"),
        (q, k, v, None, None, None, sel, False, 0.25, 0, 0, True, "sdpa"),
        (pq, pk, pv, cu, cu_k, None, psel, True, 0.25, 6, 6, True, "torch"),
    ]
    for args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph(seed):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(q, k, v, sel, cu):
        out, lse, scores = attention(q, k, v, key_scores=sel, return_lse=True)
        packed = attention(q[0], k[0], v[0], cu_seqlens=cu, max_seqlen=5, backend="torch")
        return out * 2, lse, scores, packed

    q, k, v, _, sel = _inputs(1, 9, 9, 4, 2, 16, "causal", FP32, scores=True)
    cu = _cu(0, 4, 9)
    got = layer(q, k, v, sel, cu)
    out, lse, scores = attention(q, k, v, key_scores=sel, return_lse=True)
    torch.testing.assert_close(got[0], out * 2)
    torch.testing.assert_close(got[1], lse)
    torch.testing.assert_close(got[2], scores)
    torch.testing.assert_close(got[3], attention(q[0], k[0], v[0], cu_seqlens=cu))


# ---- GPU: Triton compiled, CUDA decode, flash-attn and SDPA cross-checks -----------------------

GPU_CASES = [
    *[(*c[:7], BF16) for c in CASES],
    (1, 2048, 2048, 32, 8, 128, "causal", BF16),
    (1, 4096, 4096, 8, 2, 128, "causal", BF16),
    (2, 1664, 1664, 16, 16, 112, "full", BF16),  # vision tower: 1 frame block of patches
    (1, 2048, 2048, 8, 2, 128, "block_ids", BF16),
    (1, 2048, 2048, 8, 2, 64, "causal", FP16),
]


@pytest.mark.gpu
@pytest.mark.parametrize(("b", "sq", "sk", "hq", "hkv", "d", "mode", "dtype"), GPU_CASES, ids=str)
def test_gpu_triton_parity(seed, poison_outputs, b, sq, sk, hq, hkv, d, mode, dtype):
    q, k, v, ids, sel = _inputs(b, sq, sk, hq, hkv, d, mode, dtype, "cuda", scores=sq <= 2048)
    causal = mode != "full"
    res = attention(
        q, k, v, causal=causal, block_ids=ids, key_scores=sel, return_lse=True, backend="triton"
    )
    _check(res, q, k, v, causal=causal, ids=ids, sel=sel, what=f"gpu triton seed={seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa", "flash_attn"])
@pytest.mark.parametrize(
    ("lens", "hq", "hkv", "d"), [([17, 1, 97, 1025], 8, 2, 128), ([300, 2049], 4, 4, 112)], ids=str
)
def test_gpu_varlen(seed, poison_outputs, backend, lens, hq, hkv, d):
    if backend == "flash_attn" and not backends.flash_attn().usable:
        pytest.skip(backends.flash_attn().reason)
    q, k, v, cu, _, _, sel = _packed(
        lens, lens, hq, hkv, d, BF16, "cuda", scores=backend != "flash_attn"
    )
    res = attention(q, k, v, cu_seqlens=cu, key_scores=sel, return_lse=True, backend=backend)
    if sel is None:
        res = (*res, None)
    _check(res, q, k, v, causal=True, ids=None, sel=sel, cu=cu, what=f"gpu {backend} varlen")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flash_attn"])
@pytest.mark.parametrize("sq", [1, 97, 2048, 4096])
def test_gpu_cross_check_library_kernels(seed, backend, sq):
    """triton against SDPA / flash-attn on the LM's shape (bf16, 32/8 heads, D=128)."""
    if backend == "flash_attn" and not backends.flash_attn().usable:
        pytest.skip(backends.flash_attn().reason)
    q, k, v, _, _ = _inputs(1, sq, sq, 32, 8, 128, "causal", BF16, "cuda")
    ours, lse = attention(q, k, v, return_lse=True, backend="triton")
    theirs, lse2 = attention(q, k, v, return_lse=True, backend=backend)
    torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse, lse2, atol=1e-3, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("sk", [17, 2048, 16384])
def test_gpu_decode_matches_prefill(seed, sk):
    """One token against a cache: cuda (if built) and triton both equal the last prefill row."""
    q, k, v, _, _ = _inputs(2, sk, sk, 32, 8, 128, "causal", BF16, "cuda")
    full = attention(q, k, v, backend="triton")[:, -1:]
    for backend in ("triton", "cuda"):
        if backend == "cuda" and not backends.cuda_ext().usable:
            continue
        last = attention(q[:, -1:], k, v, backend=backend)
        torch.testing.assert_close(last.float(), full.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_gpu_compile_auto(seed, monkeypatch):
    monkeypatch.setenv("HAIC_TRUST_UNVERIFIED", "1")
    q, k, v, _, sel = _inputs(1, 300, 300, 8, 2, 128, "causal", BF16, "cuda", scores=True)
    assert api._resolve_backend("auto", q, k, False, None, None, sel) == "triton"
    fn = torch.compile(lambda q, k, v, s: attention(q, k, v, key_scores=s), fullgraph=True)
    out, _, scores = fn(q, k, v, sel)
    res = attention(q, k, v, key_scores=sel, return_lse=True, backend="triton")
    torch.testing.assert_close(out, res[0])
    torch.testing.assert_close(scores, res[2])
