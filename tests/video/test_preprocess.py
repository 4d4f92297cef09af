"""`preprocess_frames` / `preprocess_image` against re-statements of the releases' transforms.

The video release (cogvlm2-video-llama3-chat, its ``build_conversation_input_ids``) receives
decord's ``[T, H, W, C]`` uint8 frames permuted to ``[C, T, H, W]`` and composes:
``Lambda(x / 255.0)``, ``NormalizeVideo(mean, std)`` (torchvision ``_transforms_video``:
``clip.sub_(mean[:, None, None, None]).div_(std[:, None, None, None])``), ``ShortSideScale(224)``
(pytorchvideo 0.1.5: ``floor(long / short * size)``, ``F.interpolate(..., "bilinear",
align_corners=False)`` on the ``[C, T, H, W]`` tensor, i.e. C as the batch and T as channels),
``CenterCropVideo(224)`` (offsets ``int(round((h - th) / 2.0))``), then ``.transpose(0, 1)``.
`_release_video` restates exactly that with torch ops (torchvision and pytorchvideo are not
installable here). The image release composes ``Resize((1344, 1344), BICUBIC)`` on the PIL
image (Pillow's resize), ``ToTensor``, ``Normalize``: `_release_image`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from haic_kernels.constants import CLIP_MEAN, CLIP_STD
from haic_kernels.video import FAST_MAX_ERROR, Orientation, preprocess_frames
from haic_kernels.video.frames import (
    Resizer,
    _preprocess_tensor,
    orient,
    orient_array,
    orientation_from_matrix,
    resize_geometry,
)


def _release_video(frames_thwc: torch.Tensor, size: int) -> torch.Tensor:
    x = frames_thwc.permute(3, 0, 1, 2)  # the demo's video_data.permute(3, 0, 1, 2)
    x = x / 255.0
    mean = torch.as_tensor(CLIP_MEAN, dtype=x.dtype)
    std = torch.as_tensor(CLIP_STD, dtype=x.dtype)
    x = x.clone().sub_(mean[:, None, None, None]).div_(std[:, None, None, None])
    _c, _t, h, w = x.shape
    if w < h:
        new_h, new_w = math.floor((float(h) / w) * size), size
    else:
        new_h, new_w = size, math.floor((float(w) / h) * size)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    i, j = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return x[..., i : i + size, j : j + size].transpose(0, 1)  # [T, C, size, size]


def _normalize(u8_nhwc: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (u8_nhwc.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


# Odd sizes, portrait and landscape, up- and downscaling, crops whose offset is x.5 (Python's
# round goes to even), and a 1080p frame.
SHAPES = [(64, 96, 32), (97, 61, 40), (30, 50, 12), (100, 100, 224), (225, 400, 224),
          (480, 853, 224), (61, 301, 17), (1080, 1920, 224), (35, 36, 16)]  # fmt: skip


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_release_mode_matches_the_release_pipeline(h: int, w: int, size: int) -> None:
    g = torch.Generator().manual_seed(h * 1000 + w)
    frames = torch.randint(0, 256, (3, h, w, 3), dtype=torch.uint8, generator=g)
    ref = _release_video(frames, size)
    out = preprocess_frames(frames, size, "release")
    assert out.dtype == torch.float32 and out.shape == (3, 3, size, size)
    assert (out - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_fast_mode_is_within_the_uint8_rounding_bound(h: int, w: int, size: int) -> None:
    g = torch.Generator().manual_seed(h + w)
    frames = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=g)
    fast = preprocess_frames(frames, size, "fast")
    assert fast.dtype == torch.uint8 and fast.shape == (2, size, size, 3)
    err = (_normalize(fast) - _release_video(frames, size)).abs().max().item()
    # Half a uint8 level over the smallest std, plus float32 rounding of both sides.
    assert err <= FAST_MAX_ERROR + 1e-6
    assert abs(FAST_MAX_ERROR - 7.5e-3) < 1e-5


def test_fast_bound_is_reached_not_loose() -> None:
    """On many random frames the worst case comes within 1% of the bound: it is the real one."""
    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (8, 97, 131, 3), dtype=torch.uint8, generator=g)
    err = (_normalize(preprocess_frames(frames, 64)) - _release_video(frames, 64)).abs().max()
    assert err.item() >= 0.99 * FAST_MAX_ERROR


def test_geometry_is_the_releases() -> None:
    assert resize_geometry(1080, 1920, 224) == (224, 398, 0, 87)
    assert resize_geometry(1920, 1080, 224) == (398, 224, 87, 0)
    # floor, not round: 50 / 30 * 12 = 20.000000000000004 -> 20; 301 / 61 * 17 = 83.88 -> 83
    assert resize_geometry(30, 50, 12)[:2] == (12, 20)
    assert resize_geometry(61, 301, 17) == (17, 83, 0, 33)
    # round half to even: (225 - 224) / 2 = 0.5 -> 0; (227 - 224) / 2 = 1.5 -> 2
    assert resize_geometry(225, 224, 224)[2] == 0
    assert resize_geometry(227, 224, 224)[2] == 2


def test_orientation_then_resize() -> None:
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 40, 70, 3), dtype=torch.uint8, generator=g)
    o = Orientation(1)
    turned = torch.rot90(frames, 1, dims=(1, 2))
    assert torch.equal(preprocess_frames(frames, 24, orientation=o), preprocess_frames(turned, 24))
    assert torch.equal(orient(frames, Orientation(2, hflip=True)), frames.flip(1))  # a vflip


def _padded_view(frames: np.ndarray) -> np.ndarray:
    """The frames as a view with padded rows, as PyAV's ``to_ndarray`` returns them."""
    n, h, w, c = frames.shape
    store = np.zeros((n, h, w + 5, c), np.uint8)
    store[:, :, :w] = frames
    return store[:, :, :w]


@pytest.mark.parametrize("mode", ["fast", "release"])
def test_resizer_matches_preprocess_frames_on_views(mode: str) -> None:
    """The decoders' per-frame `Resizer` on padded and oriented (rot90 / flip) views gives the
    numbers `preprocess_frames` gives for the contiguous, oriented frames."""
    g = np.random.default_rng(5)
    frames = g.integers(0, 256, (2, 45, 70, 3), dtype=np.uint8)
    for o in (Orientation(), Orientation(1), Orientation(3, hflip=True), Orientation(2, True)):
        view = orient_array(_padded_view(frames), o)
        resizer = Resizer(view.shape[1], view.shape[2], 24, mode)
        out = np.full((2, *resizer.out_shape), 7, resizer.out_dtype)
        for k in range(2):
            slot = out[k]
            assert resizer(view[k], slot) is slot
        ref = preprocess_frames(orient(torch.from_numpy(frames), o).contiguous(), 24, mode)
        assert torch.equal(torch.from_numpy(out), ref), o


@pytest.mark.parametrize("mode", ["fast", "release"])
@pytest.mark.parametrize("h,w,size", [(97, 61, 40), (1080, 1920, 224), (35, 36, 16)])
def test_tensor_path_is_the_numpy_path(mode: str, h: int, w: int, size: int) -> None:
    """The torch-op path (DALI's GPU frames) is the same arithmetic: run it on CPU tensors."""
    g = torch.Generator().manual_seed(h * w)
    frames = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=g)
    for o in (None, Orientation(1, hflip=True)):
        got = _preprocess_tensor(frames, size, mode == "release", o)
        assert torch.equal(got, preprocess_frames(frames, size, mode, orientation=o))


def test_resizer_allocates_nothing_per_frame() -> None:
    """Per-frame temporaries of a few MiB cost more in page faults than the arithmetic: after
    its first frame a `Resizer` allocates nothing (tracemalloc sees NumPy's buffers)."""
    import tracemalloc

    g = np.random.default_rng(2)
    frames = _padded_view(g.integers(0, 256, (3, 480, 854, 3), dtype=np.uint8))
    for mode in ("fast", "release"):
        resizer = Resizer(480, 854, 224, mode)
        out = np.empty((3, *resizer.out_shape), resizer.out_dtype)
        resizer(frames[0], out[0])
        tracemalloc.start()
        try:
            for k in (1, 2):
                resizer(frames[k], out[k])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # NumPy's casting loops keep buffers of 8192 elements (64 KiB); one 480p input frame
        # is 1.2 MiB, the temporaries of a resize several MiB.
        assert peak < 256 * 1024, (mode, peak)


def test_resizer_checks_the_frame() -> None:
    resizer = Resizer(40, 60, 16)
    out = np.empty(resizer.out_shape, resizer.out_dtype)
    with pytest.raises(ValueError, match="frame must be uint8"):
        resizer(np.zeros((40, 61, 3), np.uint8), out)
    with pytest.raises(ValueError, match="frame must be uint8"):
        resizer(np.zeros((40, 60, 3), np.float32), out)
    with pytest.raises(ValueError, match="preprocess"):
        Resizer(40, 60, 16, "exact")
    with pytest.raises(ValueError, match="size"):
        Resizer(40, 60, 0)


def test_orientation_from_display_matrices() -> None:
    one = 1 << 16
    # Matrices av_display_rotation_set writes for 90 degrees counter-clockwise, and its mirror.
    assert orientation_from_matrix((0, -one, 0, one, 0, 0, 0, 0, 1 << 30)) == Orientation(1)
    assert orientation_from_matrix((0, one, 0, -one, 0, 0, 0, 0, 1 << 30)) == Orientation(3)
    assert orientation_from_matrix((-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30)) == Orientation(2)
    assert orientation_from_matrix((-one, 0, 0, 0, one, 0, 0, 0, 1 << 30)) == Orientation(0, True)
    assert orientation_from_matrix(None) == Orientation()
    assert orientation_from_matrix((0,) * 9) == Orientation()  # degenerate: left as decoded


def test_all_eight_orientations_round_trip_through_a_file(tmp_path) -> None:
    """PyAV writes the display matrix for (degrees, hflip, vflip) with libavutil's own setters;
    the probe must recover the same picture transform, documented by PyAV as 'rotate
    counter-clockwise, then mirror'."""
    av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")
    from haic_kernels.video import probe_video

    from ._clips import rotated_clip

    x = np.arange(6).reshape(2, 3)
    for degrees in (0, 90, 180, 270):
        for hflip in (False, True):
            path = rotated_clip(tmp_path / f"o{degrees}{hflip}.mkv", degrees, "mjpeg", hflip,
                                num_frames=1)  # fmt: skip
            o = probe_video(path).orientation
            expected = np.rot90(x, degrees // 90)
            expected = expected[:, ::-1] if hflip else expected
            got = orient(torch.from_numpy(x.copy())[..., None], o)[..., 0].numpy()
            assert np.array_equal(got, expected), (degrees, hflip, o)
    del av


def test_bad_arguments() -> None:
    frames = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="preprocess"):
        preprocess_frames(frames, 4, "exact")
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(frames.float(), 4)
    with pytest.raises(ValueError, match="size"):
        preprocess_frames(frames, 0)
    with pytest.raises(ValueError, match="frames"):
        preprocess_frames(torch.zeros(1, 0, 8, 3, dtype=torch.uint8), 4)


# ---------------------------------------------------------------------------------------------
# Images (the image release: 1344 x 1344 bicubic, no crop; resize, then normalize)
# ---------------------------------------------------------------------------------------------


def _release_image(pil_image, size: int) -> torch.Tensor:
    from PIL import Image

    resized = pil_image.resize((size, size), Image.Resampling.BICUBIC)  # torchvision's PIL path
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).contiguous().float().div(255)
    mean = torch.as_tensor(CLIP_MEAN).view(-1, 1, 1)
    std = torch.as_tensor(CLIP_STD).view(-1, 1, 1)
    return x.sub_(mean).div_(std).unsqueeze(0)


@pytest.mark.parametrize("h,w,size", [(50, 80, 64), (131, 97, 200), (30, 30, 1344)])
def test_image_modes_match_the_image_release(tmp_path, h: int, w: int, size: int) -> None:
    image_mod = pytest.importorskip("PIL.Image", reason="Pillow (the video extra) is missing")
    from haic_kernels.video import load_image, preprocess_image

    rng = np.random.default_rng(h * w)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    image_mod.fromarray(arr).save(path)
    ref = _release_image(image_mod.fromarray(arr), size)
    out = load_image(path, size, "release")
    assert out.shape == (1, 3, size, size) and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 1e-6
    fast = load_image(path, size, "fast")
    assert fast.shape == (1, size, size, 3) and fast.dtype == torch.uint8
    # The release normalizes after resizing, so fast differs by float rounding only.
    assert (_normalize(fast) - ref).abs().max().item() <= 1e-6
    assert torch.equal(preprocess_image(torch.from_numpy(arr), size, "fast"), fast)


def test_image_errors_name_the_file(tmp_path) -> None:
    pytest.importorskip("PIL.Image", reason="Pillow (the video extra) is missing")
    from haic_kernels.video import ImageLoadError, load_image, preprocess_image

    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    with pytest.raises(ImageLoadError, match=r"bad\.jpg: not a readable image"):
        load_image(bad)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="preprocess"):
        preprocess_image(np.zeros((4, 4, 3), np.uint8), 8, "exact")
