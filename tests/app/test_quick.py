"""The quick GPU run's driver (haic_kernels.app.quick) on the CPU: the deadline guard, the
end-to-end rows at the tiny size, the one table."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from haic_kernels.app import quick


def test_kernels_past_the_deadline_time_nothing_and_say_so(tmp_path):
    path = tmp_path / "quick_kernels.json"
    before = os.environ.get("HAIC_TRUST_UNVERIFIED")
    quick.run_kernels(path, "tiny", torch.device("cpu"), deadline=time.time())
    assert os.environ.get("HAIC_TRUST_UNVERIFIED") == before  # set only while the run lasts
    doc = json.loads(path.read_text())
    assert doc["results"] == []
    reasons = [r["reason"] for r in doc["skipped"]]
    assert reasons and any("out of time" in r for r in reasons)
    assert {r["suite"] for r in doc["skipped"]} >= {"attention_vision", "norm", "fp8_linear"}


@pytest.mark.slow
def test_e2e_tiny_rows_and_the_table(tmp_path):
    quick.run_e2e(tmp_path / "quick_e2e.json", "tiny", torch.device("cpu"), time.time() + 600)
    doc = json.loads((tmp_path / "quick_e2e.json").read_text())
    cases = {(r["case"], r["backend"]) for r in doc["results"]}
    for backend in ("reference (eager, SDPA)", "fast"):
        assert ("time to first token", backend) in cases
        assert ("decode step", backend) in cases
    step = doc["e2e"]["decode_step_launches"]
    assert step["kernels"] > 0 and step["syncs"] == 0
    (tmp_path / "steps.tsv").write_text("build\tok\t60\t120\n")
    text = quick.table(tmp_path)
    assert "time to first token" in text and "fast decode step:" in text and "build" in text


def test_gpu_test_files_are_the_marked_ones():
    from pathlib import Path

    files = {p.name for p in quick.gpu_test_files(Path(__file__).parents[1])}
    want = {"test_norm.py", "test_activation.py", "test_fp8_linear.py", "test_attention.py"}
    assert want <= files
    assert "test_quick.py" not in files  # no gpu mark here
