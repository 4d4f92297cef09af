"""The end-to-end benchmark's CI smoke run (app/e2e.py): tiny config, fp32, CPU, seconds."""

from __future__ import annotations

import pytest

from haic_kernels.app import e2e
from haic_kernels.bench.results import ROW_FIELDS, read_json


def test_e2e_tiny_runs_and_writes_the_results_schema(tmp_path) -> None:
    pytest.importorskip("av", reason="the benchmark decodes a clip (video extra)")
    out = tmp_path / "e2e.json"
    rc = e2e.main(["--size", "tiny", "--reps", "1", "--warmup", "0", "--clip-dir",
                   str(tmp_path), "--json", str(out)])  # fmt: skip
    assert rc == 0
    doc = read_json(out)
    rows = {(r["case"], r["backend"]): r for r in doc["results"]}
    stages = ("decode video", "patch embed", "vision tower", "compress + adapter", "prefill",
              "decode tokens")  # fmt: skip
    for backend in (e2e.REFERENCE, e2e.FAST):
        ttft = rows[("time to first token", backend)]
        assert set(ROW_FIELDS) <= set(ttft)
        ms = {s: rows[(f"stage: {s}", backend)]["median_ms"] for s in stages}
        assert all(v > 0 for v in ms.values()), ms  # every stage ran and was timed
        # time to first token is the sum of the stages up to and including the prefill
        assert ttft["median_ms"] == pytest.approx(sum(ms[s] for s in stages[:-1]))
        step = rows[("decode step", backend)]
        assert step["decode_steps"] == 2 and step["bytes"] > 0
        assert step["median_ms"] == pytest.approx(ms["decode tokens"] / 2)
        assert step["tokens_per_s"] == pytest.approx(2 * 2 / (ms["decode tokens"] / 1e3))
    fast, ref = (
        rows[("time to first token", e2e.FAST)],
        rows[("time to first token", e2e.REFERENCE)],
    )
    assert fast["speedup_vs_reference_eager_sdpa"] == pytest.approx(
        ref["median_ms"] / fast["median_ms"]
    )
