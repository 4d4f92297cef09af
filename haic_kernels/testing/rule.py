"""Parity helpers shared by tests and `haic parity`: the rule of DESIGN.md, in one place.

The rule (flash-attention's discipline): compute the fast output, the same computation in plain
PyTorch in the *same* dtype, and a high-precision reference (fp32 or fp64). The fast output may be
at most ``factor`` (2) times as far from the reference as PyTorch's own same-dtype run, plus a
small absolute slack that covers the case where PyTorch happens to be exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Absolute slack per output dtype: about a few ulps at magnitude ~1.
DEFAULT_ATOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


@dataclass(frozen=True)
class ParityReport:
    fast_max_err: float
    torch_max_err: float
    fast_mean_rel_err: float
    bound: float
    ok: bool

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"{verdict}: fast max|err| {self.fast_max_err:.3e} vs bound {self.bound:.3e} "
            f"(torch same-dtype max|err| {self.torch_max_err:.3e}); "
            f"fast mean rel err {self.fast_mean_rel_err:.3e}"
        )


def parity(
    fast: torch.Tensor,
    same_dtype: torch.Tensor,
    reference: torch.Tensor,
    *,
    factor: float = 2.0,
    atol: float | None = None,
) -> ParityReport:
    """Compare ``fast`` and ``same_dtype`` (PyTorch in fast's dtype) against ``reference``."""
    if fast.shape != reference.shape or same_dtype.shape != reference.shape:
        raise ValueError(
            f"shape mismatch: fast {tuple(fast.shape)}, same_dtype {tuple(same_dtype.shape)}, "
            f"reference {tuple(reference.shape)}"
        )
    ref = reference.detach().to(torch.float64).cpu()
    f = fast.detach().to(torch.float64).cpu()
    t = same_dtype.detach().to(torch.float64).cpu()
    if atol is None:
        atol = DEFAULT_ATOL.get(fast.dtype, 1e-5)
    if not torch.isfinite(f).all():
        return ParityReport(float("nan"), float("nan"), float("nan"), 0.0, False)
    fast_err = (f - ref).abs()
    torch_err = (t - ref).abs()
    fast_max = fast_err.max().item() if fast_err.numel() else 0.0
    torch_max = torch_err.max().item() if torch_err.numel() else 0.0
    denom = ref.abs().mean().clamp_min(1e-30)
    mean_rel = (fast_err.mean() / denom).item() if fast_err.numel() else 0.0
    bound = factor * torch_max + atol
    return ParityReport(fast_max, torch_max, mean_rel, bound, fast_max <= bound)


def assert_parity(
    fast: torch.Tensor,
    same_dtype: torch.Tensor,
    reference: torch.Tensor,
    *,
    factor: float = 2.0,
    atol: float | None = None,
    what: str = "output",
) -> ParityReport:
    """`parity`, raising AssertionError with the numbers when the rule is broken."""
    report = parity(fast, same_dtype, reference, factor=factor, atol=atol)
    if not report.ok:
        raise AssertionError(f"{what}: {report}")
    return report


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN (floats) or a sentinel (ints) before a kernel writes it."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).min if t.dtype != torch.bool else False)
