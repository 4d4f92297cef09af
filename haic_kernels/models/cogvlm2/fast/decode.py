"""Generation for `FastCogVLM2`: one loop (`steps`) behind `generate` and `stream`.

THE prefill (`prefill.prefill`) stores each layer's keys/values straight into the static cache,
then each step chooses ``sampler(logits fp32 [B, V], seen int64 [B, L]) -> int64 [B]`` (None:
argmax) outside any graph (``seen``: each row's prompt ids, then its new ids, -1 after them and
once the row finished; a row finishes on any eos id and then repeats the first), and runs the
decode step: embed, each layer's `decode`, norm, lm_head, all on the device with fixed shapes.
On CUDA (``cuda_graph`` None or True) the first step of a shape runs eagerly on a side stream
(Triton compiles, cuBLAS warms up), the next is captured and later steps replay it; the model
keeps these buffers (`DecodeState`), so the next call of the same shape (rows, per-layer cache
sizes, dtype, device) replays the same graph. The host reads "all finished?" only every
``eos_check_every`` steps (a read waits for the GPU); `generate` truncates to exactly what
`greedy_generate` returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from haic_kernels.ops._common import check_int, trusted_values

from ..generate import check_context, check_max_new_tokens
from .batch import TokenBatch
from .cache import StaticKVCache
from .prefill import prefill

__all__ = ["EOS_CHECK_EVERY", "DecodeState", "Sampler", "generate", "steps"]

# Every 8 tokens the host read costs <1% of a step and wastes at most 7 steps after the batch
# is done.
EOS_CHECK_EVERY = 8

Sampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DecodeState:
    """The static buffers of decoding one batch size on one device (kept by the model)."""

    def __init__(self, batch_size: int, device: torch.device) -> None:
        self.cache = StaticKVCache()
        self.tok = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = False
        self.weights: tuple[int, ...] = ()  # where the graph read the parameters from

    def step(self, model: nn.Module) -> None:
        """One token per row on the static buffers (what a graph captures)."""
        x = model.model.embed_tokens(self.tok)
        # Positions and cache lengths are this loop's own (the prefill's, + 1 a step, within the
        # capacity `check_context` allowed): no layer re-checks their values.
        with trusted_values():
            for layer, kv in zip(model.model.layers, self.cache.layers):
                x = layer.decode(x, self.pos, kv)
        self.cache.advance()
        self.logits = model.logits(x)
        self.pos.add_(1)

    def advance(self, model: nn.Module, tok: torch.Tensor, cuda_graph: bool) -> torch.Tensor:
        """The logits [B, V] after feeding ``tok`` int64 [B]."""
        self.tok.copy_(tok)
        if not cuda_graph:
            self.step(model)
        elif self.graph is not None:
            self.graph.replay()
        elif not self.warm:
            side = torch.cuda.Stream(tok.device)
            side.wait_stream(torch.cuda.current_stream(tok.device))
            with torch.cuda.stream(side):
                self.step(model)
            torch.cuda.current_stream(tok.device).wait_stream(side)
            self.warm = True
        else:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(model)
            self.graph.replay()
        return self.logits


def _eos_ids(eos_token_id: object, device: torch.device) -> torch.Tensor | None:
    """None, or int64 [n] of ``eos_token_id``: an id >= 0 or a non-empty sequence of them."""
    if eos_token_id is None:
        return None
    ids = eos_token_id if isinstance(eos_token_id, Sequence) else [eos_token_id]
    if not ids:
        raise TypeError("eos_token_id: expected an int, a sequence of ints or None, got []")
    ids = [check_int("eos_token_id", i, minimum=0) for i in ids]
    return torch.tensor(ids, dtype=torch.long, device=device)


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def steps(
    model: nn.Module,
    batch: TokenBatch,
    frames: torch.Tensor | None = None,
    *,
    vision_embeds: torch.Tensor | None = None,
    prune: object = None,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
    sampler: Sampler | None = None,
    cuda_graph: bool | None = None,
    timings: dict | None = None,
    eos_check_every: int = 1,
) -> Iterator[torch.Tensor]:
    """An iterator over each step's new tokens int64 [B] (see the module docstring), arguments
    checked now. ``timings`` (a dict) gets "prefill_s", "decode_s" and "decode_tokens" (tokens
    after the first, over the batch) when it ends."""
    n_new = check_max_new_tokens(max_new_tokens)
    check_int("eos_check_every", eos_check_every)
    device = batch.device
    eos = _eos_ids(eos_token_id, device)
    if sampler is not None and not callable(sampler):
        raise TypeError(f"sampler: expected a callable (logits, seen) -> ids, got {sampler!r}")
    cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got input_ids on {device}")
    check_context(model.config, batch.max_position, n_new)
    return _loop(model, batch, frames, vision_embeds, prune, n_new, eos, sampler, cuda_graph,
                 timings, eos_check_every)  # fmt: skip


@torch.inference_mode()
def _loop(model, batch, frames, vision_embeds, prune, n_new, eos, sampler, cuda_graph, timings,
          eos_check_every) -> Iterator[torch.Tensor]:  # fmt: skip
    """The loop of `steps` (its arguments checked)."""
    if n_new == 0:
        return
    device, b = batch.device, batch.batch_size
    state = model.decode_state(b, device)
    state.cache.begin(n_new, len(model.model.layers))
    t0 = _sync(device)
    out = prefill(model, batch, frames, vision_embeds, prune, sink=state.cache.store,
                  last_only=True)  # fmt: skip
    weights = tuple(p.data_ptr() for p in model.parameters())
    if not state.cache.same_shape or weights != state.weights:  # the graph reads stale memory
        state.graph, state.warm, state.weights = None, False, weights
    state.pos.copy_(out.batch.position_ids[out.batch.last_index] + 1)
    rows = torch.arange(b, device=device)
    ends = batch.seqlens.long()
    seen = None
    if sampler is not None:
        seen = torch.full((b, batch.max_seqlen + n_new), -1, dtype=torch.long, device=device)
        seen[batch.row_col] = batch.input_ids
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    logits = out.logits
    t1 = _sync(device)
    done = 0
    for step in range(n_new):
        if sampler is None:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = sampler(logits, seen[:, : batch.max_seqlen + step])
            if not isinstance(nxt, torch.Tensor) or nxt.shape != (b,) or nxt.is_floating_point():
                got = tuple(nxt.shape) if isinstance(nxt, torch.Tensor) else type(nxt).__name__
                raise ValueError(f"sampler: expected int64 token ids [B={b}], got {got}")
            nxt = nxt.to(torch.long)
        if eos is not None:
            nxt = torch.where(finished, eos[0], nxt)
        if seen is not None:
            seen[rows, ends + step] = torch.where(finished, -1, nxt)
        if eos is not None:
            finished |= torch.isin(nxt, eos)
        yield nxt
        last = step + 1 == n_new
        if last or (eos is not None and step % eos_check_every == 0 and bool(finished.all())):
            break
        logits = state.advance(model, nxt, cuda_graph)
        done += 1
    if timings is not None:
        timings.update(prefill_s=t1 - t0, decode_s=_sync(device) - t1, decode_tokens=done * b)


def generate(model: nn.Module, batch: TokenBatch, *args: object, **kwargs: object) -> torch.Tensor:
    """`steps` collected: int64 [B, n_new], n_new <= max_new_tokens, shorter when every row
    produced an eos id (the rows that finished earlier padded with the first eos id)."""
    toks = list(steps(model, batch, *args, eos_check_every=EOS_CHECK_EVERY, **kwargs))
    if not toks:
        return torch.empty(batch.batch_size, 0, dtype=torch.long, device=batch.device)
    out = torch.stack(toks, dim=1)
    eos = _eos_ids(kwargs.get("eos_token_id"), out.device)
    if eos is not None:
        hits = torch.isin(out, eos).cummax(dim=1).values.all(dim=0).nonzero()
        if hits.numel():
            out = out[:, : int(hits[0]) + 1]
    return out
