"""Property tests over every public op: drawn shapes (empty ones included), strides (slices,
transposes, stride 0), dtypes and contents. Each CPU backend (torch; triton under the
interpreter) must either match the torch reference or raise ValueError/TypeError whose message
starts with the name of an argument. Raw internal errors, crashes and silent mismatches fail.

Cost is fixed: derandomized draws (no example database), few examples, small shapes.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import haic_kernels as hk
from haic_kernels import token_prune as tp
from haic_kernels.ops.attention.reference import attention_reference
from haic_kernels.ops.conv_compress.reference import conv_compress_reference
from haic_kernels.ops.expert_linear.reference import expert_linear_reference
from haic_kernels.ops.patch_embed.reference import patch_embed_reference
from haic_kernels.ops.patchify.reference import patchify_reference
from haic_kernels.ops.token_prune.reference import (
    frame_cosine_scores_reference,
    merge_weighted_reference,
)
from haic_kernels.testing import assert_parity
from tests._triton import triton_on_cpu

BACKENDS = ["torch", "triton"] if triton_on_cpu() else ["torch"]
FLOATS = st.sampled_from([torch.float32, torch.float16])
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- drawing tensors ---------------------------------------------------------------------------


@st.composite
def layouts(draw, shape, make):
    """A tensor of logical ``shape`` built by ``make(shape)``, in a drawn memory layout:
    contiguous, every other element of a larger tensor, a transposed storage, or stride 0."""
    shape = list(shape)
    kind = draw(st.sampled_from(["contiguous", "sliced", "transposed", "broadcast"]))
    if kind == "contiguous" or not shape:
        return make(shape)
    dim = draw(st.integers(0, len(shape) - 1))
    if kind == "sliced":
        big = list(shape)
        big[dim] = 2 * shape[dim]
        return make(big)[(slice(None),) * dim + (slice(None, None, 2),)]
    if kind == "transposed":
        perm = draw(st.permutations(range(len(shape))))
        storage = make([shape[p] for p in perm])
        return storage.permute([perm.index(i) for i in range(len(shape))])
    one = list(shape)
    one[dim] = 1
    return make(one).expand(shape)


@st.composite
def relayout(draw, t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a drawn layout: contiguous, every other element of a larger tensor
    (the rest junk), or a transposed storage."""
    kind = draw(st.sampled_from(["contiguous", "sliced", "transposed"]))
    if kind == "contiguous" or t.dim() == 0:
        return t.contiguous()
    dim = draw(st.integers(0, t.dim() - 1))
    if kind == "sliced":
        shape = list(t.shape)
        shape[dim] *= 2
        big = (
            torch.full(shape, 99, dtype=t.dtype)
            if t.dtype != torch.bool
            else torch.ones(shape, dtype=torch.bool)
        )
        view = big[(slice(None),) * dim + (slice(None, None, 2),)]
        view.copy_(t)
        return view
    perm = draw(st.permutations(range(t.dim())))
    return t.permute(perm).contiguous().permute([perm.index(i) for i in range(t.dim())])


def floats_of(dtype, scale=1.0, gen=None):
    return lambda shape: (torch.randn(shape, generator=gen) * scale).to(dtype)


def names_argument(exc: BaseException, names: set[str]) -> bool:
    head = str(exc).split(":", 1)[0].split("[", 1)[0].strip()
    return head in names


def run_or_named_error(names: set[str], fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None when it raised ValueError/TypeError naming one of
    ``names``; any other exception (or an error naming nothing) fails the test."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        assert names_argument(exc, names), f"the error must name an argument of {names}: {exc!r}"
        return None


def gen_of(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- patchify / patch_embed / conv_compress ----------------------------------------------------


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    f=st.integers(0, 2),
    ph=st.integers(0, 2),
    pw=st.integers(1, 2),
    p=st.sampled_from([2, 3, 7]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    k_multiple=st.sampled_from([1, 8]),
    seed=st.integers(0, 2**16),
)
def test_patchify(data, f, ph, pw, p, dtype, k_multiple, seed):
    g = gen_of(seed)
    make = lambda s: torch.randint(0, 256, s, generator=g, dtype=torch.uint8)
    frames = data.draw(layouts([f, ph * p, pw * p, 3], make))
    std = data.draw(st.sampled_from([(0.2, 0.3, 0.4), (1e-3, 1.0, 2.0), (0.0, 1.0, 1.0)]))
    mean = (0.5, 0.4, 0.3)
    k_pad = -(-3 * p * p // k_multiple) * k_multiple
    for backend in BACKENDS:
        out = run_or_named_error(
            {"std", "backend"},
            hk.patchify,
            frames,
            patch_size=p,
            mean=mean,
            std=std,
            dtype=dtype,
            k_multiple=k_multiple,
            backend=backend,
        )
        if out is None:
            assert std[0] == 0.0
            continue
        ref = patchify_reference(frames, p, mean, std, torch.float64, k_pad)
        same = patchify_reference(frames, p, mean, std, dtype, k_pad)
        assert_parity(out, same, ref, what=f"patchify {backend}")


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    f=st.integers(0, 2),
    grid=st.integers(0, 2),
    d=st.integers(0, 9),
    uint8=st.booleans(),
    bias=st.booleans(),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_patch_embed(data, f, grid, d, uint8, bias, dtype, seed):
    p = 4
    g = gen_of(seed)
    h = w = grid * p
    if uint8:
        make = lambda s: torch.randint(0, 256, s, generator=g, dtype=torch.uint8)
        frames = data.draw(layouts([f, h, w, 3], make))
    else:
        frames = data.draw(layouts([f, 3, h, w], floats_of(dtype, 1.0, g)))
    weight = data.draw(layouts([d, 3, p, p], floats_of(dtype, 0.1, g)))
    b = data.draw(layouts([d], floats_of(dtype, 1.0, g))) if bias else None
    cls = data.draw(layouts([d], floats_of(dtype, 1.0, g)))
    pos = data.draw(layouts([1 + grid * grid, d], floats_of(dtype, 1.0, g)))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    d64 = lambda t: None if t is None else t.double()
    fr64 = frames if uint8 else frames.double()
    ref = patch_embed_reference(
        fr64, weight.double(), d64(b), cls.double(), pos.double(), mean, std
    )
    same = patch_embed_reference(frames, weight, b, cls, pos, mean, std)
    for backend in BACKENDS:
        out = run_or_named_error(
            {"backend"},
            hk.patch_embed,
            frames,
            weight,
            b,
            cls,
            pos,
            mean=mean,
            std=std,
            backend=backend,
        )
        if out is not None:
            assert_parity(out, same, ref, what=f"patch_embed {backend}")


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    f=st.integers(0, 2),
    half=st.integers(0, 2),
    c=st.integers(0, 9),
    c_out=st.integers(0, 7),
    cls=st.booleans(),
    bias=st.booleans(),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_conv_compress(data, f, half, c, c_out, cls, bias, dtype, seed):
    g = gen_of(seed)
    grid = 2 * half
    x = data.draw(layouts([f, int(cls) + grid * grid, c], floats_of(dtype, 1.0, g)))
    w = data.draw(layouts([c_out, c, 2, 2], floats_of(dtype, 0.3, g)))
    b = data.draw(layouts([c_out], floats_of(dtype, 1.0, g))) if bias else None
    for backend in BACKENDS:
        out = run_or_named_error(
            {"grid", "backend"}, hk.conv_compress, x, w, b, grid=grid, backend=backend
        )
        if out is None:
            assert grid == 0
            continue
        ref = conv_compress_reference(
            x.double(), w.double(), None if b is None else b.double(), grid
        )
        same = conv_compress_reference(x, w, b, grid)
        assert_parity(out, same, ref, what=f"conv_compress {backend}")


# ---- attention ---------------------------------------------------------------------------------


@st.composite
def special_values(draw, t: torch.Tensor) -> torch.Tensor:
    """Sometimes put a NaN or an infinity into ``t`` (a fresh copy)."""
    if t.numel() == 0 or not draw(st.booleans()):
        return t
    t = t.contiguous().clone()
    at = draw(st.integers(0, t.numel() - 1))
    t.view(-1)[at] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    return t


def _same_pattern(out, want, what, dtype):
    """Same non-finite entries, and the finite ones equal within ``dtype``'s rounding (an
    fp16 softmax-weighted sum of O(1) values: ~1e-2; the parity rule proper is
    tests/ops/test_attention.py's)."""
    ok, ok_want = torch.isfinite(out), torch.isfinite(want)
    assert torch.equal(ok, ok_want), f"{what}: non-finite entries differ"
    if ok.any():
        tol = 1e-2 if dtype == torch.float16 else 2e-5
        torch.testing.assert_close(out[ok].float(), want[ok].float(), atol=tol, rtol=tol, msg=what)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN inputs
@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    b=st.integers(0, 2),
    sq=st.integers(0, 9),
    sk=st.integers(0, 9),
    hkv=st.integers(1, 2),
    r=st.integers(1, 2),
    d=st.sampled_from([64, 16]),
    mode=st.sampled_from(["causal", "full", "block_ids"]),
    packed=st.booleans(),
    extras=st.booleans(),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_attention(data, b, sq, sk, hkv, r, d, mode, packed, extras, dtype, seed):
    g = gen_of(seed)
    if mode == "block_ids":
        sk = sq
    hq = hkv * r
    q = data.draw(layouts([b, sq, hq, d], floats_of(dtype, 1.0, g)))
    k = data.draw(layouts([b, sk, hkv, d], floats_of(dtype, 1.0, g)))
    v = data.draw(layouts([b, sk, hkv, d], floats_of(dtype, 1.0, g)))
    q, k, v = (data.draw(special_values(t)) for t in (q, k, v))
    ids = None
    if mode == "block_ids":
        ids = torch.randint(-1, 3, (b, sq), generator=g, dtype=torch.int32)
    sel = (torch.rand(b, sq, generator=g) < 0.5) if extras else None
    kw = dict(causal=mode != "full", block_ids=ids, key_scores=sel, return_lse=extras)
    if packed:  # the same batch as a varlen one
        ar = torch.arange(b + 1, dtype=torch.int32)
        q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
        kw.update(cu_seqlens=ar * sq, cu_seqlens_k=ar * sk)
        kw.update(
            block_ids=None if ids is None else ids.flatten(),
            key_scores=None if sel is None else sel.flatten(),
        )
    names = {"backend", "block_ids"}
    want = attention_reference(
        q,
        k,
        v,
        **{n: kw[n] for n in ("causal", "block_ids", "key_scores")},
        cu_seqlens=kw.get("cu_seqlens"),
        cu_seqlens_k=kw.get("cu_seqlens_k"),
    )
    for backend in [*BACKENDS, "sdpa"]:
        res = run_or_named_error(names, hk.attention, q, k, v, backend=backend, **kw)
        if res is None:
            assert backend != "torch"
            continue
        out = res.out if extras else res
        _same_pattern(out, want[0], f"attention {backend} out", dtype)
        if extras:
            _same_pattern(res.lse, want[1], f"attention {backend} lse", dtype)
            _same_pattern(res.key_scores, want[2], f"attention {backend} key_scores", dtype)


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    b=st.integers(0, 2),
    s_max=st.integers(0, 8),
    sq=st.integers(1, 3),
    append=st.booleans(),
    causal=st.booleans(),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_attention_with_kvcache(data, b, s_max, sq, append, causal, dtype, seed):
    g = gen_of(seed)
    hkv, hq, d = 1, 2, 64
    q = data.draw(layouts([b, sq, hq, d], floats_of(dtype, 1.0, g)))
    lens = [data.draw(st.integers(0, s_max)) for _ in range(b)]
    for backend in BACKENDS:
        kc = torch.full((b, s_max, hkv, d), float("nan")).to(dtype)  # rows past a length: NaN
        vc = kc.clone()
        for i, n in enumerate(lens):
            kc[i, :n] = torch.randn(n, hkv, d, generator=gen_of(seed + i)).to(dtype)
            vc[i, :n] = torch.randn(n, hkv, d, generator=gen_of(seed - i - 1)).to(dtype)
        kn = torch.randn(b, sq, hkv, d, generator=gen_of(seed)).to(dtype) if append else None
        vn = None if kn is None else kn.flip(-1)
        seqlens = torch.tensor(lens, dtype=torch.int32)
        out = run_or_named_error(
            {"cache_seqlens", "k"},
            hk.attention_with_kvcache,
            q,
            kc,
            vc,
            seqlens,
            k=kn,
            v=vn,
            causal=causal,
            backend=backend,
        )
        if out is None:  # the new rows do not fit
            assert append and (sq > s_max or any(n + sq > s_max for n in lens))
            continue
        valid = [n + (sq if append else 0) for n in lens]
        want = [
            attention_reference(
                q[i : i + 1].double(),
                kc[i : i + 1, :n].double(),
                vc[i : i + 1, :n].double(),
                causal=causal,
            )[0]
            for i, n in enumerate(valid)
        ]
        want = torch.cat(want) if want else torch.zeros(0, sq, hq, d)
        _same_pattern(out.double(), want, f"kvcache {backend}", dtype)


# ---- expert_linear + Routing, rope -------------------------------------------------------------


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    t=st.integers(0, 9),
    k=st.integers(0, 9),
    n=st.integers(0, 9),
    e=st.integers(1, 3),
    bias=st.booleans(),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_expert_linear(data, t, k, n, e, bias, dtype, seed):
    g = gen_of(seed)
    x = data.draw(layouts([t, k], floats_of(dtype, 1.0, g)))
    ws = [data.draw(layouts([n, k], floats_of(dtype, 0.3, g))) for _ in range(e)]
    bs = [
        data.draw(layouts([n], floats_of(dtype, 1.0, g))) if bias and i % 2 else None
        for i in range(e)
    ]
    ids = data.draw(layouts([t], lambda s: torch.randint(0, e, s, generator=g)))
    route = hk.Routing.from_expert_ids(ids, e)
    b64 = [None if b_ is None else b_.double() for b_ in bs]
    args = (route.perm, route.offsets)
    ref = expert_linear_reference(x.double(), [w.double() for w in ws], b64, *args)
    same = expert_linear_reference(x.contiguous(), ws, bs, *args)
    for backend in BACKENDS:
        out = hk.expert_linear(x, ws, bs, route, backend=backend)
        assert_parity(out, same, ref, what=f"expert_linear {backend}")


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    t=st.integers(0, 6),
    hq=st.integers(1, 3),
    hkv=st.integers(1, 2),
    half=st.integers(0, 4),
    interleaved=st.booleans(),
    fused=st.booleans(),
    dtype=FLOATS,
    theta=st.sampled_from([10000.0, 1.5, float("inf"), -1.0]),
    precision=st.sampled_from(["fp32", "release", "bf16"]),
    seed=st.integers(0, 2**16),
)
def test_rope(data, t, hq, hkv, half, interleaved, fused, dtype, theta, precision, seed):
    g = gen_of(seed)
    d = 2 * half
    pos = data.draw(layouts([t], lambda s: torch.randint(-1, 50, s, generator=g)))
    names = {"theta", "position_ids", "qkv", "x", "rope_precision"}
    if fused:
        qkv = data.draw(layouts([t, (hq + 2 * hkv) * d], floats_of(dtype, 1.0, g)))
        call = lambda be, a=qkv: hk.rope_qkv(
            a,
            pos,
            num_heads=hq,
            num_kv_heads=hkv,
            theta=theta,
            interleaved=interleaved,
            rope_precision=precision,
            backend=be,
        )
    else:
        x = data.draw(layouts([t, hq, d], floats_of(dtype, 1.0, g)))
        call = lambda be, a=x: hk.apply_rope(
            a,
            pos,
            theta=theta,
            interleaved=interleaved,
            rope_precision=precision,
            backend=be,
        )
    want = run_or_named_error(names, call, "torch")
    if want is None:
        return
    assert math.isfinite(theta) and theta > 0 and bool((pos >= 0).all()) and precision != "bf16"
    for backend in BACKENDS[1:]:
        got = call(backend)
        for a, b in zip(got if fused else [got], want if fused else [want]):
            torch.testing.assert_close(
                a,
                b,
                atol=2e-3 if dtype == torch.float16 else 1e-5,
                rtol=2e-3 if dtype == torch.float16 else 1e-5,
            )


# ---- token_prune --------------------------------------------------------------------------------


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    f=st.integers(0, 4),
    n=st.integers(0, 6),
    d=st.integers(0, 9),
    dtype=FLOATS,
    videos=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_frame_cosine_and_nearest_kept(data, f, n, d, dtype, videos, seed):
    g = gen_of(seed)
    x = data.draw(layouts([f, n, d], floats_of(dtype, 1.0, g)))
    cuts = sorted(data.draw(st.lists(st.integers(0, f), min_size=videos - 1, max_size=videos - 1)))
    cu = data.draw(relayout(torch.tensor([0, *cuts, f])))
    keep = torch.rand(f, n, generator=g) < 0.5
    starts = torch.zeros(f + 1, dtype=torch.bool)
    starts[cu[:-1].long()] = True
    ar = torch.arange(f)
    prev = torch.where(starts[:f], -1, ar - 1)
    ref = frame_cosine_scores_reference(x, prev, float("inf"), acc=torch.float64)
    same = frame_cosine_scores_reference(x, prev, float("inf"))
    for backend in BACKENDS:
        out = tp.frame_cosine_scores(x, cu_frames=cu, backend=backend)
        fin = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(out), fin)
        assert_parity(out[fin], same[fin], ref[fin], atol=1e-4, what=f"cosine {backend}")
        if dtype == torch.float32:  # argmax ties only agree bit for bit at full precision
            nk = tp.nearest_kept(x, keep, backend=backend)
            assert torch.equal(nk, tp.nearest_kept(x.contiguous(), keep, backend="torch"))


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    lens=st.lists(st.integers(0, 7), min_size=0, max_size=3),
    ties=st.booleans(),
    max_hint=st.sampled_from([None, "exact", "short", "huge"]),
    seed=st.integers(0, 2**16),
)
def test_segment_topk_and_keep_counts(data, lens, ties, max_hint, seed):
    g = gen_of(seed)
    t = sum(lens)
    make = (
        (lambda s: torch.randint(0, 3, s, generator=g).float())
        if ties
        else floats_of(torch.float32, 1.0, g)
    )
    scores = data.draw(layouts([t], make))
    cu_list = [0]
    for n in lens:
        cu_list.append(cu_list[-1] + n)
    cu = data.draw(relayout(torch.tensor(cu_list)))
    ratio = data.draw(st.sampled_from([0.3, 1.0, 0.0]))
    longest = max(lens, default=0)
    hint = {None: None, "exact": longest, "short": longest - 1, "huge": 2**40}[max_hint]
    k = run_or_named_error({"keep_ratio"}, tp.keep_counts, cu[1:] - cu[:-1], ratio)
    if k is None:
        assert ratio == 0.0
        return
    want = (
        tp.segment_topk(scores, cu, k, backend="torch") if hint != longest - 1 or not lens else None
    )
    for backend in BACKENDS:
        got = run_or_named_error(
            {"max_seqlen"}, tp.segment_topk, scores, cu, k, max_seqlen=hint, backend=backend
        )
        if got is None:
            assert hint is not None and hint < longest
            continue
        assert torch.equal(got, want)


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    b=st.integers(0, 3),
    s=st.integers(0, 5),
    extra=st.integers(0, 3),
    packed=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.int64, torch.bool]),
    seed=st.integers(0, 2**16),
)
def test_gather_and_compact(data, b, s, extra, packed, dtype, seed):
    g = gen_of(seed)
    make = lambda sh: (torch.randn(sh, generator=g) * 5).to(dtype)
    hidden = data.draw(layouts([b, s, extra], make))
    keep = data.draw(layouts([b, s], lambda sh: torch.rand(sh, generator=g) < 0.5))
    for backend in BACKENDS:
        if packed:
            cu = torch.arange(b + 1) * s
            c = tp.compact(hidden.flatten(0, 1), keep.flatten(), cu_seqlens=cu, backend=backend)
        else:
            c = tp.compact(hidden, keep, backend=backend)
        assert torch.equal(c.hidden, hidden.reshape(b * s, extra)[keep.reshape(-1)])
        assert c.cu_seqlens.tolist() == [0, *keep.sum(1).cumsum(0).tolist()]
        rows = data.draw(st.lists(st.integers(-1, b * s), max_size=4))
        index = torch.tensor(rows, dtype=torch.long)
        flat = hidden.reshape(b * s, extra)
        got = run_or_named_error({"index"}, tp.gather_rows, flat, index, backend=backend)
        if got is None:
            assert any(r < 0 or r >= b * s for r in rows)
            continue
        assert torch.equal(got, flat[index])


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    f=st.integers(0, 3),
    n=st.integers(0, 6),
    d=st.integers(0, 5),
    dtype=FLOATS,
    bad_sizes=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_merge_weighted(data, f, n, d, dtype, bad_sizes, seed):
    g = gen_of(seed)
    x = data.draw(layouts([f, n, d], floats_of(dtype, 1.0, g)))
    keep = torch.rand(f, n, generator=g) < 0.5
    if n:
        keep[:, 0] = True
    target = tp.nearest_kept(x.float().contiguous(), keep, backend="torch").clamp_min(0)
    sizes = data.draw(layouts([f, n], lambda s: torch.rand(s, generator=g) + 0.5))
    if bad_sizes and sizes.numel():
        sizes = sizes.contiguous().clone()
        sizes.view(-1)[0] = data.draw(st.sampled_from([0.0, -1.0, float("nan")]))
    for backend in BACKENDS:
        res = run_or_named_error({"sizes"}, tp.merge_weighted, x, target, sizes, backend=backend)
        if res is None:
            assert bad_sizes
            continue
        ref = merge_weighted_reference(x.contiguous(), target, sizes, acc=torch.float64)
        same = merge_weighted_reference(x.contiguous(), target, sizes)
        assert_parity(res[0], same[0], ref[0], what=f"merge {backend}")
        torch.testing.assert_close(res[1], ref[1].float())


@pytest.mark.parametrize("op", ["patch_embed", "attention", "segment_topk"])
def test_meta_with_cpu_is_a_named_error(op):
    """One spot check per op family beside the property suites (all-meta calls propagate)."""
    meta = torch.empty(2, 4, 2, 64, device="meta")
    calls = {
        "patch_embed": lambda: hk.patch_embed(
            torch.zeros(1, 8, 8, 3, dtype=torch.uint8),
            torch.empty(4, 3, 4, 4, device="meta"),
            None,
            torch.zeros(4),
            torch.zeros(5, 4),
        ),
        "attention": lambda: hk.attention(meta, torch.zeros(2, 4, 2, 64), torch.zeros(2, 4, 2, 64)),
        "segment_topk": lambda: tp.segment_topk(
            torch.zeros(4), torch.tensor([0, 4], device="meta"), torch.tensor([1])
        ),
    }
    with pytest.raises(ValueError) as info:
        calls[op]()
    assert names_argument(info.value, {"k", "weight", "cu_seqlens", "cls", "bias", "pos"})
