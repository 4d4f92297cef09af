"""What the op tests share: the backends that can run here, output poisoning, error checks."""

from __future__ import annotations

import importlib

import pytest
import torch

from haic_kernels.ops import _common
from haic_kernels.testing import poison_
from tests._triton import triton_on_cpu

HAS_CUDA = torch.cuda.is_available()


def op_backends() -> list[str]:
    """ "torch", and "triton" where it runs (a CUDA device, or the interpreter on the CPU)."""
    return ["torch", "triton"] if (triton_on_cpu() or HAS_CUDA) else ["torch"]


def poison_outputs(monkeypatch: pytest.MonkeyPatch, api: object = None) -> None:
    """Make every fast backend's output allocation (``_common.new_output``) hand out NaN-filled
    buffers for the rest of the test (``api`` is not needed: one allocator serves every op)."""
    monkeypatch.setattr(_common, "_output_hooks", [*_common._output_hooks, poison_])


def assert_raises_naming(call, exc: type[BaseException], words: list[str]) -> None:
    """``call()`` raises ``exc`` whose message contains every one of ``words``."""
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} missing from: {info.value}"


def tiled_fixture(module: str, attr: str = "_MAX_BLOCK", small: int = 32):
    """A fixture run twice, "one-tile" and "tiled": the tiled run shrinks ``module.attr`` (the
    kernel's register-tile limit) so that rows take the kernel's loop over tiles."""

    @pytest.fixture(params=[False, True], ids=["one-tile", "tiled"])
    def tiled(request, monkeypatch):
        if request.param:
            if not (triton_on_cpu() or HAS_CUDA):
                pytest.skip("the tiled path is the Triton kernel's; Triton cannot run here")
            monkeypatch.setattr(importlib.import_module(module), attr, small)
        return request.param

    return tiled
