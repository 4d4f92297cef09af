"""The "sdpa" and "flash_attn" backends, and the PyTorch path of `attention_with_kvcache`:
library kernels behind the same contract.

"sdpa" runs torch's F.scaled_dot_product_attention (its flash / memory-efficient kernels where
the mask allows), with explicit boolean masks for bottom-right causal, block_ids and the
sequences of a packed batch; lse and key scores come from an explicit PyTorch pass over the
logits, one head at a time. "flash_attn" calls flash-attn (no block_ids, no key scores).

Library kernels multiply the hidden keys' zero probabilities by their values, and 0 * NaN is
NaN: K and V go in with their non-finite entries zeroed, and the outputs that a visible
non-finite entry reaches are marked NaN afterwards (`_reach_packed`, `_reach_masked`), which
gives every backend the same value semantics. Never imports the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_flash_attn", "attention_kvcache_torch", "attention_sdpa"]

_NAN = float("nan")


def _finite_kv(k, v):
    """(k, v with non-finite entries zeroed, bad key rows [.., Hkv], bad V entries [.., Hkv, D])."""
    bad_k, bad_v = ~torch.isfinite(k), ~torch.isfinite(v)
    return k.masked_fill(bad_k, 0), v.masked_fill(bad_v, 0), bad_k.any(-1), bad_v


def _spread(row_kv, entry, bad_q):
    """Per KV head -> per query head: (bad rows [.., Hq], bad entries [.., Hq, D])."""
    hq, hkv = bad_q.shape[-1], row_kv.shape[-1]
    r = hq // hkv
    row = row_kv.repeat_interleave(r, dim=-1) | bad_q
    return row, entry.repeat_interleave(r, dim=-2)


def _reach_masked(bad_q, bad_k, bad_v, vis):
    """The outputs the rule for non-finite inputs makes NaN (see `haic_kernels.attention`):
    bad_q [B, Sq, Hq], bad_k [B, Sk, Hkv], bad_v [B, Sk, Hkv, D], vis bool [B, Sq, Sk] ->
    (rows [B, Sq, Hq], entries [B, Sq, Hq, D])."""
    b, sk, hkv, d = bad_v.shape
    sq = vis.shape[1]
    visf = vis.to(torch.float32)
    entry = torch.bmm(visf, bad_v.reshape(b, sk, hkv * d).to(torch.float32)) > 0
    row = torch.bmm(visf, bad_k.to(torch.float32)) > 0
    sees = vis.any(-1, keepdim=True)
    return _spread(row, entry.view(b, sq, hkv, d), bad_q & sees)


def _reach_packed(bad_q, bad_k, bad_v, cu_q, cu_k, causal: bool):
    """`_reach_masked` for causal (bottom-right) or full masks of a packed batch, without
    building a mask: bad_q [Tq, Hq], bad_k [Tk, Hkv], bad_v [Tk, Hkv, D], int cu [B+1]. Row i
    of a sequence sees key j iff j - (Lk - Lq) <= i (causal) or always (full), so per sequence
    the smallest such bound over its bad keys decides which rows a bad entry reaches."""
    tq, tk = bad_q.shape[0], bad_k.shape[0]
    hkv, d = bad_v.shape[1:]
    dev = bad_q.device
    cu_q, cu_k = cu_q.long(), cu_k.long()
    batch = cu_q.numel() - 1
    if batch <= 0 or tq == 0 or tk == 0:
        no = torch.zeros(tq, hkv, dtype=torch.bool, device=dev)
        return _spread(no, no[..., None].expand(tq, hkv, d), bad_q & False)

    def seq_of(rows: int, cu: torch.Tensor) -> torch.Tensor:
        at = torch.searchsorted(cu[1:], torch.arange(rows, device=dev), right=True)
        return at.clamp(max=batch - 1)

    seq_k, seq_q = seq_of(tk, cu_k), seq_of(tq, cu_q)
    len_q, len_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
    big = tq + tk + 1
    if causal:
        first_row = torch.arange(tk, device=dev) - cu_k[seq_k] - (len_k - len_q)[seq_k]
    else:
        first_row = torch.full((tk,), -big, device=dev, dtype=torch.long)

    def earliest(bad: torch.Tensor) -> torch.Tensor:  # [Tk, W] -> [B, W]
        w = bad.shape[1]
        vals = torch.where(bad, first_row[:, None], big)
        init = torch.full((batch, w), big, device=dev, dtype=torch.long)
        return init.scatter_reduce(0, seq_k[:, None].expand(-1, w), vals, "amin")

    local = (torch.arange(tq, device=dev) - cu_q[seq_q])[:, None]
    entry = earliest(bad_v.reshape(tk, hkv * d))[seq_q] <= local
    row = earliest(bad_k)[seq_q] <= local
    first_seen = (len_q - len_k)[seq_q] if causal else torch.zeros_like(seq_q)
    sees = (len_k[seq_q] > 0) & (local[:, 0] >= first_seen)
    return _spread(row, entry.view(tq, hkv, d), bad_q & sees[:, None])


def _reach_padded(bad_q, bad_k, bad_v, causal: bool):
    """`_reach_packed` for the padded layout ([B, S, ...] tensors)."""
    b, sq = bad_q.shape[:2]
    sk = bad_k.shape[1]
    ar = torch.arange(b + 1, device=bad_q.device)
    row, entry = _reach_packed(
        bad_q.flatten(0, 1), bad_k.flatten(0, 1), bad_v.flatten(0, 1), ar * sq, ar * sk, causal
    )
    return row.view(b, sq, row.shape[-1]), entry.view(b, sq, *entry.shape[1:])


def _poison(out, row, entry):
    """out with NaN in the bad rows and entries."""
    return out.masked_fill(row[..., None] | entry, _NAN)


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


def _stats(q, k, mask, scale, chosen, need_lse, bad_row):
    """lse [B, Hq, Sq] and key mass [B, Sk] (sum over heads and chosen rows), fp32, per head.
    ``bad_row`` [B, Sq, Hq]: rows the non-finite rule makes NaN."""
    b, hq, sq, _ = q.shape
    sk = k.shape[2]
    r = hq // k.shape[1]
    lse = torch.empty(b, hq, sq, dtype=torch.float32, device=q.device) if need_lse else None
    mass = None if chosen is None else torch.zeros(b, sk, device=q.device)
    if mask is not None and mask.dim() == 4:
        mask = mask[:, 0]  # [B, 1, Sq, Sk] -> [B, Sq, Sk]
    vis = torch.ones(b, sq, sk, dtype=torch.bool, device=q.device) if mask is None else mask
    for h in range(hq):
        s = torch.einsum("bid,bjd->bij", q[:, h].float(), k[:, h // r].float()) * scale
        s = s.masked_fill(~vis.expand_as(s), float("-inf"))
        row = torch.logsumexp(s, dim=-1).masked_fill(bad_row[..., h], _NAN)  # -inf: sees none
        if lse is not None:
            lse[:, h] = row
        if mass is not None:
            p = torch.exp(s - torch.where(torch.isfinite(row), row, 0)[..., None])
            p = torch.where(vis, p, 0).masked_fill(bad_row[..., h, None] & vis, _NAN)
            mass += torch.where(chosen[:, :, None] > 0, p, 0).sum(1)  # not 0 * NaN
    return lse, mass


def _padded(q, k, v, causal, ids, chosen, scale, need_lse):
    """q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] -> out, lse [B, Hq, Sq] | None, scores | None."""
    sq, sk = q.shape[1], k.shape[1]
    k_in = k  # the statistics mask hidden logits themselves (masked_fill overwrites them)
    k, v, bad_k, bad_v = _finite_kv(k, v)
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
    bad_q = (~torch.isfinite(q)).any(-1)
    if ids is not None:
        vis = mask.expand(q.shape[0], 1, sq, sk)[:, 0]
        bad_row, bad_entry = _reach_masked(bad_q, bad_k, bad_v, vis)
    else:
        bad_row, bad_entry = _reach_padded(bad_q, bad_k, bad_v, causal)
    out = _poison(out, bad_row, bad_entry)
    lse = scores = None
    if need_lse or chosen is not None:
        if plain_causal:
            mask = _mask(sq, sk, True, None, q.device)
        sel = None if chosen is None else chosen.float()
        lse, mass = _stats(qt, k_in.transpose(1, 2), mask, scale, sel, need_lse, bad_row)
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


def attention_flash_attn(q, k, v, cu_seqlens, cu_seqlens_k, max_q, max_k, causal: bool, scale):
    """``(out, lse)`` from flash-attn (lse [B, Hq, Sq], packed [Hq, Tq], fp32)."""
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    k, v, bad_k, bad_v = _finite_kv(k, v)
    bad_q = (~torch.isfinite(q)).any(-1)
    if cu_seqlens is None:
        res = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_attn_probs=True)
        bad_row, bad_entry = _reach_padded(bad_q, bad_k, bad_v, causal)
        lse_row = bad_row.transpose(1, 2)  # [B, Hq, Sq]
    else:
        cu_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
        res = flash_attn_varlen_func(
            q, k, v, cu_seqlens, cu_k, max(max_q, 1), max(max_k, 1), softmax_scale=scale,
            causal=causal, return_attn_probs=True,
        )  # fmt: skip
        bad_row, bad_entry = _reach_packed(bad_q, bad_k, bad_v, cu_seqlens, cu_k, causal)
        lse_row = bad_row.t()  # [Hq, Tq]
    # flash-attn marks rows that see no key with +inf; the contract says -inf.
    lse = res[1]
    lse = torch.where(torch.isposinf(lse), float("-inf"), lse.float()).masked_fill(lse_row, _NAN)
    return _poison(res[0], bad_row, bad_entry), lse


def attention_kvcache_torch(q, k_cache, v_cache, seqlens, causal: bool, scale: float):
    """`attention_with_kvcache` in PyTorch: q [B, Sq, Hq, D] against the first ``seqlens[b]``
    rows of the caches [B, S, Hkv, D] (bottom-right causal); no host sync."""
    b, sq = q.shape[:2]
    s = k_cache.shape[1]
    lens = seqlens.long().clamp(0, s)[:, None, None]
    j = torch.arange(s, device=q.device)[None, None, :]
    vis = (j < lens).expand(b, sq, s)
    if causal:
        i = torch.arange(sq, device=q.device)[None, :, None]
        vis = vis & (j <= i + lens - sq)
    k, v, bad_k, bad_v = _finite_kv(k_cache, v_cache)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=vis[:, None],
        scale=scale, enable_gqa=q.shape[2] != k.shape[2],
    ).transpose(1, 2)  # fmt: skip
    out = torch.where(vis.any(-1)[:, :, None, None], out, 0).contiguous()
    return _poison(out, *_reach_masked((~torch.isfinite(q)).any(-1), bad_k, bad_v, vis))
