"""The `haic` command line, run as a user would (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _haic(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the CLI decides for itself
    return subprocess.run(
        [sys.executable, "-m", "haic_kernels.app.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_info_lists_every_backend_with_a_reason() -> None:
    r = _haic("info")
    assert r.returncode == 0, r.stderr
    for name in ("cuda_device", "triton", "cuda_ext", "flash_attn", "dali", "pyav", "liger"):
        assert name in r.stdout, f"{name} missing from `haic info`:\n{r.stdout}"
    lines = [ln for ln in r.stdout.splitlines()[2:] if ln.strip()]
    assert len(lines) >= 6
    for ln in lines:
        # Every row ends with its detail text, usable or not.
        assert len(ln.split(None, 3)) == 4, ln


def test_help_and_bench_help() -> None:
    r = _haic("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "bench" in r.stdout
    r = _haic("bench", "--help")
    assert r.returncode == 0, r.stderr
    assert "haic bench" in r.stdout


def test_unknown_command_fails_cleanly() -> None:
    r = _haic("frobnicate")
    assert r.returncode != 0
    assert "invalid choice" in r.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_bundled_clip() -> None:
    pytest.importorskip("av", reason="the demo decodes with PyAV (video extra)")
    r = _haic("demo", "--max-new-tokens", "4", "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for stage in (
        "decode video",
        "patch embed",
        "vision tower",
        "compress + adapter",
        "prefill",
        "decode tokens",
    ):
        assert stage in out, f"stage {stage!r} missing:\n{out}"
    assert "generated token ids: [" in out
    assert "RANDOM weights" in out
    # Same seed -> same tokens; the demo is deterministic.
    again = _haic("demo", "--max-new-tokens", "4", "--device", "cpu")
    pick = lambda s: [ln for ln in s.splitlines() if ln.startswith("generated token ids")]
    assert pick(again.stdout) == pick(out)


def test_demo_rejects_a_missing_video(tmp_path) -> None:
    r = _haic("demo", "--video", str(tmp_path / "nope.webm"), "--max-new-tokens", "1")
    assert r.returncode != 0
    assert "nope.webm" in (r.stdout + r.stderr)


@pytest.mark.slow
def test_demo_from_a_checkpoint_matches_the_seeded_run(tmp_path) -> None:
    """`--checkpoint DIR` goes through the HF loader and reproduces the seeded weights' tokens."""
    pytest.importorskip("av", reason="the demo decodes with PyAV (video extra)")
    from haic_kernels.models.cogvlm2 import CogVLM2ForCausalLM, get_config, init_random_weights
    from haic_kernels.models.cogvlm2.weights import save_checkpoint

    config = get_config("tiny", "video-chat")
    model = init_random_weights(CogVLM2ForCausalLM(config), seed=3)
    save_checkpoint(model, tmp_path, max_shard_size="2MB", config=config)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1  # the sharded path is exercised

    pick = lambda s: [ln for ln in s.splitlines() if ln.startswith("generated token ids")]
    seeded = _haic("demo", "--seed", "3", "--max-new-tokens", "5", "--device", "cpu")
    loaded = _haic(
        "demo", "--checkpoint", str(tmp_path), "--max-new-tokens", "5", "--device", "cpu"
    )
    assert seeded.returncode == 0 and loaded.returncode == 0, seeded.stderr + loaded.stderr
    assert f"checkpoint {tmp_path}" in loaded.stdout
    assert pick(loaded.stdout) == pick(seeded.stdout) != []


def test_demo_rejects_a_bad_checkpoint(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    r = _haic("demo", "--checkpoint", str(tmp_path), "--max-new-tokens", "1")
    assert r.returncode != 0
    assert str(tmp_path) in (r.stdout + r.stderr)
    assert "Traceback" not in r.stderr


def test_every_command_documents_the_exit_statuses(capsys) -> None:
    """`haic --help` and each command's --help list the statuses the commands return."""
    from haic_kernels.app import cli
    from haic_kernels.app.errors import EXIT_CHECKPOINT, EXIT_FAILED, EXIT_USAGE

    for argv in ([], *([name] for name in cli.COMMANDS)):
        with pytest.raises(SystemExit) as done:
            cli.main([*argv, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert "exit status:" in text, argv
        for status in (0, EXIT_FAILED, EXIT_USAGE, EXIT_CHECKPOINT, 130):
            assert f"\n  {status} " in text, (argv, status)
