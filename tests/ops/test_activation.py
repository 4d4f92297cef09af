"""bias_gelu / silu_mul: against the models' own eager expressions in the same dtype and an fp64
oracle (the parity rule), the fused [gate | up] layout, errors, opcheck and compile."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from haic_kernels import backends
from haic_kernels.backends import BackendUnavailable
from haic_kernels.ops.activation import api, bias_gelu, silu_mul
from haic_kernels.testing import assert_parity
from tests._optests import HAS_CUDA, assert_raises_naming, op_backends, poison_outputs


@pytest.fixture
def poisoned(monkeypatch):
    poison_outputs(monkeypatch, api)


def _gelu64(v):
    v = v.double()
    return 0.5 * v * (1 + torch.special.erf(v / math.sqrt(2.0)))


def _silu_mul64(g, u):
    g = g.double()
    return g / (1 + torch.exp(-g)) * u.double()


# (leading dims, N): decode, odd widths, a width over one column tile (1024) with a ragged tail
SHAPES = [((1,), 64), ((7,), 97), ((2, 3), 130), ((5,), 1025), ((1, 1), 1)]
IDS = [f"{'x'.join(map(str, lead))}-N{n}" for lead, n in SHAPES]
DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(("lead", "n"), SHAPES, ids=IDS)
@pytest.mark.parametrize("backend", op_backends())
def test_bias_gelu(seed, poisoned, backend, lead, n, dtype):
    x = (2 * torch.randn(*lead, n)).to(dtype)
    b = torch.randn(n).to(dtype)
    got = bias_gelu(x, b, backend=backend)
    assert got.shape == x.shape and got.dtype == dtype and got.is_contiguous()
    model = F.gelu(x + b)  # EVA2's fc1 (bias in the GEMM, rounded) then F.gelu
    assert_parity(got, model, _gelu64(x.double() + b.double()), what=f"{backend} {seed}")
    assert_parity(bias_gelu(x, backend=backend), F.gelu(x), _gelu64(x), what=f"no bias {seed}")


@pytest.mark.parametrize("fused", [False, True], ids=["two-tensors", "gate-up"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(("lead", "n"), SHAPES, ids=IDS)
@pytest.mark.parametrize("backend", op_backends())
def test_silu_mul(seed, poisoned, backend, lead, n, dtype, fused):
    gu = (3 * torch.randn(*lead, 2 * n)).to(dtype)
    g, u = gu[..., :n], gu[..., n:]
    got = silu_mul(gu, backend=backend) if fused else silu_mul(g.clone(), u.clone(),
                                                                backend=backend)  # fmt: skip
    assert got.shape == g.shape and got.dtype == dtype and got.is_contiguous()
    model = F.silu(g) * u  # language.MLP: silu(gate_proj(x)) * up_proj(x)
    assert_parity(got, model, _silu_mul64(g, u), what=f"{backend} {seed}")


@pytest.mark.parametrize("backend", op_backends())
def test_strided_rows(seed, backend):
    big = torch.randn(6, 300)
    x = big[:, 10:110]  # row stride 300, unit column stride: read in place
    b = torch.randn(100)
    torch.testing.assert_close(bias_gelu(x, b, backend=backend), F.gelu(x + b))
    g, u = big[:, :50], big[:, 200:250]
    torch.testing.assert_close(silu_mul(g, u, backend=backend), F.silu(g) * u)


def test_liger_backend_unavailable_here_is_explicit():
    if backends.liger().usable and HAS_CUDA:
        pytest.skip("Liger is usable here; the GPU test covers it")
    with pytest.raises(BackendUnavailable, match="liger"):
        silu_mul(torch.randn(3, 8), backend="liger")
    with pytest.raises(ValueError, match="silu_mul only"):
        bias_gelu(torch.randn(3, 8), backend="liger")


BAD = {
    "x-int": (lambda: bias_gelu(torch.zeros(3, 4).long()), TypeError, ["x", "int64"]),
    "bias-shape": (lambda: bias_gelu(torch.randn(3, 4), torch.randn(5)), ValueError,
                   ["bias", "(4,)"]),
    "bias-2d": (lambda: bias_gelu(torch.randn(3, 4), torch.randn(1, 4)), ValueError, ["bias"]),
    "odd-fused": (lambda: silu_mul(torch.randn(3, 7)), ValueError, ["gate", "even"]),
    "up-shape": (lambda: silu_mul(torch.randn(3, 4), torch.randn(3, 5)), ValueError,
                 ["up", "(3, 4)"]),
    "up-dtype": (lambda: silu_mul(torch.randn(3, 4), torch.randn(3, 4).half()), TypeError,
                 ["up", "float16"]),
    "backend": (lambda: silu_mul(torch.randn(3, 4), backend="cuda"), ValueError, ["backend"]),
    "grad": (lambda: bias_gelu(torch.randn(3, 4, requires_grad=True)), RuntimeError,
             ["no backward"]),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_arguments(kind):
    assert_raises_naming(*BAD[kind])


def test_opcheck(seed):
    a, b = torch.randn(5, 24), torch.randn(5, 24)
    for args in ((a, b[0], "gelu"), (a, None, "gelu"), (a, b, "silu_mul")):
        torch.library.opcheck(torch.ops.haic_kernels.activation.default, (*args, "torch"))


def test_torch_compile_fullgraph(seed):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(gu, b):
        return silu_mul(gu).sum() + bias_gelu(gu, b).sum()

    gu, b = torch.randn(4, 16), torch.randn(16)
    torch.testing.assert_close(f(gu, b), silu_mul(gu).sum() + bias_gelu(gu, b).sum())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("t", "n"), [(1, 14336), (6168, 15360), (1624, 14336), (97, 1025)])
@pytest.mark.parametrize("backend", ["triton", "liger"])
def test_gpu_parity(seed, poisoned, backend, t, n, dtype):
    if backend == "liger" and not backends.liger().usable:
        pytest.skip(f"liger: {backends.liger().reason}")
    gu = (3 * torch.randn(t, 2 * n, device="cuda")).to(dtype)
    g, u = gu[:, :n], gu[:, n:]
    assert_parity(silu_mul(gu, backend=backend), F.silu(g) * u, _silu_mul64(g, u),
                  what=f"silu_mul {seed}")  # fmt: skip
    if backend == "triton":
        b = torch.randn(n, device="cuda").to(dtype)
        assert_parity(bias_gelu(g, b, backend=backend), F.gelu(g + b),
                      _gelu64(g.double() + b.double()), what=f"bias_gelu {seed}")  # fmt: skip
