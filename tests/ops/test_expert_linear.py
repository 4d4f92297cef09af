"""expert_linear + Routing: routing rules, parity (fp64 per-token oracle), errors, compile.

The oracle picks every token's weight and bias by its expert id and multiplies in fp64
(einsum over a [T, N, K] stack): no grouping, no permutation, nothing shared with the backends.
"""

from __future__ import annotations

import pytest
import torch

from haic_kernels import backends
from haic_kernels.ops.expert_linear import Routing, expert_linear
from haic_kernels.testing import assert_parity
from tests._triton import needs_triton_cpu, triton_on_cpu

HAS_CUDA = torch.cuda.is_available()


def _oracle(x, weights, biases, ids):
    """fp64: out[t] = x[t] @ W[ids[t]].T + b[ids[t]] (per-token selection).

    Small shapes pick a [N, K] matrix per token (einsum over [T, N, K]); the GPU's full sizes
    (where that stack would not fit) select per token among the E fp64 products.
    """
    n, k = weights[0].shape
    t = x.shape[0]
    b64 = [torch.zeros(n, dtype=torch.float64, device=x.device) if b is None else b.double()
           for b in biases]  # fmt: skip
    if t * n * k <= 2**24:
        w = torch.stack([w_.double() for w_ in weights])[ids.long()]  # [T, N, K]
        return torch.einsum("tk,tnk->tn", x.double(), w) + torch.stack(b64)[ids.long()]
    out = torch.zeros(t, n, dtype=torch.float64, device=x.device)
    for e, (w_, b_) in enumerate(zip(weights, b64)):
        y = torch.nn.functional.linear(x.double(), w_.double(), b_)
        out = torch.where((ids.long() == e).to(x.device)[:, None], y, out)
    return out


def _params(e, n, k, dtype, device="cpu", bias_pattern=None):
    ws = [torch.randn(n, k, device=device).div_(k**0.5).to(dtype) for _ in range(e)]
    pattern = bias_pattern or [i % 2 == 1 for i in range(e)]
    bs = [torch.randn(n, device=device).to(dtype) if p else None for p in pattern]
    return ws, bs


# ---- Routing ------------------------------------------------------------------------------------


def _route(tt: torch.Tensor) -> Routing:
    """CogVLM's image-model routing of token types [B, S] (0 text, 1 vision): the vision expert
    where a token and the next one of its row are vision tokens."""
    vis = tt == 1
    mask = torch.zeros_like(vis)
    mask[:, :-1] = vis[:, :-1] & vis[:, 1:]
    return Routing.from_vision_mask(mask)


def _check_routing(r: Routing, ids: torch.Tensor) -> None:
    ids = ids.reshape(-1).long().cpu()
    e = r.num_experts
    perm, offsets = r.perm.long().cpu(), r.offsets.long().cpu()
    assert r.perm.dtype == torch.int32 and r.offsets.dtype == torch.int32
    assert sorted(perm.tolist()) == list(range(ids.numel()))  # a permutation
    assert offsets[0] == 0 and offsets[-1] == ids.numel()
    for j in range(e):
        group = perm[offsets[j] : offsets[j + 1]]
        assert torch.equal(group, (ids == j).nonzero().flatten())  # stable: original order
    assert torch.equal(r.expert_ids.long().cpu(), ids)


def test_routing_from_expert_ids_e8(seed):
    ids = torch.randint(0, 8, (97,))
    r = Routing.from_expert_ids(ids, 8)
    _check_routing(r, ids)
    assert torch.equal(r.counts.long(), torch.bincount(ids, minlength=8))


def test_routing_from_expert_ids_empty_experts():
    ids = torch.tensor([3, 3, 0, 3])
    r = Routing.from_expert_ids(ids, 5)
    _check_routing(r, ids)
    assert r.counts.tolist() == [1, 0, 0, 3, 0]


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_tile_table(seed, block_m):
    ids = torch.randint(0, 3, (37,))
    r = Routing.from_expert_ids(ids, 3)
    expert, start, end = r.tile_table(block_m)
    assert expert.numel() == r.max_tiles(block_m)
    covered = []
    for e_, s, t in zip(expert.tolist(), start.tolist(), end.tolist()):
        if e_ < 0:
            assert s == t == 0
            continue
        assert 0 < t - s <= block_m
        lo, hi = r.offsets[e_].item(), r.offsets[e_ + 1].item()
        assert lo <= s < t <= hi  # a tile never crosses an expert group
        covered.extend(range(s, t))
    assert covered == list(range(37))


def test_routing_from_vision_mask():
    mask = torch.tensor([[False, True, True, False], [True, True, True, False]])
    r = Routing.from_vision_mask(mask)
    _check_routing(r, mask.long())
    assert r.num_experts == 2 and r.counts.tolist() == [3, 5]
    none = Routing.from_vision_mask(None, num_tokens=5)
    assert none.num_experts == 1 and none.counts.tolist() == [5] and none.num_tokens == 5
    empty = Routing.from_vision_mask(None, num_tokens=0)
    assert empty.num_tokens == 0 and empty.offsets.tolist() == [0, 0]


def test_raw_constructor_accepts_a_valid_grouping():
    ids = torch.tensor([1, 0, 1, 0], dtype=torch.int64)
    r = Routing(expert_ids=ids, perm=torch.tensor([1, 3, 0, 2]), offsets=torch.tensor([0, 2, 4]),
                num_experts=2)  # fmt: skip
    _check_routing(r, ids)  # fields become contiguous int32
    strided = torch.tensor([1, 9, 3, 9, 0, 9, 2, 9], dtype=torch.int32)[::2]
    r2 = Routing(expert_ids=ids, perm=strided, offsets=torch.tensor([0, 2, 4]), num_experts=2)
    assert r2.perm.is_contiguous() and r2.perm.tolist() == [1, 3, 0, 2]


_IDS = torch.tensor([0, 1, 0, 1])
_PERM = torch.tensor([0, 2, 1, 3])
_OFF = torch.tensor([0, 2, 4])
BAD_ROUTINGS = {
    # offsets that do not sum to the token count, or do not start at 0, or decrease
    "offsets-sum": (dict(offsets=torch.tensor([0, 2, 3])), "offsets"),
    "offsets-start": (dict(offsets=torch.tensor([1, 2, 4])), "offsets"),
    "offsets-order": (dict(offsets=torch.tensor([0, 5, 4])), "offsets"),
    "offsets-len": (dict(offsets=torch.tensor([0, 4])), "offsets"),
    "perm-range": (dict(perm=torch.tensor([0, 2, 1, 7])), "perm"),
    "perm-negative": (dict(perm=torch.tensor([0, 2, 1, -1])), "perm"),
    "perm-repeat": (dict(perm=torch.tensor([0, 2, 2, 3])), "perm"),
    "perm-grouping": (dict(perm=torch.tensor([1, 0, 2, 3])), "perm"),
    "perm-len": (dict(perm=torch.tensor([0, 2, 1])), "perm"),
    "ids-range": (dict(expert_ids=torch.tensor([0, 1, 0, 2])), "expert_ids"),
    "num-experts": (dict(num_experts=9, offsets=torch.zeros(10, dtype=torch.long)), "num_experts"),
    "device": (dict(perm=_PERM.to("meta")), "perm"),
}


@pytest.mark.parametrize("kind", list(BAD_ROUTINGS))
def test_raw_constructor_validates(kind):
    over, word = BAD_ROUTINGS[kind]
    args = {**dict(expert_ids=_IDS, perm=_PERM, offsets=_OFF, num_experts=2), **over}
    with pytest.raises((ValueError, TypeError)) as info:
        Routing(**args)
    assert str(info.value).startswith(word), info.value


# ---- parity -------------------------------------------------------------------------------------

SHAPES = [(1, 64, 64), (17, 96, 80), (97, 192, 160), (97, 100, 130)]  # (T, K, N)
SHAPE_IDS = [f"T{t}-K{k}-N{n}" for t, k, n in SHAPES]
DTYPES = [torch.float32, torch.float16]


def _run_parity(x, ws, bs, r, backend, what):
    out = expert_linear(x, ws, bs, r, backend=backend)
    same = _oracle_same_dtype(x, ws, bs, r)
    ref = _oracle(x.reshape(-1, x.shape[-1]), ws, bs, r.expert_ids).view(*x.shape[:-1], -1)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert_parity(out, same, ref, what=what)


def _oracle_same_dtype(x, ws, bs, r):
    """PyTorch in x's dtype: F.linear per expert on masked rows (a torch.where composition)."""
    out = None
    for e, (w, b) in enumerate(zip(ws, bs)):
        y = torch.nn.functional.linear(x, w, b)
        sel = (r.expert_ids.view(*x.shape[:-1], 1) == e).to(x.device)
        out = torch.where(sel, y, out if out is not None else y)
    return out


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(("t", "k", "n"), SHAPES, ids=SHAPE_IDS)
def test_parity_two_experts(seed, poison_outputs, backend, dtype, t, k, n):
    if backend == "triton" and not triton_on_cpu():
        pytest.skip("needs the Triton interpreter")
    tt = (torch.rand(1, t) < 0.7).long()
    r = _route(tt)
    ws, bs = _params(2, n, k, dtype)  # language no bias, vision with bias (CogVLM's QKV)
    x = torch.randn(t, k).to(dtype)
    _run_parity(x, ws, bs, r, backend, f"{backend} seed={seed}")


@needs_triton_cpu
@pytest.mark.parametrize("e", [1, 3, 8])
def test_triton_many_experts_mixed_biases(seed, poison_outputs, e):
    t, k, n = 97, 72, 96
    ids = torch.randint(0, e, (t,))
    pattern = [bool(torch.rand(()) < 0.5) for _ in range(e)]
    ws, bs = _params(e, n, k, torch.float32, bias_pattern=pattern)
    x = torch.randn(t, k)
    _run_parity(x, ws, bs, Routing.from_expert_ids(ids, e), "triton", f"E={e} seed={seed}")


@needs_triton_cpu
@pytest.mark.parametrize("case", ["all-language", "all-vision", "3d-strided"])
def test_triton_routing_extremes(seed, poison_outputs, case):
    b, s, k, n = 2, 40, 64, 72
    tt = torch.zeros(b, s, dtype=torch.long) if case == "all-language" else torch.ones(b, s).long()
    r = _route(tt)
    ws, bs = _params(2, n, k, torch.float32)
    x = torch.randn(b, s, k)
    if case == "3d-strided":
        x = torch.randn(b, s, 2 * k)[..., :k]  # rows strided, last dim contiguous
    _run_parity(x, ws, bs, r, "triton", f"{case} seed={seed}")


def test_triton_matches_torch_backend_bitwise_fp32_small(seed):
    # different code paths, both fp32-accumulated: agree to rounding (sanity of the torch loop)
    t, k, n = 17, 32, 48
    ids = torch.randint(0, 2, (t,))
    ws, bs = _params(2, n, k, torch.float32)
    x = torch.randn(t, k)
    r = Routing.from_expert_ids(ids, 2)
    torch.testing.assert_close(
        expert_linear(x, ws, bs, r, backend="torch"), _oracle(x, ws, bs, ids).float()
    )


# ---- errors -------------------------------------------------------------------------------------


def _ok(e=2, t=5, k=8, n=6):
    ws, bs = _params(e, n, k, torch.float32)
    return torch.randn(t, k), ws, bs, Routing.from_expert_ids(torch.randint(0, e, (t,)), e)


def _bad(kind):
    x, ws, bs, r = _ok()
    if kind == "k-mismatch":
        return lambda: expert_linear(torch.randn(5, 9), ws, bs, r)
    if kind == "n-mismatch":
        return lambda: expert_linear(x, [ws[0], torch.randn(7, 8)], bs, r)
    if kind == "n-biases":
        return lambda: expert_linear(x, ws, [None], r)
    if kind == "bias-shape":
        return lambda: expert_linear(x, ws, [None, torch.randn(5)], r)
    if kind == "route-t":
        return lambda: expert_linear(torch.randn(6, 8), ws, bs, r)
    if kind == "route-e":
        return lambda: expert_linear(x, [*ws, ws[0]], [*bs, None], r)
    if kind == "dtype":
        return lambda: expert_linear(x, [ws[0].half(), ws[1]], bs, r)
    if kind == "bias-dtype":
        return lambda: expert_linear(x, ws, [None, torch.randn(6).double()], r)
    if kind == "x-dtype":
        return lambda: expert_linear(x.long(), ws, bs, r)
    if kind == "weights-tensor":
        return lambda: expert_linear(x, torch.stack(ws), bs, r)
    if kind == "too-many":
        return lambda: expert_linear(x, ws * 5, None, r)
    if kind == "route-type":
        return lambda: expert_linear(x, ws, bs, r.perm)
    if kind == "backend":
        return lambda: expert_linear(x, ws, bs, r, backend="cutlass")
    if kind == "device":
        return lambda: expert_linear(x, [ws[0], ws[1].to("meta")], bs, r)
    if kind == "route-device":
        meta = Routing.from_expert_ids(torch.zeros(5, dtype=torch.long, device="meta"), 2)
        return lambda: expert_linear(x, ws, bs, meta)
    if kind == "grad":
        return lambda: expert_linear(x.requires_grad_(), ws, bs, r)
    raise AssertionError(kind)


BAD = {
    "k-mismatch": (ValueError, ["weights[0]", "K=9"]),
    "n-mismatch": (ValueError, ["weights[1]", "same N"]),
    "n-biases": (ValueError, ["biases", "2 entries"]),
    "bias-shape": (ValueError, ["biases[1]", "[6]"]),
    "route-t": (ValueError, ["route", "5 tokens", "6 rows"]),
    "route-e": (ValueError, ["route", "2 experts", "3 weights"]),
    "dtype": (TypeError, ["weights[0]", "float32"]),
    "bias-dtype": (TypeError, ["biases[1]", "float64"]),
    "x-dtype": (TypeError, ["x", "int64"]),
    "weights-tensor": (TypeError, ["weights", "sequence"]),
    "too-many": (ValueError, ["weights", "1 to 8"]),
    "route-type": (TypeError, ["route", "Routing"]),
    "backend": (ValueError, ["backend", "cutlass"]),
    "device": (ValueError, ["weights[1]", "cpu", "meta"]),
    "route-device": (ValueError, ["route", "cpu", "meta"]),
    "grad": (RuntimeError, ["no backward"]),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_arguments(kind):
    exc, words = BAD[kind]
    with pytest.raises(exc) as info:
        _bad(kind)()
    for w in words:
        assert w in str(info.value), f"{w!r} missing from: {info.value}"


@pytest.mark.parametrize(
    ("call", "exc", "word"),
    [
        (lambda: Routing.from_expert_ids(torch.tensor([0, 9]), 9), ValueError, "at most 8"),
        (lambda: Routing.from_expert_ids(torch.tensor([0, 2]), 2), ValueError, "[0, 2)"),
        (lambda: Routing.from_expert_ids(torch.tensor([-1, 0]), 2), ValueError, "expert_ids"),
        (lambda: Routing.from_expert_ids(torch.tensor([0.0]), 2), TypeError, "expert_ids"),
        (lambda: Routing.from_vision_mask(torch.ones(3)), TypeError, "vision_mask"),
        (lambda: Routing.from_vision_mask(None), ValueError, "num_tokens"),
    ],
)
def test_bad_routing(call, exc, word):
    with pytest.raises(exc, match=None) as info:
        call()
    assert word in str(info.value)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-tensor refusal of backend='triton'")
def test_triton_refuses_cpu_without_interpreter(monkeypatch):
    if not backends.triton().available:
        pytest.skip("triton is not installed")
    from haic_kernels.backends import BackendUnavailable
    from haic_kernels.ops import _common

    monkeypatch.setattr(_common, "interpreting", lambda: False)
    x, ws, bs, r = _ok()
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        expert_linear(x, ws, bs, r, backend="triton")


def test_auto_on_cpu_is_torch(seed):
    x, ws, bs, r = _ok()
    assert torch.equal(expert_linear(x, ws, bs, r), expert_linear(x, ws, bs, r, backend="torch"))


# ---- torch.library ------------------------------------------------------------------------------


def test_opcheck(seed):
    x, ws, bs, r = _ok(e=3, t=11)
    bs = [None, torch.randn(6), torch.randn(6)]
    torch.library.opcheck(
        torch.ops.haic_kernels.expert_linear.default, (x, ws, bs, r.perm, r.offsets, "torch")
    )


def test_torch_compile_fullgraph(seed):
    """The public API traces whole: Routing built in the graph, expert_linear as one op."""
    torch._dynamo.reset()
    x, ws, bs, _ = _ok(t=9)
    tt = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 1, 0]])

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(x, tt):
        return torch.relu(expert_linear(x, ws, bs, _route(tt)))

    want = torch.relu(expert_linear(x, ws, bs, _route(tt), backend="torch"))
    torch.testing.assert_close(layer(x, tt), want)


# ---- GPU ----------------------------------------------------------------------------------------

# CogVLM: 24 frames x 66 vision tokens + ~40 text tokens; K = 4096, N = QKV / dense / MLP
GPU_SHAPES = [(1, 4096, 6144), (97, 256, 320), (1624, 4096, 6144), (1624, 4096, 4096),
              (1624, 4096, 14336), (1624, 14336, 4096)]  # fmt: skip
GPU_IDS = [f"T{t}-K{k}-N{n}" for t, k, n in GPU_SHAPES]


def _cogvlm_types(t, device):
    tt = torch.zeros(1, t, dtype=torch.long, device=device)
    frames = max((t - 40) // 66, 0)
    for f in range(frames):
        tt[0, 1 + f * 67 : 1 + f * 67 + 66] = 1  # a frame, then one text token (chat template)
    return tt


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("t", "k", "n"), GPU_SHAPES, ids=GPU_IDS)
def test_gpu_parity(seed, poison_outputs, t, k, n, dtype):
    r = _route(_cogvlm_types(t, "cuda"))
    ws, bs = _params(2, n, k, dtype, "cuda")
    x = torch.randn(t, k, device="cuda").to(dtype)
    _run_parity(x, ws, bs, r, "triton", f"gpu {dtype} seed={seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("e", [3, 8])
def test_gpu_many_experts(seed, poison_outputs, e):
    ids = torch.randint(0, e, (1000,), device="cuda")
    ws, bs = _params(e, 384, 512, torch.bfloat16, "cuda", [i % 3 == 0 for i in range(e)])
    x = torch.randn(1000, 512, device="cuda").bfloat16()
    _run_parity(x, ws, bs, Routing.from_expert_ids(ids, e), "triton", f"gpu E={e}")


@pytest.mark.gpu
def test_gpu_cuda_graph_and_compile(seed, monkeypatch):
    monkeypatch.setenv("HAIC_TRUST_UNVERIFIED", "1")
    tt = _cogvlm_types(300, "cuda")
    ws, bs = _params(2, 256, 128, torch.bfloat16, "cuda")
    x = torch.randn(300, 128, device="cuda").bfloat16()
    r = _route(tt)
    want = expert_linear(x, ws, bs, r, backend="triton")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        r_g = _route(tt)  # routing built inside the capture: no host sync
        got = expert_linear(x, ws, bs, r_g, backend="triton")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    compiled = torch.compile(lambda a: expert_linear(a, ws, bs, r), fullgraph=True)
    torch.testing.assert_close(compiled(x), want)
