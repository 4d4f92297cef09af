"""attention in plain PyTorch: the oracle (any dtype, float64 included) and the "torch" backend.

Materializes the ``[H, Sq, Sk]`` logits of one sequence at a time, so it is for tests and small
shapes. The mask is built from ``tril`` and an id-equality matrix, independently of the index
arithmetic of the fast kernels. Non-finite values follow `haic_kernels.attention`'s rule (see
`_one_sequence`).
"""

from __future__ import annotations

import torch

__all__ = ["attention_reference", "reference_mask"]


def reference_mask(
    sq: int, sk: int, causal: bool, ids: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """bool ``[Sq, Sk]``: True where query i sees key j (see api.attention's drawings)."""
    full = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if not causal:
        return full
    # Bottom-right alignment: the last query row sees every key.
    mask = full.tril(diagonal=sk - sq)
    if ids is not None:
        ids = ids.to(torch.int64)
        mask = mask | ((ids[:, None] == ids[None, :]) & (ids[:, None] >= 0))
    return mask


def _one_sequence(q, k, v, causal, ids, chosen, scale, compute_dtype):
    """q [Sq, Hq, D], k/v [Sk, Hkv, D] -> out [Sq, Hq, D], lse [Hq, Sq], mass [Sk] (sum)."""
    sq, hq, _ = q.shape
    sk, hkv, _ = k.shape
    r = hq // hkv
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    kc = kc.repeat_interleave(r, dim=1)  # kv head j serves query heads j*r .. j*r+r-1
    vc = vc.repeat_interleave(r, dim=1)
    mask = reference_mask(sq, sk, causal, ids, q.device)
    logits = torch.einsum("ihd,jhd->hij", qc, kc) * scale
    logits = logits.masked_fill(~mask, float("-inf"))  # a hidden key's NaN is overwritten
    # The rule for non-finite inputs: a row that sees a key is NaN when its q, or the K row of
    # any key it sees, holds NaN/Inf; out[i, d] is NaN when a key row i sees has a bad v[j, d].
    m = mask.to(compute_dtype)
    bad_k = (~torch.isfinite(kc)).any(-1).to(compute_dtype)  # [Sk, Hq]
    bad_row = (torch.einsum("ij,jh->hi", m, bad_k) > 0) | (~torch.isfinite(qc)).any(-1).t()
    bad_row = bad_row & mask.any(-1)[None]  # [Hq, Sq]; a row that sees nothing stays 0
    lse = torch.logsumexp(logits, dim=-1)  # -inf for rows that see nothing
    lse = lse.masked_fill(bad_row, float("nan"))
    probs = torch.exp(logits - torch.where(torch.isfinite(lse), lse, 0)[..., None])
    probs = torch.where(mask, probs, 0).masked_fill(bad_row[..., None] & mask, float("nan"))
    bad_v = ~torch.isfinite(vc)
    out = torch.einsum("hij,jhd->ihd", probs, vc.masked_fill(bad_v, 0))  # 0 * NaN would leak
    reached = torch.einsum("ij,jhd->ihd", m, bad_v.to(compute_dtype)) > 0
    out = out.masked_fill(reached, float("nan"))
    mass = None
    if chosen is not None:
        mass = torch.where(chosen[None, :, None], probs, 0).sum(dim=(0, 1))  # not 0 * NaN
    return out, lse, mass


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    block_ids: torch.Tensor | None = None,
    key_scores: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    compute_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(out, lse, scores)`` of `haic_kernels.attention` (layouts and masks as documented there).

    ``compute_dtype``: the dtype of logits, softmax and the P @ V product (default float32 for
    half inputs, else the input dtype; float64 for the oracle). ``out`` is ``out_dtype``
    (default q's); ``lse`` and ``scores`` are float64 when computing in float64, else float32.
    ``scores`` is None without ``key_scores``.
    """
    if compute_dtype is None:
        compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    out_dtype = q.dtype if out_dtype is None else out_dtype
    stats = torch.float64 if compute_dtype == torch.float64 else torch.float32
    if scale is None:
        scale = q.shape[-1] ** -0.5
    packed = cu_seqlens is not None
    if packed:
        cq = cu_seqlens.tolist()
        ck = (cu_seqlens if cu_seqlens_k is None else cu_seqlens_k).tolist()
        segments = [(slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])) for b in range(len(cq) - 1)]
        out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
        lse = torch.empty(q.shape[1], q.shape[0], dtype=stats, device=q.device)
        scores = torch.zeros(k.shape[0], dtype=stats, device=q.device)
    else:
        segments = [(b, b) for b in range(q.shape[0])]
        out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
        lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=stats, device=q.device)
        scores = torch.zeros(k.shape[0], k.shape[1], dtype=stats, device=q.device)
    hq = q.shape[-2]
    for sq_sel, sk_sel in segments:
        ids = None if block_ids is None else block_ids[sq_sel]
        chosen = None if key_scores is None else key_scores[sq_sel]
        o, l_, mass = _one_sequence(
            q[sq_sel], k[sk_sel], v[sk_sel], causal, ids, chosen, scale,
            compute_dtype,
        )  # fmt: skip
        out[sq_sel] = o.to(out_dtype)
        if packed:
            lse[:, sq_sel] = l_.to(stats)
        else:
            lse[sq_sel] = l_.to(stats)
        if mass is not None:
            n = int(chosen.sum())
            if n > 0:
                scores[sk_sel] = (mass / (hq * n)).to(stats)
    return out, lse, (scores if key_scores is not None else None)
