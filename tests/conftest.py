"""Test-wide set-up.

Triton kernels run under the interpreter where there is no CUDA device. TRITON_INTERPRET must be
set before triton is first imported, so it is decided here, before any test module loads.
"""

from __future__ import annotations

import os

# Several test processes (pytest-xdist) share the cores: each gets its share of intra-op threads
# (set before torch starts OpenMP; subprocesses the tests start inherit it). Two workers of two
# threads each on CI's 2 cores spin-wait for each other: a model-test slice took 112 s, 52 s
# with one thread each (measured, 2026-12-02).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (_cores or 1) // _WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402

if _WORKERS > 1 and os.environ["OMP_NUM_THREADS"].isdigit():
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# After the interpreter decision: these may import triton.
from haic_kernels.models.cogvlm2 import (  # noqa: E402
    ByteTokenizer,
    CogVLM2ForCausalLM,
    build_prompt,
    get_config,
    init_random_weights,
)
from haic_kernels.testing import poison_  # noqa: E402

#: Tests that take minutes in one process (the ahead-of-time compile of every Triton kernel).
LONG_FIRST = ("tests/test_triton_aot.py::test_triton_kernels_compile_for_gpu_targets",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Longest first, then the other `slow` tests, then the rest (stable: each keeps its order):
    # with pytest-xdist the workers start on the long ones together and share out the short
    # ones meanwhile, instead of one worker finishing alone with a long test at the end.
    items.sort(key=lambda item: (item.nodeid not in LONG_FIRST, "slow" not in item.keywords))
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def seed() -> int:
    """A fresh seed per test run, printed on failure so a failing draw can be replayed."""
    s = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(s)
    return s


@pytest.fixture
def poison_outputs(monkeypatch: pytest.MonkeyPatch):
    """``poison_outputs(module, name="_new_output")``: make the allocator a fast backend writes
    its output into (``module.<name>(shape, dtype, device)``) hand out NaN / sentinel-filled
    buffers, so a kernel that leaves part of its output unwritten fails the test."""

    def patch(module: object, name: str = "_new_output") -> None:
        monkeypatch.setattr(
            module,
            name,
            lambda shape, dtype, device: poison_(torch.empty(shape, dtype=dtype, device=device)),
        )

    return patch


@pytest.fixture
def tiny_model(seed: int):
    """``tiny_model(variant="video-chat", size="tiny", seed=None, **overrides)``: a reference
    `CogVLM2ForCausalLM` in eval mode with seeded random weights (the test's seed by default;
    ``overrides`` go to `get_config`, e.g. ``text={"num_layers": 1}``)."""
    default = seed

    def make(variant: str = "video-chat", size: str = "tiny", seed: int | None = None, **over):
        model = CogVLM2ForCausalLM(get_config(size, variant, **over))
        return init_random_weights(model, (default if seed is None else seed) % 10_000).eval()

    return make


@pytest.fixture
def tiny_prompts():
    """``tiny_prompts(config, [(question, frames), ...], equal=False)``: (prompts, uint8 frames
    per prompt) with the byte tokenizer; ``equal`` pads the questions with spaces so every
    prompt has the same length (one token per byte)."""

    def make(config, rows, equal: bool = False):
        tok = ByteTokenizer()
        prompts = [build_prompt(tok, q, f, config) for q, f in rows]
        if equal:
            n = max(len(p) for p in prompts)
            prompts = [
                build_prompt(tok, q + " " * (n - len(p)), f, config)
                for (q, f), p in zip(rows, prompts)
            ]
        s = config.vision.image_size
        frames = [torch.randint(0, 256, (f, s, s, 3), dtype=torch.uint8) for _, f in rows]
        return prompts, frames

    return make


class GreedyRecorder:
    """A ``sampler`` for ``generate``: argmax, keeping every step's logits and ``seen``."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.seen: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        self.logits.append(logits.clone())
        self.seen.append(seen.clone())
        return logits.argmax(dim=-1)


@pytest.fixture
def greedy_recorder() -> GreedyRecorder:
    return GreedyRecorder()
