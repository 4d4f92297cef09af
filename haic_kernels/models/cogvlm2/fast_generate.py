"""Greedy generation for `FastCogVLM2`: static KV cache, decode step capturable in a CUDA graph.

The prefill is `FastCogVLM2._run` (pruning included); each layer's keys/values go straight into
a preallocated cache ``k, v [B, T_i + max_new_tokens, Hkv, Dh]`` (T_i: that layer's prompt
length, shorter after text-guided pruning) with valid lengths ``seqlens[i]`` int32 [B] on the
device. Only the last prompt position goes through ``lm_head``.

One decode step (all on the device, no host read, shapes fixed):
    embed(tok) -> per layer: RMSNorm, QKV GEMM (new tokens are language tokens: the language
    expert's weights, no routing needed), `rope_qkv`, scatter k/v into the cache at
    ``seqlens[i]``, ``seqlens[i] += 1``, decode attention, output GEMM, SwiGLU GEMMs
    -> norm, lm_head, argmax, eos bookkeeping, ``pos += 1``.
Decode attention is `haic_kernels.attention`'s CUDA decode kernel when ``attention`` resolves
to it (CUDA tensors, fp16/bf16, verified or HAIC_TRUST_UNVERIFIED=1), called on the padded
cache with ``seqlens_k``; otherwise ``attention`` on the valid prefix (eager) or masked SDPA
over the whole cache (inside a CUDA graph, where the prefix length cannot be read).

On CUDA (``cuda_graph=None`` or True) the first decode step runs eagerly on a side stream (the
warm-up: Triton compilation, cuBLAS handles), the step is then captured once and replayed for
every later token; token, positions and lengths live in static buffers the step updates itself.
Ragged prompts (`fast_ragged`): the prefill runs packed (varlen); each row's keys/values land
at the start of its cache row (zeros after), ``seqlens[i][b]`` = row b's length, so every step
writes row b's new token at its own position; without the decode kernel the step attends with
masked SDPA over the cache (valid prefix of each row).
With ``prune=`` on ragged rows, or on rows of equal length that keep different counts (the
dense prefill raises `UnequalKeep` and the batch is rerun), the prefill is
`fast_ragged_prune.run_pruned_packed` and each layer's cache rows hold each row's KEPT tokens
(`StaticDecoder.store_packed`; shorter from a TextGuided layer K+1 on).

The host checks for an all-eos batch every `EOS_CHECK_EVERY` steps; the output is truncated to
exactly what `greedy_generate` returns.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .generate import check_max_new_tokens

__all__ = ["EOS_CHECK_EVERY", "StaticDecoder", "generate"]

# A host read of "all finished" stalls the CPU until the GPU catches up; every 8 tokens it costs
# <1% of a step yet wastes at most 7 steps after the batch is done.
EOS_CHECK_EVERY = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StaticDecoder:
    """The static buffers and the decode step of one `generate` call."""

    def __init__(self, model, batch: int, max_new: int, device: torch.device, dtype) -> None:
        self.model = model
        t = model.config.text
        self.hq, self.hkv, self.d = t.num_heads, t.num_kv_heads, t.head_dim
        self.max_new = max_new
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.seqlens: list[torch.Tensor] = []
        self.lengths: list[int] = []  # host copy, for the eager non-CUDA-kernel path only
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.out = torch.zeros(batch, max_new, dtype=torch.long, device=device)
        self.step_idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.device, self.dtype = device, dtype
        self.eos: int | None = None
        self.graph_mode = False
        self.ragged = False  # rows of different cached lengths: no common host prefix length
        self._use_cuda_kernel: bool | None = None

    # ---- prefill -----------------------------------------------------------------------------

    def sink(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy layer i's prompt keys/values ([B, Hkv, T, Dh]) into a fresh static cache."""
        b, _, t, _ = k.shape
        size = (b, t + self.max_new, self.hkv, self.d)
        kc = torch.empty(size, dtype=k.dtype, device=k.device)
        vc = torch.empty(size, dtype=v.dtype, device=v.device)
        kc[:, :t].copy_(k.transpose(1, 2))
        vc[:, :t].copy_(v.transpose(1, 2))
        self.keys.append(kc)
        self.values.append(vc)
        self.seqlens.append(torch.full((b,), t, dtype=torch.int32, device=k.device))
        self.lengths.append(t)

    def sink_packed(self, lengths: list[int]):
        """A sink for a packed prefill (rows of ``lengths``): k, v [1, Hkv, T, Dh] -> per-row
        static cache rows, zero-filled past each row (masked lanes must not hold NaN)."""
        self.ragged = True
        row_col: list = []

        def sink(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            if not row_col:
                from .fast_ragged import _row_col

                row_col.extend(_row_col(lengths, k.device))
            self.store_packed(k, v, lengths, *row_col)

        return sink

    def store_packed(self, k, v, lengths: list[int], row=None, col=None) -> None:
        """Append one layer's packed k, v [1, Hkv, T, Dh] (rows of ``lengths``) as per-row
        static cache rows, zero-filled past each row (masked lanes must not hold NaN)."""
        from .fast_ragged import _row_col

        self.ragged = True
        if row is None:
            row, col = _row_col(lengths, k.device)
        size = (len(lengths), max(lengths) + self.max_new, self.hkv, self.d)
        kc = torch.zeros(size, dtype=k.dtype, device=k.device)
        vc = torch.zeros(size, dtype=v.dtype, device=v.device)
        kc[row, col] = k[0].transpose(0, 1)
        vc[row, col] = v[0].transpose(0, 1)
        self.keys.append(kc)
        self.values.append(vc)
        self.seqlens.append(torch.tensor(lengths, dtype=torch.int32, device=k.device))
        self.lengths.append(max(lengths))

    # ---- decode ------------------------------------------------------------------------------

    def _cuda_kernel(self, q: torch.Tensor, kc: torch.Tensor) -> bool:
        if self._use_cuda_kernel is None:
            from haic_kernels.ops.attention.api import _resolve_backend

            chosen = _resolve_backend(self.model.attn_backend, q, kc, False, None, None, None)
            self._use_cuda_kernel = chosen == "cuda"
        return self._use_cuda_kernel

    def _attend(self, i: int, q: torch.Tensor) -> torch.Tensor:
        """q [B, 1, Hq, D] against layer i's cache (lengths already include the new token)."""
        from haic_kernels.ops.attention import attention

        kc, vc, lens = self.keys[i], self.values[i], self.seqlens[i]
        if self._cuda_kernel(q, kc):
            from haic_kernels.ops.attention.cuda import decode_attention_cuda

            out = torch.empty_like(q)
            decode_attention_cuda(q[:, 0], kc, vc, out[:, 0], scale=self.d**-0.5, seqlens_k=lens)
            return out
        if not self.graph_mode and not self.ragged:
            n = self.lengths[i]
            return attention(q, kc[:, :n], vc[:, :n], causal=True, backend=self.model.attn_backend)
        # In a graph (or ragged rows) without the decode kernel: masked SDPA over the cache.
        valid = torch.arange(kc.shape[1], device=kc.device).unsqueeze(0) < lens.unsqueeze(1)
        mask = valid[:, None, None, :]  # [B, 1, 1, S]
        r = self.hq // self.hkv
        k = kc.transpose(1, 2).repeat_interleave(r, dim=1)
        v = vc.transpose(1, 2).repeat_interleave(r, dim=1)
        ctx = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask)
        return ctx.transpose(1, 2)

    def step(self) -> None:
        """One greedy token for every sequence, entirely on the device."""
        from haic_kernels.ops.rope import rope_qkv

        m = self.model
        lm = m.model
        b = self.tok.shape[0]
        x = lm.embed_tokens(self.tok)  # [B, 1, D]
        for i, layer in enumerate(lm.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            lin = a.language_expert_query_key_value
            qkv = F.linear(h, lin.weight, lin.bias)
            q, k, v = rope_qkv(
                qkv, self.pos, num_heads=a.num_heads, num_kv_heads=a.num_kv_heads,
                theta=a.rope_theta, interleaved=a.rope_interleaved, backend=a.backend,
            )  # fmt: skip
            idx = self.seqlens[i].to(torch.long).view(b, 1, 1, 1).expand(b, 1, self.hkv, self.d)
            self.keys[i].scatter_(1, idx, k)
            self.values[i].scatter_(1, idx, v)
            self.seqlens[i].add_(1)
            if not self.graph_mode:
                self.lengths[i] += 1
            ctx = self._attend(i, q)
            x = x + F.linear(ctx.reshape(b, 1, -1), a.language_expert_dense.weight)
            h = layer.post_attention_layernorm(x)
            mlp = layer.mlp.language_mlp
            g = F.silu(F.linear(h, mlp.gate_proj.weight)) * F.linear(h, mlp.up_proj.weight)
            x = x + F.linear(g, mlp.down_proj.weight)
        logits = m.lm_head(lm.norm(x))[:, -1].float()
        self.emit(logits)
        self.pos.add_(1)

    def emit(self, logits: torch.Tensor) -> None:
        """argmax of logits [B, V] -> tok, out[:, step], finished (eos bookkeeping)."""
        nxt = logits.argmax(dim=-1)
        if self.eos is not None:
            nxt = torch.where(self.finished, torch.full_like(nxt, self.eos), nxt)
            self.finished |= nxt == self.eos
        self.tok.copy_(nxt.unsqueeze(1))
        self.out.scatter_(1, self.step_idx, nxt.unsqueeze(1))
        self.step_idx.add_(1)


@torch.inference_mode()
def generate(
    model,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    frames: torch.Tensor | None = None,
    *,
    vision_embeds: torch.Tensor | None = None,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    prune: object = None,
    cuda_graph: bool | None = None,
    timings: dict | None = None,
    lengths: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """Greedy decoding of `FastCogVLM2` ``model``; returns [B, n_new] (n_new <= max_new_tokens,
    shorter when every sequence produced ``eos_token_id``; finished rows padded with it).
    Ragged prompts: lists of rows or padded [B, S] with ``lengths`` (see `fast_ragged`)."""
    from .fast_ragged import is_ragged, pack_rows, run_packed, split_rows
    from .fast_ragged_prune import UnequalKeep, run_pruned_packed

    n_new = check_max_new_tokens(max_new_tokens)
    packed = pruned_rows = None
    if is_ragged(input_ids, lengths):
        rows = split_rows(input_ids, token_type_ids, lengths)
        if len({int(r[0].shape[0]) for r in rows}) == 1:  # equal lengths: the dense path
            input_ids = torch.stack([r[0] for r in rows])
            token_type_ids = torch.stack([r[1] for r in rows])
        elif prune is not None:  # pruned packed (rows keep their own counts)
            pruned_rows = rows
            input_ids = rows[0][0].unsqueeze(0)  # for the device only
        else:
            packed = pack_rows(rows, model.config.text.vocab_size)
            input_ids = packed.input_ids.unsqueeze(0)  # for the device only
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be an integer tensor [B, S]")
    device = input_ids.device
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got input_ids on {device}")
    b = input_ids.shape[0]
    if packed is not None or pruned_rows is not None:
        b = packed.batch_size if packed is not None else len(pruned_rows)
    if n_new == 0:
        return torch.empty(b, 0, dtype=torch.long, device=device)
    timed = isinstance(timings, dict)
    dtype = model.lm_head.weight.dtype
    dec = StaticDecoder(model, b, n_new, device, dtype)
    dec.eos = eos_token_id

    if timed:
        _sync(device)
    t0 = time.perf_counter()
    if packed is None and pruned_rows is None:
        try:
            logits, pos, _, _ = model._run(
                input_ids, token_type_ids, frames, vision_embeds, None, None, prune,
                kv_sink=dec.sink, last_only=True,
            )  # fmt: skip
            logits, last = logits[:, -1], pos[:, -1]
        except UnequalKeep:  # rows keep different counts: rerun them pruned packed
            pruned_rows = list(zip(input_ids.unbind(0), token_type_ids.unbind(0)))
            dec = StaticDecoder(model, b, n_new, device, dtype)
            dec.eos = eos_token_id
    if pruned_rows is not None:
        r = run_pruned_packed(
            model, pruned_rows, frames, vision_embeds, prune, last_only=True,
            kv_sink=lambda i, k, v, lens: dec.store_packed(k, v, lens),
        )  # fmt: skip
        logits, last = r.logits, r.last_position
    elif packed is not None:
        logits = run_packed(
            model, packed, frames, vision_embeds,
            kv_sink=dec.sink_packed(packed.lengths), last_only=True,
        )  # fmt: skip
        last = packed.position_ids[packed.last_index]
    max_pos = model.config.text.max_position_embeddings
    if int(last.max()) + n_new - 1 >= max_pos:
        raise ValueError(
            f"max_new_tokens={n_new}: positions would reach {int(last.max()) + n_new - 1}, past "
            f"max_position_embeddings={max_pos} (prompt plus new tokens too long)"
        )
    dec.pos.copy_(last.unsqueeze(1) + 1)
    dec.emit(logits)
    if timed:
        _sync(device)
    t1 = time.perf_counter()

    steps = n_new - 1
    done = 0
    graph = None
    while done < steps:
        if eos_token_id is not None and done % EOS_CHECK_EVERY == 0 and bool(dec.finished.all()):
            break
        if cuda_graph and graph is None and done >= 1:
            graph = _capture(dec)
        if graph is not None:
            graph.replay()
        elif cuda_graph:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                dec.step()
            torch.cuda.current_stream(device).wait_stream(side)
        else:
            dec.step()
        done += 1
    if timed:
        _sync(device)
    t2 = time.perf_counter()
    out = dec.out[:, : 1 + done]
    if eos_token_id is not None:
        all_done = (out == eos_token_id).cummax(dim=1).values.all(dim=0)
        hits = all_done.nonzero()
        if hits.numel():
            out = out[:, : int(hits[0]) + 1]
    if timed:
        timings["prefill_s"] = t1 - t0
        timings["decode_s"] = t2 - t1
        timings["decode_tokens"] = done * b
    return out


def _capture(dec: StaticDecoder) -> torch.cuda.CUDAGraph:
    """Capture one decode step (run eagerly once before, so everything is warm)."""
    dec.graph_mode = True
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.step()
    return graph
