"""conv_compress: reference vs independent oracles, fast backends vs the parity rule, errors,
compile, and the CUDA gather kernel emulated on the host.

The fp64 oracle sums the four taps explicitly (x[:, kh::2, kw::2] @ weight[:, :, kh, kw].T), a
different code path from the reference's F.conv2d; the reference is also checked against a
stock nn.Conv2d as the reference model applies it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from haic_kernels.backends import BackendUnavailable
from haic_kernels.ops import _weight_cache
from haic_kernels.ops.conv_compress.api import conv_compress
from haic_kernels.ops.conv_compress.reference import conv_compress_reference
from haic_kernels.testing import assert_parity
from tests._emulation import run_emulation
from tests._triton import needs_triton_cpu, triton_on_cpu

HAS_CUDA = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parents[2]

# (frames, grid, C, C_out, CLS row): odd frame counts, C and C_out off the 32-wide tiles.
SHAPES = [(1, 4, 32, 32, True), (3, 6, 40, 24, False), (25, 4, 24, 40, True), (3, 2, 8, 16, True)]
SHAPE_IDS = [f"F{n}-g{g}-C{c}-O{o}-{'cls' if k else 'nocls'}" for n, g, c, o, k in SHAPES]


def _inputs(n, g, c, c_out, cls, dtype, device="cpu", bias=True):
    x = torch.randn(n, g * g + int(cls), c, device=device).to(dtype)
    w = (torch.randn(c_out, c, 2, 2, device=device) / (2 * c**0.5)).to(dtype)
    b = torch.randn(c_out, device=device).to(dtype) if bias else None
    return x, w, b


def _oracle(x, w, b, g) -> torch.Tensor:
    """fp64 [F, (g/2)^2, C_out] by an explicit sum over the 2x2 taps."""
    n, tokens, c = x.shape
    grid = x[:, tokens - g * g :].double().reshape(n, g, g, c)
    wd = w.double()
    y = sum(grid[:, kh::2, kw::2, :] @ wd[:, :, kh, kw].T for kh in (0, 1) for kw in (0, 1))
    if b is not None:
        y = y + b.double()
    return y.reshape(n, (g // 2) ** 2, -1)


def _check(fast, x, w, b, g, what):
    same = conv_compress_reference(x, w, b, g)
    oracle = _oracle(x, w, b, g)
    assert fast.shape == oracle.shape and fast.dtype == x.dtype and fast.is_contiguous()
    assert_parity(fast, same, oracle, what=what)


# ---- the reference against independent computations -------------------------------------------


@pytest.mark.parametrize(("n", "g", "c", "o", "cls"), SHAPES, ids=SHAPE_IDS)
def test_reference_matches_oracle(seed, n, g, c, o, cls):
    x, w, b = _inputs(n, g, c, o, cls, torch.float32)
    out = conv_compress(x, w, b, grid=g, backend="torch")
    torch.testing.assert_close(out.double(), _oracle(x, w, b, g), atol=2e-5, rtol=0)


def test_reference_matches_model_conv(seed):
    """As the reference model's compress step does it: stock nn.Conv2d on the [F, C, g, g] grid."""
    n, g, c = 3, 4, 24
    conv = torch.nn.Conv2d(c, c, kernel_size=2, stride=2)
    x = torch.randn(n, 1 + g * g, c)
    with torch.no_grad():
        want = conv(x[:, 1:].reshape(n, g, g, c).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        for backend in ["torch", *(["triton"] if triton_on_cpu() else [])]:
            got = conv_compress(x, conv.weight, conv.bias, grid=g, backend=backend)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


# ---- Triton (interpreter on CPU) vs the parity rule --------------------------------------------


DTYPES = [torch.float32, torch.float16]
DTYPE_IDS = ["fp32", "fp16"]


@needs_triton_cpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("n", "g", "c", "o", "cls"), SHAPES, ids=SHAPE_IDS)
def test_triton_parity(seed, poison_outputs, n, g, c, o, cls, dtype):
    x, w, b = _inputs(n, g, c, o, cls, dtype, bias=(n != 25))
    out = conv_compress(x, w, b, grid=g, backend="triton")
    _check(out, x, w, b, g, f"triton seed={seed}")


def _views(dtype, device="cpu"):
    """Non-contiguous x: every other frame, a channel slice, channel stride 2, token-major."""
    big = torch.randn(6, 17, 80, device=device).to(dtype)
    yield "frame-stride", big[::2, :, :40], 4
    yield "channel-slice", big[1:4, 1:, 8:48], 4
    yield "channel-stride", big[:3, :, ::2], 4
    yield "token-major", torch.randn(37, 3, 24, device=device).to(dtype).transpose(0, 1), 6


@needs_triton_cpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_triton_non_contiguous(seed, poison_outputs, dtype):
    for name, x, g in _views(dtype):
        assert not x.is_contiguous()
        c = x.shape[-1]
        w = (torch.randn(24, c, 2, 2) / (2 * c**0.5)).to(dtype)
        b = torch.randn(24).to(dtype)
        out = conv_compress(x, w, b, grid=g, backend="triton")
        _check(out, x, w, b, g, f"triton {name} seed={seed}")


@needs_triton_cpu
def test_weight_cache_reuse_and_invalidation(seed):
    x, w, b = _inputs(3, 4, 32, 24, True, torch.float32)
    before = _weight_cache.weight_cache_size()
    out1 = conv_compress(x, w, b, grid=4, backend="triton")
    out2 = conv_compress(x, w, b, grid=4, backend="triton")
    assert torch.equal(out1, out2) and _weight_cache.weight_cache_size() == before + 1
    with torch.no_grad():
        w[:, :, 1, 0] *= -3.0  # in place through an index: bumps the version counter
    out3 = conv_compress(x, w, b, grid=4, backend="triton")
    torch.testing.assert_close(out3.double(), _oracle(x, w, b, 4), atol=2e-5, rtol=0)
    assert _weight_cache.weight_cache_size() == before + 1
    del w
    assert _weight_cache.weight_cache_size() == before


def test_empty_inputs():
    x, w, b = _inputs(0, 4, 8, 8, True, torch.float32)
    assert conv_compress(x, w, b, grid=4).shape == (0, 4, 8)


# ---- argument checks ---------------------------------------------------------------------------


def _call(**over):
    x, w, b = _inputs(2, 4, 8, 12, True, torch.float32)
    a = dict(x=x, weight=w, bias=b, grid=4)
    a.update(over)
    kw = {k: a.pop(k) for k in ("grid", "backend") if k in a}
    return conv_compress(a["x"], a["weight"], a["bias"], **kw)


BAD_CALLS = {
    "x-int": (dict(x=torch.zeros(2, 17, 8, dtype=torch.int32)), TypeError, ["x", "int32"]),
    "x-float64": (dict(x=torch.zeros(2, 17, 8, dtype=torch.float64)), TypeError, ["x"]),
    "x-2d": (dict(x=torch.zeros(17, 8)), ValueError, ["x", "3 dims"]),
    "x-tokens": (dict(x=torch.zeros(2, 15, 8)), ValueError, ["x", "17", "16"]),
    "grid-odd": (dict(grid=3, x=torch.zeros(2, 10, 8)), ValueError, ["grid", "even"]),
    "grid-zero": (dict(grid=0), ValueError, ["grid", ">= 1"]),
    "grid-float": (dict(grid=4.0), TypeError, ["grid"]),
    "weight-C": (dict(weight=torch.zeros(12, 9, 2, 2)), ValueError, ["weight", "[C_out, 8, 2, 2]"]),
    "weight-kernel": (dict(weight=torch.zeros(12, 8, 3, 3)), ValueError, ["weight"]),
    "weight-dtype": (
        dict(weight=torch.zeros(12, 8, 2, 2, dtype=torch.float16)),
        TypeError,
        ["weight", "float32"],
    ),
    "bias-shape": (dict(bias=torch.zeros(11)), ValueError, ["bias", "(12,)"]),
    "bias-dtype": (dict(bias=torch.zeros(12, dtype=torch.bfloat16)), TypeError, ["bias"]),
    "device": (dict(bias=torch.zeros(12, device="meta")), ValueError, ["bias", "meta"]),
    "backend": (dict(backend="cutlass"), ValueError, ["backend", "cutlass"]),
}


@pytest.mark.parametrize(("over", "exc", "words"), list(BAD_CALLS.values()), ids=list(BAD_CALLS))
def test_bad_arguments(over, exc, words):
    with pytest.raises(exc) as info:
        _call(**over)
    msg = str(info.value)
    for word in words:
        assert word in msg, f"{word!r} missing from: {msg}"


def test_requires_grad_is_refused_but_no_grad_works():
    x, w, b = _inputs(2, 4, 8, 12, True, torch.float32)
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="weight: requires grad"):
        conv_compress(x, w, b, grid=4)
    with torch.inference_mode():
        assert conv_compress(x, w, b, grid=4).shape == (2, 4, 12)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-tensor refusal of backend='cuda'")
def test_cuda_backend_refuses_cpu_tensor():
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' cannot run here: needs CUDA"):
        _call(backend="cuda")


# ---- torch.library registration ----------------------------------------------------------------


def test_opcheck(seed):
    x, w, b = _inputs(3, 4, 16, 8, True, torch.float32)
    cases = [(x, w, b, 4, "torch"), (x[:, 1:], w, None, 4, "torch"), (x[::2], w, b, 4, "torch")]
    if triton_on_cpu():
        cases.append((x, w, b, 4, "triton"))
    for args in cases:
        torch.library.opcheck(torch.ops.haic_kernels.conv_compress.default, args)


def test_torch_compile_fullgraph(seed):
    # backend="triton" on CPU is left out: resolve_backend's interpreter probe is not traceable.
    torch._dynamo.reset()
    x, w, b = _inputs(3, 4, 16, 8, True, torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def compress(x, w, b):
        return conv_compress(x, w, b, grid=4, backend="torch").relu()

    torch.testing.assert_close(compress(x, w, b), conv_compress(x, w, b, grid=4).relu())


# ---- the CUDA gather kernel, emulated on the host ----------------------------------------------


def test_gather2x2_kernel_host_emulation(tmp_path):
    """csrc/gather2x2.cu compiled by g++ against csrc/emu shims; bit-exact vs a host loop over
    vector/element paths, misaligned bases, padded and channel-strided inputs; UBSan alignment.
    """
    out = run_emulation(tmp_path, "gather2x2.cu", "gather2x2_emu.cpp", timeout=120)
    assert "all ok" in out


def _ext_has_gather() -> bool:
    try:
        import haic_kernels._C as C
    except ImportError:
        return False
    return hasattr(C, "gather2x2")


@pytest.mark.skipif(not _ext_has_gather(), reason="haic_kernels._C is not built")
@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"elem_size": 3}, "elem_size"),
        ({"grid": 5, "shape": (1, 25, 8)}, "even"),
        ({"shape": (1, 15, 8)}, "tokens"),
        ({"strides": (-1, 8, 1)}, "non-negative"),
        ({"x_ptr": 0}, "non-null"),
    ],
)
def test_gather2x2_binding_checks_arguments(over, words):
    """These checks run before any CUDA call, so they are safe without a GPU."""
    import haic_kernels._C as C

    kw = dict(
        x_ptr=1 << 20,
        shape=(1, 17, 8),
        strides=(136, 8, 1),
        elem_size=2,
        grid=4,
        out_ptr=2 << 20,
        stream=0,
    )
    kw.update(over)
    with pytest.raises(ValueError, match=words):
        C.gather2x2(**kw)


# ---- GPU: the Triton implicit GEMM and the compiled gather + cuBLAS path -----------------------

GPU_SHAPES = [
    *SHAPES,
    (24, 16, 1792, 1792, True),
    (5, 16, 1792, 1792, False),
    (3, 32, 256, 128, True),
]
GPU_IDS = [f"F{n}-g{g}-C{c}-O{o}-{'cls' if k else 'nocls'}" for n, g, c, o, k in GPU_SHAPES]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(("n", "g", "c", "o", "cls"), GPU_SHAPES, ids=GPU_IDS)
def test_gpu_parity(seed, poison_outputs, backend, n, g, c, o, cls, dtype):
    x, w, b = _inputs(n, g, c, o, cls, dtype, "cuda", bias=(n != 25))
    out = conv_compress(x, w, b, grid=g, backend=backend)
    assert out.device == x.device
    _check(out, x, w, b, g, f"{backend} seed={seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
def test_gpu_non_contiguous(seed, poison_outputs, backend, dtype):
    for name, x, g in _views(dtype, "cuda"):
        c = x.shape[-1]
        w = (torch.randn(24, c, 2, 2, device="cuda") / (2 * c**0.5)).to(dtype)
        b = torch.randn(24, device="cuda").to(dtype)
        out = conv_compress(x, w, b, grid=g, backend=backend)
        _check(out, x, w, b, g, f"{backend} {name} seed={seed}")


@pytest.mark.gpu
def test_gpu_auto_and_compile(seed, monkeypatch):
    x, w, b = _inputs(24, 16, 1792, 1792, True, torch.bfloat16, "cuda")
    monkeypatch.setenv("HAIC_TRUST_UNVERIFIED", "1")
    compiled = torch.compile(lambda *a: conv_compress(*a, grid=16), fullgraph=True)
    _check(compiled(x, w, b), x, w, b, 16, "compiled auto")
