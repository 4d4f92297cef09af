"""The pruned-vs-unpruned end-to-end benchmark's CI smoke run (app/prune_e2e.py): tiny config,
fp32, CPU, seconds."""

from __future__ import annotations

import pytest

from haic_kernels.app import prune_e2e as pe
from haic_kernels.bench.results import ROW_FIELDS, read_json


def test_prune_e2e_tiny_runs_and_writes_the_results_schema(tmp_path, capsys) -> None:
    pytest.importorskip("av", reason="the benchmark decodes a clip (video extra)")
    out = tmp_path / "prune_e2e.json"
    rc = pe.main(["--size", "tiny", "--reps", "1", "--warmup", "0", "--clip-dir",
                  str(tmp_path), "--json", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "vs unpruned" in printed and "<= 0.35x" in printed and "<= 3%" in printed
    doc = read_json(out)
    rows = {(r["case"], r["backend"]): r for r in doc["results"]}
    assert all(set(ROW_FIELDS) <= set(r) for r in doc["results"])
    assert {r["suite"] for r in doc["results"]} == {pe.SUITE}
    for stage in ("decode video", "vision"):
        assert rows[(f"stage: {stage}", pe.UNPRUNED)]["median_ms"] > 0
    full = rows[("LM prefill", pe.UNPRUNED)]
    assert full["baseline"] and full["ratio_vs_unpruned"] == 1.0
    labels = [c.label for c in pe.configs(layer=0)]
    assert len(labels) == 1 + len(pe.POLICIES) * len(pe.KEEP_RATIOS)
    for label in labels[1:]:
        pre = rows[("LM prefill", label)]
        assert pre["kept_tokens"] < full["kept_tokens"] == full["prompt_len"]
        assert pre["ratio_vs_unpruned"] == pytest.approx(pre["median_ms"] / full["median_ms"])
        assert pre["speedup_vs_unpruned"] == pytest.approx(1 / pre["ratio_vs_unpruned"])
        assert pre["target_ratio"] == pe.TARGET_PREFILL_RATIO[pre["keep_ratio"]]
        assert pre["meets_target"] == (pre["ratio_vs_unpruned"] <= pre["target_ratio"])
        ov = rows[("pruning overhead", label)]
        pieces = [
            r for (case, b), r in rows.items() if b == label and case.startswith("overhead: ")
        ]
        assert {r["case"] for r in pieces} >= {"overhead: layout", "overhead: compact"}
        assert ov["median_ms"] == pytest.approx(sum(r["median_ms"] for r in pieces))
        assert ov["overhead_frac"] == pytest.approx(ov["median_ms"] / full["median_ms"])
        assert ov["meets_target"] == (ov["overhead_frac"] <= pe.TARGET_OVERHEAD_FRAC)
        step = rows[("decode step", label)]
        assert step["decode_steps"] == 2 and step["bytes"] > 0
        assert rows[("time to first token", label)]["median_ms"] > 0
    # Keeping fewer tokens never keeps more.
    for policy in ("temporal", "text_guided@L0"):
        k25 = rows[("LM prefill", f"{policy} keep 25%")]["kept_tokens"]
        k10 = rows[("LM prefill", f"{policy} keep 10%")]["kept_tokens"]
        assert k10 <= k25


def test_prune_e2e_rejects_unknown_policies_and_sizes() -> None:
    with pytest.raises(ValueError, match="policies"):
        pe.configs(("salient",))
    with pytest.raises(ValueError, match="size"):
        pe.run_prune_e2e("huge")
