"""`FastCogVLM2`: CogVLM2(-Video) end to end through haic_kernels ops.

The reference `CogVLM2ForCausalLM`'s module tree and ``state_dict()`` keys (hooks by module name
line up, one checkpoint loads into either; ``from_reference`` shares its modules) and stages
(`VisionStages`, ``forward``, ``generate``). Every call packs its rows into one `TokenBatch` and
runs THE prefill (`prefill.py`); `decode.py` generates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from haic_kernels.ops.norm import add_rms_norm, rms_norm
from haic_kernels.pruning import PrunePlan

from ..config import CogVLM2Config
from ..reference import CogVLM2ForCausalLM, VisionStages
from ..weights import load_pretrained
from .batch import TokenBatch
from .decode import DecodeState, Sampler, generate, steps
from .layers import FastDecoderLayer, Pending
from .precision import PRECISIONS, Fp8Options, fp8_options
from .prefill import prefill
from .vision import FastEVA2CLIPModel

__all__ = ["BACKENDS", "PRECISIONS", "FastCausalLMOutput", "FastCogVLM2"]

BACKENDS = ("auto", "torch", "triton")


@dataclass
class FastCausalLMOutput:
    """``logits`` fp32 [B, max_len, V], NaN past each row's ``lengths[b]`` (int64 [B]: its
    tokens after pruning; its prompt length without); ``prune``: the `PrunePlan` applied (its
    keep masks and scores), None without ``prune=``."""

    logits: torch.Tensor
    lengths: torch.Tensor
    prune: PrunePlan | None = None


def _check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return str(backend)


class _LanguageModel(nn.Module):
    """``embed_tokens``, ``layers``, ``norm``, ``vision``: `CogVLM2Model`'s names and order."""

    def __init__(
        self, ref: nn.Module, backend: str, attn_backend: str, fp8: Fp8Options | None
    ) -> None:
        super().__init__()
        self.embed_tokens = ref.embed_tokens
        self.layers = nn.ModuleList(
            FastDecoderLayer(layer, ref.config, backend, attn_backend, fp8) for layer in ref.layers
        )
        self.norm = ref.norm
        self.vision = FastEVA2CLIPModel(ref.vision, backend, attn_backend, fp8)


class FastCogVLM2(VisionStages, nn.Module):
    """CogVLM2 through haic_kernels ops: ``forward`` (prefill logits), ``generate``, ``stream``.

    ``backend`` ("auto" | "torch" | "triton") goes to every op, ``attn_backend`` (default
    ``backend``; also "sdpa", "flash_attn") to attention. "auto" picks per device: the fast paths
    verified on that GPU, PyTorch on the CPU.

    ``precision`` ("native" | "fp8"): "native" runs every GEMM in the model dtype; "fp8" runs
    the large linears of the vision blocks and LM layers in E4M3 (`fast.precision`: which
    ones, the scales, why the embedding, conv, adapter and lm_head stay native), their weights
    quantized once here. `fp8_backend` says whether they run fast (``torch._scaled_mm``) or
    emulated; the first fp8 call warns when emulated. The forward then needs
    ``torch.inference_mode()`` or ``torch.no_grad()`` (fp8_linear has no backward).
    """

    def __init__(
        self, config: CogVLM2Config, *, backend: str = "auto", attn_backend: str | None = None,
        precision: str = "native",
    ) -> None:  # fmt: skip
        super().__init__()
        fp8 = fp8_options(precision, _check_backend(backend))
        self._build(CogVLM2ForCausalLM(config), backend, attn_backend, precision, fp8)

    def _build(
        self, ref: CogVLM2ForCausalLM, backend: str, attn_backend: str | None, precision: str,
        fp8: Fp8Options | None,
    ) -> None:  # fmt: skip
        self.config: CogVLM2Config = ref.config
        self.backend = _check_backend(backend)
        self.attn_backend = attn_backend if attn_backend is not None else self.backend
        self.precision = precision
        self.model = _LanguageModel(ref.model, self.backend, self.attn_backend, fp8)
        self.lm_head = ref.lm_head
        self._decode: DecodeState | None = None

    @classmethod
    def from_reference(
        cls, model: CogVLM2ForCausalLM, *, backend: str = "auto", attn_backend: str | None = None,
        precision: str = "native",
    ) -> FastCogVLM2:  # fmt: skip
        """A fast model sharing ``model``'s parameters (no copy; ``model`` keeps working; with
        ``precision="fp8"`` the E4M3 copies of the block linears come on top)."""
        if not isinstance(model, CogVLM2ForCausalLM):
            raise TypeError(f"model: expected a CogVLM2ForCausalLM, got {type(model).__name__}")
        fp8 = fp8_options(precision, _check_backend(backend))
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast._build(model, backend, attn_backend, precision, fp8)
        return fast.train(model.training)

    @property
    def fp8_backend(self) -> str | None:
        """None with ``precision="native"``; else the fp8_linear backend the block linears run
        on the model's current device and dtype: "scaled_mm" (fast) or "emulated"."""
        layers = [*self.model.layers, *self.model.vision.transformer.layers]
        quantized = [layer.fp8 for layer in layers if layer.fp8 is not None]
        if not quantized:
            return None
        w = self.model.embed_tokens.weight
        # Only the device and dtype of x decide (the shapes are the weights').
        return quantized[0].backend(torch.empty(1, 1, dtype=w.dtype, device=w.device))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | None = torch.bfloat16,
        device: str | torch.device = "cuda",
        config: CogVLM2Config | None = None,
        backend: str = "auto",
        attn_backend: str | None = None,
        precision: str = "native",
    ) -> FastCogVLM2:
        """Load an HF-format checkpoint directory (`weights.load_pretrained`: strict, clear
        `CheckpointError` on missing / unexpected / mis-shaped weights) into a fast model;
        ``precision="fp8"`` quantizes the block linears once, after loading."""
        fp8_options(precision, _check_backend(backend))  # bad options fail before any read
        ref = load_pretrained(path, dtype=dtype, device=device, config=config)
        return cls.from_reference(ref, backend=backend, attn_backend=attn_backend,
                                  precision=precision).eval()  # fmt: skip

    def logits(self, x: torch.Tensor | Pending) -> torch.Tensor:
        """Hidden states [..., D] after the last layer (or its `Pending` residual add, which
        the final norm does) -> fp32 logits [..., V]."""
        norm, be = self.model.norm, self.backend
        if isinstance(x, Pending):
            y, _ = add_rms_norm(x.out, x.residual, norm.weight, eps=norm.eps, backend=be)
        else:
            y = rms_norm(x, norm.weight, eps=norm.eps, backend=be)
        return self.lm_head(y).float()

    def batch(
        self, input_ids: object, token_type_ids: object, lengths: object = None
    ) -> TokenBatch:
        """The `TokenBatch` of a call's inputs: [B, S] tensors, padded [B, S] with ``lengths``
        int [B], or lists of 1-D rows [S_b]."""
        return TokenBatch.from_inputs(input_ids, token_type_ids, lengths, config=self.config)

    # ---- prefill and generation -------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | Sequence[torch.Tensor],
        token_type_ids: torch.Tensor | Sequence[torch.Tensor],
        frames: torch.Tensor | None = None,
        *,
        vision_embeds: torch.Tensor | None = None,
        prune: object = None,
        lengths: torch.Tensor | Sequence[int] | None = None,
    ) -> FastCausalLMOutput:
        """Logits of every (kept) token: `CogVLM2ForCausalLM.forward` without its cache.

        ``input_ids``/``token_type_ids``: [B, S], padded [B, S] with ``lengths``, or lists of
        rows (see `batch`). ``frames``: uint8 [N, H, W, 3] or normalized float [N, 3, H, W],
        every row's frames in order; their tokens fill the vision slots in order.
        ``vision_embeds`` ([N, tokens_per_frame, Dt] or [num_vision_tokens, Dt]) instead.
        ``prune``: a `haic_kernels.pruning` policy; ``logits`` then cover the kept tokens and
        ``.prune`` holds the plan. The result equals the reference run with the same keep
        masks (``keep=`` / ``keep_from_layer=``), row by row.
        """
        batch = self.batch(input_ids, token_type_ids, lengths)
        out = prefill(self, batch, frames, vision_embeds, prune)
        plan = PrunePlan(out.stages) if out.stages else None
        return FastCausalLMOutput(out.batch.unpack(out.logits), out.batch.seqlens.long(), plan)

    def generate(
        self,
        input_ids: torch.Tensor | Sequence[torch.Tensor],
        token_type_ids: torch.Tensor | Sequence[torch.Tensor],
        frames: torch.Tensor | None = None,
        *,
        vision_embeds: torch.Tensor | None = None,
        max_new_tokens: int,
        eos_token_id: int | Sequence[int] | None = None,
        sampler: Sampler | None = None,
        prune: object = None,
        lengths: torch.Tensor | Sequence[int] | None = None,
        cuda_graph: bool | None = None,
        timings: dict | None = None,
    ) -> torch.Tensor:
        """New tokens int64 [B, n_new] (n_new <= max_new_tokens; shorter when every row produced
        one of the eos ids, rows that finished earlier padded with the first). ``sampler``:
        ``(logits fp32 [B, V], seen int64 [B, L]) -> int64 [B]`` (None: greedy, equal to
        `greedy_generate` on the reference); ``cuda_graph``: replay the decode step as a CUDA
        graph (None: on for CUDA tensors); ``timings`` (a dict) gets "prefill_s", "decode_s",
        "decode_tokens". Inputs as for `forward`; each row decodes from its own (kept) length.
        See `fast.decode`."""
        return generate(self, self.batch(input_ids, token_type_ids, lengths), frames,
                        vision_embeds=vision_embeds, prune=prune, max_new_tokens=max_new_tokens,
                        eos_token_id=eos_token_id, sampler=sampler, cuda_graph=cuda_graph,
                        timings=timings)  # fmt: skip

    def stream(
        self,
        input_ids: torch.Tensor | Sequence[torch.Tensor],
        token_type_ids: torch.Tensor | Sequence[torch.Tensor],
        frames: torch.Tensor | None = None,
        *,
        lengths: torch.Tensor | Sequence[int] | None = None,
        eos_check_every: int = 1,
        **options: object,
    ) -> Iterator[torch.Tensor]:
        """`generate`'s loop as an iterator (``options``: generate's other keywords):
        each step's new tokens int64 [B], finished rows giving the first eos id; it ends after
        ``max_new_tokens`` steps or within ``eos_check_every`` steps of every row finishing."""
        batch = self.batch(input_ids, token_type_ids, lengths)
        return steps(self, batch, frames, eos_check_every=eos_check_every, **options)

    def decode_state(self, batch_size: int, device: torch.device) -> DecodeState:
        """The decode buffers for ``batch_size`` rows on ``device``: the last call's when they
        match (their cache and CUDA graph get reused), else new ones (the old are freed)."""
        state = self._decode
        if state is None or state.tok.shape[0] != batch_size or state.tok.device != device:
            state = self._decode = DecodeState(batch_size, device)
        return state

    def release_decode_buffers(self) -> None:
        """Free the KV cache and CUDA graph kept from the last `generate` call."""
        self._decode = None
