"""`haic bench` end to end on the CPU, the patchify suite, and the pytest-benchmark files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from haic_kernels.backends import BackendUnavailable
from haic_kernels.bench import suites
from haic_kernels.bench.cli import main
from haic_kernels.bench.results import read_json
from haic_kernels.bench.suites import patchify as patchify_suite
from haic_kernels.constants import CLIP_MEAN, CLIP_STD

REPO = Path(__file__).resolve().parents[2]
CPU_TINY = ["--device", "cpu", "--size", "tiny", "--reps", "5", "--warmup", "1", "--no-progress"]


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "haic bench" in capsys.readouterr().out


def test_list_names_suites(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "patchify" in out and "memory-bound" in out


def test_unknown_suite_is_a_clear_error(capsys):
    assert main(["nosuch", *CPU_TINY]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'nosuch'" in err and "patchify" in err


def test_no_suite_and_unknown_backend_are_errors(capsys):
    assert main([]) == 2
    assert "name at least one suite" in capsys.readouterr().err
    assert main(["patchify", "--backends", "cudnn", *CPU_TINY]) == 2
    assert "torch eager" in capsys.readouterr().err  # lists the labels that exist


def test_suites_are_discovered_from_the_folder():
    assert "patchify" in suites.SUITES
    assert all(not n.startswith("_") for n in suites.SUITES)
    assert suites.resolve(["all", "patchify"]) == suites.names()


def test_patchify_tiny_on_cpu_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["patchify", "--backends", "torch eager,cuda", "--json", str(path), *CPU_TINY])
    table = capsys.readouterr().out
    assert rc == 0, table
    doc = read_json(path)
    (row,) = doc["results"]
    assert (row["suite"], row["case"], row["backend"]) == ("patchify", "tiny-f3-56", "torch eager")
    assert row["clock"] == "cpu_wall" and row["n"] == 5 and row["baseline"] is True
    assert row["shapes"] == {"videos": 1, "F": 3, "H": 56, "W": 56, "p": 14, "K_pad": 588}
    assert row["dtype"] == "float32" and row["bytes"] == 141_120
    assert row["gbps"] > 0 and row["speedup_vs_torch_eager"] == pytest.approx(1.0)
    assert doc["peaks"] is None and doc["failed"] == []
    (skip,) = doc["skipped"]
    assert skip["backend"] == "cuda" and skip["reason"]
    assert "torch eager (base)" in table and "skipped" in table
    # the saved file renders the same rows
    assert main(["--show", str(path)]) == 0
    assert "torch eager (base)" in capsys.readouterr().out


def test_patchify_op_rows_on_cpu(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["patchify", "--backends", "torch eager,torch", "--json", str(path), *CPU_TINY])
    assert rc == 0, capsys.readouterr()
    doc = read_json(path)
    assert {r["backend"] for r in doc["results"]} == {"torch eager", "torch"}
    assert doc["failed"] == []
    op_row = next(r for r in doc["results"] if r["backend"] == "torch")
    eager = next(r for r in doc["results"] if r["backend"] == "torch eager")
    assert op_row["speedup_vs_torch_eager"] == pytest.approx(
        eager["median_ms"] / op_row["median_ms"]
    )


def _fake_patchify(column_order=(0, 2, 4, 1, 3, 5)):
    """A stand-in for the op's contract; the wrong column order makes a wrong kernel."""

    def patchify(
        frames,
        *,
        patch_size=14,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        dtype=torch.float32,
        k_multiple=1,
        backend="auto",
    ):
        if backend not in ("auto", "torch"):
            raise BackendUnavailable(f"backend={backend!r} is not available on this machine")
        n, h, w, c = frames.shape
        p = patch_size
        k_pad = patchify_suite.k_padded(p, k_multiple)
        x = frames.permute(0, 3, 1, 2).float()
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        x = ((x / 255 - m) / s).reshape(n, c, h // p, p, w // p, p).permute(*column_order)
        x = x.reshape(n, (h // p) * (w // p), c * p * p)
        return torch.nn.functional.pad(x, (0, k_pad - c * p * p)).to(dtype)

    return patchify


@pytest.fixture
def fake_op(monkeypatch):
    def install(fn):
        from haic_kernels.bench.suites import _util

        monkeypatch.setattr(patchify_suite, "load_op", lambda *_: (fn, None, None))
        monkeypatch.setattr(_util, "_probe_cache", {})

    return install


def test_op_cases_checked_skipped_and_timed(tmp_path, fake_op, capsys):
    fake_op(_fake_patchify())
    path = tmp_path / "b.json"
    rc = main(
        ["patchify", "--backends", "torch eager,torch,triton", "--json", str(path), *CPU_TINY]
    )
    assert rc == 0, capsys.readouterr()
    doc = read_json(path)
    assert [r["backend"] for r in doc["results"]] == ["torch eager", "torch"]
    (skip,) = doc["skipped"]
    assert skip["backend"] == "triton" and "triton" in skip["reason"]


def test_a_wrong_backend_fails_its_check(tmp_path, fake_op, capsys):
    fake_op(_fake_patchify(column_order=(0, 2, 4, 3, 5, 1)))  # (kh, kw, c): not Conv2d order
    path = tmp_path / "b.json"
    rc = main(["patchify", "--backends", "torch eager,torch", "--json", str(path), *CPU_TINY])
    out = capsys.readouterr().out
    assert rc == 1
    doc = read_json(path)
    assert [r["backend"] for r in doc["results"]] == ["torch eager"]
    (fail,) = doc["failed"]
    assert fail["backend"] == "torch" and "AssertionError" in fail["reason"]
    assert "FAILED" in out


def _pytest_benchmarks(*args: str) -> subprocess.CompletedProcess:
    # A child pytest must not think it is an xdist worker of this run (pytest-benchmark then
    # turns itself off and writes no JSON).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        # The runner's machinery, on one suite: `make test` smoke-runs every suite itself.
        "benchmarks/bench_patchify.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--size",
        "tiny",
        "-k",
        "not compile and not triton",
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_pytest_benchmarks_smoke_disabled():
    res = _pytest_benchmarks("--benchmark-disable")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed" in res.stdout


@pytest.mark.slow
def test_pytest_benchmarks_json_has_our_figures(tmp_path):
    out = tmp_path / "pb.json"
    res = _pytest_benchmarks(
        "--bench-reps", "3", "--bench-warmup", "1", "--benchmark-json", str(out)
    )
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    eager = next(b for b in data["benchmarks"] if b["extra_info"]["backend"] == "torch eager")
    info = eager["extra_info"]
    assert info["clock"] in ("cpu_wall", "cuda_events") and info["n"] == 3
    assert info["p20_ms"] <= info["median_ms"] <= info["p80_ms"] and info["gbps"] > 0
    assert eager["group"] == "patchify/tiny-f3-56"
    assert data["haic"]["env"]["torch"] and "node" not in data["machine_info"]


@pytest.mark.gpu
@pytest.mark.parametrize("graph", ["off", "on"])
def test_patchify_tiny_on_cuda_end_to_end(tmp_path, capsys, graph):
    path = tmp_path / "bench.json"
    args = ["patchify", "--device", "cuda", "--size", "tiny", "--reps", "10", "--warmup", "2"]
    rc = main([*args, "--cuda-graph", graph, "--no-progress", "--json", str(path)])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    doc = read_json(path)
    assert doc["failed"] == [] and doc["peaks"]["source"] == "measured"
    assert doc["env"]["device"]["type"] == "cuda" and doc["env"]["driver"]
    rows = {r["backend"]: r for r in doc["results"]}
    assert {"torch eager", "torch.compile", "torch"} <= set(rows)
    for r in rows.values():
        assert r["clock"] == "cuda_events" and r["cuda_graph"] == (graph == "on")
        assert r["input_sets"] >= 2 and r["frac_peak_gbps"] is not None
