"""Issue 11's observed failures of the op layer, one test each (each failed before the op
contract of ``ops/_common.py``): strided views read as contiguous by Triton, trusted metadata,
value semantics, zero-size and meta inputs. Cases that crashed the interpreter (the
segment_topk double free, the Routing SIGSEGV) run in a subprocess, so a crash fails the test
instead of killing pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import haic_kernels as hk
from haic_kernels import token_prune as tp
from haic_kernels.ops._common import (
    check_cu_seqlens,
    check_max_seqlen,
    check_values,
    trusted_values,
)
from haic_kernels.ops.attention.reference import attention_reference
from haic_kernels.ops.attention.triton import attention_triton
from haic_kernels.ops.token_prune.triton import segment_topk_triton
from haic_kernels.testing import poison_
from tests._triton import needs_triton_cpu

ROOT = Path(__file__).resolve().parents[2]
NAN, INF = float("nan"), float("inf")


def run_isolated(code: str, timeout: float = 240) -> str:
    """Run ``code`` in a fresh interpreter (Triton's interpreter on); fail on any non-zero exit,
    a crash (signal) included, and return its stdout."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _raises_naming(name: str, call, exc=(ValueError, TypeError)) -> None:
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(name), f"the message must name {name!r}: {info.value}"


# ---- strided views are read with their strides (or copied) -------------------------------------


@needs_triton_cpu
def test_strided_bias_conv_compress_and_patch_embed(seed):
    x, w = torch.randn(2, 17, 8), torch.randn(6, 8, 2, 2)
    bias = torch.randn(12)[::2]
    want = hk.conv_compress(x, w, bias, grid=4, backend="torch")
    torch.testing.assert_close(hk.conv_compress(x, w, bias, grid=4, backend="triton"), want)
    frames = torch.randint(0, 256, (1, 28, 28, 3), dtype=torch.uint8)
    w, bias, cls, pos = (
        torch.randn(8, 3, 14, 14) / 40,
        torch.randn(16)[::2],
        torch.randn(8),
        torch.randn(5, 8),
    )
    want = hk.patch_embed(frames, w, bias, cls, pos, backend="torch")
    got = hk.patch_embed(frames, w, bias, cls, pos, backend="triton")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@needs_triton_cpu
def test_strided_cu_seqlens_attention(seed):
    q, k, v = (torch.randn(40, 2, 64) for _ in range(3))
    cu = torch.tensor([0, 9, 20, 99, 30, 99, 40], dtype=torch.int32)[::2]  # [0, 20, 30, 40]
    want = hk.attention(q, k, v, cu_seqlens=cu, backend="torch")
    torch.testing.assert_close(hk.attention(q, k, v, cu_seqlens=cu, backend="triton"), want)


@needs_triton_cpu
def test_strided_cu_seqlens_segment_topk_in_a_subprocess():
    # It corrupted the heap (glibc double free): run it where a crash cannot take pytest down.
    out = run_isolated(
        """
        import torch
        from haic_kernels import token_prune as tp
        torch.manual_seed(0)
        s, k = torch.randn(30), torch.tensor([3, 4])
        cu = torch.tensor([0, 99, 10, 99, 30])[::2]
        got = tp.segment_topk(s, cu, k, backend="triton")
        want = tp.segment_topk(s, cu, k, backend="torch")
        print(bool(torch.equal(got, want)), int(got.sum()))
        """
    )
    assert out.split() == ["True", "7"]


@needs_triton_cpu
def test_strided_index_gather_rows(seed):
    x = torch.randn(10, 4)
    index = torch.tensor([1, 0, 3, 0, 5, 0])[::2]
    assert torch.equal(tp.gather_rows(x, index, backend="triton"), x[index])


# ---- metadata is checked, and kernels stay in bounds when it lies ------------------------------


def test_max_seqlen_shorter_than_cu_seqlens_is_refused():
    q, k, v = (torch.randn(40, 2, 64) for _ in range(3))
    cu = torch.tensor([0, 40], dtype=torch.int32)
    _raises_naming("max_seqlen", lambda: hk.attention(q, k, v, cu_seqlens=cu, max_seqlen=17))
    s, kk = torch.randn(300), torch.tensor([100])
    cu = torch.tensor([0, 300])
    _raises_naming("max_seqlen", lambda: tp.segment_topk(s, cu, kk, max_seqlen=10))
    _raises_naming("max_seqlen", lambda: tp.segment_topk(s, cu, kk, max_seqlen=-5))


def test_huge_max_seqlen_is_capped_not_launched(seed):
    s, kk, cu = torch.randn(300), torch.tensor([100]), torch.tensor([0, 300])
    keep = tp.segment_topk(s, cu, kk, max_seqlen=2**40)  # was a hang: a grid of 2^33 programs
    assert int(keep.sum()) == 100


@needs_triton_cpu
def test_attention_kernel_never_returns_unwritten_rows_past_a_lying_max_seqlen(seed):
    """What the CUDA path relies on (there the check is an asynchronous assert): a grid sized
    from a too-small max_seqlen computes the rows it covers and writes NaN to the rest, and
    boundaries past the buffers are clamped (the old kernel returned rows it never wrote, values
    up to 1e38)."""
    q, k, v = (torch.randn(40, 2, 64) for _ in range(3))
    cu = torch.tensor([0, 40], dtype=torch.int32)
    want = attention_reference(q, k, v, cu_seqlens=cu)
    poisoned = lambda shape, dtype, device: poison_(torch.empty(shape, dtype=dtype))
    kw = dict(block_ids=None, causal=True, scale=0.125, need_lse=True, alloc=poisoned)
    for hint in (1, 17, 33):
        out, lse, _ = attention_triton(
            q, k, v, cu_seqlens=cu, cu_seqlens_k=cu, key_scores=None, max_seqlen=hint,
            max_seqlen_k=hint, **kw,
        )  # fmt: skip
        # The grid covers whole blocks of the interpreter's tile (16 rows at most 16, else 32).
        covered = min(40, -(-hint // (16 if hint <= 16 else 32)) * (16 if hint <= 16 else 32))
        torch.testing.assert_close(out[:covered], want[0][:covered])
        torch.testing.assert_close(lse[:, :covered], want[1][:, :covered])
        assert out[covered:].isnan().all() and lse[:, covered:].isnan().all()
    lying = torch.tensor([0, 35, 900], dtype=torch.int32)  # past the 40 rows
    out, _, _ = attention_triton(
        q, k, v, cu_seqlens=lying, cu_seqlens_k=lying, key_scores=torch.ones(40, dtype=torch.bool),
        max_seqlen=900, max_seqlen_k=900, **kw,
    )  # fmt: skip
    assert out.shape == q.shape


@needs_triton_cpu
def test_segment_topk_kernel_ranks_past_a_lying_max_seqlen(seed):
    s = torch.randn(300)
    cu = torch.tensor([0, 300], dtype=torch.int32)
    k = torch.tensor([100], dtype=torch.int32)
    keep = torch.zeros(300, dtype=torch.int8)
    segment_topk_triton(s, cu, k, keep, 10)  # the grid covers 128 of 300: the rest is strided
    assert torch.equal(keep.bool(), tp.segment_topk(s, cu, k, backend="torch"))
    guarded = torch.full((364,), 7, dtype=torch.int8)
    lying = torch.tensor([0, 5, 3, 1 << 30], dtype=torch.int32)
    segment_topk_triton(s, lying, torch.tensor([2, 1, 4], dtype=torch.int32), guarded[:300], 2)
    assert bool((guarded[300:] == 7).all()), "wrote past the keep buffer"


def test_routing_raw_constructor_validates():
    ids = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    bad_offsets = dict(expert_ids=ids, perm=torch.tensor([0, 2, 1, 3]),
                       offsets=torch.tensor([0, 2, 3]), num_experts=2)  # fmt: skip
    _raises_naming("offsets", lambda: hk.Routing(**bad_offsets))
    bad_perm = dict(expert_ids=ids, perm=torch.tensor([0, 2, 1, 7]),
                    offsets=torch.tensor([0, 2, 4]), num_experts=2)  # fmt: skip
    _raises_naming("perm", lambda: hk.Routing(**bad_perm))
    assert not hasattr(hk.Routing, "from_token_types"), "the token-type rule is the model's"


@needs_triton_cpu
def test_routing_out_of_range_perm_in_a_subprocess():
    # A perm entry out of range SIGSEGV'd the Triton kernel: now the constructor refuses it, and
    # the kernel clamps indices even when handed a lying perm directly.
    out = run_isolated(
        """
        import torch, haic_kernels as hk
        from haic_kernels.ops.expert_linear.triton import expert_linear_triton
        ids = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
        try:
            hk.Routing(expert_ids=ids, perm=torch.tensor([0, 2, 1, 70000000], dtype=torch.int32),
                       offsets=torch.tensor([0, 2, 4], dtype=torch.int32), num_experts=2)
        except ValueError as e:
            print("refused", str(e).split(":")[0])
        x, ws = torch.randn(4, 16), [torch.randn(16, 16), torch.randn(16, 16)]
        out = torch.zeros(4, 16)
        perm = torch.tensor([0, 2, 1, 70000000], dtype=torch.int32)
        offsets = torch.tensor([0, 2, 9], dtype=torch.int32)
        expert_linear_triton(x, ws, [None, None], perm, offsets, out)
        print("survived")
        """
    )
    assert out.split() == ["refused", "perm", "survived"]


# ---- value semantics ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN inputs
@pytest.mark.parametrize(
    "backend", ["torch", "sdpa", pytest.param("triton", marks=needs_triton_cpu)]
)
def test_nan_in_a_masked_key_does_not_leak(seed, backend):
    q, k, v = (torch.randn(1, 6, 2, 64) for _ in range(3))
    v[0, 5] = NAN  # the last key: only the last query row sees it (causal)
    k[0, 4, 0, 3] = INF  # key 4: rows 4 and 5 see it, in kv head 0 (whatever the logit's sign)
    out = hk.attention(q, k, v, causal=True, backend=backend)
    bad_rows = (~torch.isfinite(out)).any(-1)[0]  # [S, H]
    assert bad_rows.tolist() == [[False, False]] * 4 + [[True, False], [True, True]]


def _same_non_finite(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    assert torch.equal(fa, fb), f"{what}: non-finite entries differ"
    torch.testing.assert_close(a[fa], b[fb], atol=1e-5, rtol=1e-5, msg=what)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN inputs
@needs_triton_cpu
@pytest.mark.parametrize("packed", [False, True])
def test_non_finite_values_agree_across_backends(seed, packed):
    """The documented rule, on every CPU backend: out, lse and key scores alike."""
    q, k, v = torch.randn(2, 40, 2, 64), torch.randn(2, 34, 2, 64), torch.randn(2, 34, 2, 64)
    q[0, 3, 1] = NAN  # sees keys: row NaN
    q[1, 2, 0, 0] = -INF  # Sq > Sk: rows 0..5 see nothing, so this row stays 0
    k[1, 10, 0, 7] = INF  # rows that see key 10 are NaN in the heads of kv head 0
    v[0, 20, 1, 5] = -INF  # out[i, h, 5] for rows that see it
    v[1, 33, 0, :] = NAN
    sel = torch.rand(2, 40) < 0.4
    kw = dict(causal=True, return_lse=True, key_scores=sel)
    if packed:
        cu_q = torch.tensor([0, 40, 80], dtype=torch.int32)
        cu_k = torch.tensor([0, 34, 68], dtype=torch.int32)
        q, k, v, sel = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), sel.flatten()
        kw.update(cu_seqlens=cu_q, cu_seqlens_k=cu_k, key_scores=sel)
    res = {b: hk.attention(q, k, v, backend=b, **kw) for b in ("torch", "triton", "sdpa")}
    want = res.pop("torch")
    assert not torch.isfinite(want.out).all() and torch.isfinite(want.out).any()
    for name, got in res.items():
        for field in ("out", "lse", "key_scores"):
            _same_non_finite(getattr(got, field), getattr(want, field), f"{name} {field}")


def test_op_parameters_reject_nonsense_values():
    frames = torch.randint(0, 256, (1, 14, 14, 3), dtype=torch.uint8)
    _raises_naming("std", lambda: hk.patchify(frames, std=(1e-50, 1.0, 1.0)))
    x, pos = torch.randn(3, 2, 8), torch.arange(3)
    _raises_naming("theta", lambda: hk.apply_rope(x, pos, theta=INF))
    _raises_naming("theta", lambda: hk.apply_rope(x, pos, theta=NAN))
    _raises_naming("position_ids", lambda: hk.apply_rope(x, torch.tensor([-1, 0, 1])))
    xm, target = torch.randn(1, 3, 4), torch.tensor([[0, 0, 2]])
    _raises_naming("sizes", lambda: tp.merge_weighted(xm, target, torch.tensor([[1.0, -1.0, 1.0]])))
    _raises_naming("sizes", lambda: tp.merge_weighted(xm, target, torch.tensor([[1.0, 0.0, 1.0]])))
    _raises_naming("lengths", lambda: tp.keep_counts(torch.tensor([-3, 4]), 0.5))


# ---- zero-size and meta inputs -----------------------------------------------------------------


@needs_triton_cpu
def test_zero_rows_gather_and_compact_on_triton():
    x = torch.randn(10, 4)
    assert tp.gather_rows(x, torch.zeros(0, dtype=torch.long), backend="triton").shape == (0, 4)
    assert tp.gather_rows(x[:0], torch.zeros(0, dtype=torch.long), backend="triton").shape == (0, 4)
    keep = torch.zeros(2, 5, dtype=torch.bool)
    c = tp.compact(torch.randn(2, 5, 4), keep, backend="triton")
    assert c.hidden.shape == (0, 4) and c.cu_seqlens.tolist() == [0, 0, 0] and c.max_seqlen == 0


def test_meta_mixed_with_cpu_names_the_argument():
    meta = lambda *s: torch.empty(*s, device="meta")
    _raises_naming(
        "weight", lambda: hk.conv_compress(meta(2, 17, 8), torch.randn(6, 8, 2, 2), None, grid=4)
    )
    _raises_naming(
        "k",
        lambda: hk.attention(meta(1, 4, 2, 64), torch.randn(1, 4, 2, 64), torch.randn(1, 4, 2, 64)),
    )
    _raises_naming("position_ids", lambda: hk.apply_rope(meta(3, 2, 8), torch.arange(3)))
    _raises_naming(
        "cu_seqlens", lambda: tp.segment_topk(meta(5), torch.tensor([0, 5]), torch.tensor([2]))
    )
    _raises_naming("index", lambda: tp.gather_rows(meta(3, 4), torch.tensor([0])))
    _raises_naming("target", lambda: tp.merge_weighted(meta(1, 3, 4), torch.tensor([[0, 0, 2]])))
    _raises_naming(
        "keep",
        lambda: tp.compact(meta(2, 5, 4), torch.zeros(2, 5, dtype=torch.bool, device="meta")),
    )


def test_all_meta_inputs_propagate_shapes():
    meta = lambda *s, **kw: torch.empty(*s, device="meta", **kw)
    assert hk.apply_rope(meta(3, 2, 8), meta(3, dtype=torch.long)).device.type == "meta"
    assert tp.frame_cosine_scores(meta(3, 4, 8)).shape == (3, 4)
    out = hk.attention(meta(10, 2, 64), meta(10, 2, 64), meta(10, 2, 64),
                       cu_seqlens=meta(3, dtype=torch.int32))  # fmt: skip
    assert out.shape == (10, 2, 64) and out.device.type == "meta"
    assert hk.conv_compress(meta(2, 17, 8), meta(6, 8, 2, 2), None, grid=4).shape == (2, 4, 6)
    u8 = meta(2, 28, 28, 3, dtype=torch.uint8)
    assert hk.patchify(u8).shape == (2, 4, 588)
    assert hk.patch_embed(u8, meta(8, 3, 14, 14), meta(8), meta(8), meta(5, 8)).shape == (2, 5, 8)
    route = hk.Routing.from_expert_ids(meta(6, dtype=torch.long), 2)
    assert hk.expert_linear(meta(6, 4), [meta(5, 4), meta(5, 4)], None, route).shape == (6, 5)
    i32 = torch.int32
    assert tp.segment_topk(meta(6), meta(3, dtype=i32), meta(2, dtype=i32)).shape == (6,)
    assert tp.gather_rows(meta(6, 3), meta(2, dtype=torch.long)).shape == (2, 3)
    assert tp.merge_weighted(meta(2, 3, 4), meta(2, 3, dtype=torch.long))[0].shape == (2, 3, 4)
    q, cache, new = meta(2, 1, 4, 64), meta(2, 8, 2, 64), meta(2, 1, 2, 64)
    out = hk.attention_with_kvcache(q, cache, cache, meta(2, dtype=i32), k=new, v=new)
    assert out.shape == q.shape and out.device.type == "meta"


def test_trusted_values_skips_value_checks_and_their_kernels_only_inside(seed):
    """The decode loop's `trusted_values`: inside, a value check computes and checks nothing (a
    callable predicate is not even called); outside, the same check raises naming the argument,
    and the public ops are checked as ever."""
    calls = []

    def bad():
        calls.append(1)
        return torch.tensor([False])

    with trusted_values():
        check_values(bad, "x: never checked here")
        assert calls == []
    with pytest.raises(ValueError, match=r"^x: checked"):
        check_values(bad, "x: checked")
    assert calls == [1]
    qkv = torch.randn(3, 4 * 8)
    with pytest.raises(ValueError, match="position_ids"):
        hk.rope_qkv(qkv, torch.tensor([0, -1, 2]), num_heads=2, num_kv_heads=1)
    lying = torch.tensor([0, 5, 3])
    with trusted_values():  # the packed rule's values and a given max_seqlen are not checked
        assert check_cu_seqlens("cu", lying, 3, lying.device).tolist() == [0, 5, 3]
        assert check_max_seqlen("max_seqlen", 1, lying, 3) == 1
    with pytest.raises(ValueError, match=r"^cu: expected non-decreasing"):
        check_cu_seqlens("cu", lying, 3, lying.device)
