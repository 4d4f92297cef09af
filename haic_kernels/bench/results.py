"""Benchmark results as JSON: one file per run, rows in a flat, documented schema.

```
{
  "schema_version": 1,
  "env": {...},                     # env.collect_env(): device, versions, git commit
  "peaks": {...} | null,            # roofline.Peaks.to_dict(), null on the CPU
  "results": [                      # one row per (suite, case, backend) that ran
    {"suite", "case", "backend", "baseline", "shapes", "dtype", "flops", "bytes",
     "median_ms", "p20_ms", "p80_ms", "min_ms", "n", "clock", "input_sets", "cuda_graph",
     "tflops", "gbps", "frac_peak_gbps", "frac_peak_tflops",
     "speedup_vs_<baseline>": float | null, ...}
  ],
  "skipped": [{"suite", "case", "backend", "reason"}],   # could not run here (no GPU, ...)
  "failed":  [{"suite", "case", "backend", "reason"}]    # ran and raised, or gave wrong output
}
```
``speedup_vs_<baseline>`` is that baseline's median over this row's median, within the same suite
and case (same shapes); one column per baseline backend of the suite (e.g. ``torch_eager``,
``torch_compile``), null where that baseline did not run for the case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

ROW_FIELDS = (
    "suite",
    "case",
    "backend",
    "baseline",
    "shapes",
    "dtype",
    "flops",
    "bytes",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "min_ms",
    "n",
    "clock",
    "input_sets",
    "cuda_graph",
    "tflops",
    "gbps",
    "frac_peak_gbps",
    "frac_peak_tflops",
)
SPEEDUP_PREFIX = "speedup_vs_"


def slug(label: str) -> str:
    """A label as a JSON key: 'torch eager' -> 'torch_eager', 'torch.compile' -> 'torch_compile'."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def add_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``speedup_vs_<baseline>`` to every row, in place; returns ``rows``.

    Baselines are the rows with ``baseline`` true; a row is compared with the baselines of its
    own suite and case. Every row of a suite gets a key for every baseline backend of the suite.
    """
    baseline_names: dict[str, list[str]] = {}
    medians: dict[tuple[str, str, str], float] = {}
    for r in rows:
        if r.get("baseline"):
            names = baseline_names.setdefault(r["suite"], [])
            if r["backend"] not in names:
                names.append(r["backend"])
            medians[(r["suite"], r["case"], r["backend"])] = r["median_ms"]
    for r in rows:
        for b in baseline_names.get(r["suite"], []):
            base = medians.get((r["suite"], r["case"], b))
            value = None if base is None or r["median_ms"] <= 0 else base / r["median_ms"]
            r[SPEEDUP_PREFIX + slug(b)] = value
    return rows


def speedup_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The ``speedup_vs_*`` keys present in ``rows``, in first-seen order."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k.startswith(SPEEDUP_PREFIX) and k not in keys:
                keys.append(k)
    return keys


def to_document(
    rows: Sequence[dict[str, Any]],
    env: dict[str, Any],
    *,
    peaks: dict[str, Any] | None = None,
    skipped: Sequence[dict[str, Any]] = (),
    failed: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The JSON document for one run (see the module docstring)."""
    for r in rows:
        missing = [f for f in ROW_FIELDS if f not in r]
        if missing:
            raise ValueError(f"result row {r.get('suite')}/{r.get('case')}: missing {missing}")
    return {
        "schema_version": SCHEMA_VERSION,
        "env": env,
        "peaks": peaks,
        "results": list(rows),
        "skipped": list(skipped),
        "failed": list(failed),
    }


def write_json(path: str | Path, document: dict[str, Any]) -> Path:
    """Write a document made by `to_document`; creates parent folders. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """Read and check a results file; raises ValueError naming what is wrong."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise ValueError(f"{path}: not a haic bench results file (no schema_version)")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {doc['schema_version']}, this reader knows {SCHEMA_VERSION}"
        )
    for key in ("env", "results"):
        if key not in doc:
            raise ValueError(f"{path}: missing top-level key {key!r}")
    for i, r in enumerate(doc["results"]):
        missing = [f for f in ROW_FIELDS if f not in r]
        if missing:
            raise ValueError(f"{path}: results[{i}] missing {missing}")
    doc.setdefault("peaks", None)
    doc.setdefault("skipped", [])
    doc.setdefault("failed", [])
    return doc
