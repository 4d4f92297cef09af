"""Regenerate haic_kernels/assets/demo_clip.webm (5 s, 8 fps, 128x96 VP9, ~6 KB)."""

from pathlib import Path

from haic_kernels.video.synthetic import write_clip

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "haic_kernels" / "assets" / "demo_clip.webm"
    opts = {"crf": "40", "b:v": "0", "deadline": "good", "cpu-used": "4"}
    write_clip(out, 40, fps=8, width=128, height=96, codec="libvpx-vp9", options=opts)
    print(out, out.stat().st_size, "bytes")
