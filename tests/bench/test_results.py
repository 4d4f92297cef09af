"""Ratios on hand-computed cases, the JSON schema round trip, the table, the plot, env, peaks."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from haic_kernels.bench import counts
from haic_kernels.bench.env import collect_env, git_info
from haic_kernels.bench.report import format_table, plot
from haic_kernels.bench.results import (
    ROW_FIELDS,
    SCHEMA_VERSION,
    add_speedups,
    read_json,
    to_document,
    write_json,
)
from haic_kernels.bench.roofline import Peaks, datasheet_peaks, measure_peaks, no_peaks_reason
from haic_kernels.bench.runner import Case, filter_backends, make_row
from haic_kernels.bench.suites import patchify as patchify_suite
from haic_kernels.bench.timing import CLOCK_CUDA, Timing


def _case(backend: str, *, baseline: bool = False, name: str = "m4096") -> Case:
    return Case(
        suite="demo",
        name=name,
        backend=backend,
        shapes={"M": 4096},
        dtype="bfloat16",
        flops=2_000_000_000,
        bytes=3_000_000_000,
        make_inputs=lambda d: (torch.rand(4, device=d),),
        fn=lambda x: x,
        baseline=baseline,
    )


def _timing(median: float) -> Timing:
    return Timing.from_samples([median * 0.9, median, median * 1.1], CLOCK_CUDA)


PEAKS = Peaks(device="test GPU", gbps=3000.0, tflops=4.0, source="measured")


def test_counts_hand_computed():
    assert counts.nbytes((2, 3, 4), torch.bfloat16) == 48
    assert counts.io_bytes([((10,), torch.uint8)], [((10,), torch.float32)]) == 50
    assert counts.matmul_flops(2, 3, 4, batch=5) == 240
    assert counts.tflops(2e12, 1000.0) == pytest.approx(2.0)  # 2 TFLOP in 1 s
    assert counts.gbps(3e9, 2.0) == pytest.approx(1500.0)  # 3 GB in 2 ms
    assert counts.fraction(1.0, None) is None
    assert counts.speedup(4.0, 1.0) == 4.0
    # 1 GFLOP at 1 TFLOP/s = 1 ms; 6 GB at 3000 GB/s = 2 ms -> memory floor
    assert counts.floor_ms(1e9, 6e9, 1.0, 3000.0) == pytest.approx(2.0)


def test_row_ratios_hand_computed():
    row = make_row(_case("triton"), _timing(2.0), PEAKS)
    assert set(ROW_FIELDS) <= set(row)
    assert row["median_ms"] == pytest.approx(2.0)
    assert row["p20_ms"] == pytest.approx(1.88)  # 20th pct of [1.8, 2.0, 2.2]
    assert row["tflops"] == pytest.approx(1.0)  # 2e9 FLOP / 2 ms
    assert row["gbps"] == pytest.approx(1500.0)  # 3e9 B / 2 ms
    assert row["frac_peak_gbps"] == pytest.approx(0.5)
    assert row["frac_peak_tflops"] == pytest.approx(0.25)
    no_peaks = make_row(_case("triton"), _timing(2.0), None)
    assert no_peaks["frac_peak_gbps"] is None and no_peaks["gbps"] == pytest.approx(1500.0)


def test_speedups_against_each_baseline_of_the_same_case():
    rows = [
        make_row(_case("torch eager", baseline=True), _timing(4.0), PEAKS),
        make_row(_case("torch.compile", baseline=True), _timing(2.0), PEAKS),
        make_row(_case("triton"), _timing(1.0), PEAKS),
        make_row(_case("triton", name="other"), _timing(1.0), PEAKS),  # no baseline ran here
    ]
    add_speedups(rows)
    eager, comp, fast, other = rows
    assert fast["speedup_vs_torch_eager"] == pytest.approx(4.0)
    assert fast["speedup_vs_torch_compile"] == pytest.approx(2.0)
    assert comp["speedup_vs_torch_eager"] == pytest.approx(2.0)
    assert eager["speedup_vs_torch_eager"] == pytest.approx(1.0)
    assert other["speedup_vs_torch_eager"] is None


def test_patchify_counts_hand_computed():
    # 3 frames 56x56 -> 16 patches of K=588 fp32: 3*56*56*3 B in + 3*16*588*4 B out
    flops, nbytes = patchify_suite.counts(3, 56, 56, 14, 588, torch.float32)
    assert nbytes == 28_224 + 112_896
    assert flops == 2 * 28_224
    assert patchify_suite.k_padded(14, 8) == 592 and patchify_suite.k_padded(14, 1) == 588


def _document():
    rows = add_speedups(
        [
            make_row(_case("torch eager", baseline=True), _timing(4.0), PEAKS),
            make_row(_case("triton"), _timing(1.0), PEAKS),
        ]
    )
    skipped = [{"suite": "demo", "case": "m4096", "backend": "cuda", "reason": "no GPU here"}]
    return to_document(rows, collect_env("cpu"), peaks=PEAKS.to_dict(), skipped=skipped)


def test_json_round_trip(tmp_path):
    doc = _document()
    path = write_json(tmp_path / "sub" / "r.json", doc)
    back = read_json(path)
    assert back == json.loads(json.dumps(doc))
    assert back["schema_version"] == SCHEMA_VERSION
    assert {"env", "results", "peaks", "skipped", "failed"} <= set(back)
    row = back["results"][1]
    for field in (
        "suite",
        "case",
        "backend",
        "shapes",
        "dtype",
        "median_ms",
        "p20_ms",
        "p80_ms",
        "min_ms",
        "n",
        "clock",
        "tflops",
        "gbps",
        "frac_peak_gbps",
        "speedup_vs_torch_eager",
    ):
        assert field in row, field
    assert row["speedup_vs_torch_eager"] == pytest.approx(4.0)
    assert row["shapes"] == {"M": 4096}


def test_json_rejects_bad_files(tmp_path):
    doc = _document()
    doc["schema_version"] = 999
    bad = write_json(tmp_path / "v.json", doc)
    with pytest.raises(ValueError, match="schema_version"):
        read_json(bad)
    doc = _document()
    del doc["results"][0]["median_ms"]
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="median_ms"):
        read_json(bad)
    with pytest.raises(ValueError, match="missing"):
        to_document(doc["results"], {})


def test_table_has_a_row_per_backend_and_ratio_columns():
    doc = _document()
    text = format_table(doc["results"], skipped=doc["skipped"], peaks=doc["peaks"])
    lines = text.splitlines()
    assert any(line.startswith("demo / m4096") for line in lines)
    eager = next(line for line in lines if line.strip().startswith("torch eager (base)"))
    triton = next(line for line in lines if line.strip().startswith("triton"))
    assert "4.00x" in triton and "1.00x" in eager
    # 3e9 B and 2e9 FLOP in 1 ms: 3000 GB/s (100% of 3000) and 2 TFLOP/s (50% of 4)
    assert "3000.0" in triton and "100.0%" in triton and "50.0%" in triton
    assert "vs torch_eager" in text
    assert "cuda: no GPU here" in text
    assert "3000 GB/s" in text  # the peaks line


def test_table_without_peaks_says_so():
    rows = [make_row(_case("torch eager", baseline=True), _timing(1.0), None)]
    assert "peaks: none" in format_table(rows)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the bench extra)")
    doc = _document()
    path = plot(doc["results"], tmp_path / "p.png", peaks=doc["peaks"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    with pytest.raises(RuntimeError, match="pip install matplotlib"):
        plot(_document()["results"], tmp_path / "p.png")


def test_filter_backends():
    cases = [
        _case("torch eager", baseline=True),
        _case("torch.compile", baseline=True),
        _case("triton"),
    ]
    assert [c.backend for c in filter_backends(cases, ["Torch_Eager", " triton"])] == [
        "torch eager",
        "triton",
    ]
    assert filter_backends(cases, None) == cases
    with pytest.raises(ValueError, match=r"unknown \['cudnn'\].*torch\.compile"):
        filter_backends(cases, ["cudnn"])


def test_env_has_versions_and_no_hostname():
    env = collect_env("cpu")
    for key in ("device", "python", "torch", "triton", "cuda_runtime", "driver", "git"):
        assert key in env
    assert env["torch"] == torch.__version__
    host = socket.gethostname()
    if len(host) >= 4:
        assert host not in json.dumps(env)


def test_git_info_tolerates_no_repo_and_sees_dirty(tmp_path):
    assert git_info(tmp_path) == {"commit": None, "dirty": None}
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    run("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    run("add", "f.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    info = git_info(tmp_path)
    assert len(info["commit"]) == 40 and info["dirty"] is False
    (tmp_path / "f.txt").write_text("b")
    assert git_info(tmp_path)["dirty"] is True


def test_peaks_on_cpu_are_none_and_datasheet_is_a_lead():
    assert measure_peaks("cpu") is None
    assert "CPU" in no_peaks_reason("cpu")
    h100 = datasheet_peaks("NVIDIA H100 80GB HBM3")
    assert h100 is not None and h100.gbps == 3350.0 and "lead" in h100.source
    assert datasheet_peaks("NVIDIA H200").gbps == 4800.0
    assert datasheet_peaks("NVIDIA H100 PCIe").gbps == 2000.0
    assert datasheet_peaks("Tesla T4") is None
