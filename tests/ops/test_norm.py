"""norm ops (rms_norm, add_rms_norm, layer_norm, add_layer_norm): against the models' own modules
in the same dtype (CogVLM2's RMSNorm, nn.LayerNorm) and an fp64 oracle (the parity rule), the
models' exact numbers, the tiled path, errors, opcheck and compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haic_kernels import backends
from haic_kernels.backends import BackendUnavailable
from haic_kernels.models.cogvlm2.language import RMSNorm
from haic_kernels.ops.norm import add_layer_norm, add_rms_norm, api, layer_norm, rms_norm
from haic_kernels.testing import assert_parity
from tests._optests import (
    HAS_CUDA,
    assert_raises_naming,
    op_backends,
    poison_outputs,
    tiled_fixture,
)


@pytest.fixture
def poisoned(monkeypatch):
    poison_outputs(monkeypatch, api)


tiled = tiled_fixture("haic_kernels.ops.norm.triton")


def _rms64(h, w, eps):
    h = h.double()
    return w.double() * h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def _ln64(h, w, b, eps):
    h = h.double()
    c = h - h.mean(-1, keepdim=True)
    return c / torch.sqrt(c.pow(2).mean(-1, keepdim=True) + eps) * w.double() + b.double()


def _model_rms(h, w, eps):
    m = RMSNorm(h.shape[-1], eps).to(h.device, w.dtype)
    with torch.no_grad():
        m.weight.copy_(w)
        return m(h)


def _model_ln(h, w, b, eps):
    m = torch.nn.LayerNorm(h.shape[-1], eps=eps).to(h.device, h.dtype)
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
        return m(h)


def _assert_model_numbers(got, model, rounded_before=None):
    """The model's own numbers in a 16-bit dtype: at most one ulp apart anywhere (fp32 sums in
    another order can cross a rounding boundary) and equal almost everywhere. In fp32 itself the
    two differ by a few ulps of fp32 (summation order); the parity rule covers that.
    ``rounded_before``: an intermediate rounded to the dtype before a final add (post-norm's
    LayerNorm output), whose ulp then bounds the difference too."""
    if got.dtype == torch.float32:
        return
    mag = model.abs().float()
    if rounded_before is not None:
        mag = torch.maximum(mag, rounded_before.abs().float())
    ulp = torch.finfo(got.dtype).eps * mag.clamp_min(1e-3)
    diff = (got.float() - model.float()).abs()
    # one ulp; two with an intermediate rounding (its ulp, then the add's)
    ulps = 1.01 if rounded_before is None else 2.01
    assert (diff <= ulp * ulps).all(), f"max diff {diff.max():.3e} is over {ulps:.0f} ulp"
    # equal almost everywhere: at most 1% of the elements one ulp off, and one in a short row
    # (64 elements: a single rounding-boundary crossing is the docstring's expected case)
    off = int((diff != 0).sum())
    assert off <= max(1, diff.numel() // 100), f"{off} of {diff.numel()} elements differ"


# (leading dims, D): decode, odd rows, the vision / LM widths scaled down, a non-power-of-2 width
SHAPES = [((1,), 64), ((7,), 97), ((2, 5), 130), ((3, 1), 1), ((33,), 256)]
IDS = [f"{'x'.join(map(str, lead))}-D{d}" for lead, d in SHAPES]
DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(("lead", "d"), SHAPES, ids=IDS)
@pytest.mark.parametrize("backend", op_backends())
def test_add_rms_norm(seed, poisoned, tiled, backend, lead, d, dtype):
    x = torch.randn(*lead, d).to(dtype)
    res = (3 * torch.randn(*lead, d)).to(dtype)
    w = (1 + 0.1 * torch.randn(d)).to(dtype)
    y, h = add_rms_norm(x, res, w, eps=1e-5, backend=backend)
    want_h = x + res  # the model's add, in the dtype
    assert torch.equal(h, want_h), f"residual out differs ({seed})"
    model = _model_rms(want_h, w, 1e-5)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    assert_parity(y, model, _rms64(x.double() + res.double(), w, 1e-5), what=f"{backend} {seed}")
    _assert_model_numbers(y, model)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(("lead", "d"), SHAPES, ids=IDS)
@pytest.mark.parametrize("backend", op_backends())
def test_rms_norm(seed, poisoned, tiled, backend, lead, d, dtype):
    x = (2 * torch.randn(*lead, d)).to(dtype)
    w = torch.randn(d)  # fp32 weight with a low-precision input: upcast, as the model does
    y = rms_norm(x, w, eps=1e-6, backend=backend)
    model = _model_rms(x, w, 1e-6)
    assert_parity(y, model, _rms64(x, w, 1e-6), what=f"{backend} {seed}")
    _assert_model_numbers(y, model)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(("lead", "d"), SHAPES, ids=IDS)
@pytest.mark.parametrize("backend", op_backends())
def test_add_layer_norm_is_eva2_post_norm(seed, poisoned, tiled, backend, lead, d, dtype):
    # mean far from 0: a one-pass E[x^2] - mean^2 variance would lose the fp32 digits here
    x = (5 + torch.randn(*lead, d)).to(dtype)
    res = torch.randn(*lead, d).to(dtype)
    w, b = torch.randn(d).to(dtype), torch.randn(d).to(dtype)
    out = add_layer_norm(x, res, w, b, eps=1e-6, backend=backend)
    normed = _model_ln(x, w, b, 1e-6)
    model = res + normed  # EVA2's h = x + input_layernorm(attn(x))
    oracle = res.double() + _ln64(x, w, b, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    assert_parity(out, model, oracle, what=f"{backend} {seed}")
    if d > 1:  # D = 1: torch's CPU LayerNorm forms x*rstd - mean*rstd, which at zero variance
        # leaves fp32 noise times rstd = 1/sqrt(eps); the kernel subtracts first and gives b
        _assert_model_numbers(out, model, rounded_before=normed)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("backend", op_backends())
def test_layer_norm_with_and_without_bias(seed, poisoned, tiled, backend, dtype):
    x = torch.randn(9, 100).to(dtype)
    w, b = torch.randn(100).to(dtype), torch.randn(100).to(dtype)
    got = layer_norm(x, w, b, eps=1e-5, backend=backend)
    assert_parity(got, _model_ln(x, w, b, 1e-5), _ln64(x, w, b, 1e-5), what=f"{seed}")
    nob = layer_norm(x, w, None, eps=1e-5, backend=backend)
    want = F.layer_norm(x, (100,), w, None, 1e-5)
    assert_parity(nob, want, _ln64(x, w, torch.zeros(100), 1e-5), what=f"no bias {seed}")


@pytest.mark.parametrize("backend", op_backends())
def test_strided_input_rows(seed, backend):
    big = torch.randn(6, 2 * 48)
    x = big[:, :48]  # row stride 96: read in place
    w = torch.randn(48)
    torch.testing.assert_close(rms_norm(x, w, backend=backend), _model_rms(x, w, 1e-5))
    res = torch.randn(6, 48)
    y, h = add_rms_norm(x, res, w, backend=backend)
    torch.testing.assert_close(h, x + res, atol=0, rtol=0)
    torch.testing.assert_close(y, _model_rms(x + res, w, 1e-5))


def test_liger_backend_unavailable_here_is_explicit():
    b = backends.liger()
    x, w = torch.randn(3, 8), torch.randn(8)
    if b.usable and HAS_CUDA:
        pytest.skip("Liger is usable here; the GPU test covers it")
    with pytest.raises(BackendUnavailable, match="liger"):
        rms_norm(x, w, backend="liger")
    with pytest.raises(ValueError, match="rms_norm and add_rms_norm only"):
        layer_norm(x, w, None, backend="liger")


BAD = {
    "x-int": (lambda: rms_norm(torch.zeros(3, 4).long(), torch.ones(4)), TypeError, ["x", "int64"]),
    "w-shape": (lambda: rms_norm(torch.randn(3, 4), torch.ones(5)), ValueError, ["weight", "(4,)"]),
    "w-2d": (lambda: rms_norm(torch.randn(3, 4), torch.ones(1, 4)), ValueError, ["weight", "dims"]),
    "res-shape": (lambda: add_rms_norm(torch.randn(3, 4), torch.randn(2, 4), torch.ones(4)),
                  ValueError, ["residual", "(3, 4)"]),
    "res-dtype": (lambda: add_rms_norm(torch.randn(3, 4), torch.randn(3, 4).half(), torch.ones(4)),
                  TypeError, ["residual", "float16"]),
    "bias-shape": (lambda: layer_norm(torch.randn(3, 4), torch.ones(4), torch.ones(3)),
                   ValueError, ["bias", "(4,)"]),
    "eps": (lambda: rms_norm(torch.randn(3, 4), torch.ones(4), eps=-1.0), ValueError, ["eps"]),
    "empty-d": (lambda: rms_norm(torch.randn(3, 0), torch.ones(0)), ValueError, ["x", "D >= 1"]),
    "backend": (lambda: rms_norm(torch.randn(3, 4), torch.ones(4), backend="x"), ValueError,
                ["backend"]),
    "grad": (lambda: rms_norm(torch.randn(3, 4, requires_grad=True), torch.ones(4)), RuntimeError,
             ["no backward"]),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_arguments(kind):
    assert_raises_naming(*BAD[kind])


def test_zero_rows():
    y, h = add_rms_norm(torch.randn(0, 8), torch.randn(0, 8), torch.ones(8))
    assert y.shape == h.shape == (0, 8)


def test_opcheck(seed):
    x, r, w, b = torch.randn(5, 24), torch.randn(5, 24), torch.randn(24), torch.randn(24)
    for args in ((x, r, w, None, 1e-5, "rms", "pre"), (x, None, w, None, 1e-5, "rms", "none"),
                 (x, r, w, b, 1e-6, "layer", "post")):  # fmt: skip
        torch.library.opcheck(torch.ops.haic_kernels.row_norm.default, (*args, "torch"))


def test_torch_compile_fullgraph(seed):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, r, w):
        y, h = add_rms_norm(x, r, w)
        return y.sum() + h.sum()

    x, r, w = torch.randn(4, 16), torch.randn(4, 16), torch.randn(16)
    y, h = add_rms_norm(x, r, w)
    torch.testing.assert_close(f(x, r, w), y.sum() + h.sum())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("t", "d"), [(1, 4096), (6168, 1792), (1624, 4096), (97, 4097)])
@pytest.mark.parametrize("backend", ["triton", "liger"])
def test_gpu_parity(seed, poisoned, backend, t, d, dtype):
    if backend == "liger" and not backends.liger().usable:
        pytest.skip(f"liger: {backends.liger().reason}")
    x = torch.randn(t, d, device="cuda").to(dtype)
    res = (3 * torch.randn(t, d, device="cuda")).to(dtype)
    w = (1 + 0.1 * torch.randn(d, device="cuda")).to(dtype)
    y, h = add_rms_norm(x, res, w, backend=backend)
    assert torch.equal(h, x + res)
    model = _model_rms(x + res, w, 1e-5)
    assert_parity(y, model, _rms64(x.double() + res.double(), w, 1e-5), what=f"{seed}")
    _assert_model_numbers(y, model)
    if backend == "triton":
        b = torch.randn(d, device="cuda").to(dtype)
        out = add_layer_norm(x, res, w, b, backend=backend)
        model = res + _model_ln(x, w, b, 1e-6)
        assert_parity(out, model, res.double() + _ln64(x, w, b, 1e-6), what=f"ln {seed}")
