"""Issue 15's merge overhead, counted: the kernels a ToMe step adds to a vision block of the
packed tower (tiny config, the Triton kernels as a GPU runs them, under the interpreter;
`bench.launches` counts what would launch), and no host sync in any block.

Counted with ``VisionMerge(4, layers=(1,))`` on a 3-block tower: block 0 is a packed block that
merges nothing, block 1 the same block plus one merging step, block 2 a block after a merge
(attention now takes ``key_bias``) followed by the unmerge/fill gather. The ceilings are today's
counts: a change may lower them, never raise them.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from haic_kernels.bench import launches, model_calls
from haic_kernels.models.cogvlm2 import (
    CogVLM2ForCausalLM,
    FastCogVLM2,
    get_config,
    init_random_weights,
)
from haic_kernels.models.cogvlm2.fast.vision_reduce import run_reduced_tower
from haic_kernels.pruning import VisionMerge, plan_vision
from tests._triton import triton_on_cpu

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not triton_on_cpu(), reason="needs Triton's CPU interpreter"),
]

# Kernels one merging step adds to its block: the keys' head mean, the Triton matcher, its
# plan (top-r rank, destinations, the unmerge map's step) and the merge, then log(size) for the
# next blocks' key_bias. Was 27 before the glue was folded into the kernels (plus 2 host-to-
# device copies of r and cu_seqlens per block that a CPU trace does not see; now one copy per
# tower, outside the blocks).
MERGE_KERNELS_PER_BLOCK = 5
MERGE_KERNELS = Counter(
    {"mean": 1, "triton _match_kernel": 1, "triton _plan_kernel": 1, "triton _merge_kernel": 1,
     "log": 1}
)  # fmt: skip
# A packed block that merges nothing: projections, norms, GELU, varlen attention. Was 21 while
# attention checked the tower's own cu_seqlens in every block (12 kernels); the tower now runs
# under `trusted_values`.
PACKED_BLOCK_KERNELS = 10
# Block 2: a packed block + the unmerge/fill gather (8); key_bias is no longer re-checked (6).
LAST_BLOCK_AFTER_MERGE_KERNELS = 18


@pytest.fixture(scope="module")
def traced():
    config = get_config("tiny", "video-chat", text={"num_layers": 1}, vision={"num_layers": 3})
    ref = init_random_weights(CogVLM2ForCausalLM(config), 0).eval()
    vis = FastCogVLM2.from_reference(ref, backend="triton").model.vision
    frames = model_calls.random_frames(config, 2, torch.device("cpu"))
    with torch.no_grad():
        x = vis.embed_patches(frames)
    reduction = plan_vision(VisionMerge(4, layers=(1,)), 3)
    rep, _ = launches.count_launches(run_reduced_tower, vis, x, reduction, frames,
                                     layers=list(vis.transformer.layers), root=vis)  # fmt: skip
    return rep


def test_no_host_sync_in_any_block(traced):
    assert [t.syncs for t in traced.layers] == [0, 0, 0], [dict(t.by_sync) for t in traced.layers]


def test_a_merging_step_adds_at_most_five_kernels(traced):
    plain, merging, _ = traced.layers
    assert 0 < plain.kernels <= PACKED_BLOCK_KERNELS, dict(plain.by_kernel)
    added = merging.by_kernel - plain.by_kernel
    assert merging.kernels - plain.kernels == sum(added.values()), "the step removed a kernel?"
    assert sum(added.values()) <= MERGE_KERNELS_PER_BLOCK and added <= MERGE_KERNELS, added


def test_blocks_after_a_merge_do_not_grow(traced):
    last = traced.layers[2]
    assert last.kernels <= LAST_BLOCK_AFTER_MERGE_KERNELS, dict(last.by_kernel)
    assert last.by_kernel["log"] == 0  # key_bias is taken once per merging step, not per block
