"""The one prefill of FastCogVLM2 (fast/prefill.py) and its `TokenBatch` (fast/batch.py).

* The vision tower runs exactly once per forward and per generate, for every batch shape
  (equal rows, ragged rows, a text-only row) and pruning mix (none, each policy, compositions),
  counted on the tower's stage methods.
* `TokenBatch`: the three input forms give the same packed batch; its host data (lengths, token
  counts, largest position) is what the device holds; the expert routing follows CogVLM's rule
  within each row.
"""

from __future__ import annotations

import pytest
import torch

from haic_kernels.models.cogvlm2 import FastCogVLM2, TokenBatch, pad_prompts, stack_prompts
from haic_kernels.models.cogvlm2.fast.vision import FastEVA2CLIPModel
from haic_kernels.pruning import Compose, Salient, Temporal, TextGuided
from haic_kernels.tokens import build_position_ids, vision_expert_mask

POLICIES = {
    "none": None,
    "temporal": Temporal(0.5),
    "salient": Salient(0.5),
    "salient_merge": Salient(0.5, per="video", merge=True),
    "text_guided": TextGuided(0.5, layer=0),
    "compose": Compose((Temporal(0.5), Salient(0.5), TextGuided(0.5, layer=0, per="frame"))),
}
SHAPES = {
    "equal": ([("what is here?", 2), ("what is that?", 2)], True),
    "ragged": ([("what is here?", 3), ("why", 1), ("and then", 2)], False),
    "text_row": ([("what is here?", 2), ("no frames here", 0)], False),
}


@pytest.fixture
def tower_calls(monkeypatch) -> dict[str, int]:
    """How often each stage of the fast vision tower ran."""
    calls = {"embed_patches": 0, "run_vision_tower": 0, "compress_and_adapt": 0}
    for name in calls:
        orig = getattr(FastEVA2CLIPModel, name)

        def counted(self, *args, _orig=orig, _name=name, **kwargs):
            calls[_name] += 1
            return _orig(self, *args, **kwargs)

        monkeypatch.setattr(FastEVA2CLIPModel, name, counted)
    return calls


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("policy", list(POLICIES))
@torch.no_grad()
def test_vision_tower_runs_once_per_call(tiny_model, tiny_prompts, tower_calls, shape, policy):
    rows, equal = SHAPES[shape]
    fast = FastCogVLM2.from_reference(tiny_model("video-chat", text={"num_layers": 2}),
                                      backend="torch")  # fmt: skip
    prompts, frames = tiny_prompts(fast.config, rows, equal=equal)
    ids, types, lens = pad_prompts(prompts)
    u8 = torch.cat(frames)
    kw = dict(prune=POLICIES[policy], lengths=None if equal else lens)
    out = fast(ids, types, u8, **kw)
    assert tower_calls == {"embed_patches": 1, "run_vision_tower": 1, "compress_and_adapt": 1}
    fast.generate(ids, types, u8, max_new_tokens=2, **kw)
    assert tower_calls == {"embed_patches": 2, "run_vision_tower": 2, "compress_and_adapt": 2}
    if POLICIES[policy] is not None:  # the kept counts the batch was sized with are the real ones
        assert out.lengths.tolist() == out.prune.final_keep().sum(1).tolist()


def test_token_batch_forms_and_host_data(tiny_model, tiny_prompts) -> None:
    cfg = tiny_model("image").config
    prompts, _ = tiny_prompts(cfg, [("what is here?", 1), ("why", 1), ("text only", 0)])
    ids, types, lens = pad_prompts(prompts)
    padded = TokenBatch.from_inputs(ids, types, lens, config=cfg)
    listed = TokenBatch.from_inputs([p.input_ids for p in prompts],
                                    [p.token_type_ids for p in prompts], config=cfg)  # fmt: skip
    for name in ("input_ids", "token_type_ids", "position_ids", "cu_seqlens"):
        assert torch.equal(getattr(padded, name), getattr(listed, name)), name
    assert padded.lengths == tuple(len(p) for p in prompts) == tuple(lens.tolist())
    assert padded.max_seqlen == max(padded.lengths) and padded.batch_size == 3
    vis = [int(p.token_type_ids.sum()) for p in prompts]
    assert padded.counts.vision == tuple(vis)
    assert padded.counts.patches == tuple((v // cfg.tokens_per_frame) * (cfg.tokens_per_frame - 2)
                                          for v in vis)  # fmt: skip
    want_pos = [build_position_ids(p.token_type_ids) for p in prompts]
    assert torch.equal(padded.position_ids, torch.cat(want_pos))
    assert padded.max_position == max(int(p.max()) for p in want_pos)
    # routing: CogVLM's rule inside each row (a row's last token never uses the vision expert)
    want_mask = torch.cat([vision_expert_mask(p.token_type_ids[None])[0] for p in prompts])
    assert torch.equal(padded.routing.expert_ids.bool(), want_mask)
    assert torch.equal(padded.unpack(padded.input_ids, 0), ids)
    # a dense batch is a packed batch of equal rows
    eq, _ = tiny_prompts(cfg, [("what is here?", 1), ("what is that?", 1)])
    dense = TokenBatch.from_inputs(*stack_prompts(eq), config=cfg)
    assert dense.lengths == (len(eq[0]),) * 2
    assert dense.cu_seqlens.tolist() == [0, len(eq[0]), 2 * len(eq[0])]
