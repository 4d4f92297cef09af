"""FastCogVLM2 on ragged batches (packed `TokenBatch` rows) against the reference, row by row.

CPU, tiny config, fp32, uint8 frames. Rows of different prompt lengths and frame counts (an
all-text row included) are packed (varlen attention): each row's last-token logits follow the
parity rule against the reference on that row alone (batch 1), greedy tokens from ``generate``
equal the reference's; bad ragged input raises ValueError naming the argument.
"""

from __future__ import annotations

import copy

import pytest
import torch

from haic_kernels.models.cogvlm2 import FastCogVLM2, normalize_frames, pad_prompts
from haic_kernels.testing import assert_parity
from tests._triton import needs_triton_cpu

# (query, frames): different prompt lengths and frame counts; the last row is all text.
ROWS = [("what is here?", 2), ("why", 1), ("a much longer question, no frames", 0)]


@torch.no_grad()
def _ref_rows(ref, prompts, frames, steps: int):
    """Per row (batch 1), greedy with a cache: (logits fp32 [steps, V], fp64 [steps, V],
    tokens [steps]); step 0 is the prompt's last token, the fp64 model follows fp32's tokens."""
    ref64 = copy.deepcopy(ref).double()
    out = []
    for p, f in zip(prompts, frames):
        ids, types = p.input_ids[None], p.token_type_ids[None]
        img = normalize_frames(f) if f.shape[0] else None
        o32 = ref(ids, types, img, use_cache=True)
        o64 = ref64(ids, types, None if img is None else img.double(), use_cache=True)
        l32, l64, toks = [], [], []
        for i in range(steps):
            l32.append(o32.logits[0, -1])
            l64.append(o64.logits[0, -1])
            toks.append(o32.logits[0, -1].argmax())
            if i + 1 < steps:
                nxt, lang = toks[-1].view(1, 1), torch.zeros(1, 1, dtype=torch.long)
                o32 = ref(nxt, lang, past_key_values=o32.past_key_values, use_cache=True)
                o64 = ref64(nxt, lang, past_key_values=o64.past_key_values, use_cache=True)
        out.append((torch.stack(l32), torch.stack(l64), torch.stack(toks)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["video-chat", "image"])
@torch.no_grad()
def test_ragged_matches_rows_alone(tiny_model, tiny_prompts, greedy_recorder, variant) -> None:
    ref = tiny_model(variant)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    prompts, frames = tiny_prompts(ref.config, ROWS)
    assert len({len(p) for p in prompts}) == len(prompts)  # really ragged
    want = _ref_rows(ref, prompts, frames, steps=4)
    u8 = torch.cat(frames)  # frames fill the rows' vision slots in order

    # padded [B, S] + lengths, and lists of rows: the same answer
    ids, types, lens = pad_prompts(prompts)
    out = fast(ids, types, u8, lengths=lens)
    assert out.logits.shape[:2] == (3, int(lens.max()))
    assert torch.equal(out.lengths, lens)
    listed = fast([p.input_ids for p in prompts], [p.token_type_ids for p in prompts], u8)
    torch.testing.assert_close(listed.logits, out.logits, equal_nan=True)
    for b, (l32, l64, _) in enumerate(want):
        n = int(lens[b])
        assert_parity(out.logits[b, n - 1], l32[0], l64[0], what=f"{variant} row {b} last")
        assert bool(out.logits[b, n:].isnan().all())  # padding is marked, not garbage

    # each row decodes from its own length: every step's logits against the row alone
    got = fast.generate(ids, types, u8, lengths=lens, max_new_tokens=4, sampler=greedy_recorder)
    assert torch.equal(got, torch.stack([w[2] for w in want]))
    seen = greedy_recorder.logits
    assert len(seen) == 4
    for b, (l32, l64, _) in enumerate(want):
        step_logits = torch.stack([s[b] for s in seen])
        assert_parity(step_logits, l32, l64, what=f"{variant} row {b} decode logits")


@pytest.mark.slow
@torch.no_grad()
def test_ragged_eos_and_equal_lengths(tiny_model, tiny_prompts) -> None:
    ref = tiny_model("video-chat")
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    prompts, frames = tiny_prompts(ref.config, ROWS[:2])
    u8 = torch.cat(frames)
    ids, types, lens = pad_prompts(prompts)
    free = fast.generate(ids, types, u8, lengths=lens, max_new_tokens=3)
    eos = int(free[0, 0])  # row 0 stops at once, row 1 goes on (padded with eos)
    got = fast.generate(ids, types, u8, lengths=lens, max_new_tokens=3, eos_token_id=eos)
    want = fast.generate(ids[1:, : int(lens[1])], types[1:, : int(lens[1])], frames[1],
                         max_new_tokens=3, eos_token_id=eos)  # fmt: skip
    assert bool((got[0] == eos).all())
    assert torch.equal(got[1, : want.shape[1]], want[0])
    # rows of equal length given the ragged way: the same packed batch as the dense form
    same = [prompts[0], prompts[0]]
    ids2, types2, lens2 = pad_prompts(same)
    u2 = torch.cat([frames[0], frames[0]])
    dense = fast(ids2, types2, u2).logits
    torch.testing.assert_close(fast(ids2, types2, u2, lengths=lens2).logits, dense)


@torch.no_grad()
def test_ragged_bad_input(tiny_model, tiny_prompts) -> None:
    ref = tiny_model("video-chat", text={"num_layers": 1}, vision={"num_layers": 1})
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    prompts, frames = tiny_prompts(ref.config, ROWS[:2])
    u8 = torch.cat(frames)
    ids, types, lens = pad_prompts(prompts)
    cases = [
        (dict(lengths=lens[:1]), "lengths"),
        (dict(lengths=torch.tensor([0, 3])), "lengths"),
        (dict(lengths=lens + 100), "lengths"),
        (dict(lengths=lens.float()), "lengths"),
        (dict(lengths=[True, 3]), "lengths"),
    ]
    for kw, name in cases:
        with pytest.raises(ValueError, match=name):
            fast(ids, types, u8, **kw)
    with pytest.raises(ValueError, match="lengths"):
        fast.generate(ids, types, u8, lengths=[5], max_new_tokens=2)
    rows_i = [p.input_ids for p in prompts]
    rows_t = [p.token_type_ids for p in prompts]
    with pytest.raises(ValueError, match=r"input_ids\[1\]: empty row"):
        fast([rows_i[0], rows_i[1][:0]], [rows_t[0], rows_t[1][:0]], frames[0])
    with pytest.raises(ValueError, match=r"token_type_ids\[0\]"):
        fast(rows_i, [rows_t[0][:-1], rows_t[1]], u8)
    with pytest.raises(ValueError, match="token_type_ids"):
        fast(rows_i, rows_t[:1], u8)
    with pytest.raises(ValueError, match="frames"):  # one frame short for the vision slots
        fast(rows_i, rows_t, u8[:-1])


@pytest.mark.slow
@needs_triton_cpu
@torch.no_grad()
def test_ragged_triton_interpreter(tiny_model, tiny_prompts) -> None:
    ref = tiny_model("image", text={"num_layers": 1}, vision={"num_layers": 1})
    fast = FastCogVLM2.from_reference(ref, backend="triton")
    prompts, frames = tiny_prompts(ref.config, [("hi?", 1), ("a text row", 0)])
    want = _ref_rows(ref, prompts, frames, steps=2)
    ids, types, lens = pad_prompts(prompts)
    u8 = torch.cat(frames)
    out = fast(ids, types, u8, lengths=lens).logits
    for b, (l32, l64, _) in enumerate(want):
        assert_parity(out[b, int(lens[b]) - 1], l32[0], l64[0], what=f"triton row {b}")


# ---- GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["video-chat", "image"])
@torch.no_grad()
def test_gpu_bf16_ragged_parity_and_graph_decode(tiny_model, tiny_prompts, variant) -> None:
    ref = tiny_model(variant, size="small")
    ref64 = copy.deepcopy(ref).to("cuda", torch.float64)
    ref = ref.to("cuda", torch.bfloat16)
    fast = FastCogVLM2.from_reference(ref)
    prompts, frames = tiny_prompts(ref.config, [("what is here?", 3), ("why", 1), ("text only", 0)])
    ids, types, lens = (t.cuda() for t in pad_prompts(prompts))
    u8 = torch.cat(frames).cuda()
    out = fast(ids, types, u8, lengths=lens).logits
    for b, (p, f) in enumerate(zip(prompts, frames)):
        pi, pt = p.input_ids[None].cuda(), p.token_type_ids[None].cuda()
        img = normalize_frames(f.cuda()) if f.shape[0] else None
        want = ref(pi, pt, img).logits[0, -1]
        want64 = ref64(pi, pt, None if img is None else img.double()).logits[0, -1]
        assert_parity(out[b, int(lens[b]) - 1], want, want64, what=f"bf16 ragged row {b}")
    eager = fast.generate(ids, types, u8, lengths=lens, max_new_tokens=10, cuda_graph=False)
    graphed = fast.generate(ids, types, u8, lengths=lens, max_new_tokens=10, cuda_graph=True)
    assert torch.equal(eager, graphed)
