"""The pruning policies: temporal, salient (optionally merging) and text-guided, plus policy
objects that a model's ``prune=`` option can hold and check before running.

Each function returns a `PruneResult` over the padded batch it was given. Text, boi and eoi are
always kept, padding never; kept tokens keep their original position ids (nothing here renumbers
anything, see `PruneResult.model_inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from haic_kernels.ops._common import check_int
from haic_kernels.ops.token_prune.api import (
    check_keep_ratio,
    frame_cosine_scores,
    merge_weighted,
    nearest_kept,
)
from haic_kernels.pruning.layout import PATCH, TokenLayout
from haic_kernels.pruning.protocol import BEFORE_LM, IN_LM, WHERE, PrunePolicy, TokenCounts
from haic_kernels.pruning.result import PruneResult
from haic_kernels.pruning.select import (
    check_per,
    patch_scores_to_tokens,
    query_rows,
    select_candidates,
)

__all__ = [
    "Compose",
    "Salient",
    "Temporal",
    "TextGuided",
    "plan_stages",
    "salient",
    "temporal",
    "text_guided",
]


def _layout(
    layout: TokenLayout | None,
    token_type_ids: torch.Tensor | Sequence[torch.Tensor] | None,
    tokens_per_frame: int | None,
    lengths: torch.Tensor | None,
) -> TokenLayout:
    if layout is not None:
        if not isinstance(layout, TokenLayout):
            raise TypeError(f"layout: expected a TokenLayout, got {type(layout).__name__}")
        return layout
    if token_type_ids is None or tokens_per_frame is None:
        raise ValueError("pass layout=, or token_type_ids= with tokens_per_frame=")
    return TokenLayout.from_token_types(token_type_ids, tokens_per_frame, lengths)


def _frame_features(vision_embeds: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """vision rows ([F, tpf, D] or [F*tpf, D]) -> [F, tpf, D], checked against the layout."""
    if not isinstance(vision_embeds, torch.Tensor) or vision_embeds.dim() not in (2, 3):
        raise ValueError("vision_embeds: expected [F, tokens_per_frame, D] or [F*tokens, D]")
    tpf, f = layout.tokens_per_frame, layout.num_frames
    rows = vision_embeds.reshape(-1, vision_embeds.shape[-1])
    if rows.shape[0] != f * tpf:
        raise ValueError(
            f"vision_embeds: {rows.shape[0]} rows, but token_type_ids hold {f} frames of "
            f"{tpf} tokens ({f * tpf} rows)"
        )
    return rows.view(f, tpf, rows.shape[-1])


def temporal(
    vision_embeds: torch.Tensor,
    token_type_ids: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    keep_ratio: float,
    tokens_per_frame: int | None = None,
    per: str = "video",
    lengths: torch.Tensor | None = None,
    layout: TokenLayout | None = None,
    backend: str = "auto",
) -> PruneResult:
    """Drop temporally redundant patch tokens before the LM (DyCoke/FastVID-style).

    Score of patch n of frame f: ``1 - cos(x[f, n], x[f-1, n])`` on the LM-input features
    (`frame_cosine_scores`); a video's first frame scores +inf. ``per="video"``: each video keeps
    ``ceil(keep_ratio * its patches)`` (the first frame ranks first, so it is kept whole whenever
    that budget allows); ``per="frame"``: each later frame keeps ``ceil(keep_ratio * N)`` and the
    first frame is kept whole. Ties go to the earlier token.

    Args:
        vision_embeds: [F, tokens_per_frame, D] (or flattened rows) of every frame of the batch,
            in sequence order, as ``encode_frames`` gives them.
        token_type_ids: [B, S] (with ``lengths`` for a padded ragged batch) or a list of [S_b].
    """
    lay = _layout(layout, token_type_ids, tokens_per_frame, lengths)
    check_keep_ratio(keep_ratio)
    check_per(per)
    feats = _frame_features(vision_embeds, lay)
    frame_scores = frame_cosine_scores(
        feats[:, 1:-1], cu_frames=lay.cu_frames.to(feats.device), backend=backend
    )
    scores = patch_scores_to_tokens(lay, frame_scores)
    keep = select_candidates(lay, scores, keep_ratio, per, full_first_frame=True, backend=backend)
    return PruneResult(keep=keep, layout=lay, policy="temporal", scores=scores)


def salient(
    cls_scores: torch.Tensor | None,
    token_type_ids: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    keep_ratio: float,
    tokens_per_frame: int | None = None,
    per: str = "frame",
    merge: bool = False,
    vision_embeds: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    layout: TokenLayout | None = None,
    backend: str = "auto",
) -> PruneResult:
    """Keep the patch tokens the vision tower's CLS attends to most (VisionZip/FastVID-style).

    Args:
        cls_scores: float [F, N]: per LM patch token, the attention the CLS query gives it in the
            vision tower's last layer (head mean), e.g. `pool_cls_attention` of
            ``attention(..., causal=False, key_scores=cls_rows)``.
        merge: merge each dropped patch into the most similar kept patch of its frame (cosine
            on ``vision_embeds``, `nearest_kept`), size-weighted (`merge_weighted`); the result
            then carries the new ``vision_embeds`` and token ``sizes``. Needs ``vision_embeds``.

    Selection: ``ceil(keep_ratio * n)`` patches per frame (``per="frame"``) or per video.
    """
    if cls_scores is None:
        raise ValueError(
            "salient: cls_scores is None - the vision tower was not asked for its CLS attention "
            "(run its last layer with key_scores selecting each frame's CLS row)"
        )
    lay = _layout(layout, token_type_ids, tokens_per_frame, lengths)
    check_keep_ratio(keep_ratio)
    check_per(per)
    scores = patch_scores_to_tokens(lay, cls_scores)
    keep = select_candidates(lay, scores, keep_ratio, per, backend=backend)
    result = PruneResult(keep=keep, layout=lay, policy="salient", scores=scores)
    if not merge:
        return result
    if vision_embeds is None:
        raise ValueError("salient: merge=True needs vision_embeds (the features to merge)")
    feats = _frame_features(vision_embeds, lay)
    patches = feats[:, 1:-1]
    f, n = patches.shape[:2]
    cand = lay.role == PATCH
    keep_fn = torch.zeros(f, n, dtype=torch.bool, device=patches.device)
    keep_fn[lay.frame[cand], lay.slot[cand] - 1] = keep[cand].to(patches.device)
    target = nearest_kept(patches, keep_fn, backend=backend)
    # A frame that keeps nothing (possible per video) has nowhere to merge: its rows stay alone.
    self_idx = torch.arange(n, device=target.device, dtype=target.dtype).expand(f, n)
    target = torch.where(target < 0, self_idx, target)
    merged, sizes_fn = merge_weighted(patches, target, backend=backend)
    new_feats = feats.clone()
    new_feats[:, 1:-1] = merged
    sizes = torch.where(lay.real, 1.0, 0.0).to(torch.float32)
    sizes[cand] = sizes_fn.to(sizes.device)[lay.frame[cand], lay.slot[cand] - 1]
    sizes = torch.where(keep, sizes, torch.zeros_like(sizes))
    result.vision_embeds = new_feats.reshape(-1, feats.shape[-1])
    result.sizes = sizes
    result.policy = "salient+merge"
    return result


def check_layer(layer: object, num_layers: int) -> int:
    """A text-guided layer K: scores at layer K, tokens dropped from layer K+1, so 0 <= K <=
    num_layers - 2."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer: expected an int, got {layer!r}")
    if not 0 <= layer <= num_layers - 2:
        raise ValueError(
            f"layer: expected 0 <= K <= num_layers - 2 = {num_layers - 2} (scores at layer K, "
            f"tokens dropped from layer K+1 on), got {layer}"
        )
    return layer


def text_guided(
    scores: torch.Tensor | None,
    token_type_ids: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    keep_ratio: float,
    layer: int,
    num_layers: int,
    tokens_per_frame: int | None = None,
    per: str = "video",
    lengths: torch.Tensor | None = None,
    layout: TokenLayout | None = None,
    backend: str = "auto",
) -> PruneResult:
    """Drop the patch tokens the text attends to least, inside the LM (FastV-style).

    Args:
        scores: float [B, S]: at LM layer ``layer``, the attention each token receives from the
            query rows (`query_rows`: the last token, or all question tokens), head mean - the
            ``key_scores`` output of ``attention``. [B, S] is the sequence the LM runs on (after
            any earlier stage: pass that stage's ``layout_after`` as ``layout``).
        layer: K; the result has ``keep_from_layer = K + 1``: layers 0..K see every token, the
            hidden states and KV cache of layers K+1.. only the kept ones.

    Selection: ``ceil(keep_ratio * n)`` of the remaining patches per video (or per frame).
    """
    check_layer(layer, num_layers)
    if scores is None:
        raise ValueError(
            f"text_guided: scores is None - the LM was not asked for attention scores at layer "
            f"{layer} (run it with key_scores there)"
        )
    lay = _layout(layout, token_type_ids, tokens_per_frame, lengths)
    check_keep_ratio(keep_ratio)
    check_per(per)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != tuple(lay.role.shape):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores: expected [B, S] = {tuple(lay.role.shape)}, got {got}")
    s = torch.where(lay.patch, scores.to(torch.float32), float("nan"))
    keep = select_candidates(lay, s, keep_ratio, per, backend=backend)
    return PruneResult(
        keep=keep, layout=lay, policy="text_guided", keep_from_layer=layer + 1, scores=s
    )


# ---- policy objects (the `PrunePolicy` protocol) --------------------------------------------


def _check_common(policy: Temporal | Salient | TextGuided) -> None:
    check_keep_ratio(policy.keep_ratio)
    check_per(policy.per)


@dataclass(frozen=True)
class Temporal:
    """`temporal` as a policy: before the LM, needs ``vision_embeds``."""

    keep_ratio: float
    per: str = "video"
    where: ClassVar[str] = BEFORE_LM
    needs: ClassVar[tuple[str, ...]] = ("vision_embeds",)

    def __post_init__(self) -> None:
        _check_common(self)

    def validate(self, num_layers: int) -> None:
        """Nothing depends on the model's depth (the fields were checked when built)."""

    def kept(self, counts: TokenCounts) -> TokenCounts | None:
        return counts.after(self.keep_ratio, self.per, full_first_frame=True)

    def __call__(self, layout: TokenLayout, **inputs: object) -> PruneResult:
        _require(self, inputs)
        return temporal(
            inputs["vision_embeds"], layout=layout, keep_ratio=self.keep_ratio, per=self.per
        )


@dataclass(frozen=True)
class Salient:
    """`salient` as a policy: before the LM, needs ``cls_scores`` (and ``vision_embeds`` to
    merge)."""

    keep_ratio: float
    per: str = "frame"
    merge: bool = False
    where: ClassVar[str] = BEFORE_LM

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.merge, bool):
            raise TypeError(f"merge: expected a bool, got {self.merge!r}")

    @property
    def needs(self) -> tuple[str, ...]:
        return ("cls_scores", "vision_embeds") if self.merge else ("cls_scores",)

    def validate(self, num_layers: int) -> None:
        """Nothing depends on the model's depth (the fields were checked when built)."""

    def kept(self, counts: TokenCounts) -> TokenCounts | None:
        return counts.after(self.keep_ratio, self.per)

    def __call__(self, layout: TokenLayout, **inputs: object) -> PruneResult:
        _require(self, inputs)
        return salient(
            inputs["cls_scores"],
            layout=layout,
            keep_ratio=self.keep_ratio,
            per=self.per,
            merge=self.merge,
            vision_embeds=inputs.get("vision_embeds"),
        )


@dataclass(frozen=True)
class TextGuided:
    """`text_guided` as a policy: inside the LM (scores at layer ``layer``, tokens dropped from
    layer ``layer + 1``), needs ``lm_scores`` and ``num_layers``."""

    keep_ratio: float
    layer: int = 2
    query: str = "last"
    per: str = "video"
    where: ClassVar[str] = IN_LM
    needs: ClassVar[tuple[str, ...]] = ("lm_scores",)

    def __post_init__(self) -> None:
        _check_common(self)
        check_int("layer", self.layer, minimum=0)
        if self.query not in ("last", "text"):
            raise ValueError(f"query: expected 'last' or 'text', got {self.query!r}")

    def validate(self, num_layers: int) -> None:
        check_layer(self.layer, num_layers)

    def kept(self, counts: TokenCounts) -> TokenCounts | None:
        return counts.after(self.keep_ratio, self.per)

    def query_rows(self, layout: TokenLayout) -> torch.Tensor:
        return query_rows(layout, self.query)

    def __call__(self, layout: TokenLayout, **inputs: object) -> PruneResult:
        _require(self, inputs)
        return text_guided(
            inputs["lm_scores"],
            layout=layout,
            keep_ratio=self.keep_ratio,
            layer=self.layer,
            num_layers=inputs["num_layers"],
            per=self.per,
        )


@dataclass(frozen=True)
class Compose:
    """Policies applied in order (e.g. ``Compose((Temporal(0.5), TextGuided(0.5, layer=2)))``):
    any number of before-LM stages, then at most one in-LM stage."""

    policies: tuple[PrunePolicy, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.policies, (tuple, list)) or not self.policies:
            raise ValueError("policies: expected a non-empty tuple of pruning policies")
        for i, p in enumerate(self.policies):
            if not isinstance(p, PrunePolicy):
                raise TypeError(f"policies[{i}]: expected a pruning policy, got {type(p).__name__}")
            if p.where not in WHERE:
                raise ValueError(f"policies[{i}].where: expected one of {WHERE}, got {p.where!r}")
            if p.where == IN_LM and i != len(self.policies) - 1:
                raise ValueError(f"policies[{i}]: an in-LM stage must be the last one")

    def validate(self, num_layers: int) -> None:
        for p in self.policies:
            p.validate(num_layers)


def plan_stages(prune: object, num_layers: int) -> tuple[list[PrunePolicy], PrunePolicy | None]:
    """(the before-LM policies in order, the in-LM policy or None) of a model's ``prune=``
    option (None, a policy, or a `Compose`), validated for a model of ``num_layers`` layers."""
    if prune is None:
        return [], None
    if not isinstance(prune, PrunePolicy) and not isinstance(prune, Compose):
        raise TypeError(
            "prune: expected a haic_kernels.pruning policy (Temporal, Salient, TextGuided, "
            f"Compose or one with the PrunePolicy protocol), got {type(prune).__name__}"
        )
    policies = list(prune.policies) if isinstance(prune, Compose) else [prune]
    Compose(tuple(policies)).validate(num_layers)
    lm = policies[-1] if policies[-1].where == IN_LM else None
    return (policies[:-1] if lm is not None else policies), lm


def _require(policy: PrunePolicy, inputs: dict[str, object]) -> None:
    missing = [n for n in policy.needs if inputs.get(n) is None]
    if missing:
        raise ValueError(
            f"{type(policy).__name__}: needs {', '.join(missing)}, which the model did not "
            "produce (ask for them: e.g. key_scores in the attention that feeds this policy)"
        )
