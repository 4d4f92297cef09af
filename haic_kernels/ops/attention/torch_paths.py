"""The "sdpa" and "flash_attn" backends: library kernels behind the same contract.

"sdpa" runs torch's F.scaled_dot_product_attention (its flash / memory-efficient kernels where
the mask allows), with explicit boolean masks for bottom-right causal, block_ids and the
sequences of a packed batch; lse and key scores come from an explicit PyTorch pass over the
logits, one head at a time. "flash_attn" calls flash-attn (no block_ids, no key scores).
Never imports the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_flash_attn", "attention_sdpa"]


def _mask(sq: int, sk: int, causal: bool, ids: torch.Tensor | None, device) -> torch.Tensor | None:
    """bool [.., Sq, Sk] (True = visible) or None when every key is visible."""
    if not causal:
        return None
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    vis = j <= i + (sk - sq)
    if ids is not None:  # ids [B, S] -> [B, S, S]
        same = (ids[..., :, None] == ids[..., None, :]) & (ids[..., :, None] >= 0)
        vis = vis | same
    return vis


def _stats(q, k, mask, scale, chosen, need_lse):
    """lse [B, Hq, Sq] and key mass [B, Sk] (sum over heads and chosen rows), fp32, per head."""
    b, hq, sq, _ = q.shape
    r = hq // k.shape[1]
    lse = torch.empty(b, hq, sq, dtype=torch.float32, device=q.device) if need_lse else None
    mass = None if chosen is None else torch.zeros(b, k.shape[2], device=q.device)
    if mask is not None and mask.dim() == 4:
        mask = mask[:, 0]  # [B, 1, Sq, Sk] -> [B, Sq, Sk]
    for h in range(hq):
        s = torch.einsum("bid,bjd->bij", q[:, h].float(), k[:, h // r].float()) * scale
        if mask is not None:
            s = s.masked_fill(~mask.expand_as(s), float("-inf"))
        row = torch.logsumexp(s, dim=-1)  # -inf where a row sees nothing
        if lse is not None:
            lse[:, h] = row
        if mass is not None:
            p = torch.exp(s - torch.where(torch.isfinite(row), row, 0)[..., None])
            p = torch.where(torch.isfinite(s), p, 0) * chosen[:, :, None]
            mass += p.sum(1)
    return lse, mass


def _padded(q, k, v, causal, ids, chosen, scale, need_lse):
    """q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] -> out, lse [B, Hq, Sq] | None, scores | None."""
    sq, sk = q.shape[1], k.shape[1]
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    mask = None
    plain_causal = causal and ids is None and sq == sk
    if causal and not plain_causal:
        mask = _mask(sq, sk, causal, ids, q.device)
        mask = mask[:, None] if mask.dim() == 3 else mask
    out = F.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=mask, is_causal=plain_causal, scale=scale,
        enable_gqa=q.shape[2] != k.shape[2],
    )  # fmt: skip
    if mask is not None:  # rows that see no key come back NaN from sdpa; the contract says 0
        out = torch.where(mask.any(-1, keepdim=True), out, 0)
    out = out.transpose(1, 2).contiguous()
    lse = scores = None
    if need_lse or chosen is not None:
        if plain_causal:
            mask = _mask(sq, sk, True, None, q.device)
        sel = None if chosen is None else chosen.float()
        lse, mass = _stats(qt, kt, mask, scale, sel, need_lse)
        if mass is not None:
            n = sel.sum(1, keepdim=True) * q.shape[2]
            scores = torch.where(n > 0, mass / n.clamp_min(1), 0)
    return out, lse, scores


def attention_sdpa(
    q, k, v, *, cu_seqlens, cu_seqlens_k, block_ids, key_scores, causal, scale, need_lse
):
    """``(out, lse | None, scores | None)`` as `haic_kernels.attention` (checked arguments)."""
    if cu_seqlens is None:
        return _padded(q, k, v, causal, block_ids, key_scores, scale, need_lse)
    cq = cu_seqlens.tolist()
    ck = (cu_seqlens if cu_seqlens_k is None else cu_seqlens_k).tolist()
    out = torch.empty_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), device=q.device)
    scores = torch.zeros(k.shape[0], device=q.device) if key_scores is not None else None
    for b in range(len(cq) - 1):
        qs, ks = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        if cq[b + 1] == cq[b]:
            continue
        if ck[b + 1] == ck[b]:  # no keys: every row sees nothing
            out[qs] = 0
            continue
        ids = None if block_ids is None else block_ids[None, qs]
        sel = None if key_scores is None else key_scores[None, qs]
        o, l_, s = _padded(q[None, qs], k[None, ks], v[None, ks], causal, ids, sel, scale, need_lse)
        out[qs] = o[0]
        if l_ is not None:
            lse[:, qs] = l_[0]
        if s is not None:
            scores[ks] = s[0]
    return out, (lse if need_lse else None), scores


def attention_flash_attn(q, k, v, cu_seqlens, cu_seqlens_k, max_seqlen, causal: bool, scale):
    """``(out, lse)`` from flash-attn (lse [B, Hq, Sq], packed [Hq, Tq], fp32)."""
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    if cu_seqlens is None:
        res = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_attn_probs=True)
    else:
        cu_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
        max_q = int(cu_seqlens.diff().max()) if max_seqlen is None else max_seqlen
        max_k = int(cu_k.diff().max())
        res = flash_attn_varlen_func(
            q, k, v, cu_seqlens, cu_k, max_q, max_k, softmax_scale=scale, causal=causal,
            return_attn_probs=True,
        )  # fmt: skip
    out, lse = res[0], res[1]
    # flash-attn marks rows that see no key with +inf; the contract says -inf.
    lse = torch.where(torch.isposinf(lse), float("-inf"), lse.float())
    return out, lse
