"""The two ceilings a kernel is measured against: memory bandwidth and bf16 matmul rate.

`measure_peaks` measures them on the device in hand (once per process): a large device-to-device
copy, counting bytes read plus bytes written, and a large bf16 matrix product on random data.
Those are the figures the fraction-of-peak columns use. `DATASHEET` holds vendor figures as
leads only (measured figures come out lower: ~3.0 TB/s copy and ~800 TFLOP/s on an H100 SXM).
There is nothing to measure on the CPU: `measure_peaks` returns None there and the
fraction-of-peak columns are left empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from haic_kernels.bench import counts
from haic_kernels.bench.timing import measure

SOURCE_MEASURED = "measured"
SOURCE_DATASHEET = "datasheet (lead only, not measured)"

# Copy: 1 GiB each way is far past any L2 and long enough (~0.5 ms) for events to time well.
COPY_BYTES = 1 << 30
# 8192^3 bf16: large enough to reach the matmul units' plateau on H100/H200 (~1.4 ms).
MATMUL_N = 8192


@dataclass(frozen=True)
class Peaks:
    """Ceilings of one device. ``gbps`` counts bytes read + written; ``tflops`` is bf16 matmul."""

    device: str
    gbps: float
    tflops: float
    source: str
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# Vendor figures (dense bf16, no sparsity). Keys are matched against the device name.
DATASHEET: dict[str, Peaks] = {
    "H100 SXM": Peaks("NVIDIA H100 SXM", 3350.0, 989.0, SOURCE_DATASHEET, "HBM3, SXM5"),
    "H100 PCIe": Peaks("NVIDIA H100 PCIe", 2000.0, 756.0, SOURCE_DATASHEET, "HBM2e, PCIe"),
    "H200": Peaks("NVIDIA H200", 4800.0, 989.0, SOURCE_DATASHEET, "HBM3e, SXM"),
}

_CACHE: dict[str, Peaks] = {}


def datasheet_peaks(device_name: str) -> Peaks | None:
    """The datasheet lead for a device name such as 'NVIDIA H100 80GB HBM3'; None if unknown."""
    name = device_name.upper()
    if "H200" in name:
        return DATASHEET["H200"]
    if "H100" in name:
        return DATASHEET["H100 PCIe" if "PCIE" in name else "H100 SXM"]
    return None


def measure_peaks(device: torch.device | str | None = None, *, reps: int = 20) -> Peaks | None:
    """Measured copy bandwidth and bf16 matmul rate of a CUDA device; None on the CPU.

    Cached per process and device. Takes a few seconds the first time.
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type != "cuda":
        return None
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    if key in _CACHE:
        return _CACHE[key]

    name = torch.cuda.get_device_name(device)
    free, _ = torch.cuda.mem_get_info(device)
    copy_bytes = min(COPY_BYTES, free // 8)
    n_elem = copy_bytes // 2
    src = torch.randn(n_elem, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t_copy = measure(
        torch.Tensor.copy_, device=device, input_sets=[(dst, src)], reps=reps, warmup=3
    )
    copy_gbps = counts.gbps(2 * n_elem * 2, t_copy.median_ms)
    del src, dst

    n = MATMUL_N
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t_mm = measure(torch.mm, device=device, input_sets=[(a, b)], reps=reps, warmup=3)
    mm_tflops = counts.tflops(counts.matmul_flops(n, n, n), t_mm.median_ms)
    del a, b
    torch.cuda.empty_cache()

    peaks = Peaks(
        device=name,
        gbps=copy_gbps,
        tflops=mm_tflops,
        source=SOURCE_MEASURED,
        detail=(
            f"copy {2 * n_elem * 2 / 1e9:.2f} GB (read+write) median {t_copy.median_ms:.3f} ms; "
            f"bf16 mm {n}^3 median {t_mm.median_ms:.3f} ms; n={reps} each, cuda events"
        ),
    )
    _CACHE[key] = peaks
    return peaks


def no_peaks_reason(device: torch.device | str) -> str:
    """Why `measure_peaks` gives nothing on this device (empty string if it does)."""
    if torch.device(device).type == "cuda":
        return ""
    return "no peaks on the CPU: fraction-of-peak columns are left empty"
