"""`haic parity` (app/parity.py) and its engine (testing/model_parity.py): the fast model against
the reference and a float64 oracle, stage by stage."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from haic_kernels.app import cli
from haic_kernels.app import parity as parity_command
from haic_kernels.models.cogvlm2 import get_config
from haic_kernels.testing import fp8_parity
from haic_kernels.testing import model_parity as parity


def _haic(*args: str, cwd: Path, interpret: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not interpret:  # the torch backends need no Triton interpreter (it slows imports)
        env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        [sys.executable, "-m", "haic_kernels.app.cli", *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
    )  # fmt: skip


def _copy_factory(noise_at: str | None = None, scale: float = 1e-3):
    """A stand-in fast model: a copy of the reference (optionally with noise after a module)."""

    def make(reference: torch.nn.Module) -> torch.nn.Module:
        fast = copy.deepcopy(reference)
        if noise_at is not None:
            gen = torch.Generator().manual_seed(0)

            def hook(_m, _a, out):
                x = out[0] if isinstance(out, tuple) else out
                noisy = x + scale * torch.randn(x.shape, generator=gen).to(x)
                return (noisy, *out[1:]) if isinstance(out, tuple) else noisy

            fast.get_submodule(noise_at).register_forward_hook(hook)
        return fast

    return make


@pytest.mark.slow
def test_parity_cli_tiny_passes_for_every_variant(tmp_path: Path) -> None:
    """CI's check: chat and base layouts and the image variant, fp32 on the CPU."""
    out = tmp_path / "parity.json"
    r = _haic("parity", "--config", "tiny", "--device", "cpu", "--prompts", "2",
              "--max-new-tokens", "3", "--json", str(out), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["ok"] and len(doc["runs"]) == 3
    assert {run["config"] for run in doc["runs"]} == {
        "cogvlm2-video-chat-tiny", "cogvlm2-video-base-tiny", "cogvlm2-image-tiny",
    }  # fmt: skip
    for run in doc["runs"]:
        stages = {s["stage"]: s for s in run["stages"]}
        for name in ("patch embed", "vision block 1", "adapter", "LM layer 1", "logits"):
            assert stages[name]["ok"] and stages[name]["fast_max_rel"] is not None, (name, run)
            assert 0.0 <= stages[name]["ratio"] <= 1.0
        assert all(p["match"] for p in run["prompts"]) and len(run["prompts"]) == 2
    assert "demo_clip.webm" in r.stdout and "err/bound" in r.stdout


def test_parity_flags_a_broken_stage_with_exit_code_1(monkeypatch, capsys) -> None:
    """Noise after vision block 1 of the 'fast' model breaks that stage and every later one."""
    monkeypatch.setattr(
        parity,
        "default_fast_factory",
        lambda backend: _copy_factory("model.vision.transformer.layers.1"),
    )
    rc = cli.main(["parity", "--config", "tiny", "--variant", "video-chat", "--device", "cpu",
                   "--prompts", "1", "--max-new-tokens", "2", "--no-video"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 1, out
    lines = {ln.split("  ")[1].strip(): ln for ln in out.splitlines() if ln.startswith("  ")}
    assert lines["vision block 0"].endswith("ok"), out
    assert "FAIL" in lines["vision block 1"] and "FAIL" in lines["logits"], out
    assert "failed: vision block 1" in out and "haic parity: FAIL" in out


def test_parity_of_identical_models_passes_and_reports_every_stage() -> None:
    config = get_config("tiny", "image")
    result = parity.run_parity(
        config, num_prompts=2, max_new_tokens=2, fast_factory=_copy_factory()
    )
    assert result.ok, result.format_table()
    names = [s.stage for s in result.stages]
    assert names[0] == "patch embed" and names[-1] == "logits"
    assert names.count("LM layer 0") == 1 and "vision block 1" in names
    assert all(s.ratio is not None and s.ratio <= 1.0 for s in result.stages)
    # An exactly equal model has exactly the reference's error.
    assert all(s.fast_max_rel == s.ref_max_rel for s in result.stages)


def test_parity_inputs_and_stage_list() -> None:
    config = get_config("tiny", "video-chat")
    inputs = parity.make_inputs(config, 3, seed=1)
    assert len(inputs) == 3 and all(x.frames.dtype == torch.uint8 for x in inputs)
    assert len({x.question for x in inputs}) == 3
    assert [x.frames.shape[0] for x in parity.make_inputs(get_config("tiny", "image"), 2)] == [1, 1]
    labels = [label for label, _ in parity.stage_modules(config)]
    assert labels == ["patch embed", "vision block 0", "vision block 1", "adapter",
                      "LM layer 0", "LM layer 1", "final norm"]  # fmt: skip
    with pytest.raises(ValueError, match="num_prompts"):
        parity.make_inputs(config, 0)


@pytest.mark.slow
def test_parity_with_the_triton_backend(tmp_path: Path) -> None:
    """The Triton kernels (interpreter on the CPU) against the reference, video-chat."""
    pytest.importorskip("triton", reason="the Triton backend needs triton installed")
    r = _haic("parity", "--config", "tiny", "--variant", "video-chat", "--device", "cpu",
              "--backend", "triton", "--prompts", "1", "--max-new-tokens", "2", "--no-video",
              cwd=tmp_path, interpret=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "backend triton" in r.stdout


def test_parity_usage_errors(tmp_path: Path) -> None:
    r = _haic("parity", "--checkpoint", str(tmp_path), "--variant", "all", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_parity_runs_each_rope_precision(tmp_path: Path) -> None:
    """``--rope-precision both``: one run per setting, each model built with it, each named."""
    out = tmp_path / "parity.json"
    r = _haic("parity", "--config", "tiny", "--variant", "video-chat", "--device", "cpu",
              "--prompts", "1", "--max-new-tokens", "2", "--no-video", "--rope-precision",
              "both", "--json", str(out), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [run["rope_precision"] for run in runs] == ["release", "fp32"]
    assert all(run["ok"] for run in runs)
    assert "(rope release)" in r.stdout and "(rope fp32)" in r.stdout


def test_rope_variants_replace_only_the_text_setting() -> None:
    config = get_config("tiny", "video-chat")
    (fp32,) = parity_command._rope_variants(config, "fp32")
    assert fp32.text.rope_precision == "fp32" and fp32.vision == config.vision
    assert parity_command._rope_variants(config, None) == [config]


def test_parity_precision_fp8_reports_each_stage_and_fails_only_past_the_bound(
    monkeypatch, capsys
) -> None:
    """--precision fp8: per-stage relative errors and token agreement, exit 0 on the expected
    quantization error, 1 on non-finite output or a logit error past the bound."""
    argv = ["parity", "--config", "tiny", "--variant", "image", "--device", "cpu", "--prompts",
            "1", "--max-new-tokens", "2", "--no-video", "--precision", "fp8"]  # fmt: skip
    with pytest.warns(UserWarning, match="emulated"):
        rc = cli.main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "fast fp8 (fp8_linear backend emulated) vs reference float32" in out
    errors = {
        stage: float(ln.split()[-1])
        for ln in out.splitlines()
        for stage in ("vision tower", "adapter", "logits")
        if ln.startswith(f"  {stage} ")
    }
    assert set(errors) == {"vision tower", "adapter", "logits"}, out
    assert all(1e-3 < e < 0.5 for e in errors.values()), out  # quantized, not broken
    assert "agree on the first" in out and "haic parity: all runs pass" in out
    # The exit status follows the result: non-finite output or a logit error past the bound.
    stages = [fp8_parity.PrecisionStage("vision tower", "m", 0.1, finite=False),
              fp8_parity.PrecisionStage("logits", "logits", 0.4)]  # fmt: skip
    bad = fp8_parity.PrecisionResult("tiny", "float32", "cpu", "fp8", "emulated", 0.3,
                                     stages=stages)  # fmt: skip
    assert bad.failed == ["vision tower: non-finite", "logits: relative error 0.4 > bound 0.3"]
    monkeypatch.setattr(parity_command, "compare_precision", lambda *a, **k: bad)
    rc = cli.main(argv)
    out = capsys.readouterr().out
    assert rc == 1 and "NON-FINITE" in out and "haic parity: FAIL" in out, out
    assert cli.main([*argv, "--reduce", "merge:1"]) == 2
