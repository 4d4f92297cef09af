"""token_prune: temporal scoring + selection + compaction of video tokens (keep 25% per video).

Cases for the ``haic_kernels.pruning.temporal`` policy on the ``token_prune`` kernels (backends
"torch" = the op references, "triton"), then `PruneResult.compact` of the LM hidden states,
position ids and token types, against a plain PyTorch baseline written here ("torch eager":
F.cosine_similarity over adjacent frames, a stable sort per video, a boolean-mask gather); and
the selection kernel alone (stable per-video top-k: "torch eager" sort vs "triton", "cuda").
Work: flops = 6 per patch element (three fp32 FMAs of the cosine); bytes = the patch features
read once + the kept hidden rows read and written + ids. Sizes: tiny = 1 video of 3 frames of
16 patches, D = 64, fp32 (CPU, seconds); full = 1 and 8 videos of 24 frames x 64 patches,
D = 4096, bf16 (the layout of CogVLM2-Video with the base template). The LM prefill-time ratios
of the issue need the fast model (pending on the end-to-end issue).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import load_op, probe, raiser

SUITE = "token_prune"
KEEP = 0.25
TEXT_TOKENS = 12  # a short question after the frames
POLICY_MODULE = "haic_kernels.pruning"
OP_MODULE = "haic_kernels.ops.token_prune.api"

# (name, videos, frames per video, patches per frame, D, dtype)
SHAPES: dict[str, list[tuple[str, int, int, int, int, torch.dtype]]] = {
    "tiny": [("tiny-b1-f3", 1, 3, 16, 64, torch.float32)],
    "full": [(f"b{b}-f24", b, 24, 64, 4096, torch.bfloat16) for b in (1, 8)],
}


def token_types(videos: int, frames: int, n: int) -> torch.Tensor:
    """[B, S]: bos, frames back to back (boi, n patches, eoi), then the question (base layout)."""
    row = [0] + [1] * (frames * (n + 2)) + [0] * TEXT_TOKENS
    return torch.tensor(row, dtype=torch.long).repeat(videos, 1)


def pipeline_eager(
    embeds: torch.Tensor,
    hidden: torch.Tensor,
    position_ids: torch.Tensor,
    types: torch.Tensor,
    patch_pos: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain-PyTorch baseline: adjacent-frame cosine, stable top-k per video, mask gather.

    ``embeds`` [B*Fv, n+2, D] (boi, patches, eoi per frame); ``patch_pos`` [B, Fv*n] the
    sequence positions of the patches; the first frame of each video scores +inf.
    """
    b = hidden.shape[0]
    x = embeds[:, 1:-1].float()
    fv, n = x.shape[0] // b, x.shape[1]
    x = x.view(b, fv, n, -1)
    score = torch.full((b, fv, n), float("inf"), device=x.device)
    score[:, 1:] = 1 - F.cosine_similarity(x[:, 1:], x[:, :-1], dim=-1)
    order = torch.sort(score.view(b, fv * n), dim=1, descending=True, stable=True).indices[:, :k]
    is_patch = torch.zeros_like(types, dtype=torch.bool)
    is_patch.scatter_(1, patch_pos, True)
    keep = ~is_patch
    keep.scatter_(1, patch_pos.gather(1, order), True)
    return hidden[keep], position_ids[keep], types[keep]


def _inputs(videos: int, frames: int, n: int, d: int, dtype: torch.dtype):
    def make(device: torch.device) -> tuple[torch.Tensor, ...]:
        types = token_types(videos, frames, n).to(device)
        s = types.shape[1]
        embeds = torch.randn(videos * frames, n + 2, d, device=device, dtype=dtype)
        hidden = torch.randn(videos, s, d, device=device, dtype=dtype)
        from haic_kernels.models.cogvlm2.language import build_position_ids

        return embeds, hidden, build_position_ids(types)

    return make


def _patch_pos(videos: int, frames: int, n: int, device: torch.device) -> torch.Tensor:
    starts = 1 + torch.arange(frames) * (n + 2) + 1
    pos = (starts.unsqueeze(1) + torch.arange(n)).reshape(-1)
    return pos.repeat(videos, 1).to(device)


def _check(label: str, baseline: Callable[..., Any]) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        want = baseline(*inputs)[0]
        if not isinstance(out, torch.Tensor) or out.shape != want.shape:
            raise AssertionError(f"{label}: expected {tuple(want.shape)}, got {out.shape}")
        # Scores differ by fp32 rounding between the two cosines: a near-tie at the k-th place
        # may swap one token; everything else must be the same rows, bit for bit.
        same = (out == want).all(dim=-1).float().mean().item()
        if same < 0.99:
            raise AssertionError(f"{label}: only {same:.1%} of the kept rows match the baseline")

    return check


def cases(size: str, device: torch.device) -> list[Case]:
    """Baselines first, then the op's backends, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    policy, skip, err = load_op(POLICY_MODULE, "temporal")
    layout_cls, _, _ = load_op(POLICY_MODULE, "TokenLayout")
    topk, topk_skip, topk_err = load_op(OP_MODULE, "segment_topk")
    out: list[Case] = []
    for name, videos, frames, n, d, dtype in SHAPES[size]:
        types = token_types(videos, frames, n).to(device)
        patch_pos = _patch_pos(videos, frames, n, device)
        total = frames * n
        k = -(-total * 1 // 4)  # ceil(0.25 * total), the policy's rule
        es = torch.empty((), dtype=dtype).element_size()
        kept_rows = videos * (types.shape[1] - total + k)
        nbytes = videos * total * d * es + 2 * kept_rows * d * es + 3 * kept_rows * 8
        shapes = {"videos": videos, "frames": frames, "patches": n, "D": d, "keep_pct": 25}
        common = dict(
            suite=SUITE,
            name=f"pipeline-{name}",
            shapes=shapes,
            dtype=str(dtype).removeprefix("torch."),
            flops=6 * videos * total * d,
            bytes=nbytes,
            make_inputs=_inputs(videos, frames, n, d, dtype),
        )

        def eager(e, h, p, _t=types, _pp=patch_pos, _k=k):
            return pipeline_eager(e, h, p, _t, _pp, _k)[0]

        out.append(Case(backend="torch eager", fn=eager, baseline=True, **common))
        lay = None if err or skip else layout_cls.from_token_types(types, n + 2)
        for b in ("torch", "triton"):
            if err is not None:
                out.append(Case(backend=b, fn=raiser(POLICY_MODULE, err), **common))
                continue
            reason = skip or _probe_topk(topk, b, device)

            def fn(e, h, p, _b=b, _lay=lay, _t=types):
                res = policy(e, layout=_lay, keep_ratio=KEEP, per="video", backend=_b)
                return res.compact(h, position_ids=p, token_type_ids=_t, backend=_b).hidden

            out.append(
                Case(
                    backend=b,
                    fn=fn,
                    skip_reason=reason,
                    check=_check(f"{SUITE} {b} {name}", lambda e, h, p, _f=eager: (_f(e, h, p),)),
                    **common,
                )
            )
        out.extend(_select_cases(name, videos, total, topk, topk_skip, topk_err, k, device))
    return out


def _select_cases(name, videos, total, topk, skip, err, k, device) -> list[Case]:
    """The selection kernel alone: stable top-k of each video's patch scores."""

    def make(dev: torch.device) -> tuple[torch.Tensor, ...]:
        return (torch.randn(videos * total, device=dev),)

    cu = torch.arange(0, videos * total + 1, total, device=device, dtype=torch.int32)
    kk = torch.full((videos,), k, device=device, dtype=torch.int32)
    common = dict(
        suite=SUITE,
        name=f"select-{name}",
        shapes={"videos": videos, "candidates": total},
        dtype="float32",
        flops=videos * total * total,
        bytes=videos * total * 5,
        make_inputs=make,
        cuda_graph=device.type == "cuda",
    )

    def eager(s: torch.Tensor) -> torch.Tensor:
        order = torch.sort(s.view(videos, total), dim=1, descending=True, stable=True).indices
        keep = torch.zeros(videos, total, dtype=torch.bool, device=s.device)
        keep.scatter_(1, order[:, :k], True)
        return keep.view(-1)

    def check(outp: Any, inputs: tuple[Any, ...]) -> None:
        if not torch.equal(outp, eager(*inputs)):
            raise AssertionError(f"{SUITE} select {name}: keep mask differs from the sort")

    cases_ = [Case(backend="torch eager", fn=eager, baseline=True, **common)]
    for b in ("triton", "cuda"):
        if err is not None:
            cases_.append(Case(backend=b, fn=raiser(OP_MODULE, err), **common))
            continue
        reason = skip or _probe_topk(topk, b, device)
        cases_.append(
            Case(
                backend=b,
                fn=lambda s, _b=b: topk(s, cu, kk, max_seqlen=total, backend=_b),
                skip_reason=reason,
                check=check,
                **common,
            )
        )
    return cases_


def _probe_topk(topk: Callable[..., Any] | None, backend: str, device: torch.device) -> str | None:
    if topk is None:
        return None

    def call() -> None:
        s = torch.randn(4, device=device)
        cu = torch.tensor([0, 4], device=device, dtype=torch.int32)
        topk(s, cu, torch.tensor([2], device=device, dtype=torch.int32), backend=backend)

    return probe((SUITE, backend, str(device)), call)
