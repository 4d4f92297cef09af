"""The fast model's ``precision``: "native" (the model dtype) or "fp8" (E4M3 GEMMs).

With "fp8" every ``nn.Linear`` inside a transformer block runs `haic_kernels.fp8_linear`: the
vision tower's query_key_value, dense, fc1, fc2 and the LM's query_key_value, dense, gate, up,
down (both experts where the model has two). `quantize_block` is the one place that decides
this; each block holds the result, an `Fp8Linears`. Weights are quantized once, when the model
is built (`Fp8Weight.from_linear`: one fp32 scale per output channel, ``amax(|w[n]|) / 448``);
activations per token at every call (`quantize_rows` inside `fp8_linear`); biases stay in the
model dtype (taken from the reference module at each call, so they follow ``.to()``).

Kept native, on purpose: the token embedding (a lookup, no GEMM), the 2x2 conv and the GLU
adapter (at full size about 1% of the vision FLOPs: per frame 64 adapter tokens of ~183 M MACs
against 257 tower tokens of ~4.3 G MACs over 63 blocks) and ``lm_head`` (<= 7% of an LM token's
MACs, and the one GEMM whose error lands on the logits unfiltered: quantizing it moves the
logits most, for the least time saved).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from haic_kernels.ops.expert_linear import Routing
from haic_kernels.ops.fp8_linear import Fp8Weight, fp8_linear, fp8_linear_backend

__all__ = ["PRECISIONS", "Fp8Linears", "Fp8Options", "check_precision", "fp8_options",
           "quantize_block", "run_linear"]  # fmt: skip

PRECISIONS = ("native", "fp8")

# The model's ``backend`` -> fp8_linear's: "torch" means plain PyTorch everywhere (emulated);
# "auto" and "triton" let fp8_linear take torch._scaled_mm where it is usable and verified.
_FP8_BACKEND = {"auto": "auto", "torch": "emulated", "triton": "auto"}


def check_precision(precision: object) -> str:
    """``precision`` itself, or ValueError naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return str(precision)


@dataclass
class Fp8Options:
    """What every `Fp8Linears` of one model shares: fp8_linear's ``backend`` and whether the
    model has said that it runs emulated (it says so once, at its first fp8 call)."""

    backend: str
    warned: bool = False


def fp8_options(precision: object, backend: str) -> Fp8Options | None:
    """None for "native", the options of an fp8 model; ValueError naming a bad ``precision``."""
    if check_precision(precision) == "native":
        return None
    return Fp8Options(_FP8_BACKEND.get(backend, "auto"))


class Fp8Linears(nn.Module):
    """E4M3 copies of one block's linears, quantized once at construction.

    ``qweight`` [N, K] float8_e4m3fn and ``scale`` fp32 [N] per linear are non-persistent
    buffers (the state dict stays the reference's) that keep their dtypes under
    ``model.to(dtype)``; only their device follows. Linears are looked up by identity.
    """

    def __init__(self, linears: dict[str, nn.Linear], options: Fp8Options) -> None:
        super().__init__()
        self.options = options
        self._key: dict[nn.Linear, str] = {}
        for name, linear in linears.items():
            key = name.replace(".", "_")
            w = Fp8Weight.from_linear(linear.weight)
            self.register_buffer(f"{key}_qweight", w.qweight, persistent=False)
            self.register_buffer(f"{key}_scale", w.scale, persistent=False)
            self._key[linear] = key

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        # nn.Module.to(dtype) casts every floating buffer, e4m3 included: keep the formats.
        for name, buf in self._buffers.items():
            if buf is not None:
                moved = fn(buf)
                self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self

    def weight(self, linear: nn.Linear, bias: bool = True) -> Fp8Weight:
        """The `Fp8Weight` of ``linear`` (with its current bias unless ``bias`` is False)."""
        key = self._key.get(linear)
        if key is None:
            raise KeyError(f"linear: not one of this block's quantized linears ({linear})")
        b = linear.bias if bias else None
        return Fp8Weight(self._buffers[f"{key}_qweight"], self._buffers[f"{key}_scale"],
                         None if b is None else b.detach())  # fmt: skip

    def backend(self, x: torch.Tensor) -> str:
        """The fp8_linear backend a call on ``x`` (the layer input) runs: "scaled_mm" or
        "emulated"."""
        linear = next(iter(self._key))
        return fp8_linear_backend(x, self.weight(linear, bias=False),
                                  backend=self.options.backend)  # fmt: skip

    def linear(self, x: torch.Tensor, linear: nn.Linear, bias: bool = True) -> torch.Tensor:
        """x [..., K] -> [..., N] through ``linear``'s E4M3 weight."""
        w = self.weight(linear, bias)
        if not self.options.warned:
            self.options.warned = True
            chosen = fp8_linear_backend(x, w, backend=self.options.backend)
            if chosen == "emulated":
                warnings.warn(
                    f"precision='fp8': fp8_linear runs emulated on {x.device} ({x.dtype}): "
                    "dequantize + fp32 matmul, the E4M3 numbers without the speed "
                    "(torch._scaled_mm needs CUDA sm_89+, bf16 and a path verified on the GPU)",
                    stacklevel=2,
                )
        return fp8_linear(x, w, backend=self.options.backend)

    def expert_linear(
        self, x: torch.Tensor, experts: Sequence[nn.Linear], route: Routing
    ) -> torch.Tensor:
        """x [T, K] -> [T, N]: each token through its expert (``route``'s groups): one
        fp8_linear per expert on that expert's rows. Not a grouped GEMM (scaled_mm has none):
        E launches and one host read of the group bounds per call. Per-token activation scales
        make this equal to quantizing all rows first."""
        out = x.new_empty((x.shape[0], experts[0].out_features))
        bounds = route.offsets.tolist()
        idx = route.perm.long()
        for e, linear in enumerate(experts):
            rows = idx[bounds[e] : bounds[e + 1]]
            if rows.numel():
                out.index_copy_(0, rows, self.linear(x.index_select(0, rows), linear))
        return out


def quantize_block(block: nn.Module, options: Fp8Options | None) -> Fp8Linears | None:
    """THE rule of which linears run in fp8: every ``nn.Linear`` inside a transformer block
    (``block``: a `FastVisionLayer` or `FastDecoderLayer`, its reference modules already set).
    None when ``options`` is None (native precision)."""
    if options is None:
        return None
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    return Fp8Linears(linears, options)


def run_linear(
    fp8: Fp8Linears | None, linear: nn.Linear, x: torch.Tensor, bias: bool = True
) -> torch.Tensor:
    """``linear(x)`` (``F.linear`` without the bias when ``bias`` is False) natively, or through
    ``fp8``'s E4M3 weight of it."""
    if fp8 is not None:
        return fp8.linear(x, linear, bias)
    return linear(x) if bias else F.linear(x, linear.weight)
