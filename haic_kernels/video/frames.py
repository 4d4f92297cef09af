"""Frame preprocessing shared by every decoder: orientation, resize + center crop, normalization.

Two modes (``preprocess=``), both with the release's geometry (pytorchvideo's ``ShortSideScale``:
the short side becomes ``size``, the long side ``floor(long / short * size)``; torchvision's
``CenterCropVideo``: offsets ``round((new - size) / 2)``, Python's half-to-even ``round``):

- ``"release"``: the CogVLM2-Video release's order. ``x / 255``, normalize with CLIP mean/std,
  bilinear resize of the normalized float frame (half-pixel centers, no antialias), center crop.
  Output float32 ``[N, 3, size, size]``, ready for the vision tower.
- ``"fast"``: the same bilinear resize on the raw pixel values, rounded to uint8; normalization is
  left to the patch-embed kernel. Output uint8 ``[N, size, size, 3]``. Normalization is affine per
  channel and the bilinear weights sum to 1, so the two orders differ only by the uint8 rounding
  of the resized pixels: at most ``0.5 / 255 / min(std) = 7.50e-3`` in normalized units
  (`FAST_MAX_ERROR`).

The resize is separable and reads only what the crop needs: the source rows its output rows
touch (each once), then the two source pixels of each output column in those rows, then the
horizontal pass on the gathered rows and the vertical pass on the output rows, so a 1080p frame
costs ~1 MiB of copies and float work instead of a full-size float frame. Every output pixel
still gets exactly ``h0 * (w0 * p00 + w1 * p01) + h1 * (w0 * p10 + w1 * p11)``, the same floats
as a per-pixel gather. `Resizer` does it one frame at a time into preallocated arrays (the
decoders' path); `preprocess_frames` is the batch call.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..constants import CLIP_MEAN, CLIP_STD

PREPROCESS_MODES = ("release", "fast")

#: Largest |fast - release| in normalized units: half a uint8 level over the smallest CLIP std.
FAST_MAX_ERROR = 0.5 / 255.0 / min(CLIP_STD)


def check_mode(preprocess: str) -> str:
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
    return preprocess


def check_frames(frames: torch.Tensor, name: str = "frames") -> None:
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"{name} must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"{name} must have at least one pixel, got {tuple(frames.shape)}")


# ---------------------------------------------------------------------------------------------
# Orientation (display matrix)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Orientation:
    """How to turn decoded pixels into displayed ones: ``quarter_turns`` counter-clockwise
    quarter turns (``rotation`` degrees, FFmpeg's and PyAV's sign), then an optional left-right
    mirror. ``Orientation()`` is the identity."""

    quarter_turns: int = 0
    hflip: bool = False

    @property
    def rotation(self) -> int:
        """Degrees counter-clockwise, in {0, 90, 180, 270}."""
        return 90 * (self.quarter_turns % 4)

    @property
    def identity(self) -> bool:
        return self.quarter_turns % 4 == 0 and not self.hflip


IDENTITY = Orientation()


def orientation_from_matrix(matrix: tuple[int, ...] | None) -> Orientation:
    """The transform FFmpeg's autorotate applies for a 3x3 display matrix (9 ints, 16.16 fixed
    point, ``libavutil/display.h``). ffmpeg inserts ``transpose`` / ``hflip`` / ``vflip`` for
    multiples of 90 degrees; other angles (which ffmpeg rotates with black corners) are left as
    decoded."""
    if matrix is None or len(matrix) != 9:
        return Orientation()
    a, b, c, d = (float(v) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    scale_x, scale_y = math.hypot(a, c), math.hypot(b, d)
    if scale_x == 0 or scale_y == 0:
        return Orientation()
    # av_display_rotation_get is -atan2(b, a); ffmpeg then negates it again (get_rotation).
    theta = round(math.degrees(math.atan2(b / scale_y, a / scale_x))) % 360
    # transpose=cclock_flip (a plain transpose) is three quarter turns then a mirror;
    # clock_flip is one quarter turn then a mirror.
    if abs(theta - 90) < 1:  # transpose=clock, or cclock_flip when the matrix mirrors
        return Orientation(3, hflip=True) if c > 0 else Orientation(3)
    if abs(theta - 270) < 1:  # transpose=cclock, or clock_flip
        return Orientation(1, hflip=True) if c < 0 else Orientation(1)
    if abs(theta - 180) < 1:  # hflip if a < 0, vflip if d < 0
        return _flips(a < 0, d < 0)
    if theta < 1 or theta > 359:
        return _flips(False, d < 0)
    return Orientation()


def _flips(hflip: bool, vflip: bool) -> Orientation:
    # vflip = half turn + hflip; both = half turn.
    if hflip and vflip:
        return Orientation(2)
    if vflip:
        return Orientation(2, hflip=True)
    return Orientation(0, hflip=hflip)


def orient(frames: torch.Tensor, orientation: Orientation) -> torch.Tensor:
    """Apply ``orientation`` to ``[..., H, W, C]`` frames (any dtype, any device)."""
    if orientation.identity:
        return frames
    h_dim, w_dim = frames.ndim - 3, frames.ndim - 2
    out = torch.rot90(frames, orientation.quarter_turns % 4, dims=(h_dim, w_dim))
    return out.flip(w_dim) if orientation.hflip else out


def orient_array(frames: np.ndarray, orientation: Orientation) -> np.ndarray:
    """`orient` for NumPy ``[..., H, W, C]`` arrays, as a view (no copy)."""
    if orientation.identity:
        return frames
    h_dim, w_dim = frames.ndim - 3, frames.ndim - 2
    out = np.rot90(frames, orientation.quarter_turns % 4, axes=(h_dim, w_dim))
    return np.flip(out, w_dim) if orientation.hflip else out


# ---------------------------------------------------------------------------------------------
# Resize + crop
# ---------------------------------------------------------------------------------------------


def resize_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(new_h, new_w, top, left)``: the release's short-side resize and center-crop offsets."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if width < height:
        new_h, new_w = math.floor(float(height) / width * size), size
    else:
        new_h, new_w = size, math.floor(float(width) / height * size)
    return new_h, new_w, round((new_h - size) / 2.0), round((new_w - size) / 2.0)


def _axis(in_size: int, out_size: int, start: int, count: int) -> tuple[np.ndarray, ...]:
    """Source indices and weights of output positions ``start .. start+count`` of a bilinear
    resize ``in_size -> out_size`` (align_corners=False, no antialias), computed as ATen does:
    float32 ``src = scale * (dst + 0.5) - 0.5`` with one rounding (ATen's CPU and CUDA kernels
    are compiled with fused multiply-add; without it the weights of wide frames move by ~1e-5),
    clamped at 0, ``lambda1 = src - floor(src)``."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    dst = np.arange(start, start + count, dtype=f32) + f32(0.5)
    # float32 * float32 is exact in float64, so this rounds once, as an FMA does.
    src = np.maximum((np.float64(scale) * dst.astype(np.float64) - 0.5).astype(f32), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(f32), f32(0), f32(1))
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, f32(1) - lam1, lam1


def preprocess_frames(
    frames: torch.Tensor,
    size: int = 224,
    preprocess: str = "fast",
    *,
    orientation: Orientation | None = None,
) -> torch.Tensor:
    """Orient, resize the short side to ``size`` and center-crop; normalize in ``"release"``.

    Args:
        frames: uint8 ``[N, H, W, 3]`` RGB as decoded (any device).
        size: output side (224 for CogVLM2-Video).
        preprocess: ``"release"`` -> float32 ``[N, 3, size, size]``,
            ``(x / 255 - mean[c]) / std[c]`` then bilinear; ``"fast"`` -> uint8
            ``[N, size, size, 3]``, bilinear of the raw values rounded half-to-even.
        orientation: applied first (display matrix), identity by default.

    Each output pixel is ``h0 * (w0 * p00 + w1 * p01) + h1 * (w0 * p10 + w1 * p11)`` over its
    four source pixels, the products in ATen's order, so ``"release"`` matches
    ``F.interpolate`` on the normalized frame to float32 rounding (~2e-7). CPU tensors go
    through `Resizer` (NumPy), others through the same arithmetic in torch ops.
    """
    check_frames(frames)
    check_mode(preprocess)
    _check_size(size)
    if frames.device.type == "cpu":
        arr = frames.numpy()
        if orientation is not None:
            arr = orient_array(arr, orientation)
        n, h, w, _ = arr.shape
        resizer = Resizer(h, w, size, preprocess)
        out = np.empty((n, *resizer.out_shape), resizer.out_dtype)
        for k in range(n):
            resizer(arr[k], out[k])
        return torch.from_numpy(out)
    return _preprocess_tensor(frames, size, preprocess == "release", orientation)


class Resizer:
    """`preprocess_frames` for one frame at a time on the CPU, into a given output: what the
    decoders call as each wanted frame comes out. It owns its scratch arrays (one `Resizer` per
    thread), so a frame allocates nothing: fresh temporaries of a few MiB per frame cost more in
    page faults than the arithmetic (measured: 1300 minor faults and ~7 ms a frame at 480p).

    NumPy rather than torch: the same IEEE float32 operations, without waking torch's intra-op
    thread pool for each small op (3-30x slower per frame when the decoder's threads run
    alongside, measured on 2 cores). Only the rows the crop reads are copied, then the two source
    pixels of each output column: no full-size float frame is made.

    Args:
        height, width: the (oriented) frames' size.
        size, preprocess: as `preprocess_frames`.
    """

    def __init__(self, height: int, width: int, size: int, preprocess: str = "fast") -> None:
        check_mode(preprocess)
        _check_size(size)
        self.plan = _plan(height, width, size)
        self.release = preprocess == "release"
        self.height, self.width, self.size = height, width, size
        #: ``(size, size, 3)`` uint8 ("fast") or ``(3, size, size)`` float32 ("release").
        self.out_shape = (3, size, size) if self.release else (size, size, 3)
        self.out_dtype = np.dtype(np.float32 if self.release else np.uint8)
        r, f32 = len(self.plan.rows), np.float32
        self._rows = np.empty((1, r, 3 * width), np.uint8)  # re-made for a wider row pitch
        self._bytes = np.empty((1, r, 6 * size), np.uint8)
        self._scratch = _Scratch(
            pixels=np.empty((1, r, 6 * size), f32) if self.release else None,
            hx=np.empty((1, r, 3 * size), f32),
            hx_tmp=np.empty((1, r, 3 * size), f32),
            out=np.empty((1, size, 3 * size), f32),
            out_tmp=np.empty((1, size, 3 * size), f32),
        )

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]`` (any strides) -> ``out`` (`out_shape`, `out_dtype`)."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be uint8 {(self.height, self.width, 3)}, got {frame.dtype} "
                f"{frame.shape}"
            )
        p, s, size = self.plan, self._scratch, self.size
        lines = _row_bytes(frame)
        if lines is None:  # a turned view: its rows are strided, gather them one by one
            rows = self._rows[0, :, : 3 * self.width].reshape(-1, self.width, 3)
            np.copyto(rows, frame[p.rows])
        else:
            if self._rows.shape[2] != lines.shape[1]:
                self._rows = np.empty((1, len(p.rows), lines.shape[1]), np.uint8)
            # mode="clip" (the indices are in range by construction): with the default
            # "raise", np.take fills a temporary and then copies it into ``out``.
            np.take(lines, p.rows, axis=0, out=self._rows[0], mode="clip")
        np.take(self._rows, p.cols, axis=2, out=self._bytes, mode="clip")
        pixels = self._bytes  # "fast": the first multiply converts the bytes (exactly) as it reads
        if self.release:  # normalized in place: floats first
            pixels = s.pixels
            np.copyto(pixels, self._bytes)
        res = _interpolate(pixels, p, self.release, np, _np_take, s)[0]
        if self.release:
            np.copyto(out, res.reshape(size, size, 3).transpose(2, 0, 1))
        else:
            np.clip(np.rint(res, out=res), 0, 255, out=res)
            np.copyto(out, res.reshape(size, size, 3), casting="unsafe")
        return out


def _row_bytes(frame: np.ndarray) -> np.ndarray | None:
    """A uint8 ``[H, W, 3]`` frame whose rows are packed pixels at a row pitch (PyAV's
    ``to_ndarray`` views: rows padded for alignment) as a C-contiguous ``[H, pitch]`` byte view of
    the same memory, or None when the frame is laid out otherwise or its memory does not reach
    the last row's padding. ``np.take`` copies a whole non-contiguous input before it gathers
    (a full frame per frame); on this view it reads only the rows it takes."""
    h, w, _ = frame.shape
    pitch = frame.strides[0]
    if frame.strides[1:] != (3, 1) or pitch < 3 * w:
        return None
    if pitch == 3 * w:
        return frame.reshape(h, pitch)
    owner = frame
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    try:
        whole = np.frombuffer(owner if owner.base is None else owner.base, np.uint8)
    except (TypeError, ValueError, BufferError):
        return None
    start = frame.ctypes.data - whole.ctypes.data
    if start < 0 or start + h * pitch > whole.size:
        return None
    return whole[start : start + h * pitch].reshape(h, pitch)


def _preprocess_tensor(
    frames: torch.Tensor, size: int, release: bool, orientation: Orientation | None
) -> torch.Tensor:
    """`preprocess_frames` with torch ops, on the frames' device (DALI's GPU output)."""
    if orientation is not None:
        frames = orient(frames, orientation)
    n, h, w, _ = frames.shape
    plan = _plan(h, w, size)
    plan = _Plan(*(torch.from_numpy(getattr(plan, f.name)).to(frames.device)
                   for f in dataclasses.fields(plan)))  # fmt: skip
    rows = frames.index_select(1, plan.rows).reshape(n, len(plan.rows), 3 * w)
    pixels = rows.index_select(2, plan.cols).float()
    take = lambda x, index, out: torch.index_select(x, 1, index, out=out)
    out = _interpolate(pixels, plan, release, torch, take, _Scratch())
    if release:
        return out.view(n, size, size, 3).permute(0, 3, 1, 2).contiguous()
    return out.round_().clamp_(0, 255).to(torch.uint8).view(n, size, size, 3)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")


@dataclass
class _Scratch:
    """Output arrays for `_interpolate` (None: allocate)."""

    pixels: Any = None
    hx: Any = None
    hx_tmp: Any = None
    out: Any = None
    out_tmp: Any = None


def _np_take(x: np.ndarray, index: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    return np.take(x, index, axis=1, out=out, mode="clip")


def _interpolate(pixels, plan: _Plan, release: bool, xp, take, s: _Scratch):
    """``[N, R, 6 * S]`` source bytes in `_Plan.cols` order, float32 (overwritten; uint8 allowed
    unless ``release``), as NumPy arrays with ``xp = np`` or tensors with ``xp = torch`` ->
    float32 ``[N, S, 3 * S]``: the horizontal pass on every gathered row, then the vertical one,
    normalized first in ``release`` mode. Each output pixel gets exactly the operations of
    ``h0 * (w0 * p00 + w1 * p01) + h1 * (w0 * p10 + w1 * p11)``: a row's horizontal value is the
    same float whichever output rows share it."""
    if release:
        xp.divide(pixels, 255.0, out=pixels)
        xp.subtract(pixels, plan.mean, out=pixels)
        xp.divide(pixels, plan.std, out=pixels)
    half = pixels.shape[-1] // 2
    hx = xp.multiply(pixels[..., :half], plan.w0, out=s.hx)
    xp.add(hx, xp.multiply(pixels[..., half:], plan.w1, out=s.hx_tmp), out=hx)
    out = xp.multiply(take(hx, plan.top, s.out), plan.h0, out=s.out)
    return xp.add(out, xp.multiply(take(hx, plan.bottom, s.out_tmp), plan.h1, out=s.out_tmp),
                  out=out)  # fmt: skip


@dataclass(frozen=True)
class _Plan:
    """Where the crop reads in an ``[H, W, 3]`` frame, for a separable bilinear resize.

    The crop's output rows read source rows ``y0`` and ``y1`` (``y0 + 1``, clamped), its columns
    source columns ``x0`` and ``x1``. ``rows`` holds each of those source rows once (sorted),
    ``top`` / ``bottom`` the position in ``rows`` of every output row's ``y0`` / ``y1``;
    ``cols`` the byte offsets within one source row of the ``x0`` pixels, then of the ``x1``
    pixels (3 channels each: ``[6 * S]``). Weights: ``w0``, ``w1`` ``[3 * S]`` float32, one per
    byte of an output row; ``h0``, ``h1`` ``[S, 1]``; ``mean``, ``std`` CLIP's, ``[6 * S]`` in
    the order of ``cols``."""

    rows: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    cols: np.ndarray
    w0: np.ndarray
    w1: np.ndarray
    h0: np.ndarray
    h1: np.ndarray
    mean: np.ndarray
    std: np.ndarray


@functools.lru_cache(maxsize=64)
def _plan(h: int, w: int, size: int) -> _Plan:
    new_h, new_w, top, left = resize_geometry(h, w, size)
    y0, y1, h0, h1 = _axis(h, new_h, top, size)
    x0, x1, w0, w1 = _axis(w, new_w, left, size)
    rows, pos = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    cols = (np.concatenate([x0, x1])[:, None] * 3 + np.arange(3)).reshape(-1)
    mean, std = (np.tile(np.asarray(v, np.float32), 2 * size) for v in (CLIP_MEAN, CLIP_STD))
    return _Plan(rows, pos[:size], pos[size:], cols, np.repeat(w0, 3), np.repeat(w1, 3),
                 h0[:, None], h1[:, None], mean, std)  # fmt: skip


def resize_short_side_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3]: `preprocess_frames` in ``"fast"`` mode."""
    return preprocess_frames(frames, size, "fast")
