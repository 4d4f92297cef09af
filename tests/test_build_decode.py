"""The decode-attention CUDA kernels, emulated on the host (csrc/emu/decode_attention_emu.cpp)."""

from __future__ import annotations

import pytest

from tests._emulation import run_emulation


@pytest.mark.slow
def test_decode_attention_kernel_host_emulation(tmp_path):
    """csrc/decode_attention.cu compiled by g++ against csrc/emu shims, threads as CUDA threads.

    Against a float64 softmax on the same rounded inputs (fp16 and bf16): split-K partials and
    their merge, GQA head groups (r = 1, 2, 3, 4, 6, 12) with masked heads, padded / packed /
    strided K/V, seqlens clamping, empty sequences (out 0, lse -inf), lse, the launcher's
    argument checks and the split heuristic. UBSan catches misaligned 16-byte loads.
    """
    out = run_emulation(tmp_path, "decode_attention.cu", "decode_attention_emu.cpp")
    assert "0 failed" in out and "MISMATCH" not in out
