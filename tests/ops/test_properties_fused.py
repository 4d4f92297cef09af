"""The property suite (tests/ops/test_properties.py's rules and drawing helpers) over the fused
ops of issue 14: the norms and the activations. Each CPU backend must match an fp64 oracle (2x
rule against the op's own reference at the input dtype) or raise ValueError/TypeError naming an
argument, on drawn shapes (empty ones included), layouts and dtypes."""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import haic_kernels as hk
from haic_kernels.ops.activation.reference import activation_reference
from haic_kernels.ops.norm.reference import row_norm_reference
from haic_kernels.testing import assert_parity
from tests.ops.test_properties import (
    BACKENDS,
    FLOATS,
    SETTINGS,
    floats_of,
    gen_of,
    layouts,
    run_or_named_error,
)


def _norm_oracle(x, r, w, b, eps, kind, mode):
    """fp64 of the formula, the residual rounded where the models round it."""
    h = (x + r).double() if mode == "pre" else x.double()
    if kind == "rms":
        y = w.double() * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    else:
        mu = h.mean(-1, keepdim=True)
        y = (h - mu) * torch.rsqrt((h - mu).pow(2).mean(-1, keepdim=True) + eps) * w.double()
        y = y + b.double() if b is not None else y
    if mode == "post":
        return [r.double() + y.to(x.dtype).double()]
    return [y, h] if mode == "pre" else [y]


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    t=st.integers(0, 9),
    d=st.integers(0, 12),
    kind=st.sampled_from(["rms", "layer"]),
    residual=st.booleans(),
    bias=st.booleans(),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_norms(data, t, d, kind, residual, bias, dtype, seed):
    g = gen_of(seed)
    x = data.draw(layouts([t, d], floats_of(dtype, 1.0, g)))
    # A row constant along D (a stride-0 last dim) has variance 0: LayerNorm's output is then
    # the rounding error of the mean times rsqrt(eps) (~300x), an ill-conditioned problem the
    # 2x rule cannot judge (torch's Welford mean happens to be exact there, ours is one ulp off:
    # 8e-5 absolute in fp32). Left out of this draw; README "Fused kernels" notes it.
    assume(not (kind == "layer" and d > 1 and x.stride(-1) == 0))
    r = data.draw(layouts([t, d], floats_of(dtype, 1.0, g))) if residual else None
    w = data.draw(layouts([d], floats_of(dtype, 1.0, g)))
    b = data.draw(layouts([d], floats_of(dtype, 1.0, g))) if bias and kind == "layer" else None
    eps = 1e-5
    mode = ("pre" if kind == "rms" else "post") if residual else "none"
    names = {"x", "residual", "weight", "bias"}
    for backend in BACKENDS:
        if kind == "rms":
            fn = hk.add_rms_norm if residual else hk.rms_norm
            args = (x, r, w) if residual else (x, w)
        else:
            fn = hk.add_layer_norm if residual else hk.layer_norm
            args = (x, r, w, b) if residual else (x, w, b)
        out = run_or_named_error(names, fn, *args, eps=eps, backend=backend)
        if out is None:
            assert d == 0, f"{fn.__name__} {backend}: refused a valid call"
            continue
        outs = list(out) if isinstance(out, tuple) else [out]
        flat = [v.reshape(-1, max(d, 1)) for v in (x, r) if v is not None]
        same = row_norm_reference(flat[0].contiguous(), None if r is None else
                                  flat[1].contiguous(), w, b, eps, kind, mode)  # fmt: skip
        ref = _norm_oracle(x, r, w, b, eps, kind, mode)
        for o, s, f in zip(outs, same, ref):
            assert o.shape == x.shape and o.dtype == x.dtype
            assert_parity(o, s.view(x.shape), f, what=f"{fn.__name__} {backend}")


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    t=st.integers(0, 9),
    n=st.integers(0, 12),
    kind=st.sampled_from(["gelu", "gelu no bias", "silu_mul", "silu_mul fused"]),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_activations(data, t, n, kind, dtype, seed):
    g = gen_of(seed)
    x = data.draw(layouts([t, 2 * n if kind == "silu_mul fused" else n],
                          floats_of(dtype, 2.0, g)))  # fmt: skip
    for backend in BACKENDS:
        if kind.startswith("gelu"):
            bias = data.draw(layouts([n], floats_of(dtype, 1.0, g))) if kind == "gelu" else None
            out = run_or_named_error({"x", "bias"}, hk.bias_gelu, x, bias, backend=backend)
            v = x.double() + (bias.double() if bias is not None else 0.0)
            ref = 0.5 * v * (1 + torch.erf(v / 2**0.5))
            same = activation_reference(x.contiguous(), bias, "gelu")
        else:
            up = None if kind == "silu_mul fused" else data.draw(layouts([t, n], floats_of(
                dtype, 2.0, g)))  # fmt: skip
            out = run_or_named_error({"gate", "up"}, hk.silu_mul, x, up, backend=backend)
            gate, u = (x[:, :n], x[:, n:]) if up is None else (x, up)
            ref = torch.nn.functional.silu(gate.double()) * u.double()
            same = activation_reference(gate.contiguous(), u.contiguous(), "silu_mul")
        assert out is not None, f"{kind} {backend}: refused a valid call"
        assert out.shape == ref.shape and out.dtype == dtype
        assert_parity(out, same, ref, what=f"{kind} {backend}")
