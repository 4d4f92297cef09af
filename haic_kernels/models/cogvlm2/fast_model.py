"""`FastCogVLM2`: the whole CogVLM2(-Video) model through haic_kernels ops, and `swap_fast_modules`.

Same module tree and ``state_dict()`` keys as the reference `CogVLM2ForCausalLM`
(``model.embed_tokens``, ``model.layers[i]``, ``model.norm``, ``model.vision``, ``lm_head``), so
forward hooks by module name line up with the reference for stage-by-stage comparison and one
checkpoint loads into either. ``from_reference`` shares the reference's parameters (no copy).

* vision tower and adapter: `fast_vision.FastEVA2CLIPModel` (patch_embed on uint8 frames,
  flash attention, conv_compress, GLU);
* language model: `fast.FastCogVLMDecoderLayer` (expert_linear, rope_qkv, attention) with ONE
  `Routing` built per forward (and rebuilt after each pruning compaction) shared by all layers;
* ``prune=``: `haic_kernels.pruning` policies (`Temporal`, `Salient` before the LM, `TextGuided`
  at LM layer K, `Compose`), scored with the kernels (the vision tower's last-layer CLS
  ``key_scores``; the LM layer's ``key_scores``) and applied with `token_prune.compact`; kept
  tokens keep their position ids and routing is rebuilt on the kept token types. The result
  equals the reference run with the same keep masks (``keep=`` / ``keep_from_layer=``);
* ``generate``: greedy decoding with a static KV cache and, on CUDA, a CUDA-graph decode step
  (see `fast_generate`).

Batches: rows of equal length as [B, S] tensors (as the reference), or ragged rows (lists of
1-D rows, or right-padded [B, S] with ``lengths=``) packed back to back and run through varlen
attention (`fast_ragged`); a ragged ``forward`` returns logits padded to the longest row (NaN
past each row's end) and takes no cache; ``generate`` continues each row from its own
length. ``prune`` on rows that differ in length or in kept counts: `fast_ragged_prune`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from haic_kernels.constants import VISION_TOKEN_TYPE
from haic_kernels.pruning import (
    Compose,
    PrunePlan,
    PruneResult,
    Salient,
    Temporal,
    TextGuided,
    TokenLayout,
    pool_cls_attention,
)

from .config import CogVLM2Config
from .fast import FastCogVLMDecoderLayer, routing_from_mask
from .fast_ragged import is_ragged, pack_rows, run_packed, split_rows
from .fast_ragged_prune import UnequalKeep, run_pruned_packed
from .fast_vision import FastEVA2CLIPModel, FastVisionAttention
from .language import KVCache, build_position_ids, vision_expert_mask
from .reference import CausalLMOutput, CogVLM2ForCausalLM, vision_embed_rows

__all__ = ["FastCausalLMOutput", "FastCogVLM2", "swap_fast_modules"]

BACKENDS = ("auto", "torch", "triton")


@dataclass
class FastCausalLMOutput(CausalLMOutput):
    """`CausalLMOutput` plus ``prune``: the `PrunePlan` applied (None without ``prune=``), and
    ``lengths`` int64 [B]: each row's valid length in ``logits`` (ragged batches; else None)."""

    prune: PrunePlan | None = None
    lengths: torch.Tensor | None = None


def _check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return str(backend)


def _split_policies(prune: object, num_layers: int) -> tuple[list, TextGuided | None]:
    """(before-LM policies in order, the in-LM TextGuided stage or None)."""
    if prune is None:
        return [], None
    if isinstance(prune, Compose):
        prune.validate(num_layers)
        policies = list(prune.policies)
    elif isinstance(prune, (Temporal, Salient, TextGuided)):
        prune.validate(num_layers)
        policies = [prune]
    else:
        raise TypeError(
            "prune: expected a haic_kernels.pruning policy (Temporal, Salient, TextGuided or "
            f"Compose), got {type(prune).__name__}"
        )
    lm = policies[-1] if isinstance(policies[-1], TextGuided) else None
    return (policies[:-1] if lm is not None else policies), lm


class _LanguageModel(nn.Module):
    """``embed_tokens``, ``layers``, ``norm``, ``vision``: `CogVLM2Model`'s names and order."""

    def __init__(self, ref: nn.Module, backend: str, attn_backend: str) -> None:
        super().__init__()
        self.embed_tokens = ref.embed_tokens
        self.layers = nn.ModuleList(
            FastCogVLMDecoderLayer.from_reference(layer, backend=backend, attn_backend=attn_backend)
            for layer in ref.layers
        )
        self.norm = ref.norm
        self.vision = FastEVA2CLIPModel(ref.vision, backend, attn_backend)


class FastCogVLM2(nn.Module):
    """CogVLM2 through haic_kernels ops; the reference's API (``forward``) plus ``generate``.

    ``backend`` ("auto" | "torch" | "triton") goes to every op, ``attn_backend`` (default
    ``backend``; also "sdpa", "flash_attn") to attention. "auto" picks per device: the fast paths
    verified on that GPU, PyTorch on CPU.
    """

    def __init__(
        self, config: CogVLM2Config, *, backend: str = "auto", attn_backend: str | None = None
    ) -> None:
        super().__init__()
        self._build(CogVLM2ForCausalLM(config), backend, attn_backend)

    def _build(self, ref: CogVLM2ForCausalLM, backend: str, attn_backend: str | None) -> None:
        self.config: CogVLM2Config = ref.config
        self.backend = _check_backend(backend)
        self.attn_backend = attn_backend if attn_backend is not None else self.backend
        self.model = _LanguageModel(ref.model, self.backend, self.attn_backend)
        self.lm_head = ref.lm_head

    @classmethod
    def from_reference(
        cls,
        model: CogVLM2ForCausalLM,
        *,
        backend: str = "auto",
        attn_backend: str | None = None,
    ) -> FastCogVLM2:
        """A fast model sharing ``model``'s parameters (no copy; ``model`` keeps working)."""
        if not isinstance(model, CogVLM2ForCausalLM):
            raise TypeError(f"model: expected a CogVLM2ForCausalLM, got {type(model).__name__}")
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast._build(model, backend, attn_backend)
        return fast.train(model.training)

    @classmethod
    def from_pretrained(
        cls,
        path,
        *,
        dtype: torch.dtype | None = torch.bfloat16,
        device: str | torch.device = "cuda",
        config: CogVLM2Config | None = None,
        backend: str = "auto",
        attn_backend: str | None = None,
    ) -> FastCogVLM2:
        """Load an HF-format checkpoint directory (`weights.load_pretrained`: strict, clear
        `CheckpointError` on missing / unexpected / mis-shaped weights) into a fast model."""
        from .weights import load_pretrained

        _check_backend(backend)
        ref = load_pretrained(path, dtype=dtype, device=device, config=config)
        return cls.from_reference(ref, backend=backend, attn_backend=attn_backend).eval()

    # ---- vision stages (the entry points `haic run` times) ----------------------------------

    def embed_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] or normalized float [N, 3, H, W] -> [N, 1 + P, Dv]."""
        return self.model.vision.embed_patches(frames)

    def run_vision_transformer(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1 + P, Dv] -> [N, 1 + P, Dv] through every vision block."""
        return self.model.vision.run_vision_transformer(x)

    def compress_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1 + P, Dv] -> [N, tokens_per_frame, Dt]."""
        return self.model.vision.compress_and_adapt(x)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (uint8 [N, H, W, 3] or normalized float [N, 3, H, W]) -> [N, tpf, Dt]."""
        return self.compress_and_adapt(self.run_vision_transformer(self.embed_patches(frames)))

    # ---- forward ------------------------------------------------------------------------------

    def _vision_rows(
        self,
        num_slots: int,
        frames: torch.Tensor | None,
        vision_embeds: torch.Tensor | None,
        want_cls: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(rows [num_slots, Dt] or None, pooled CLS scores [F, patches] or None)."""
        tpf, dt = self.config.tokens_per_frame, self.config.text.hidden_size
        if frames is not None and vision_embeds is not None:
            raise ValueError("pass frames or vision_embeds, not both")
        if frames is not None:
            vision = self.model.vision
            vision.check_frames(frames)
            if frames.shape[0] * tpf != num_slots:
                raise ValueError(
                    f"frames: {frames.shape[0]} frames give {frames.shape[0] * tpf} vision "
                    f"tokens ({tpf} per frame) but token_type_ids has {num_slots} vision slots"
                )
            if num_slots == 0:
                return None, None
            x = vision.embed_patches(frames)
            cls = None
            if want_cls:
                x, cls = vision.run_vision_transformer(x, cls_scores=True)
                cls = pool_cls_attention(cls)
            else:
                x = vision.run_vision_transformer(x)
            return vision.compress_and_adapt(x).reshape(-1, dt), cls
        if want_cls:
            raise ValueError(
                "prune: Salient needs the vision tower's CLS attention - pass frames, not "
                "vision_embeds"
            )
        if vision_embeds is not None:
            return vision_embed_rows(vision_embeds, dt, num_slots), None
        if num_slots:
            raise ValueError(
                f"token_type_ids has {num_slots} vision slots but neither frames nor "
                "vision_embeds was given"
            )
        return None, None

    def _routing(self, types: torch.Tensor):
        mask = vision_expert_mask(types) if self.config.vision_expert else None
        return mask, routing_from_mask(mask, types.numel(), types.device)

    def _compact(self, res: PruneResult, x, pos, types):
        """Apply one stage's keep (equal kept counts per row) to hidden states, ids, types."""
        counts = res.kept_per_sequence
        if bool((counts != counts[0]).any()):
            raise UnequalKeep(
                f"prune: rows keep different numbers of tokens {counts.tolist()}; the dense path "
                "(use_cache, position_ids) needs equal kept counts"
            )
        b, n = x.shape[0], int(counts[0])
        c = res.compact(x, token_type_ids=types, position_ids=pos, backend=self.backend)
        return c.hidden.view(b, n, -1), c.position_ids.view(b, n), c.token_type_ids.view(b, n)

    def _run(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        frames: torch.Tensor | None,
        vision_embeds: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        past: KVCache | None,
        prune: object,
        kv_sink=None,
        last_only: bool = False,
    ):
        """The forward pass; returns (logits, position_ids, token_type_ids, plan stages).

        ``kv_sink(i, k, v)`` receives each layer's keys/values ([B, Hkv, T, Dh] views)."""
        CogVLM2ForCausalLM._check_inputs(self, input_ids, token_type_ids, position_ids, past)  # type: ignore[arg-type]
        cfg = self.config
        before, lm_policy = _split_policies(prune, cfg.text.num_layers)
        if (before or lm_policy) and past is not None:
            raise ValueError("prune: only for a prefill (no past_key_values)")
        types = token_type_ids
        vis = types == VISION_TOKEN_TYPE
        want_cls = any(isinstance(p, Salient) for p in before)
        rows, cls = self._vision_rows(int(vis.sum()), frames, vision_embeds, want_cls)

        x = self.model.embed_tokens(input_ids)
        if rows is not None:
            x = x.index_put((vis,), rows.to(device=x.device, dtype=x.dtype))
        if position_ids is None:
            position_ids = (
                build_position_ids(types) if past is None else past.continue_positions(types)
            )
        max_pos = cfg.text.max_position_embeddings
        if int(position_ids.max()) >= max_pos or int(position_ids.min()) < 0:
            raise ValueError(
                f"position_ids: ids up to {int(position_ids.max())} exceed "
                f"max_position_embeddings={max_pos} (input_ids too long for this config)"
            )
        pos = position_ids

        stages: list[PruneResult] = []
        layout = None
        if before or lm_policy:
            layout = TokenLayout.from_token_types(types, cfg.tokens_per_frame)
        feats = rows.view(-1, cfg.tokens_per_frame, rows.shape[-1]) if rows is not None else None
        for policy in before:
            res = policy(layout, vision_embeds=feats, cls_scores=cls)
            if res.vision_embeds is not None:  # merged rows: put them where their tokens are
                feats = res.vision_embeds.view_as(feats)
                cur = layout.vision
                idx = layout.frame[cur] * cfg.tokens_per_frame + layout.slot[cur]
                x = x.index_put((cur,), res.vision_embeds[idx].to(x.dtype))
            x, pos, types = self._compact(res, x, pos, types)
            layout = res.layout_after
            stages.append(res)

        mask, route = self._routing(types)
        k_layer = lm_policy.layer if lm_policy is not None else -1
        for i, layer in enumerate(self.model.layers):
            if i == k_layer + 1 and stages and stages[-1].policy == "text_guided":
                x, pos, types = self._compact(stages[-1], x, pos, types)
                mask, route = self._routing(types)
            kv_past = (past.keys[i], past.values[i]) if past is not None else None
            if i == k_layer:
                rows_q = lm_policy.query_rows(layout)
                x, (k, v), scores = layer(x, mask, pos, kv_past, routing=route, key_scores=rows_q)
                res = lm_policy(layout, num_layers=cfg.text.num_layers, lm_scores=scores)
                stages.append(res)
            else:
                x, (k, v) = layer(x, mask, pos, kv_past, routing=route)
            if kv_sink is not None:
                kv_sink(i, k, v)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.model.norm(x)).float()
        return logits, pos, types, stages

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        frames: torch.Tensor | None = None,
        *,
        vision_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        prune: object = None,
        lengths: torch.Tensor | list[int] | None = None,
    ) -> FastCausalLMOutput:
        """Logits [B, S, V] (fp32): `CogVLM2ForCausalLM.forward`'s semantics.

        Ragged batch: ``input_ids``/``token_type_ids`` as lists of 1-D rows [S_b], or padded
        [B, S] with ``lengths`` int [B] (right padding, every length in [1, S]). Rows of unequal
        lengths are packed (varlen attention); ``logits`` are then [B, max S_b, V], NaN past
        each row's end (row b's last token: ``logits[b, lengths[b] - 1]``), ``.lengths`` holds
        the lengths; ``position_ids``/``past_key_values`` are refused and ``use_cache`` needs
        rows of equal length. Rows of equal length run the dense path.

        ``frames``: uint8 [B*F, H, W, 3] (normalized inside patch_embed) or normalized float
        [B*F, 3, H, W]; their tokens fill the vision slots in order. ``past_key_values`` /
        ``use_cache`` use the reference's `KVCache` (so `greedy_generate` drives both models the
        same way). ``prune``: a `haic_kernels.pruning` policy; then ``logits`` cover the kept
        tokens ([B, S_kept, V]) and ``.prune`` holds the `PrunePlan` (its keep masks, scores).
        Rows that differ in length or keep different counts (e.g. different frame counts with a
        per-video ratio) are pruned packed (`fast_ragged_prune`): ``logits`` [B, max kept, V],
        NaN past each row's kept length ``.lengths`` (``use_cache`` then raises).
        """
        if is_ragged(input_ids, lengths):
            return self._forward_ragged(
                input_ids, token_type_ids, frames, vision_embeds, position_ids,
                past_key_values, use_cache, prune, lengths,
            )  # fmt: skip
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []

        def sink(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            keys.append(k)
            values.append(v)

        try:
            logits, pos, types, stages = self._run(
                input_ids, token_type_ids, frames, vision_embeds, position_ids,
                past_key_values, prune, sink if use_cache else None,
            )  # fmt: skip
        except UnequalKeep:
            if use_cache or position_ids is not None or past_key_values is not None:
                raise
            # Rows keep different counts: rerun them packed (varlen), NaN-padded logits.
            rows = list(zip(input_ids.unbind(0), token_type_ids.unbind(0)))
            return self._forward_pruned(rows, frames, vision_embeds, prune)
        cache = None
        if use_cache:
            cache = KVCache(keys, values, pos[:, -1].clone(), types[:, -1].clone())
        plan = PrunePlan(stages) if stages else None
        return FastCausalLMOutput(logits=logits, past_key_values=cache, prune=plan)

    def _forward_ragged(
        self, input_ids, token_type_ids, frames, vision_embeds, position_ids, past, use_cache,
        prune, lengths,
    ) -> FastCausalLMOutput:  # fmt: skip
        if position_ids is not None or past is not None:
            raise ValueError(
                "position_ids, past_key_values: not accepted with a ragged batch (lists of rows "
                "or lengths=); positions are built per row"
            )
        rows = split_rows(input_ids, token_type_ids, lengths)
        lens = torch.tensor([r[0].shape[0] for r in rows], dtype=torch.long)
        if len(set(lens.tolist())) == 1:  # equal lengths: the dense path does it all
            out = self.forward(
                torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), frames,
                vision_embeds=vision_embeds, use_cache=use_cache, prune=prune,
            )  # fmt: skip
            if prune is None:  # pruned rows report their kept lengths (or None when equal)
                out.lengths = lens.to(out.logits.device)
            return out
        if use_cache:
            raise ValueError(
                f"use_cache: needs rows of equal length, got lengths {lens.tolist()} "
                "(generate() continues ragged rows)"
            )
        if prune is not None:
            return self._forward_pruned(rows, frames, vision_embeds, prune)
        p = pack_rows(rows, self.config.text.vocab_size)
        logits = p.unpack(run_packed(self, p, frames, vision_embeds))
        return FastCausalLMOutput(logits=logits, lengths=lens.to(logits.device))

    def _forward_pruned(self, rows, frames, vision_embeds, prune) -> FastCausalLMOutput:
        """Rows that differ in length or kept counts, pruned packed (`fast_ragged_prune`)."""
        r = run_pruned_packed(self, rows, frames, vision_embeds, prune)
        lens = torch.tensor(r.lengths, dtype=torch.long, device=r.logits.device)
        return FastCausalLMOutput(
            logits=r.unpack(), prune=PrunePlan(r.stages) if r.stages else None, lengths=lens
        )

    def generate(
        self,
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
        """Greedy tokens [B, n_new] (equal to `greedy_generate` on the reference), static KV
        cache, CUDA-graph decode step on CUDA (``cuda_graph=None``: on for CUDA tensors).
        ``timings`` (a dict) gets "prefill_s", "decode_s", "decode_tokens". Ragged prompts
        (lists of rows, or padded [B, S] with ``lengths``; see ``forward``) are packed for the
        prefill and each row decodes from its own length; with ``prune`` each row decodes from
        its own kept length.
        See `fast_generate.generate`."""
        from .fast_generate import generate

        return generate(
            self, input_ids, token_type_ids, frames, vision_embeds=vision_embeds,
            max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, prune=prune,
            cuda_graph=cuda_graph, timings=timings, lengths=lengths,
        )  # fmt: skip


# ---- the optional HF-style layer -----------------------------------------------------------


def swap_fast_modules(
    model: nn.Module, *, backend: str = "auto", attn_backend: str | None = None
) -> nn.Module:
    """Optional: replace, in place, the decoder layers (attention + expert MLP) and the vision
    attention modules of a loaded `CogVLM2ForCausalLM` by the fast modules; returns ``model``.

    The replaced modules share the original parameters (state_dict unchanged) and keep the
    reference call signatures, so the model's own ``forward`` runs through expert_linear,
    rope_qkv and attention. The vision tower's patch embed / conv stay torch modules here (use
    `FastCogVLM2` for the whole fast path). The functional ops and `FastCogVLM2` are the core
    API; this is a convenience for code that already holds a model object.

    Only the haic_kernels reference class is supported: HF remote-code CogVLM2 objects call
    their layers with other arguments (token_type_ids, attention masks), so swapping into them
    raises TypeError - load their checkpoint with `FastCogVLM2.from_pretrained` instead.
    """
    from .language import CogVLMDecoderLayer
    from .vision import VisionTransformerLayer

    _check_backend(backend)
    if not isinstance(model, CogVLM2ForCausalLM):
        raise TypeError(
            f"swap_fast_modules: supports haic_kernels' CogVLM2ForCausalLM, got "
            f"{type(model).__module__}.{type(model).__name__} (HF remote-code models call their "
            "layers differently; use FastCogVLM2.from_pretrained on the checkpoint)"
        )
    attn_backend = attn_backend if attn_backend is not None else backend
    layers = model.model.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, CogVLMDecoderLayer):
            layers[i] = FastCogVLMDecoderLayer.from_reference(
                layer, backend=backend, attn_backend=attn_backend
            )
    for layer in model.model.vision.transformer.layers:
        if isinstance(layer, VisionTransformerLayer) and not isinstance(
            layer.attention, FastVisionAttention
        ):
            layer.attention = FastVisionAttention(layer.attention, attn_backend)
    return model
