"""patchify: reference vs independent oracles, fast backends vs the parity rule, errors, compile.

The fp64 oracle is built from F.unfold (a different code path from the reference's permute), and
the layout is also checked against F.conv2d through the patch-embed matmul identity.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haic_kernels import backends
from haic_kernels.backends import BackendUnavailable
from haic_kernels.constants import CLIP_MEAN, CLIP_STD
from haic_kernels.ops.patchify import api
from haic_kernels.ops.patchify.api import patchify
from haic_kernels.ops.patchify.ops import scale_shift
from haic_kernels.ops.patchify.reference import patchify_reference
from haic_kernels.testing import assert_parity, poison_
from tests._triton import needs_triton_cpu

HAS_CUDA = torch.cuda.is_available()

# (frames, H, W, patch): odd frame counts, non-square grids, p=14 (EVA2-CLIP) and small p.
SHAPES = [
    (1, 14, 14, 14),
    (3, 28, 42, 14),
    (25, 56, 56, 14),
    (25, 8, 12, 4),
    (3, 6, 10, 2),
]
SHAPE_IDS = [f"F{n}-{h}x{w}-p{p}" for n, h, w, p in SHAPES]


def _frames(n: int, h: int, w: int, device: str = "cpu") -> torch.Tensor:
    # Values 1..255 (never all zeros); fresh per test through the `seed` fixture.
    return torch.randint(1, 256, (n, h, w, 3), dtype=torch.uint8, device=device)


def _k_pad(p: int, k_multiple: int) -> int:
    return -(-3 * p * p // k_multiple) * k_multiple


def _oracle(frames: torch.Tensor, p: int, k_pad: int, mean=CLIP_MEAN, std=CLIP_STD):
    """fp64 patch rows via F.unfold on the normalized NCHW image (independent of the reference)."""
    x = frames.to(torch.float64).permute(0, 3, 1, 2) / 255.0  # [F, 3, H, W]
    m = torch.tensor(mean, dtype=torch.float64, device=frames.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64, device=frames.device).view(1, 3, 1, 1)
    cols = F.unfold((x - m) / s, kernel_size=p, stride=p)  # [F, 3*p*p, L], (c, kh, kw) order
    rows = cols.transpose(1, 2)
    return F.pad(rows, (0, k_pad - rows.shape[-1])).contiguous()


# ---- the reference against independent computations -------------------------------------------


@pytest.mark.parametrize("k_multiple", [1, 8])
@pytest.mark.parametrize(("n", "h", "w", "p"), SHAPES, ids=SHAPE_IDS)
def test_reference_matches_unfold_oracle(seed, n, h, w, p, k_multiple):
    frames = _frames(n, h, w)
    k_pad = _k_pad(p, k_multiple)
    out = patchify(frames, patch_size=p, k_multiple=k_multiple, backend="torch")
    assert out.shape == (n, (h // p) * (w // p), k_pad)
    assert out.dtype == torch.float32 and out.is_contiguous()
    # fp32 arithmetic on values of magnitude <= ~2.2: a few ulps (2.4e-7 each) at most.
    torch.testing.assert_close(out.double(), _oracle(frames, p, k_pad), atol=2e-6, rtol=0)
    assert torch.equal(out[..., 3 * p * p :], torch.zeros_like(out[..., 3 * p * p :]))


def test_reference_matches_loops(seed):
    n, h, w, p = 3, 28, 42, 14
    frames = _frames(n, h, w)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.7)
    out = patchify(frames, patch_size=p, mean=mean, std=std, backend="torch")
    g = torch.Generator().manual_seed(seed)
    for _ in range(6):
        f, ph, pw = (int(torch.randint(0, k, (1,), generator=g)) for k in (n, h // p, w // p))
        row = out[f, ph * (w // p) + pw]
        k = 0
        for c in range(3):
            for kh in range(p):
                for kw in range(p):
                    x = int(frames[f, ph * p + kh, pw * p + kw, c])
                    want = (x / 255.0 - mean[c]) / std[c]
                    assert abs(float(row[k]) - want) < 2e-6, (f, ph, pw, c, kh, kw)
                    k += 1


@pytest.mark.parametrize("k_multiple", [1, 8])
def test_matmul_equals_conv2d(seed, k_multiple):
    """patchify(x) @ W.reshape(D, -1).T + b == Conv2d(3, D, p, stride=p)(normalized x) flattened."""
    n, h, w, p, d = 2, 28, 42, 14, 24
    frames = _frames(n, h, w)
    weight = torch.randn(d, 3, p, p, dtype=torch.float64)
    bias = torch.randn(d, dtype=torch.float64)
    rows = patchify(frames, patch_size=p, k_multiple=k_multiple, backend="torch").double()
    w2 = F.pad(weight.reshape(d, -1), (0, rows.shape[-1] - 3 * p * p))
    got = rows @ w2.T + bias  # [F, P, D]

    x = frames.to(torch.float64).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        CLIP_STD, dtype=torch.float64
    ).view(1, 3, 1, 1)
    conv = F.conv2d(x, weight, bias, stride=p)  # [F, D, H/p, W/p]
    want = conv.flatten(2).transpose(1, 2)
    # Only the fp32 rounding of the rows differs: |err| <~ K * 2.4e-7 * |w| ~ 1e-4 worst case.
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


# ---- Triton (interpreter on CPU) vs the parity rule --------------------------------------------


def _check_parity(fast, frames, p, k_pad, dtype, what):
    same = patchify_reference(frames, p, CLIP_MEAN, CLIP_STD, dtype, k_pad)
    oracle = _oracle(frames.cpu(), p, k_pad)
    assert fast.shape == oracle.shape and fast.dtype == dtype
    assert_parity(fast, same, oracle, what=what)
    assert torch.equal(fast[..., 3 * p * p :].cpu(), torch.zeros_like(fast[..., 3 * p * p :].cpu()))


@needs_triton_cpu
@pytest.mark.parametrize("k_multiple", [1, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("n", "h", "w", "p"), SHAPES, ids=SHAPE_IDS)
def test_triton_parity(seed, poison_outputs, n, h, w, p, dtype, k_multiple):
    frames = _frames(n, h, w)
    out = patchify(frames, patch_size=p, dtype=dtype, k_multiple=k_multiple, backend="triton")
    _check_parity(out, frames, p, _k_pad(p, k_multiple), dtype, f"triton seed={seed}")


def _views(device: str = "cpu"):
    """Non-contiguous frames: a crop, every other frame, every other pixel column."""
    big = _frames(7, 40, 60, device)
    yield "crop", big[1:4, 3:31, 5:47, :]  # 3 x 28 x 42
    yield "frame-stride", big[::2, :28, :56, :]  # 4 x 28 x 56
    yield "pixel-stride", big[:2, :28, ::2, :][:, :, :28, :]  # stride_w = 6
    planar = _frames(2, 28, 28, device).permute(0, 3, 1, 2).contiguous()  # [F, 3, H, W] bytes
    yield "channel-stride", planar.permute(0, 2, 3, 1)  # [F, H, W, 3] view, channel stride H*W


@needs_triton_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_non_contiguous(seed, poison_outputs, dtype):
    for name, frames in _views():
        assert not frames.is_contiguous()
        out = patchify(frames, dtype=dtype, k_multiple=8, backend="triton")
        _check_parity(out, frames, 14, 592, dtype, f"triton {name} seed={seed}")


@needs_triton_cpu
def test_triton_launcher_writes_every_element(seed):
    """The launcher on its own, into a NaN buffer: every element (padding too) gets written."""
    from haic_kernels.ops.patchify.triton import patchify_triton

    frames = _frames(3, 28, 42)
    scale, shift = scale_shift(list(CLIP_MEAN), list(CLIP_STD))
    out = poison_(torch.empty(3, 6, 600, dtype=torch.float32))
    patchify_triton(frames, out, 14, scale, shift)
    assert not out.isnan().any()
    _check_parity(out, frames, 14, 600, torch.float32, "triton launcher")


def test_empty_inputs():
    for shape in [(0, 28, 28, 3), (2, 0, 28, 3), (2, 28, 0, 3)]:
        out = patchify(torch.zeros(shape, dtype=torch.uint8), k_multiple=8)
        assert out.shape == (shape[0], (shape[1] // 14) * (shape[2] // 14), 592)


# ---- argument checks ---------------------------------------------------------------------------


NAN = float("nan")


def _ok():
    return torch.randint(1, 256, (2, 28, 28, 3), dtype=torch.uint8)


def _u8(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.uint8)


# (call, exception, words the message must contain): the argument's name and what was expected.
BAD_CALLS = {
    "float-frames": (
        lambda: patchify(_ok().float()),
        TypeError,
        ["frames", "uint8", "patch_embed"],
    ),
    "not-a-tensor": (lambda: patchify([[1, 2, 3]]), TypeError, ["frames", "torch.Tensor"]),
    "ndim-3": (lambda: patchify(_ok()[0]), ValueError, ["frames", "4 dims"]),
    "channels-4": (lambda: patchify(_u8(1, 14, 14, 4)), ValueError, ["frames", "3 channels"]),
    "H-indivisible": (lambda: patchify(_u8(1, 15, 14, 3)), ValueError, ["frames", "patch_size=14"]),
    "W-indivisible": (lambda: patchify(_u8(1, 14, 20, 3)), ValueError, ["frames", "W=20"]),
    "patch-0": (lambda: patchify(_ok(), patch_size=0), ValueError, ["patch_size", ">= 1"]),
    "patch-float": (lambda: patchify(_ok(), patch_size=14.0), TypeError, ["patch_size"]),
    "mean-len": (lambda: patchify(_ok(), mean=(0.5, 0.5)), ValueError, ["mean", "3 numbers"]),
    "mean-nan": (lambda: patchify(_ok(), mean=(0.5, NAN, 0.5)), ValueError, ["mean", "finite"]),
    "std-len": (lambda: patchify(_ok(), std=(0.5,) * 4), ValueError, ["std", "3 numbers"]),
    "std-zero": (lambda: patchify(_ok(), std=(0.5, 0.0, 0.5)), ValueError, ["std", "> 0"]),
    "std-negative": (lambda: patchify(_ok(), std=(0.5, -0.2, 0.5)), ValueError, ["std", "> 0"]),
    # 1e-50 passes a != 0 test but 1/std overflows: the check bounds the normalized values
    "std-tiny": (lambda: patchify(_ok(), std=(1e-50, 1, 1)), ValueError, ["std", "too small"]),
    "std-fp16": (
        lambda: patchify(_ok(), std=(1e-5, 1, 1), dtype=torch.float16),
        ValueError,
        ["std", "float16"],
    ),
    "std-type": (lambda: patchify(_ok(), std="abc"), TypeError, ["std"]),
    "dtype": (lambda: patchify(_ok(), dtype=torch.float64), ValueError, ["dtype", "float64"]),
    "k_multiple-0": (lambda: patchify(_ok(), k_multiple=0), ValueError, ["k_multiple", ">= 1"]),
    "backend": (lambda: patchify(_ok(), backend="cutlass"), ValueError, ["backend", "cutlass"]),
}


@pytest.mark.parametrize(("call", "exc", "words"), list(BAD_CALLS.values()), ids=list(BAD_CALLS))
def test_bad_arguments(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for word in words:
        assert word in msg, f"{word!r} missing from: {msg}"


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-tensor refusal of backend='cuda'")
def test_cuda_backend_refuses_cpu_tensor():
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' cannot run here: needs CUDA"):
        patchify(_ok(), backend="cuda")


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-tensor refusal of backend='triton'")
def test_triton_backend_refuses_cpu_tensor_without_interpreter(monkeypatch):
    if not backends.triton().available:
        pytest.skip("triton is not installed")
    from haic_kernels.ops import _common

    monkeypatch.setattr(_common, "interpreting", lambda: False)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        patchify(_ok(), backend="triton")


def test_auto_on_cpu_is_torch(seed):
    frames = _ok()
    assert api._resolve_backend("auto", frames) == "torch"
    assert torch.equal(patchify(frames), patchify(frames, backend="torch"))


# ---- torch.library registration ----------------------------------------------------------------


def test_opcheck(seed):
    frames = _frames(3, 28, 42)
    cases = [
        (frames, 14, list(CLIP_MEAN), list(CLIP_STD), torch.float32, 588, "torch"),
        (frames[:, :, :28], 14, [0.5, 0.5, 0.5], [0.25, 0.5, 1.0], torch.bfloat16, 592, "torch"),
        (frames[::2], 2, list(CLIP_MEAN), list(CLIP_STD), torch.float16, 16, "torch"),
    ]
    for args in cases:
        torch.library.opcheck(torch.ops.haic_kernels.patchify.default, args)


def test_torch_compile_fullgraph(seed):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def embed(frames, weight):
        return patchify(frames, k_multiple=8, backend="torch") @ weight

    frames = _frames(3, 28, 42)
    weight = torch.randn(592, 16)
    want = patchify(frames, k_multiple=8, backend="torch") @ weight
    torch.testing.assert_close(embed(frames, weight), want)


# ---- GPU: the CUDA kernel and Triton compiled for the device -----------------------------------

GPU_SHAPES = [*SHAPES, (24, 224, 224, 14), (5, 224, 448, 14), (2, 64, 2400, 2), (1, 80, 80, 40)]
GPU_IDS = [f"F{n}-{h}x{w}-p{p}" for n, h, w, p in GPU_SHAPES]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("k_multiple", [1, 8])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(("n", "h", "w", "p"), GPU_SHAPES, ids=GPU_IDS)
def test_gpu_parity(seed, poison_outputs, backend, n, h, w, p, dtype, k_multiple):
    frames = _frames(n, h, w, "cuda")
    out = patchify(frames, patch_size=p, dtype=dtype, k_multiple=k_multiple, backend=backend)
    assert out.device == frames.device
    _check_parity(out, frames, p, _k_pad(p, k_multiple), dtype, f"{backend} seed={seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
def test_gpu_non_contiguous(seed, poison_outputs, backend, dtype):
    for name, frames in _views("cuda"):
        out = patchify(frames, dtype=dtype, k_multiple=8, backend=backend)
        _check_parity(out, frames, 14, 592, dtype, f"{backend} {name} seed={seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("offset", [0, 1, 3, 5])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
def test_gpu_cuda_misaligned_output(seed, dtype, offset):
    """The CUDA launcher into a buffer that starts off a 16-byte boundary (scalar head/tail)."""
    from haic_kernels.ops.patchify.cuda import patchify_cuda

    frames = _frames(3, 28, 42, "cuda")
    flat = poison_(torch.empty(3 * 6 * 590 + offset, dtype=dtype, device="cuda"))
    out = flat[offset:].view(3, 6, 590)
    patchify_cuda(frames, out, 14, *scale_shift(list(CLIP_MEAN), list(CLIP_STD)))
    _check_parity(out, frames, 14, 590, dtype, f"cuda offset={offset}")
    if offset:
        assert flat[:offset].isnan().all()


@pytest.mark.gpu
def test_gpu_auto_and_compile(seed, monkeypatch):
    frames = _frames(4, 56, 56, "cuda")
    monkeypatch.setenv("HAIC_TRUST_UNVERIFIED", "1")
    want = "cuda" if backends.cuda_ext().usable else "triton"
    assert api._resolve_backend("auto", frames) == want
    compiled = torch.compile(
        lambda x: patchify(x, dtype=torch.bfloat16, k_multiple=8), fullgraph=True
    )
    _check_parity(compiled(frames), frames, 14, 592, torch.bfloat16, "compiled auto")


@pytest.mark.gpu
def test_gpu_cuda_ext_is_usable():
    """On the GPU machines (sm_80 / sm_90) the extension must be built and usable."""
    b = backends.cuda_ext()
    assert b.usable, b.reason
