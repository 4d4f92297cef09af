"""The end-to-end benchmark's CI smoke run: tiny config, fp32, CPU, seconds."""

from __future__ import annotations

import pytest

from haic_kernels.bench.results import ROW_FIELDS


def test_e2e_tiny_runs_and_writes_the_results_schema(tmp_path) -> None:
    pytest.importorskip("av", reason="the benchmark decodes a clip (video extra)")
    pytest.importorskip("haic_kernels.models.cogvlm2.fast_model", reason="no fast model")
    from haic_kernels.bench import e2e
    from haic_kernels.bench.results import read_json

    out = tmp_path / "e2e.json"
    rc = e2e.main(["--size", "tiny", "--reps", "1", "--warmup", "0", "--clip-dir",
                   str(tmp_path), "--json", str(out)])  # fmt: skip
    assert rc == 0
    doc = read_json(out)
    rows = {(r["case"], r["backend"]): r for r in doc["results"]}
    for backend in (e2e.REFERENCE, e2e.FAST):
        ttft = rows[("time to first token", backend)]
        assert set(ROW_FIELDS) <= set(ttft) and ttft["median_ms"] > 0
        step = rows[("decode step", backend)]
        assert step["decode_steps"] == 2 and step["tokens_per_s"] > 0 and step["bytes"] > 0
        for stage in ("decode video", "patch embed", "vision tower", "compress + adapter",
                      "prefill", "decode tokens"):  # fmt: skip
            assert rows[(f"stage: {stage}", backend)]["median_ms"] > 0
    assert rows[("time to first token", e2e.FAST)]["speedup_vs_reference_eager_sdpa"] > 0
