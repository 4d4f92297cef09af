"""fp8_linear: the quantizer (Triton == PyTorch bit for bit, the e4m3 error bound, an fp64 oracle
of the quantization), the emulated linear against an fp64 quantize -> matmul -> dequantize, its
error against the bf16 linear's, the prepared weight, errors, opcheck and compile; on a GPU the
scaled_mm path against the emulated one."""

from __future__ import annotations

import pytest
import torch

from haic_kernels.backends import BackendUnavailable
from haic_kernels.ops.fp8_linear import E4M3_MAX, Fp8Weight, fp8_linear, quantize_rows
from tests._optests import HAS_CUDA, assert_raises_naming, op_backends, tiled_fixture

tiled = tiled_fixture("haic_kernels.ops.fp8_linear.triton")


def _e4m3_grid() -> torch.Tensor:
    """Every finite non-negative e4m3fn value, as fp64."""
    vals = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).double()
    return torch.unique(vals[torch.isfinite(vals) & (vals >= 0)])


def _quantize64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: fp64 scale, nearest e4m3 value by search over the grid (ties to even code)."""
    xd = x.double()
    amax = xd.abs().amax(-1).clamp_min(1e-12)
    v = (xd * (E4M3_MAX / amax)[:, None]).clamp(-E4M3_MAX, E4M3_MAX)
    grid = _e4m3_grid()
    idx = torch.searchsorted(grid, v.abs()).clamp(1, len(grid) - 1)
    lo, hi = grid[idx - 1], grid[idx]
    d_lo, d_hi = v.abs() - lo, hi - v.abs()
    # ties: the even code (codes of consecutive grid values alternate in parity)
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (idx % 2 == 0))
    q = torch.where(pick_hi, hi, lo) * v.sign()
    return q, amax / E4M3_MAX


SHAPES = [(1, 64), (9, 97), (33, 300), (4, 1)]


@pytest.mark.parametrize(("m", "k"), SHAPES, ids=[f"{m}x{k}" for m, k in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("backend", op_backends())
def test_quantize_rows(seed, tiled, backend, m, k, dtype):
    x = (torch.randn(m, k) * torch.logspace(-3, 2, m)[:, None]).to(dtype)
    if m > 2:
        x[1] = 0  # an all-zero row: scale from the floor, q all zero
    q, scale = quantize_rows(x, backend=backend)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (m, k) and scale.shape == (m,)
    q_ref, s_ref = quantize_rows(x, backend="torch")
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)), f"q differs ({seed})"
    assert torch.equal(scale, s_ref)
    q64, s64 = _quantize64(x)
    torch.testing.assert_close(scale.double(), s64, rtol=2e-7, atol=0)
    # fp32 vs fp64 scaling can land on the other side of a rounding midpoint: one grid step
    # apart at most (adjacent codes), and rarely (one element in 64 was seen: the count allows
    # one in any row of fewer than 100)
    diff = q.double() != q64
    assert diff.sum() <= max(1, 0.01 * diff.numel()), f"{int(diff.sum())} of q differ ({seed})"
    code = q.view(torch.uint8).int() & 0x7F
    code64 = q64.to(torch.float8_e4m3fn).view(torch.uint8).int() & 0x7F  # q64 is on the grid
    assert ((code - code64).abs()[diff] == 1).all(), f"q more than one step from fp64 ({seed})"
    # the e4m3 bound: half an ulp (2^-4 relative) for normals, 2^-10 absolute below 2^-6
    err = (q.double() * scale.double()[:, None] - x.double()).abs()
    bound = torch.maximum(x.double().abs() * 2**-4, 2**-10 * scale.double()[:, None])
    assert (err <= bound * 1.0001).all(), f"quantization error over the e4m3 bound ({seed})"


def test_e4m3_rounding_edges():
    """Values just under a power of two round up into the next binade (the interpreter's own
    conversion gets these wrong: the reason for the kernel's explicit rounding), ties go even."""
    x = torch.tensor([[448.0, 31.9, 7.97, 0.499, -127.9, 1.0625, 1.1875, 0.0029296875, -1e-4]])
    for backend in op_backends():
        q, scale = quantize_rows(x, backend=backend)
        assert scale.item() == 1.0
        # 1.0625, 1.1875, 1.5 * 2^-9 (a subnormal) are ties: to the even code
        want = [448.0, 32.0, 8.0, 0.5, -128.0, 1.0, 1.25, 0.00390625, -0.0]
        assert q.float().tolist()[0] == want, backend
        assert q.view(torch.uint8)[0, -1] == 0x80, "a negative value rounding to 0 keeps its sign"


def test_fp8_linear_emulated_matches_fp64_quantize_matmul_dequantize(seed):
    m, k, n = 19, 160, 48
    x = torch.randn(m, k)
    w, b = torch.randn(n, k) * 0.05, torch.randn(n)
    pw = Fp8Weight.from_linear(w, b)
    y = fp8_linear(x, pw, backend="emulated")
    assert y.shape == (m, n) and y.dtype == x.dtype
    qx, sx = quantize_rows(x)
    # fp64 on the library's quantized operands: the emulated matmul and dequantization
    y64 = (qx.double() @ pw.qweight.double().t()) * sx.double()[:, None]
    y64 = y64 * pw.scale.double()[None, :] + b.double()
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    # fp64 on the oracle's own quantization: equal but for rare one-step rounding differences
    q64x, s64x = _quantize64(x)
    q64w, s64w = _quantize64(w)
    y_oracle = (q64x @ q64w.t()) * s64x[:, None] * s64w[None, :] + b.double()
    rel = (y.double() - y_oracle).norm() / y_oracle.norm()
    assert rel < 1e-3, f"emulated vs fp64 oracle: relative error {rel:.2e} ({seed})"


def test_fp8_error_is_bounded_against_bf16(seed):
    """E4M3 keeps 3 mantissa bits: each operand's relative rounding error has an RMS of about
    2^-4/sqrt(3) = 0.036, so a product of two quantized operands about 0.05 (random signs keep
    the dot product's relative error there). bf16 (8 bits) is ~30x finer."""
    m, k, n = 64, 512, 96
    x = torch.randn(m, k)
    w = torch.randn(n, k) / k**0.5
    exact = x.double() @ w.double().t()
    y8 = fp8_linear(x, Fp8Weight.from_linear(w), backend="emulated").double()
    y16 = (x.bfloat16() @ w.bfloat16().t()).double()
    e8 = ((y8 - exact).norm() / exact.norm()).item()
    e16 = ((y16 - exact).norm() / exact.norm()).item()
    assert e8 < 0.08, f"fp8 relative error {e8:.4f} over the e4m3 bound"
    assert e16 < e8 < 64 * e16, f"fp8 {e8:.4f} vs bf16 {e16:.5f}"


def test_fp8_weight_from_linear(seed):
    w = torch.randn(8, 32)
    w[2] = 0
    pw = Fp8Weight.from_linear(w)
    assert pw.out_features == 8 and pw.in_features == 32 and pw.bias is None
    assert pw.qweight.dtype == torch.float8_e4m3fn and pw.scale.dtype == torch.float32
    torch.testing.assert_close(pw.scale, w.abs().amax(-1).clamp_min(1e-12) / E4M3_MAX,
                               rtol=2e-7, atol=0)  # fmt: skip
    assert (pw.dequantize()[2] == 0).all()
    err = (pw.dequantize() - w).abs()
    assert (err <= w.abs() * 2**-4 + 2**-10 * pw.scale[:, None] + 1e-12).all()


def test_leading_dims_and_auto(seed):
    pw = Fp8Weight.from_linear(torch.randn(16, 32))
    x = torch.randn(2, 3, 32)
    y = fp8_linear(x, pw)  # auto on CPU: emulated
    torch.testing.assert_close(y, fp8_linear(x.reshape(6, 32), pw).view(2, 3, 16))


def test_scaled_mm_unavailable_here_is_explicit():
    if HAS_CUDA:
        pytest.skip("a CUDA device is present; the GPU test covers scaled_mm")
    pw = Fp8Weight.from_linear(torch.randn(16, 32))
    with pytest.raises(BackendUnavailable, match="scaled_mm"):
        fp8_linear(torch.randn(3, 32), pw, backend="scaled_mm")


BAD = {
    "x-int": (lambda: quantize_rows(torch.zeros(3, 4).long()), TypeError, ["x", "int64"]),
    "x-3d": (lambda: quantize_rows(torch.randn(2, 3, 4)), ValueError, ["x", "[M, K]"]),
    "weight-type": (lambda: fp8_linear(torch.randn(3, 4), torch.randn(5, 4)), TypeError,
                    ["weight", "Fp8Weight"]),
    "k": (lambda: fp8_linear(torch.randn(3, 5), Fp8Weight.from_linear(torch.randn(6, 4))),
          ValueError, ["x", "[..., 4]"]),
    "bias": (lambda: Fp8Weight.from_linear(torch.randn(6, 4), torch.randn(5)), ValueError,
             ["bias", "(6,)"]),
    "backend": (lambda: fp8_linear(torch.randn(3, 4), Fp8Weight.from_linear(torch.randn(6, 4)),
                                   backend="triton"), ValueError, ["backend"]),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_arguments(kind):
    assert_raises_naming(*BAD[kind])


def test_opcheck(seed):
    x = torch.randn(5, 32)
    # test_schema compares outputs with arithmetic fp8 tensors lack on the CPU: skip that one
    checks = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.haic_kernels.quantize_rows.default, (x, "torch"),
                          test_utils=checks)  # fmt: skip
    pw = Fp8Weight.from_linear(torch.randn(16, 32), torch.randn(16))
    qx, sx = quantize_rows(x)
    args = (x, pw.qweight, pw.scale, pw.bias, qx, sx, "emulated")
    torch.library.opcheck(torch.ops.haic_kernels.fp8_linear.default, args, test_utils=checks)


def test_torch_compile_fullgraph(seed):
    torch._dynamo.reset()
    pw = Fp8Weight.from_linear(torch.randn(16, 32))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        return fp8_linear(x, pw).sum()

    x = torch.randn(4, 32)
    torch.testing.assert_close(f(x), fp8_linear(x, pw).sum())


@pytest.mark.gpu
@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 6144), (1624, 4096, 14336), (6168, 1792,
                                           15360), (97, 14336, 4096)])  # fmt: skip
def test_gpu_scaled_mm_matches_emulated(seed, m, k, n):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("scaled_mm needs sm_89+ (fp8 tensor cores)")
    x = torch.randn(m, k, device="cuda").bfloat16()
    pw = Fp8Weight.from_linear(torch.randn(n, k, device="cuda").bfloat16() * 0.02,
                               torch.randn(n, device="cuda").bfloat16())  # fmt: skip
    q_t, s_t = quantize_rows(x, backend="triton")
    q_r, s_r = quantize_rows(x, backend="torch")
    assert torch.equal(q_t.view(torch.uint8), q_r.view(torch.uint8)) and torch.equal(s_t, s_r)
    fast = fp8_linear(x, pw, backend="scaled_mm").float()
    emu = fp8_linear(x.float(), pw, backend="emulated")  # fp32 out: the exact-ish target
    # both consume the same quantized operands: they differ by bf16 output rounding and fp32
    # accumulation order
    torch.testing.assert_close(fast, emu, rtol=2**-7, atol=1e-2 * emu.abs().mean().item())
