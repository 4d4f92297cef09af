"""Image input for the image release (cogvlm2-llama3-chat-19B): 1344x1344 bicubic, no crop.

The release's own transform (its ``build_conversation_input_ids``) is torchvision's
``Resize((1344, 1344), BICUBIC)`` on the PIL image, ``ToTensor`` (``/ 255``), ``Normalize`` with
CLIP's mean and std: for images it resizes the uint8 picture first, then normalizes. Resize on a
PIL image is Pillow's own bicubic (antialiased when shrinking), so Pillow does it here too.

Two modes, as `preprocess_frames`:

- ``"release"``: float32 ``[1, 3, size, size]``, ``(x / 255 - mean[c]) / std[c]`` of Pillow's
  resized pixels: the release's tensor.
- ``"fast"``: the same resized pixels as uint8 ``[1, size, size, 3]``, normalized later inside
  the patch-embed kernel. Since the release normalizes after resizing, the two differ only by
  float rounding of the normalization (measured max 2.4e-7), not by a uint8 rounding.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..constants import CLIP_MEAN, CLIP_STD
from .frames import check_mode

#: The image release's vision_config image_size.
IMAGE_SIZE = 1344


class ImageLoadError(ValueError):
    """An image could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _import_pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Pillow is not installed; install the video extra: pip install 'haic_kernels[video]'"
        ) from e
    return Image


def preprocess_image(image, size: int = IMAGE_SIZE, preprocess: str = "release") -> torch.Tensor:
    """Resize a picture to ``size`` x ``size`` (Pillow bicubic, aspect ratio not kept, no crop).

    Args:
        image: a PIL image (any mode; converted to RGB as the release's demos do), or a uint8
            ``[H, W, 3]`` RGB array / tensor.
        size: output side (the config's ``vision_config.image_size``, 1344 for the release).
        preprocess: ``"release"`` -> float32 ``[1, 3, size, size]`` normalized;
            ``"fast"`` -> uint8 ``[1, size, size, 3]``.
    """
    check_mode(preprocess)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    pil = _import_pil()
    if isinstance(image, (np.ndarray, torch.Tensor)):
        arr = image.cpu().numpy() if isinstance(image, torch.Tensor) else image
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
            raise ValueError(
                f"image must be uint8 [H, W, 3] RGB, got {arr.dtype} {tuple(arr.shape)}"
            )
        image = pil.fromarray(np.ascontiguousarray(arr), mode="RGB")
    elif not isinstance(image, pil.Image):
        raise ValueError(
            f"image must be a PIL image or a uint8 [H, W, 3] array, got {type(image).__name__}"
        )
    resized = image.convert("RGB").resize((size, size), pil.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy())  # [size, size, 3]
    if preprocess == "fast":
        return pixels.unsqueeze(0)
    x = pixels.permute(2, 0, 1).to(torch.float32) / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def load_image(
    path: str | os.PathLike, size: int = IMAGE_SIZE, preprocess: str = "release"
) -> torch.Tensor:
    """Open an image file (any format Pillow reads) and `preprocess_image` it.

    Raises ImageLoadError naming the file for a missing, unreadable or truncated image.
    """
    pil = _import_pil()
    p = Path(path)
    if not p.is_file():
        raise ImageLoadError(path, "no such file")
    try:
        with pil.open(p) as img:
            img.load()  # decode now: a truncated file fails here, not later
            rgb = img.convert("RGB")
    except Exception as e:  # PIL raises many types for bad files; all mean the same here
        raise ImageLoadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    return preprocess_image(rgb, size, preprocess)
