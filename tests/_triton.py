"""Whether Triton kernels can run on CPU tensors here (the interpreter), and the skip mark for
tests that need it."""

from __future__ import annotations

import pytest
import torch

from haic_kernels import backends

HAS_CUDA = torch.cuda.is_available()


def triton_on_cpu() -> bool:
    """True without a CUDA device when Triton runs through its interpreter (TRITON_INTERPRET=1,
    which tests/conftest.py sets)."""
    if HAS_CUDA or not backends.triton().usable:
        return False
    from haic_kernels.ops._common import interpreting

    return interpreting()


needs_triton_cpu = pytest.mark.skipif(
    not triton_on_cpu(),
    reason="CPU Triton tests need the interpreter (no CUDA device, TRITON_INTERPRET=1)",
)
