"""Human-readable output: a plain-text comparison table and an optional PNG plot.

The table groups rows by suite and case (same shapes), one line per backend, with the ratio
columns (TFLOP/s, GB/s, fraction of the measured peaks, speed-up against each baseline).
matplotlib is imported only by `plot`, so the table needs nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haic_kernels.bench.results import SPEEDUP_PREFIX, speedup_keys

_TIMING_LABEL = {("cuda_events", False): "events", ("cuda_events", True): "graph"}


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _fmt_ms(x: float) -> str:
    return f"{x:.4f}" if x < 1 else f"{x:.3f}"


def _human(n: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}"


def _shapes(shapes: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in shapes.items())


def _table(header: list[str], body: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    out = []
    for j, r in enumerate([header, *body]):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append(indent + "  ".join(cells).rstrip())
        if j == 0:
            out.append(indent + "  ".join("-" * w for w in widths))
    return out


def format_table(
    rows: Sequence[dict[str, Any]],
    *,
    skipped: Sequence[dict[str, Any]] = (),
    failed: Sequence[dict[str, Any]] = (),
    peaks: dict[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """The comparison table as text (rows as made by the runner or read from JSON)."""
    lines: list[str] = []
    if title:
        lines.append(title)
    if peaks:
        lines.append(
            f"peaks ({peaks.get('source')}): {peaks['gbps']:.0f} GB/s copy, "
            f"{peaks['tflops']:.0f} TFLOP/s bf16 matmul on {peaks.get('device')}"
        )
    elif rows:
        lines.append("peaks: none (CPU run); %BW and %FLOP are left empty")
    sp_keys = speedup_keys(rows)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["suite"], r["case"]), []).append(r)
    for (suite, case), members in groups.items():
        first = members[0]
        lines.append("")
        lines.append(
            f"{suite} / {case}: {_shapes(first['shapes'])}  {first['dtype']}  "
            f"[{_human(first['bytes'], 'B')} moved, {_human(first['flops'], 'FLOP')}]"
        )
        header = ["backend", "median ms", "p20-p80 ms", "n", "timing", "TFLOP/s", "GB/s"]
        header += ["%BW", "%FLOP"] + ["vs " + k[len(SPEEDUP_PREFIX) :] for k in sp_keys]
        body = []
        for r in members:
            label = r["backend"] + (" (base)" if r.get("baseline") else "")
            timing = _TIMING_LABEL.get((r["clock"], bool(r.get("cuda_graph"))), r["clock"])
            body.append(
                [
                    label,
                    _fmt_ms(r["median_ms"]),
                    f"{_fmt_ms(r['p20_ms'])}-{_fmt_ms(r['p80_ms'])}",
                    str(r["n"]),
                    timing,
                    _fmt(r.get("tflops"), ".3f"),
                    _fmt(r.get("gbps"), ".1f"),
                    _fmt_pct(r.get("frac_peak_gbps")),
                    _fmt_pct(r.get("frac_peak_tflops")),
                ]
                + [_fmt(r.get(k), ".2f") + ("x" if r.get(k) is not None else "") for k in sp_keys]
            )
        lines.extend(_table(header, body))
    if skipped:
        lines.append("")
        lines.append("skipped (cannot run here):")
        lines.extend(
            f"  {s['suite']} / {s['case']} / {s['backend']}: {s['reason']}" for s in skipped
        )
    if failed:
        lines.append("")
        lines.append("FAILED:")
        lines.extend(
            f"  {f['suite']} / {f['case']} / {f['backend']}: {f['reason']}" for f in failed
        )
    if not rows and not skipped and not failed:
        lines.append("(no results)")
    return "\n".join(lines)


def plot(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    peaks: dict[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Save a PNG: per suite, grouped bars per case, one bar per backend.

    The bars show GB/s where the cases count bytes (with the measured copy peak as a dashed
    line, if given), else median time. Needs matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'haic_kernels[bench]')"
        ) from exc
    if not rows:
        raise ValueError("plot: no result rows to plot")
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    fig, axes = plt.subplots(len(suites), 1, figsize=(10, 4 * len(suites)), squeeze=False)
    for ax, suite in zip(axes[:, 0], suites):
        srows = [r for r in rows if r["suite"] == suite]
        cases = list(dict.fromkeys(r["case"] for r in srows))
        backends = list(dict.fromkeys(r["backend"] for r in srows))
        use_gbps = all(r.get("gbps") is not None for r in srows)
        width = 0.8 / len(backends)
        for j, b in enumerate(backends):
            xs, ys = [], []
            for i, c in enumerate(cases):
                for r in srows:
                    if r["case"] == c and r["backend"] == b:
                        xs.append(i + (j - (len(backends) - 1) / 2) * width)
                        ys.append(r["gbps"] if use_gbps else r["median_ms"])
            ax.bar(xs, ys, width=width, label=b)
        if use_gbps and peaks:
            ax.axhline(peaks["gbps"], color="k", ls="--", lw=1, label="copy peak")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=15)
        ax.set_ylabel("GB/s (higher is better)" if use_gbps else "median ms (lower is better)")
        ax.set_title(suite)
        ax.legend(fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
