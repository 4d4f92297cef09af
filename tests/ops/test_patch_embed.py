"""patch_embed: reference vs independent oracles, fast backends vs the parity rule, errors, compile.

The fp64 oracle normalizes in fp64 and multiplies F.unfold patch rows by the flattened weight (a
different code path from the reference's F.conv2d); the reference is also checked against the
reference model's own PatchEmbedding module (stock nn.Conv2d + cat + positions).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haic_kernels.backends import BackendUnavailable
from haic_kernels.constants import CLIP_MEAN, CLIP_STD
from haic_kernels.ops import _weight_cache
from haic_kernels.ops.patch_embed import api
from haic_kernels.ops.patch_embed.api import patch_embed
from haic_kernels.ops.patch_embed.reference import patch_embed_reference
from haic_kernels.testing import assert_parity
from tests._triton import needs_triton_cpu, triton_on_cpu

HAS_CUDA = torch.cuda.is_available()
P = 14

# (frames, H, W, D): odd frame counts; sizes multiple of 14 but not 28 (42, 70) and of 28;
# D not a multiple of the interpreter's 32-wide tile (40, 48).
SHAPES = [(1, 14, 14, 32), (3, 28, 42, 48), (25, 28, 28, 40), (3, 42, 70, 32), (2, 56, 28, 64)]
SHAPE_IDS = [f"F{n}-{h}x{w}-D{d}" for n, h, w, d in SHAPES]


def _frames(n: int, h: int, w: int, device: str = "cpu") -> torch.Tensor:
    return torch.randint(1, 256, (n, h, w, 3), dtype=torch.uint8, device=device)


def _params(d: int, n_patches: int, dtype: torch.dtype, device: str = "cpu", bias: bool = True):
    """Conv2d-like weight scale (fan-in 588), cls/pos of magnitude ~1: sums stay O(1)."""
    w = (torch.randn(d, 3, P, P, device=device) / 3 / P).to(dtype)
    b = torch.randn(d, device=device).to(dtype) if bias else None
    cls = torch.randn(1, d, device=device).to(dtype)  # PatchEmbedding.cls_embedding: [1, D]
    pos = torch.randn(1 + n_patches, d, device=device).to(dtype)  # nn.Embedding.weight
    return w, b, cls, pos


def _oracle(frames, w, b, cls, pos, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """fp64 [F, 1+P, D] via F.unfold + matmul (independent of the reference's conv2d)."""
    if frames.dtype == torch.uint8:
        x = frames.to(torch.float64).permute(0, 3, 1, 2) / 255.0
        m = torch.tensor(mean, dtype=torch.float64, device=frames.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float64, device=frames.device).view(1, 3, 1, 1)
        x = (x - m) / s
    else:
        x = frames.to(w.dtype).to(torch.float64)  # the kernel's input rounding, then exact
    d = w.shape[0]
    rows = F.unfold(x, kernel_size=P, stride=P).transpose(1, 2)  # [F, P, 588], (c, kh, kw)
    y = rows @ w.double().reshape(d, -1).T
    if b is not None:
        y = y + b.double()
    y = torch.cat([cls.double().reshape(1, 1, d).expand(y.shape[0], 1, d), y], dim=1)
    return y + pos.double().reshape(1, -1, d)


def _check(fast, frames, w, b, cls, pos, what):
    same = patch_embed_reference(frames, w, b, cls, pos, CLIP_MEAN, CLIP_STD)
    oracle = _oracle(frames, w, b, cls, pos)
    assert fast.shape == oracle.shape and fast.dtype == w.dtype and fast.is_contiguous()
    assert_parity(fast, same, oracle, what=what)


# ---- the reference against independent computations -------------------------------------------


@pytest.mark.parametrize("as_float", [False, True], ids=["uint8", "float"])
@pytest.mark.parametrize(("n", "h", "w", "d"), SHAPES, ids=SHAPE_IDS)
def test_reference_matches_oracle(seed, n, h, w, d, as_float):
    frames = _frames(n, h, w)
    if as_float:
        frames = torch.randn(n, 3, h, w)
    params = _params(d, (h // P) * (w // P), torch.float32)
    out = patch_embed(frames, *params, backend="torch")
    # fp32 conv over K=588 terms of magnitude ~1: |err| ~ sqrt(588) * 2^-24 * few, far below 1e-4.
    torch.testing.assert_close(out.double(), _oracle(frames, *params), atol=1e-4, rtol=0)


def test_reference_matches_model_patch_embedding(seed):
    """The op as a drop-in for the reference model's PatchEmbedding (stock nn.Conv2d)."""
    from haic_kernels.models.cogvlm2.config import get_config
    from haic_kernels.models.cogvlm2.vision import PatchEmbedding, normalize_frames

    cfg = get_config("tiny", vision={"image_size": 28, "hidden_size": 32, "num_heads": 2})
    module = PatchEmbedding(cfg)
    with torch.no_grad():
        module.cls_embedding.normal_()
        module.position_embedding.weight.normal_()
        frames = _frames(3, 28, 28)
        want = module(normalize_frames(frames))
        for backend in ["torch", *(["triton"] if triton_on_cpu() else [])]:
            got = patch_embed(
                frames,
                module.proj.weight,
                module.proj.bias,
                module.cls_embedding,
                module.position_embedding.weight,
                backend=backend,
            )
            torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


# ---- Triton (interpreter on CPU) vs the parity rule --------------------------------------------


DTYPES = [torch.float32, torch.float16]
DTYPE_IDS = ["fp32", "fp16"]


@needs_triton_cpu
@pytest.mark.parametrize("as_float", [False, True], ids=["uint8", "float"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("n", "h", "w", "d"), SHAPES, ids=SHAPE_IDS)
def test_triton_parity(seed, poison_outputs, n, h, w, d, dtype, as_float):
    frames = torch.randn(n, 3, h, w) if as_float else _frames(n, h, w)
    params = _params(d, (h // P) * (w // P), dtype, bias=(n != 25))
    out = patch_embed(frames, *params, backend="triton")
    _check(out, frames, *params, f"triton seed={seed}")


def _views(device: str = "cpu"):
    """Non-contiguous frames: crops, every other frame, strided pixels, channels-last floats."""
    big = _frames(7, 40, 60, device)
    yield "crop", big[1:4, 3:31, 5:47, :]  # 3 x 28 x 42
    yield "frame-stride", big[::2, :28, :56, :]  # 4 x 28 x 56
    yield "pixel-stride", big[:2, :28, ::2, :][:, :, :28, :]  # stride_w = 6
    planar = _frames(2, 28, 28, device).permute(0, 3, 1, 2).contiguous()  # [F, 3, H, W] bytes
    yield "u8-channel-stride", planar.permute(0, 2, 3, 1)  # [F, H, W, 3] view, channel stride H*W
    nhwc = torch.randn(3, 28, 42, 3, device=device)
    yield "float-channels-last", nhwc.permute(0, 3, 1, 2)  # [F, 3, H, W], channel stride 1
    yield "float-crop", torch.randn(5, 3, 30, 50, device=device)[::2, :, 1:29, 4:46]


@needs_triton_cpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_triton_non_contiguous(seed, poison_outputs, dtype):
    for name, frames in _views():
        assert not frames.is_contiguous()
        h, w = (frames.shape[1:3]) if frames.dtype == torch.uint8 else frames.shape[2:]
        params = _params(40, (h // P) * (w // P), dtype)
        out = patch_embed(frames, *params, backend="triton")
        _check(out, frames, *params, f"triton {name} seed={seed}")


@needs_triton_cpu
def test_triton_custom_mean_std_and_param_shapes(seed):
    frames = _frames(3, 28, 42)
    w, b, cls, pos = _params(32, 6, torch.float32)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.7)
    kw = dict(mean=mean, std=std)
    out = patch_embed(frames, w, b, cls.reshape(1, 1, -1), pos[None], backend="triton", **kw)
    want = _oracle(frames, w, b, cls, pos, mean, std)
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=0)
    flat = patch_embed(frames, w, b, cls.reshape(-1), pos, backend="triton", **kw)
    assert torch.equal(out, flat)


@needs_triton_cpu
def test_weight_cache_reuse_and_invalidation(seed):
    """The re-laid-out weight is cached per tensor, refreshed on in-place writes, freed with it."""
    frames = _frames(3, 28, 42)
    w, b, cls, pos = _params(32, 6, torch.float32)
    before = _weight_cache.weight_cache_size()
    out1 = patch_embed(frames, w, b, cls, pos, backend="triton")
    assert _weight_cache.weight_cache_size() == before + 1
    out2 = patch_embed(frames, w, b, cls, pos, backend="triton")
    assert _weight_cache.weight_cache_size() == before + 1 and torch.equal(out1, out2)
    with torch.no_grad():
        w.mul_(-0.5)  # in place: bumps the version counter
    out3 = patch_embed(frames, w, b, cls, pos, backend="triton")
    torch.testing.assert_close(out3.double(), _oracle(frames, w, b, cls, pos), atol=1e-4, rtol=0)
    w.copy_(torch.randn_like(w) / 40)
    out4 = patch_embed(frames, w, b, cls, pos, backend="triton")
    torch.testing.assert_close(out4.double(), _oracle(frames, w, b, cls, pos), atol=1e-4, rtol=0)
    assert _weight_cache.weight_cache_size() == before + 1
    del w
    assert _weight_cache.weight_cache_size() == before


def test_empty_inputs():
    w, b, cls, pos = _params(16, 4, torch.float32)
    out = patch_embed(torch.zeros(0, 28, 28, 3, dtype=torch.uint8), w, b, cls, pos)
    assert out.shape == (0, 5, 16)


# ---- argument checks ---------------------------------------------------------------------------


def _ok_args(**over):
    frames = torch.randint(1, 256, (2, 28, 28, 3), dtype=torch.uint8)
    w, b, cls, pos = _params(16, 4, torch.float32)
    args = dict(frames=frames, weight=w, bias=b, cls=cls, pos=pos)
    args.update(over)
    return args


def _call(**over):
    a = _ok_args(**over)
    kw = {k: a.pop(k) for k in ("mean", "std", "backend") if k in a}
    return patch_embed(a["frames"], a["weight"], a["bias"], a["cls"], a["pos"], **kw)


BAD_CALLS = {
    "frames-int32": (
        dict(frames=torch.zeros(2, 28, 28, 3, dtype=torch.int32)),
        TypeError,
        ["frames", "uint8", "float32"],
    ),
    "frames-float64": (
        dict(frames=torch.zeros(2, 3, 28, 28, dtype=torch.float64)),
        TypeError,
        ["frames", "float64"],
    ),
    "frames-not-tensor": (dict(frames=[[1, 2]]), TypeError, ["frames", "torch.Tensor"]),
    "frames-3d": (
        dict(frames=torch.zeros(28, 28, 3, dtype=torch.uint8)),
        ValueError,
        ["frames", "4 dims"],
    ),
    "u8-channels-4": (
        dict(frames=torch.zeros(2, 28, 28, 4, dtype=torch.uint8)),
        ValueError,
        ["frames", "3 channels"],
    ),
    "float-channels-4": (
        dict(frames=torch.zeros(2, 4, 28, 28)),
        ValueError,
        ["frames", "[F, 3, H, W]"],
    ),
    "H-indivisible": (
        dict(frames=torch.zeros(2, 30, 28, 3, dtype=torch.uint8)),
        ValueError,
        ["frames", "p=14", "H=30"],
    ),
    "W-indivisible": (dict(frames=torch.zeros(2, 3, 28, 20)), ValueError, ["frames", "W=20"]),
    "weight-int": (
        dict(weight=torch.zeros(16, 3, 14, 14, dtype=torch.int64)),
        TypeError,
        ["weight", "int64"],
    ),
    "weight-channels": (
        dict(weight=torch.zeros(16, 4, 14, 14)),
        ValueError,
        ["weight", "[D, 3, p, p]"],
    ),
    "weight-not-square": (dict(weight=torch.zeros(16, 3, 14, 7)), ValueError, ["weight"]),
    "weight-3d": (dict(weight=torch.zeros(16, 3, 196)), ValueError, ["weight", "4 dims"]),
    "bias-shape": (dict(bias=torch.zeros(15)), ValueError, ["bias", "(16,)"]),
    "bias-dtype": (dict(bias=torch.zeros(16, dtype=torch.float16)), TypeError, ["bias", "float32"]),
    "cls-shape": (dict(cls=torch.zeros(2, 16)), ValueError, ["cls", "D=16"]),
    "cls-dtype": (dict(cls=torch.zeros(16, dtype=torch.bfloat16)), TypeError, ["cls"]),
    "pos-rows": (dict(pos=torch.zeros(4, 16)), ValueError, ["pos", "[5, 16]", "P = (H/p)*(W/p)"]),
    "pos-dim": (dict(pos=torch.zeros(5, 8)), ValueError, ["pos"]),
    "pos-dtype": (dict(pos=torch.zeros(5, 16, dtype=torch.float16)), TypeError, ["pos"]),
    "std-zero": (dict(std=(0.5, 0.0, 0.5)), ValueError, ["std", "> 0"]),
    "std-tiny": (dict(std=(0.5, 1e-50, 0.5)), ValueError, ["std", "too small"]),
    "mean-len": (dict(mean=(0.5, 0.5)), ValueError, ["mean", "3 numbers"]),
    "backend": (dict(backend="cutlass"), ValueError, ["backend", "cutlass"]),
    "device": (dict(pos=torch.zeros(5, 16, device="meta")), ValueError, ["pos", "meta"]),
}


@pytest.mark.parametrize(("over", "exc", "words"), list(BAD_CALLS.values()), ids=list(BAD_CALLS))
def test_bad_arguments(over, exc, words):
    with pytest.raises(exc) as info:
        _call(**over)
    msg = str(info.value)
    for word in words:
        assert word in msg, f"{word!r} missing from: {msg}"


def test_requires_grad_is_refused_but_no_grad_works(seed):
    a = _ok_args()
    a["weight"].requires_grad_(True)
    with pytest.raises(RuntimeError, match="weight: requires grad"):
        _call(**a)
    with torch.no_grad():
        out = _call(**a)
    assert out.grad_fn is None


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-tensor refusal of backend='cuda'")
def test_cuda_backend_refuses_cpu_tensor():
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' cannot run here: needs CUDA"):
        _call(backend="cuda")


def test_auto_on_cpu_is_torch(seed):
    a = _ok_args()
    assert api._resolve_backend("auto", a["frames"]) == "torch"
    assert torch.equal(_call(**a), _call(**a, backend="torch"))


# ---- torch.library registration ----------------------------------------------------------------


def test_opcheck(seed):
    frames = _frames(3, 28, 42)
    w, b, cls, pos = _params(16, 6, torch.float32)
    m, s = list(CLIP_MEAN), list(CLIP_STD)
    cases = [
        (frames, w, b, cls.reshape(-1), pos, m, s, "torch"),
        (frames[:, :, :28], w, None, cls.reshape(-1), pos[:5], m, s, "torch"),
        (torch.randn(2, 3, 28, 42), w, b, cls.reshape(-1), pos, m, s, "torch"),
    ]
    if triton_on_cpu():
        cases.append((frames, w, b, cls.reshape(-1), pos, m, s, "triton"))
    for args in cases:
        torch.library.opcheck(torch.ops.haic_kernels.patch_embed.default, args)


# backend="triton" on CPU is left out: resolve_backend's interpreter probe (_common.interpreting)
# is not traceable by dynamo; on a GPU it is never reached (test_gpu_auto_and_compile).
@pytest.mark.parametrize("backend", ["torch"])
def test_torch_compile_fullgraph(seed, backend):
    torch._dynamo.reset()
    frames = _frames(3, 28, 42)
    w, b, cls, pos = _params(32, 6, torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def embed(frames, w, b, cls, pos):
        return patch_embed(frames, w, b, cls, pos, backend=backend).sum(-1)

    want = patch_embed(frames, w, b, cls, pos, backend=backend).sum(-1)
    torch.testing.assert_close(embed(frames, w, b, cls, pos), want)


# ---- GPU: the fused Triton kernel and the compiled patchify + cuBLAS path ----------------------

GPU_SHAPES = [*SHAPES, (24, 224, 224, 1792), (5, 224, 448, 256), (3, 98, 126, 1792)]
GPU_IDS = [f"F{n}-{h}x{w}-D{d}" for n, h, w, d in GPU_SHAPES]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("as_float", [False, True], ids=["uint8", "float"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(("n", "h", "w", "d"), GPU_SHAPES, ids=GPU_IDS)
def test_gpu_parity(seed, poison_outputs, backend, n, h, w, d, dtype, as_float):
    frames = torch.randn(n, 3, h, w, device="cuda") if as_float else _frames(n, h, w, "cuda")
    params = _params(d, (h // P) * (w // P), dtype, "cuda", bias=(n != 25))
    out = patch_embed(frames, *params, backend=backend)
    assert out.device == frames.device
    _check(out, frames, *params, f"{backend} seed={seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
def test_gpu_non_contiguous(seed, poison_outputs, backend, dtype):
    for name, frames in _views("cuda"):
        h, w = (frames.shape[1:3]) if frames.dtype == torch.uint8 else frames.shape[2:]
        params = _params(1792, (h // P) * (w // P), dtype, "cuda")
        out = patch_embed(frames, *params, backend=backend)
        _check(out, frames, *params, f"{backend} {name} seed={seed}")


@pytest.mark.gpu
def test_gpu_auto_and_compile(seed, monkeypatch):
    frames = _frames(24, 224, 224, "cuda")
    params = _params(1792, 256, torch.bfloat16, "cuda")
    monkeypatch.setenv("HAIC_TRUST_UNVERIFIED", "1")
    assert api._resolve_backend("auto", frames) == "triton"
    compiled = torch.compile(lambda *a: patch_embed(*a), fullgraph=True)
    _check(compiled(frames, *params), frames, *params, "compiled auto")
