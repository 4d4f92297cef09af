"""expert_linear: per-token expert weights, ``y[t] = x[t] @ W[e(t)].T + b[e(t)]``, one launch.

The public function: argument checks and backend choice. The ``haic_kernels::expert_linear``
custom op and its dispatch table live in ops.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from haic_kernels.ops._common import check_no_grad, check_same_device, check_tensor
from haic_kernels.ops.expert_linear.ops import DISPATCH
from haic_kernels.ops.expert_linear.routing import MAX_EXPERTS, Routing

__all__ = ["BACKENDS", "DTYPES", "expert_linear"]

BACKENDS = ("auto", *DISPATCH.choices)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def expert_linear(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None] | None,
    route: Routing,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Routed linear layer: every token multiplies by the weight of its own expert.

    Args:
        x: ``[T, K]`` or ``[B, S, K]`` (flattened to ``T = B*S`` rows in row-major order),
            float32/float16/bfloat16; any strides (a last dim that is not contiguous costs a
            copy). ``T``, ``K`` and ``N`` may be 0 (an empty result, or the bias when K = 0).
        weights: E tensors ``[N, K]`` (``nn.Linear`` layout), x's dtype and device, E <= 8.
        biases: None, or E entries each a ``[N]`` tensor or None (an expert without bias).
        route: a `Routing` over the same T tokens with ``route.num_experts == E``.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``. ``"auto"`` picks Triton for CUDA
            tensors where it is verified on that GPU (see ``haic_kernels.ops._common``), else
            PyTorch. An explicit backend that cannot run raises `BackendUnavailable`.

    Returns:
        ``[T, N]`` (or ``[B, S, N]``) in x's dtype, in the original token order::

            out[t] = x[t] @ weights[e].T + biases[e]      e = route.expert_ids[t]

        accumulated in fp32, rounded once. The Triton path is one grouped GEMM: each tile of
        rows belongs to one expert (tiles laid out per expert group), loads its rows of x
        through ``route.perm``, multiplies by that expert's weight in place (no stacked copy of
        the weights), adds the bias and stores through ``route.perm``: no gathered copy of x
        or of the output exists. The torch backend loops over experts (index_select, F.linear,
        index_copy_) and reads the group sizes back to the host once.

    Gradients: none; inputs that require grad raise (use the torch modules for training).

    Registered as ``torch.ops.haic_kernels.expert_linear`` (with a fake kernel), so
    ``torch.compile(fullgraph=True)`` traces through it.
    """
    check_tensor("x", x, dims=(2, 3), dtypes=DTYPES, shape_hint="[T, K] or [B, S, K]")
    ws, bs = _check_params(x, weights, biases)
    if not isinstance(route, Routing):
        raise TypeError(f"route: expected a haic_kernels.Routing, got {type(route).__name__}")
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), x.shape[-1])  # not -1: T = 0 with K = 0 is ambiguous
    t = x2.shape[0]
    if route.num_tokens != t:
        raise ValueError(
            f"route: built for {route.num_tokens} tokens, but x has {t} rows {tuple(x.shape)}"
        )
    if route.num_experts != len(ws):
        raise ValueError(
            f"route: built for {route.num_experts} experts, but {len(ws)} weights were given"
        )
    if route.device != x.device:
        raise ValueError(
            f"route: expected a Routing on {x.device} (where x is), got {route.device}"
        )
    x2 = check_tensor("x", x2, layout="rows")
    check_no_grad(
        "expert_linear",
        x=x,
        **{f"weights[{i}]": w for i, w in enumerate(ws)},
        **{f"biases[{i}]": b for i, b in enumerate(bs)},
    )
    chosen = DISPATCH.resolve(backend, x.device)
    out = torch.ops.haic_kernels.expert_linear(x2, ws, bs, route.perm, route.offsets, chosen)
    return out.view(*lead, out.shape[-1])


def _check_params(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence):
        raise TypeError(
            f"weights: expected a sequence of E tensors [N, K], got {type(weights).__name__}"
        )
    ws = list(weights)
    if not 1 <= len(ws) <= MAX_EXPERTS:
        raise ValueError(f"weights: expected 1 to {MAX_EXPERTS} experts, got {len(ws)}")
    k = x.shape[-1]
    n = None
    for i, w in enumerate(ws):
        check_tensor(f"weights[{i}]", w, dims=2, shape_hint="[N, K]")
        if w.dtype != x.dtype:
            raise TypeError(f"weights[{i}]: expected dtype {x.dtype} (x's), got {w.dtype}")
        check_same_device(x=x, **{f"weights[{i}]": w})
        if w.shape[1] != k:
            raise ValueError(
                f"weights[{i}]: expected [N, K] with K={k} (x's last dim), got {tuple(w.shape)}"
            )
        n = w.shape[0] if n is None else n
        if w.shape[0] != n:
            raise ValueError(
                f"weights[{i}]: every expert needs the same N; weights[0] has N={n}, "
                f"got {tuple(w.shape)}"
            )
    if biases is None:
        bs: list[torch.Tensor | None] = [None] * len(ws)
    else:
        if isinstance(biases, torch.Tensor) or not isinstance(biases, Sequence):
            raise TypeError(
                f"biases: expected None or a sequence of E entries (tensor [N] or None), got "
                f"{type(biases).__name__}"
            )
        bs = list(biases)
        if len(bs) != len(ws):
            raise ValueError(f"biases: expected {len(ws)} entries (one per weight), got {len(bs)}")
        for i, b in enumerate(bs):
            if b is None:
                continue
            check_tensor(f"biases[{i}]", b, dims=1, shape_hint="[N]")
            if b.dtype != x.dtype:
                raise TypeError(f"biases[{i}]: expected dtype {x.dtype} (x's), got {b.dtype}")
            check_same_device(x=x, **{f"biases[{i}]": b})
            if b.shape[0] != n:
                raise ValueError(f"biases[{i}]: expected shape [{n}], got {tuple(b.shape)}")
            bs[i] = b.contiguous()  # read as a raw pointer
    return ws, bs
