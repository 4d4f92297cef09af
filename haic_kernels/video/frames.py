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

Only the source pixels the crop reads are gathered (four per output pixel), so a 1080p frame
costs a few hundred kilobytes of float work instead of a full-size float copy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

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
    ``F.interpolate`` on the normalized frame to float32 rounding (~2e-7).
    """
    check_frames(frames)
    check_mode(preprocess)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if orientation is not None:
        frames = orient(frames, orientation)
    n, h, w, _ = frames.shape
    idx, wa, wb, ha, hb = _plan(h, w, size)
    mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    release = preprocess == "release"
    if frames.device.type == "cpu":
        # NumPy on the CPU: the same IEEE float32 operations as torch's, without waking torch's
        # intra-op thread pool for each small op (3-30x slower per frame when the decoder's
        # threads run alongside, measured on 2 cores).
        flat = frames.numpy().reshape(n * h * w, 3)
        offsets = (np.arange(n, dtype=np.int64) * (h * w))[:, None] + idx[None, :]
        corners = np.take(flat, offsets.reshape(-1), axis=0).astype(np.float32)
        out = _bilinear(corners.reshape(n, -1, 3), (wa, wb, ha, hb), mean, std, release)
        if not release:
            out = np.clip(np.rint(out, out=out), 0, 255, out=out).astype(np.uint8)
        out = torch.from_numpy(out).view(n, size, size, 3)
    else:
        dev = frames.device
        as_t = lambda a: torch.from_numpy(a).to(dev)
        corners = frames.reshape(n, h * w, 3).index_select(1, as_t(idx)).float()
        weights = tuple(as_t(a) for a in (wa, wb, ha, hb))
        out = _bilinear(corners, weights, as_t(mean), as_t(std), release).view(n, size, size, 3)
        if not release:
            out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.permute(0, 3, 1, 2).contiguous() if release else out


def _bilinear(corners, weights, mean, std, release: bool):
    """``h0 * (w0 * p00 + w1 * p01) + h1 * (w0 * p10 + w1 * p11)`` over the four gathered
    corners ``[N, 4 * P, 3]`` (NumPy arrays or tensors alike), normalizing them first in
    ``release`` mode; weights are ``[P]`` per output pixel."""
    if release:
        corners = (corners / 255.0 - mean) / std
    p = corners.shape[1] // 4
    p00, p01, p10, p11 = (corners[:, k * p : (k + 1) * p] for k in range(4))
    wa, wb, ha, hb = (wt.reshape(1, -1, 1) for wt in weights)
    return ha * (wa * p00 + wb * p01) + hb * (wa * p10 + wb * p11)


@functools.lru_cache(maxsize=64)
def _plan(h: int, w: int, size: int) -> tuple[np.ndarray, ...]:
    """Flat source indices of the four corners (p00, p01, p10, p11 stacked) and the per-pixel
    weights (w0, w1, h0, h1), each [S * S] in row-major output order."""
    new_h, new_w, top, left = resize_geometry(h, w, size)
    y0, y1, h0, h1 = _axis(h, new_h, top, size)
    x0, x1, w0, w1 = _axis(w, new_w, left, size)
    idx = np.concatenate(
        [(ys[:, None] * w + xs[None, :]).reshape(-1) for ys in (y0, y1) for xs in (x0, x1)]
    )
    return idx, np.tile(w0, size), np.tile(w1, size), np.repeat(h0, size), np.repeat(h1, size)


def resize_short_side_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3]: `preprocess_frames` in ``"fast"`` mode."""
    return preprocess_frames(frames, size, "fast")
